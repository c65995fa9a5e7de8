//! Stanzas the proxy writes itself: error replies and presence.
//!
//! Their shape follows what Prosody's mod_client_proxy sends (see
//! `prosody-traces.md`): `type`, `id`, `from`, `to`, then the error
//! element; no payload is copied back.

use bytes::Bytes;

use crate::xml::escape;
use crate::xml::frame::NS_STANZA_ERRORS;

/// The stanza errors the proxy generates. Each is answered in place of a
/// reply that will not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaError {
    /// No member to serve the request (empty pool).
    ServiceUnavailable,
    /// The member did not answer within `iq_timeout`.
    RemoteServerTimeout,
    /// The member that had the request went away before answering.
    RecipientUnavailable,
    /// The pending table was full; the oldest request was given up.
    ResourceConstraint,
    /// Messages, and requests from the target when those are turned off.
    FeatureNotImplemented,
    /// Malformed or misaddressed stanzas (as the module answers them).
    BadRequest,
    /// A request whose id is already in flight from the same requester.
    Conflict,
    /// A translated address that no longer resolves.
    ItemNotFound,
    /// An instance addressed a stanza to something that is no JID (fails
    /// stringprep, a part over 1023 bytes): answered as Prosody's router
    /// answers it, but to the instance that sent it.
    JidMalformed,
    /// A stanza from upstream broke a per-stanza limit (size, depth,
    /// token length) and was skipped, not forwarded: answered to its
    /// sender, with a text naming the limit.
    PolicyViolation,
}

impl StanzaError {
    pub const ALL: [StanzaError; 10] = [
        StanzaError::ServiceUnavailable,
        StanzaError::RemoteServerTimeout,
        StanzaError::RecipientUnavailable,
        StanzaError::ResourceConstraint,
        StanzaError::FeatureNotImplemented,
        StanzaError::BadRequest,
        StanzaError::Conflict,
        StanzaError::ItemNotFound,
        StanzaError::JidMalformed,
        StanzaError::PolicyViolation,
    ];

    /// The defined condition element name (RFC 6120 §8.3.3).
    pub fn condition(self) -> &'static str {
        match self {
            StanzaError::ServiceUnavailable => "service-unavailable",
            StanzaError::RemoteServerTimeout => "remote-server-timeout",
            StanzaError::RecipientUnavailable => "recipient-unavailable",
            StanzaError::ResourceConstraint => "resource-constraint",
            StanzaError::FeatureNotImplemented => "feature-not-implemented",
            StanzaError::BadRequest => "bad-request",
            StanzaError::Conflict => "conflict",
            StanzaError::ItemNotFound => "item-not-found",
            StanzaError::JidMalformed => "jid-malformed",
            StanzaError::PolicyViolation => "policy-violation",
        }
    }

    /// The error type: `wait` where retrying later may succeed, `modify`
    /// where the sender must fix the address (RFC 6120 §8.3.3.8).
    pub fn error_type(self) -> &'static str {
        match self {
            StanzaError::RemoteServerTimeout
            | StanzaError::RecipientUnavailable
            | StanzaError::ResourceConstraint => "wait",
            StanzaError::JidMalformed | StanzaError::PolicyViolation => "modify",
            _ => "cancel",
        }
    }
}

