//! The fast tokenizer against the rxml one: for any input and any
//! chunking, the same frames (spans, decoded values, insert points) and
//! the same verdict (see `jatproxy::xml::differential`).
//!
//! Input: one control byte, then the chunk sizes, then the payload.
//! - control bits 0–2: number of chunk-size bytes minus one (1–8);
//!   bits 3–4: `max_stanza_bytes` (512 KiB, 4096, 512, 200);
//!   bits 5–6: `max_depth` (64, 1, 2, 4);
//!   bit 7: the payload is the whole stream (the prolog and header are
//!   fuzzed too) rather than what follows a valid header.
//! - a size byte `b` is `b + 1` bytes, or `(b - 0xEF) * 512` from 0xF0 up.
#![no_main]

use jatproxy::xml::differential::differ;
use jatproxy_fuzz::{ChunkedInput, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(c) = ChunkedInput::parse(data) else {
        return;
    };
    let (sizes, limits, payload) = (c.sizes, c.limits, c.payload);
    let mut input = Vec::with_capacity(HEADER.len() + payload.len());
    if c.control & 0x80 == 0 {
        input.extend_from_slice(HEADER);
    }
    input.extend_from_slice(payload);
    for sizes in [&[input.len()][..], &sizes] {
        if let Some(d) = differ(&input, sizes, limits) {
            panic!("fast and rxml differ (sizes {sizes:?}, {limits:?}): {d}");
        }
    }
});
