//! WAL segments are read back after crashes: any bytes must decode to an
//! error or to samples, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trawler_store::fuzzing::decode_segment(data, std::path::Path::new("fuzz.wal"));
});
