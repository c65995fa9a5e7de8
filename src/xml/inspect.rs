//! Read-only looks inside a framed element, for control traffic only
//! (`<handshake>`, `<stream:error>`), never for relayed stanzas: those are
//! copied, not parsed twice.

use rxml::error::EndOrError;
use rxml::{Parse, RawEvent, RawParser};

/// The text directly inside the element and the local name of its first
/// child element, e.g. `("", Some("conflict"))` for a
/// `<stream:error><conflict xmlns='…'/></stream:error>`, or
/// `("5e8a…", None)` for `<handshake>5e8a…</handshake>`.
///
/// The bytes come from the framer, which already validated them; a parse
/// failure here yields what was gathered so far.
pub fn text_and_first_child(element: &[u8]) -> (String, Option<String>) {
    let mut parser = RawParser::new();
    let mut input = element;
    let mut depth = 0usize;
    let mut text = String::new();
    let mut child = None;
    loop {
        match parser.parse(&mut input, true) {
            Ok(Some(RawEvent::ElementHeadOpen(_, (_, local)))) => {
                depth += 1;
                if depth == 2 && child.is_none() {
                    child = Some(local.to_string());
                }
            }
            Ok(Some(RawEvent::ElementFoot(_))) => depth = depth.saturating_sub(1),
            Ok(Some(RawEvent::Text(_, t))) if depth == 1 => text.push_str(&t),
            Ok(Some(_)) => {}
            Ok(None) | Err(EndOrError::NeedMoreData) | Err(EndOrError::Error(_)) => break,
        }
    }
    (text, child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_text() {
        let (t, c) = text_and_first_child(b"<handshake>abc&amp;</handshake>");
        assert_eq!((t.as_str(), c), ("abc&", None));
    }

    #[test]
    fn stream_error_condition() {
        let (_, c) = text_and_first_child(
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text/></stream:error>",
        );
        assert_eq!(c.as_deref(), Some("conflict"));
    }
}
