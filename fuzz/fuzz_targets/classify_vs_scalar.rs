//! The SIMD structural classifier against its scalar reference: for
//! arbitrary bytes and every offset into them (byte 0 picks a stride),
//! each path this CPU runs (SSE2, the AVX2 dispatch) gives the scalar
//! masks, and `classify_at` pads a short tail with bytes of no class.
#![no_main]

use jatproxy::xml::classify::{classify_at, classify_scalar, paths, BLOCK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&stride, data)) = input.split_first() else {
        return;
    };
    let stride = usize::from(stride % 7) + 1;
    let paths = paths();
    for at in (0..=data.len()).step_by(stride) {
        let mut block = [b' '; BLOCK];
        let n = (data.len() - at).min(BLOCK);
        block[..n].copy_from_slice(&data[at..at + n]);
        let want = classify_scalar(&block);
        for (name, f) in &paths {
            assert_eq!(f(&block), want, "{name} at {at}");
        }
        assert_eq!(classify_at(data, at), want, "classify_at {at}");
    }
});
