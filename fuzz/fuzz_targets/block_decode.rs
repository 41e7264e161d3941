//! Blocks are read from disk that may be corrupt: any bytes must decode to
//! an error or to points, never a panic or an unbounded allocation. Covers
//! both block versions (1 with stored rollups, 2 with rollups computed from
//! the values) and both value codings of version 2 (pco deltas and chord
//! residuals): `check_block` decodes every series as each kind, values and
//! rollups.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trawler_store::fuzzing::check_block(data);
});
