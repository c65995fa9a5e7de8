//! The fast tokenizer held against rxml: for tests, property tests and
//! the `fast_vs_rxml` fuzz target, not the relay path.
//!
//! Equal means: the same frames (keepalive runs merged, since how
//! whitespace is cut depends on when it arrived, and a keepalive just
//! before an error left out), and the same verdict (see [`same_verdict`]).
//!
//! Where both framers deliberately follow XML 1.0 rather than rxml, the
//! comparison knows it:
//! - a raw CR anywhere (XML 1.0 §2.11): the rxml framer feeds rxml a lone
//!   CR as LF itself, so both accept it and nothing changes here; an
//!   oracle using `rxml::Parser` directly must feed it [`xml_eol`]`(input)`;
//! - a character reference of more than 8 digits (`&#0000000065;`, legal
//!   by XML 1.0 [66]): rxml refuses it (`UndeclaredEntity`) and the rxml
//!   framer with it, the fast one accepts it (see [`long_char_ref`]).

use super::chunked::{drive, merged, Run};
use super::frame::Frame;
use super::framer::{FrameError, FramerLimits};
use super::tokenizer::{Framer, Tokenizer};

/// Adjacent keepalives merged, and on error a trailing one dropped: how a
/// whitespace run is cut depends on when rxml flushes it.
fn normal(frames: Vec<Frame>, failed: bool) -> Vec<Frame> {
    let mut out = merged(&frames);
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

/// `input` after XML 1.0 §2.11 end-of-line handling as the rxml framer
/// applies it: a lone CR (one followed by a byte other than LF) becomes
/// LF, CRLF is left for rxml to fold, and a CR at the very end is left
/// alone (what follows it is not known). Same length, so every offset
/// into it is an offset into `input`.
pub fn xml_eol(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if out[i] == b'\r' && out[i + 1] != b'\n' {
            out[i] = b'\n';
        }
    }
    out
}

/// rxml reads at most this many digits of a character reference.
const RXML_MAX_REF: usize = 8;

/// `input` holds `&#` (or `&#x`) followed by more digits than rxml reads:
/// a reference XML 1.0 [66] allows (leading zeros are unbounded) and
/// rxml refuses with `UndeclaredEntity`. The one class of input where
/// the fast framer deliberately accepts what the rxml framer refuses.
pub fn long_char_ref(input: &[u8]) -> bool {
    memchr::memmem::find_iter(input, b"&#").any(|at| {
        let rest = &input[at + 2..];
        let (digits, hex) = match rest.first() {
            Some(b'x') => (&rest[1..], true),
            _ => (rest, false),
        };
        digits
            .iter()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count()
            > RXML_MAX_REF
    })
}

/// Checks one input and chunking; returns a description of the first
/// difference.
pub fn differ(input: &[u8], sizes: &[usize], limits: FramerLimits) -> Option<String> {
    let Run {
        frames: ff,
        error: fe,
        ..
    } = drive(
        &mut Framer::with_tokenizer(limits, Tokenizer::Fast),
        input,
        sizes,
    );
    let Run {
        frames: rf,
        error: re,
        ..
    } = drive(
        &mut Framer::with_tokenizer(limits, Tokenizer::Rxml),
        input,
        sizes,
    );
    // rxml refused a long character reference the fast framer follows
    // XML in accepting: up to rxml's refusal, the frames must agree; after
    // it there is nothing to compare against.
    let rxml_stricter = matches!(re, Some(FrameError::NotWellFormed(_)))
        && fe.as_ref() != re.as_ref()
        && long_char_ref(input);
    if !rxml_stricter && !same_verdict(input, fe.as_ref(), re.as_ref()) {
        return Some(format!("verdict: fast {fe:?}, rxml {re:?}"));
    }
    let mut ff = normal(ff, fe.is_some());
    let rf = normal(rf, re.is_some());
    if rxml_stricter {
        // (`normal` dropped a keepalive just before rxml's error.)
        ff.truncate(rf.len());
    }
    compare(&ff, &rf, &fe, &re)
}

fn compare(
    ff: &[Frame],
    rf: &[Frame],
    fe: &Option<FrameError>,
    re: &Option<FrameError>,
) -> Option<String> {
    if ff.len() != rf.len() {
        return Some(format!(
            "frame count: fast {} {:.400?}, rxml {} {:.400?} (errors {fe:?} / {re:?})",
            ff.len(),
            ff.last(),
            rf.len(),
            rf.last()
        ));
    }
    for (i, (a, b)) in ff.iter().zip(rf).enumerate() {
        if a != b {
            return Some(format!("frame {i}: fast {a:.400?}, rxml {b:.400?}"));
        }
    }
    None
}
