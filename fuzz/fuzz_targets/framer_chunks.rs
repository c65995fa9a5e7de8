//! Chunking must not matter: the framer fed in fuzz-chosen pieces frames
//! exactly what it frames from the whole input at once, fails the same
//! way, and its frames put back together are the bytes it consumed.
//!
//! Input: one control byte, then the chunk sizes, then the payload that
//! follows the stream header.
//! - control bits 0–2: number of chunk-size bytes minus one (1–8);
//!   bits 3–4: `max_stanza_bytes` (512 KiB, 4096, 512, 200);
//!   bits 5–6: `max_depth` (64, 1, 2, 4) — small limits reach the
//!   TooLarge and TooDeep paths, which must not depend on chunking either.
//! - a size byte `b` is `b + 1` bytes, or `(b - 0xEF) * 512` from 0xF0 up.
//!
//! The whole stream, header included, is cut into the pieces.
#![no_main]

use jatproxy::xml::{Frame, FrameError};
use jatproxy_fuzz::{merged, run_chunked, stream_text, ChunkedInput, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(c) = ChunkedInput::parse(data) else {
        return;
    };
    let (sizes, limits) = (c.sizes, c.limits);
    let mut input = HEADER.to_vec();
    input.extend_from_slice(c.payload);

    let whole = run_chunked(&input, &[input.len()], limits);
    let pieces = run_chunked(&input, &sizes, limits);

    for run in [&whole, &pieces] {
        let consumed = run.consumed();
        assert!(
            input.starts_with(&consumed),
            "frames are not the input's prefix ({} bytes consumed)",
            consumed.len()
        );
        for frame in &run.frames {
            check_frame(frame);
        }
    }
    assert!(
        same_verdict(pieces.error.as_ref(), whole.error.as_ref()),
        "verdict depends on chunking {sizes:?}: {:?} vs {:?}",
        pieces.error,
        whole.error
    );
    let (mut a, mut b) = (merged(&pieces.frames), merged(&whole.frames));
    if whole.error.is_some() {
        // A keepalive is framed as soon as it arrives: whitespace just
        // before the bad bytes comes out only if it arrived in an earlier
        // read. Harmless, and not a difference in what was accepted.
        for frames in [&mut a, &mut b] {
            if matches!(frames.last(), Some(Frame::Whitespace(_))) {
                frames.pop();
            }
        }
    }
    assert_eq!(
        a.len(),
        b.len(),
        "frame count depends on chunking {sizes:?}"
    );
    for (i, (got, want)) in a.iter().zip(&b).enumerate() {
        assert_eq!(got, want, "frame {i} depends on chunking {sizes:?}");
    }
});

/// What a stanza frame says about its own bytes must hold.
fn check_frame(frame: &Frame) {
    match frame {
        Frame::Stanza(s) => {
            let b = &s.bytes;
            assert!(b.starts_with(b"<") && b.ends_with(b">"), "stanza {b:?}");
            assert!(s.insert_at() < b.len(), "insert_at {} in {b:?}", s.insert_at());
            let tail = &b[s.insert_at()..];
            let tail = &tail[tail.iter().take_while(|c| c.is_ascii_whitespace()).count()..];
            assert!(
                tail.starts_with(b">") || tail.starts_with(b"/>"),
                "insert_at {} is not the end of the start tag in {b:?}",
                s.insert_at()
            );
            for attr in [&s.to, &s.from].into_iter().flatten() {
                let r = attr.span();
                assert!(
                    r.start >= 1 && r.start <= r.end && r.end < s.insert_at(),
                    "span {r:?} in {b:?}"
                );
                assert_eq!(
                    b[r.start - 1],
                    attr.quote(),
                    "opening quote of {r:?} in {b:?}"
                );
                assert_eq!(b[r.end], attr.quote(), "closing quote of {r:?} in {b:?}");
            }
        }
        Frame::Whitespace(b) => {
            // Literal whitespace, or character data that decodes to it
            // (`&#9;`, `<![CDATA[ ]]>`): valid XML, forwarded as it came.
            let text = stream_text(b).unwrap_or_else(|e| panic!("keepalive {b:?}: {e}"));
            assert!(
                !b.is_empty() && text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')),
                "keepalive {b:?} is {text:?}"
            );
        }
        // Not with these limits (per_stanza off).
        Frame::Header(_) | Frame::End(_) | Frame::Skipped(_) => {}
    }
}

/// Both accepted, or both refused for the same reason — unless the input
/// is malformed. rxml checks UTF-8 only when it flushes text, and with
/// text buffering off it flushes at the end of every read, so where the
/// reads end decides whether a bad byte is reported before another fault
/// of the same input (a later bad character, text at stream level, a
/// limit reached first). Refusing malformed input for either reason is
/// right; accepting it, or refusing well-formed input differently, is not.
fn same_verdict(a: Option<&FrameError>, b: Option<&FrameError>) -> bool {
    let content = |e: &FrameError| {
        matches!(
            e,
            FrameError::NotWellFormed(_) | FrameError::TextAtStreamLevel
        )
    };
    match (a, b) {
        (Some(x), Some(y)) => x == y || content(x) || content(y),
        (x, y) => x == y,
    }
}
