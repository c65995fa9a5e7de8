//! The rxml-based framer against `rxml::Parser`, in both directions. (Its
//! "bytes seen when it refused" is the rxml framer's notion; the fast
//! tokenizer is held to the rxml framer by `fast_vs_rxml`.)
//!
//! Input: the bytes after the stream header.
//!
//! - Every stanza the framer hands out, alone in a stream, is a complete,
//!   namespace-well-formed document for rxml, with the same local name,
//!   namespace and decoded `to`/`from`; and everything the framer consumed
//!   is an acceptable document start for rxml.
//! - When the framer refuses the input as bad XML (NotWellFormed,
//!   Restricted, UndeclaredPrefix, DuplicateAttribute), rxml refuses the
//!   bytes the framer had seen when it first said so. The XMPP-only
//!   refusals (TooDeep, TooLarge, TextAtStreamLevel, BadHeader) and
//!   Truncated (an end-of-input verdict) are not XML errors and are left
//!   out. Two places where rxml is no oracle are judged otherwise: a
//!   repeated `xmlns='…'` (rxml 0.14 accepts it; XML does not) is left
//!   out, and for undecodable bytes rxml has not judged yet (it waits
//!   while fewer than four are pending) `std::str::from_utf8` decides.
#![no_main]

use jatproxy::xml::Tokenizer;
use jatproxy::xml::{Frame, FrameError, FramerLimits};
use jatproxy_fuzz::{parse_element, run_chunked_with, rxml_error, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let limits = FramerLimits::default();
    let mut input = HEADER.to_vec();
    input.extend_from_slice(payload);
    let run = run_chunked_with(&input, &[input.len()], limits, Tokenizer::Rxml);

    for frame in &run.frames {
        let Frame::Stanza(s) = frame else { continue };
        let parsed = match parse_element(&s.bytes, limits) {
            Ok(p) => p,
            Err(e) => panic!("framer accepted what rxml refuses ({e}): {:?}", s.bytes),
        };
        assert_eq!(
            (parsed.ns.as_str(), parsed.name.as_str()),
            (s.ns.as_ref(), s.name.as_ref()),
            "name of {:?}",
            s.bytes
        );
        assert_eq!(parsed.attr("to"), s.to(), "to of {:?}", s.bytes);
        assert_eq!(parsed.attr("from"), s.from(), "from of {:?}", s.bytes);
    }

    let consumed = run.consumed();
    if let Some(e) = rxml_error(&consumed, limits) {
        panic!("rxml refuses what the framer consumed: {e}");
    }

    let Some(err) = &run.error else { return };
    if !is_xml_error(err) {
        return;
    }
    // Where the framer first refused: the same input fed byte by byte. Its
    // verdict may name another fault of the same input (rxml checks UTF-8
    // when text is flushed, at the end of each read); when that one is not
    // an XML error, hold rxml to the whole input instead.
    let slow = run_chunked_with(&input, &[1], limits, Tokenizer::Rxml);
    let seen = match &slow.error {
        Some(e) if is_xml_error(e) => &input[..slow.fed],
        Some(_) => &input[..],
        None => panic!("refused ({err}) whole, accepted byte by byte"),
    };
    if rxml_error(seen, limits).is_some() {
        return;
    }
    // rxml waits for more bytes while fewer than four undecodable ones are
    // pending, even when no UTF-8 sequence starts with them; the framer
    // refuses them once they reach a frame. For that verdict std is the
    // oracle: the bytes hold an invalid sequence, not just an unfinished
    // one at the end.
    let invalid_utf8 = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .err()
            .is_some_and(|e| e.error_len().is_some())
    };
    if (bad_utf8(&slow.error) && invalid_utf8(seen))
        || (bad_utf8(&run.error) && invalid_utf8(&input))
    {
        return;
    }
    panic!(
        "framer refused ({err}; byte by byte: {:?}) the first {} bytes, which rxml accepts",
        slow.error,
        seen.len()
    );
});

/// A refusal on XML grounds, which rxml must share. The XMPP-only
/// refusals (TooDeep, TooLarge, TokenTooLong, TextAtStreamLevel,
/// BadHeader) and Truncated (an end-of-input verdict) are not XML errors.
fn is_xml_error(err: &FrameError) -> bool {
    match err {
        FrameError::NotWellFormed(_)
        | FrameError::Restricted(_)
        | FrameError::UndeclaredPrefix(_) => true,
        // rxml 0.14 keeps the last of several `xmlns='…'` on one element
        // instead of refusing them (XML 1.0 "Unique Att Spec"); the framer
        // is right to refuse, and rxml is no oracle for this one case.
        FrameError::DuplicateAttribute(name) => name != "xmlns",
        FrameError::TooDeep { .. }
        | FrameError::TooLarge { .. }
        | FrameError::TokenTooLong { .. }
        | FrameError::TextAtStreamLevel
        | FrameError::BadHeader(_)
        | FrameError::Truncated => false,
    }
}

/// The verdict on an undecodable byte (rxml's, or the framer's own for
/// one held in a keepalive).
fn bad_utf8(err: &Option<FrameError>) -> bool {
    matches!(err, Some(FrameError::NotWellFormed(m)) if m.starts_with("invalid utf-8"))
}
