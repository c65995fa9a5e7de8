//! Read-only looks inside a framed element, for control traffic only
//! (`<handshake>`; a `<stream:error>` is read by [`super::stream_error`]);
//! never on the relay path: relayed stanzas are copied, not parsed twice.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_text() {
        assert_eq!(element_text(b"<handshake>abc&amp;</handshake>"), "abc&");
        assert_eq!(element_text(b"<a>x<b>not this</b>y</a>"), "xy");
    }
}