/// A defined stanza error condition (RFC 6120 §8.3.3), every one of them:
/// [`StanzaError`] is only the few jatproxy writes itself, while
/// `routing.retry_on` names conditions members answer with, and a
/// member's reply is read into one of these ([`StanzaCondition::from_name`])
/// so a peer cannot mint new names for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StanzaCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaCondition {
    /// Every defined condition, in the RFC's order.
    pub const ALL: [StanzaCondition; 22] = [
        StanzaCondition::BadRequest,
        StanzaCondition::Conflict,
        StanzaCondition::FeatureNotImplemented,
        StanzaCondition::Forbidden,
        StanzaCondition::Gone,
        StanzaCondition::InternalServerError,
        StanzaCondition::ItemNotFound,
        StanzaCondition::JidMalformed,
        StanzaCondition::NotAcceptable,
        StanzaCondition::NotAllowed,
        StanzaCondition::NotAuthorized,
        StanzaCondition::PolicyViolation,
        StanzaCondition::RecipientUnavailable,
        StanzaCondition::Redirect,
        StanzaCondition::RegistrationRequired,
        StanzaCondition::RemoteServerNotFound,
        StanzaCondition::RemoteServerTimeout,
        StanzaCondition::ResourceConstraint,
        StanzaCondition::ServiceUnavailable,
        StanzaCondition::SubscriptionRequired,
        StanzaCondition::UndefinedCondition,
        StanzaCondition::UnexpectedRequest,
    ];

    /// The condition's element name.
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaCondition::BadRequest => "bad-request",
            StanzaCondition::Conflict => "conflict",
            StanzaCondition::FeatureNotImplemented => "feature-not-implemented",
            StanzaCondition::Forbidden => "forbidden",
            StanzaCondition::Gone => "gone",
            StanzaCondition::InternalServerError => "internal-server-error",
            StanzaCondition::ItemNotFound => "item-not-found",
            StanzaCondition::JidMalformed => "jid-malformed",
            StanzaCondition::NotAcceptable => "not-acceptable",
            StanzaCondition::NotAllowed => "not-allowed",
            StanzaCondition::NotAuthorized => "not-authorized",
            StanzaCondition::PolicyViolation => "policy-violation",
            StanzaCondition::RecipientUnavailable => "recipient-unavailable",
            StanzaCondition::Redirect => "redirect",
            StanzaCondition::RegistrationRequired => "registration-required",
            StanzaCondition::RemoteServerNotFound => "remote-server-not-found",
            StanzaCondition::RemoteServerTimeout => "remote-server-timeout",
            StanzaCondition::ResourceConstraint => "resource-constraint",
            StanzaCondition::ServiceUnavailable => "service-unavailable",
            StanzaCondition::SubscriptionRequired => "subscription-required",
            StanzaCondition::UndefinedCondition => "undefined-condition",
            StanzaCondition::UnexpectedRequest => "unexpected-request",
        }
    }

    /// The condition an element name stands for, if the RFC defines one.
    pub fn from_name(name: &str) -> Option<StanzaCondition> {
        StanzaCondition::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for StanzaCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply: `<NAME type='error' id=… from=… to=…><error …/></NAME>`.
pub fn error_reply(
    name: &str,
    id: Option<&str>,
    from: &str,
    to: &str,
    err: StanzaError,
    text: Option<&str>,
) -> Bytes {
    build_error(
        name,
        id,
        Some(from),
        to,
        err.condition(),
        err.error_type(),
        text,
    )
}

/// What Prosody's component port answers a component's stanza that has
/// no `to` with: `bad-request`, type `modify`, and no `from` (the stanza
/// named no address to answer from). Instances written against Prosody
/// see the same answer from jatproxy.
pub fn missing_to_reply(name: &str, id: Option<&str>, to: &str) -> Bytes {
    build_error(
        name,
        id,
        None,
        to,
        StanzaError::BadRequest.condition(),
        "modify",
        Some(MISSING_TO_TEXT),
    )
}

/// Prosody's text for [`missing_to_reply`], word for word.
pub const MISSING_TO_TEXT: &str = "Components MUST specify a 'to' address on stanzas";

fn build_error(
    name: &str,
    id: Option<&str>,
    from: Option<&str>,
    to: &str,
    condition: &str,
    error_type: &str,
    text: Option<&str>,
) -> Bytes {
    let mut s = String::with_capacity(256);
    s.push('<');
    s.push_str(name);
    s.push_str(" type='error'");
    if let Some(id) = id {
        push_attr(&mut s, "id", id);
    }
    if let Some(from) = from {
        push_attr(&mut s, "from", from);
    }
    push_attr(&mut s, "to", to);
    s.push_str("><error type='");
    s.push_str(error_type);
    s.push_str("'><");
    s.push_str(condition);
    s.push_str(" xmlns='");
    s.push_str(NS_STANZA_ERRORS);
    s.push_str("'/>");
    if let Some(text) = text {
        s.push_str("<text xmlns='");
        s.push_str(NS_STANZA_ERRORS);
        s.push_str("'>");
        s.push_str(&escape::text(text));
        s.push_str("</text>");
    }
    s.push_str("</error></");
    s.push_str(name);
    s.push('>');
    Bytes::from(s)
}

/// A presence stanza, `ptype` None for available.
pub fn presence(from: &str, to: &str, ptype: Option<&str>) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str("<presence");
    if let Some(t) = ptype {
        push_attr(&mut s, "type", t);
    }
    push_attr(&mut s, "from", from);
    push_attr(&mut s, "to", to);
    s.push_str("/>");
    Bytes::from(s)
}

fn push_attr(s: &mut String, name: &str, value: &str) {
    s.push(' ');
    s.push_str(name);
    s.push_str("='");
    s.push_str(&escape::attr(value, b'\''));
    s.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_matches_the_module() {
        let b = error_reply(
            "iq",
            Some("none-1"),
            "proxy.example.test",
            "alice@example.test/phone",
            StanzaError::ServiceUnavailable,
            None,
        );
        assert_eq!(
            &b[..],
            b"<iq type='error' id='none-1' from='proxy.example.test' to='alice@example.test/phone'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    #[test]
    fn values_are_escaped() {
        let b = error_reply(
            "message",
            Some("a'b"),
            "d",
            "o'r@x/<y>",
            StanzaError::BadRequest,
            Some("a<b"),
        );
        let s = std::str::from_utf8(&b).expect("utf8");
        assert!(s.contains("id='a&apos;b'"));
        assert!(s.contains("to='o&apos;r@x/&lt;y&gt;'"));
        assert!(s.contains(">a&lt;b</text>"));
    }

    #[test]
    fn missing_to_reply_is_prosodys() {
        assert_eq!(
            &missing_to_reply("iq", Some("q1"), "proxy.example.test/bot")[..],
            b"<iq type='error' id='q1' to='proxy.example.test/bot'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Components MUST specify a 'to' address on stanzas</text></error></iq>"
        );
    }

    #[test]
    fn jid_malformed_is_modify() {
        let b = error_reply(
            "iq",
            Some("x"),
            "a b@example.test",
            "proxy.example.test",
            StanzaError::JidMalformed,
            None,
        );
        let s = std::str::from_utf8(&b).expect("utf8");
        assert!(s.contains("<error type='modify'><jid-malformed "), "{s}");
    }

    /// Every error jatproxy writes is a defined condition, and names
    /// round-trip; anything else is no condition.
    #[test]
    fn stanza_conditions() {
        for e in StanzaError::ALL {
            assert_eq!(
                StanzaCondition::from_name(e.condition()).map(StanzaCondition::as_str),
                Some(e.condition())
            );
        }
        for c in StanzaCondition::ALL {
            assert_eq!(StanzaCondition::from_name(c.as_str()), Some(c));
        }
        for bad in ["", "text", "Service-Unavailable", "service_unavailable"] {
            assert_eq!(StanzaCondition::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn presence_shapes() {
        assert_eq!(
            &presence("d", "t@x", Some("subscribe"))[..],
            b"<presence type='subscribe' from='d' to='t@x'/>"
        );
        assert_eq!(
            &presence("d", "t@x", None)[..],
            b"<presence from='d' to='t@x'/>"
        );
    }
}
