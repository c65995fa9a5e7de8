//! Reading the condition of a member's iq error, for `routing.retry_on`.
//!
//! Only error replies are read, and only when `retry_on` is set: the
//! relay path never parses a stanza twice otherwise.

use rxml::error::EndOrError;
use rxml::{Parse, RawEvent, RawParser};

use crate::stanza::StanzaCondition;
use crate::xml::frame::Stanza;

/// The defined condition of an error stanza (RFC 6120 §8.3): the first
/// child of its `<error>` whose local name is a defined condition. `None`
/// for a stanza that is not an error, or whose condition is unknown.
/// Names are matched by local name; prefixes are not resolved (members
/// write the condition in the stanzas namespace, undeclared prefixes
/// cannot pass the framer).
pub fn condition(st: &Stanza) -> Option<StanzaCondition> {
    if !st.is_error() {
        return None;
    }
    let mut parser = RawParser::new();
    let mut input: &[u8] = &st.bytes;
    let mut depth = 0usize;
    let mut in_error = false;
    loop {
        match parser.parse(&mut input, true) {
            Ok(Some(RawEvent::ElementHeadOpen(_, (_, local)))) => {
                depth += 1;
                if depth == 2 {
                    in_error = local.as_str() == "error";
                } else if depth == 3 && in_error {
                    if let Some(c) = StanzaCondition::from_name(local.as_str()) {
                        return Some(c);
                    }
                }
            }
            Ok(Some(RawEvent::ElementFoot(_))) => {
                if depth == 2 && in_error {
                    return None;
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(EndOrError::NeedMoreData) | Err(EndOrError::Error(_)) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_one;

    fn cond(xml: &str) -> Option<StanzaCondition> {
        condition(&parse_one(xml.as_bytes()).expect("frames"))
    }

    #[test]
    fn reads_the_condition_of_an_error() {
        assert_eq!(
            cond("<iq type='error' id='1'><query xmlns='q'><feature-not-implemented/></query><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
            Some(StanzaCondition::FeatureNotImplemented)
        );
        assert_eq!(
            cond("<iq type='error' id='1'><error type='wait'><s:service-unavailable xmlns:s='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
            Some(StanzaCondition::ServiceUnavailable)
        );
        assert_eq!(
            cond("<iq type='error' id='1'><error type='cancel'><made-up xmlns='x'/></error></iq>"),
            None
        );
        assert_eq!(
            cond("<iq type='result' id='1'><error><conflict/></error></iq>"),
            None
        );
    }
}
