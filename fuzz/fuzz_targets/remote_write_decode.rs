//! Remote-write bodies (snappy + protobuf) from the network: any bytes give
//! a request or an error, never a panic or an allocation beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trawler_promql::remote::{decode, decode_body, WriteLimits};

fuzz_target!(|data: &[u8]| {
    let limits = WriteLimits {
        max_decoded_bytes: 1 << 20,
        ..WriteLimits::default()
    };
    let _ = decode_body(data, limits);
    let _ = decode(data, limits);
});
