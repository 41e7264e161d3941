//! Blocks are read from disk that may be corrupt: any bytes must decode to
//! an error or to points, never a panic or an unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trawler_store::fuzzing::check_block(data);
});
