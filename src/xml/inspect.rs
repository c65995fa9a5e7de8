//! Read-only looks inside a framed element, for control traffic
//! (`<handshake>`; a `<stream:error>` is read by [`super::stream_error`]) and for output held while the server
//! is away; never on the relay path: relayed stanzas are copied, not
//! parsed twice.

use rxml::error::EndOrError;
use rxml::{Parse, RawEvent, RawParser};

/// The text directly inside the element, e.g. `5e8a…` for
/// `<handshake>5e8a…</handshake>`; text inside its children is left out.
/// (A `<stream:error>` is read by [`crate::xml::StreamError::parse`].)
///
/// The bytes come from the framer, which already validated them; a parse
/// failure here yields what was gathered so far.
pub fn element_text(element: &[u8]) -> String {
    let mut parser = RawParser::new();
    let mut input = element;
    let mut depth = 0usize;
    let mut text = String::new();
    loop {
        match parser.parse(&mut input, true) {
            Ok(Some(RawEvent::ElementHeadOpen(..))) => depth += 1,
            Ok(Some(RawEvent::ElementFoot(_))) => depth = depth.saturating_sub(1),
            Ok(Some(RawEvent::Text(_, t))) if depth == 1 => text.push_str(&t),
            Ok(Some(_)) => {}
            Ok(None) | Err(EndOrError::NeedMoreData) | Err(EndOrError::Error(_)) => break,
        }
    }
    text
}

/// Whether `element`, given as the pieces it is written in, is an iq
/// response (`type` result or error, whatever the element's prefix).
/// Only its start tag is read.
///
/// The bytes are ours or came through the framer, so they are
/// well-formed; anything unreadable counts as not a response.
pub fn is_iq_response(pieces: &[bytes::Bytes]) -> bool {
    let mut parser = RawParser::new();
    let mut is_iq = false;
    for (i, piece) in pieces.iter().enumerate() {
        let mut input = &piece[..];
        let at_eof = i + 1 == pieces.len();
        loop {
            match parser.parse(&mut input, at_eof) {
                Ok(Some(RawEvent::ElementHeadOpen(_, (_, local)))) => {
                    is_iq = local.as_str() == "iq";
                    if !is_iq {
                        return false;
                    }
                }
                Ok(Some(RawEvent::Attribute(_, (None, name), value)))
                    if name.as_str() == "type" =>
                {
                    return is_iq && matches!(value.as_str(), "result" | "error");
                }
                Ok(Some(RawEvent::ElementHeadClose(_))) => return false,
                Ok(Some(_)) => {}
                Err(EndOrError::NeedMoreData) => break,
                Ok(None) | Err(EndOrError::Error(_)) => return false,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_text() {
        assert_eq!(element_text(b"<handshake>abc&amp;</handshake>"), "abc&");
        assert_eq!(element_text(b"<a>x<b>not this</b>y</a>"), "xy");
    }

    #[test]
    fn iq_responses_are_told_from_the_rest_across_pieces() {
        use bytes::Bytes;
        let one = |s: &'static str| vec![Bytes::from_static(s.as_bytes())];
        assert!(is_iq_response(&one("<iq type='result' id='1'/>")));
        assert!(is_iq_response(&one(
            "<iq id='1' from='a' type=\"error\"><error type='wait'/></iq>"
        )));
        assert!(is_iq_response(&one(
            "<c:iq xmlns:c='jabber:component:accept' type='result'/>"
        )));
        assert!(!is_iq_response(&one("<iq type='get' id='1'/>")));
        assert!(!is_iq_response(&one("<iq id='1'/>")));
        assert!(!is_iq_response(&one("<message type='error'/>")));
        assert!(!is_iq_response(&one(
            "<iq x:type='result' xmlns:x='urn:x'/>"
        )));
        assert!(!is_iq_response(&one("<iq type='res")));
        // Split anywhere, as a rewritten stanza is.
        let whole = "<iq to='someone@example.test/r' type='error' id='x'><q/></iq>";
        for cut in 1..whole.len() {
            let pieces = vec![
                Bytes::copy_from_slice(&whole.as_bytes()[..cut]),
                Bytes::copy_from_slice(&whole.as_bytes()[cut..]),
            ];
            assert!(is_iq_response(&pieces), "cut at {cut}");
        }
    }
}
