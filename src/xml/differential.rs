//! The fast tokenizer held against rxml: for tests, property tests and
//! the `fast_vs_rxml` fuzz target, not the relay path.
//!
//! Equal means: the same frames (keepalive runs merged, since how
//! whitespace is cut depends on when it arrived, and a keepalive just
//! before an error left out), and the same verdict (see [`same_verdict`]).

use bytes::BytesMut;

use super::frame::Frame;
use super::framer::{FrameError, FramerLimits};
use super::tokenizer::{Framer, Tokenizer};

/// Feeds `input` in pieces of `sizes` (cycled), draining frames after
/// each, then signals the end of input.
pub fn drive(f: &mut Framer, input: &[u8], sizes: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let (mut at, mut i) = (0, 0);
    loop {
        loop {
            match f.next_frame(&mut buf) {
                Ok(Some(fr)) => frames.push(fr),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        if at >= input.len() {
            break;
        }
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1);
        let n = size.max(1).min(input.len() - at);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        i += 1;
    }
    loop {
        match f.next_frame_eof(&mut buf) {
            Ok(Some(fr)) => frames.push(fr),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Adjacent keepalives merged, and on error a trailing one dropped: how a
/// whitespace run is cut depends on when rxml flushes it.
fn normal(frames: Vec<Frame>, failed: bool) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::with_capacity(frames.len());
    for f in frames {
        if let (Some(Frame::Whitespace(prev)), Frame::Whitespace(b)) = (out.last_mut(), &f) {
            let mut joined = prev.to_vec();
            joined.extend_from_slice(b);
            *prev = joined.into();
            continue;
        }
        out.push(f);
    }
    if failed && matches!(out.last(), Some(Frame::Whitespace(_))) {
        out.pop();
    }
    out
}

/// The verdicts agree: both accept, or both refuse with the same stream
/// error condition, or both refuse and one of them for the size limit
/// (rxml measures it per token, fast per byte, so near the limit another
/// fault may be seen first by either). Two pairs of faults in one input are reported in an
/// order rxml decides by where its reads end, so either condition is
/// right there: text at stream level against malformed content or
/// against the size limit (rxml flushes a long text where its decoded
/// length reaches the token limit, CRLF and references shrinking it), and,
/// in input holding bad UTF-8 (which rxml judges only when it flushes a
/// token, so where its reads and its token limit fall decides what it
/// sees first), the size limit, text at stream level and bad UTF-8.
pub fn same_verdict(input: &[u8], fast: Option<&FrameError>, rxml: Option<&FrameError>) -> bool {
    let bad_utf8 = std::str::from_utf8(input).is_err()
        || memchr::memmem::find(input, b"\xEF\xBF\xBE").is_some()
        || memchr::memmem::find(input, b"\xEF\xBF\xBF").is_some();
    let size_or_utf8 = |e: &FrameError| {
        matches!(
            e,
            FrameError::NotWellFormed(_)
                | FrameError::Truncated
                | FrameError::TooLarge { .. }
                | FrameError::TokenTooLong { .. }
                | FrameError::TextAtStreamLevel
        )
    };
    let content = |e: &FrameError| {
        matches!(
            e,
            FrameError::NotWellFormed(_) | FrameError::TextAtStreamLevel | FrameError::Truncated
        )
    };
    match (fast, rxml) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let text_or_size = |e: &FrameError| {
                matches!(
                    e,
                    FrameError::TextAtStreamLevel
                        | FrameError::TooLarge { .. }
                        | FrameError::TokenTooLong { .. }
                )
            };
            // rxml checks the size limit per token, fast per byte: when a
            // stanza crosses the limit near another fault, either report
            // is right (both refuse; only the stream error differs).
            let too_large = |e: &FrameError| {
                matches!(
                    e,
                    FrameError::TooLarge { .. } | FrameError::TokenTooLong { .. }
                )
            };
            // The rxml framer names `<!DOCTYPE` a DTD only when it sits
            // right after an event rxml emitted; after text rxml has not
            // flushed yet, it stays a malformed section start.
            let doctype = |e: &FrameError, f: &FrameError| {
                *e == FrameError::Restricted("document type declarations")
                    && matches!(f, FrameError::NotWellFormed(_))
            };
            a.condition() == b.condition()
                || too_large(a)
                || too_large(b)
                || doctype(a, b)
                || doctype(b, a)
                || (text_or_size(a) && text_or_size(b))
                || (bad_utf8 && size_or_utf8(a) && size_or_utf8(b))
                || (content(a)
                    && content(b)
                    && (*a == FrameError::TextAtStreamLevel || *b == FrameError::TextAtStreamLevel))
        }
        _ => false,
    }
}

/// Checks one input and chunking; returns a description of the first
/// difference.
pub fn differ(input: &[u8], sizes: &[usize], limits: FramerLimits) -> Option<String> {
    let (ff, fe) = drive(
        &mut Framer::with_tokenizer(limits, Tokenizer::Fast),
        input,
        sizes,
    );
    let (rf, re) = drive(
        &mut Framer::with_tokenizer(limits, Tokenizer::Rxml),
        input,
        sizes,
    );
    if !same_verdict(input, fe.as_ref(), re.as_ref()) {
        return Some(format!("verdict: fast {fe:?}, rxml {re:?}"));
    }
    let ff = normal(ff, fe.is_some());
    let rf = normal(rf, re.is_some());
    if ff.len() != rf.len() {
        return Some(format!(
            "frame count: fast {} {:.400?}, rxml {} {:.400?} (errors {fe:?} / {re:?})",
            ff.len(),
            ff.last(),
            rf.len(),
            rf.last()
        ));
    }
    for (i, (a, b)) in ff.iter().zip(&rf).enumerate() {
        if a != b {
            return Some(format!("frame {i}: fast {a:.400?}, rxml {b:.400?}"));
        }
    }
    None
}
