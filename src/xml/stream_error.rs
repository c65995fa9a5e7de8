//! Stream-level errors (RFC 6120 §4.9): the defined conditions as one
//! enum, and the one reader of a received `<stream:error>`, used by the
//! handshake, the upstream session and the test fakes alike. Writing one
//! is `handshake::stream_error`.
//!
//! It lives under `xml` because the framer names the condition for each
//! of its errors ([`crate::xml::FrameError::condition`]); it touches no
//! I/O and nothing outside `xml`.

use std::fmt;

use rxml::{Parse, RawEvent, RawParser};

use crate::xml::frame::NS_STREAM_ERRORS;

/// An RFC 6120 §4.9.3 defined stream error condition, or [`Other`] for a
/// name outside that list. Peer-supplied names are mapped onto it, so a
/// peer cannot mint new metric label values or log arbitrary names as
/// conditions.
///
/// [`Other`]: StreamCondition::Other
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
    /// A peer named a condition the RFC does not define. Never written by
    /// us: [`crate::handshake::stream_error`] writes it as
    /// `undefined-condition`.
    Other,
}

impl StreamCondition {
    /// Every condition, [`StreamCondition::Other`] last.
    pub const ALL: [StreamCondition; 26] = [
        StreamCondition::BadFormat,
        StreamCondition::BadNamespacePrefix,
        StreamCondition::Conflict,
        StreamCondition::ConnectionTimeout,
        StreamCondition::HostGone,
        StreamCondition::HostUnknown,
        StreamCondition::ImproperAddressing,
        StreamCondition::InternalServerError,
        StreamCondition::InvalidFrom,
        StreamCondition::InvalidNamespace,
        StreamCondition::InvalidXml,
        StreamCondition::NotAuthorized,
        StreamCondition::NotWellFormed,
        StreamCondition::PolicyViolation,
        StreamCondition::RemoteConnectionFailed,
        StreamCondition::Reset,
        StreamCondition::ResourceConstraint,
        StreamCondition::RestrictedXml,
        StreamCondition::SeeOtherHost,
        StreamCondition::SystemShutdown,
        StreamCondition::UndefinedCondition,
        StreamCondition::UnsupportedEncoding,
        StreamCondition::UnsupportedFeature,
        StreamCondition::UnsupportedStanzaType,
        StreamCondition::UnsupportedVersion,
        StreamCondition::Other,
    ];

    /// The condition's element name, which is also its metric label and
    /// its name in logs; `other` for [`StreamCondition::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            StreamCondition::BadFormat => "bad-format",
            StreamCondition::BadNamespacePrefix => "bad-namespace-prefix",
            StreamCondition::Conflict => "conflict",
            StreamCondition::ConnectionTimeout => "connection-timeout",
            StreamCondition::HostGone => "host-gone",
            StreamCondition::HostUnknown => "host-unknown",
            StreamCondition::ImproperAddressing => "improper-addressing",
            StreamCondition::InternalServerError => "internal-server-error",
            StreamCondition::InvalidFrom => "invalid-from",
            StreamCondition::InvalidNamespace => "invalid-namespace",
            StreamCondition::InvalidXml => "invalid-xml",
            StreamCondition::NotAuthorized => "not-authorized",
            StreamCondition::NotWellFormed => "not-well-formed",
            StreamCondition::PolicyViolation => "policy-violation",
            StreamCondition::RemoteConnectionFailed => "remote-connection-failed",
            StreamCondition::Reset => "reset",
            StreamCondition::ResourceConstraint => "resource-constraint",
            StreamCondition::RestrictedXml => "restricted-xml",
            StreamCondition::SeeOtherHost => "see-other-host",
            StreamCondition::SystemShutdown => "system-shutdown",
            StreamCondition::UndefinedCondition => "undefined-condition",
            StreamCondition::UnsupportedEncoding => "unsupported-encoding",
            StreamCondition::UnsupportedFeature => "unsupported-feature",
            StreamCondition::UnsupportedStanzaType => "unsupported-stanza-type",
            StreamCondition::UnsupportedVersion => "unsupported-version",
            StreamCondition::Other => "other",
        }
    }

    /// The condition an element name stands for; [`StreamCondition::Other`]
    /// for anything the RFC does not define (`other` included).
    pub fn from_name(name: &str) -> StreamCondition {
        StreamCondition::ALL[..StreamCondition::ALL.len() - 1]
            .iter()
            .copied()
            .find(|c| c.as_str() == name)
            .unwrap_or(StreamCondition::Other)
    }

    /// True when a server that closed our stream with this condition will
    /// close a new connection with the same configuration the same way:
    /// the secret, the domain or the port is wrong on one side, and an
    /// operator has to fix it. `conflict` (an old session still holds the
    /// domain), `system-shutdown`, `connection-timeout` and the rest are
    /// transient.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            StreamCondition::NotAuthorized
                | StreamCondition::HostUnknown
                | StreamCondition::HostGone
                | StreamCondition::ImproperAddressing
                | StreamCondition::InvalidFrom
                | StreamCondition::InvalidNamespace
                | StreamCondition::BadNamespacePrefix
        )
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a received `<stream:error>` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition; `undefined-condition` if the element names
    /// none.
    pub condition: StreamCondition,
    /// The peer's human-readable `<text>`, trimmed; `None` if absent or
    /// blank.
    pub text: Option<String>,
}

impl StreamError {
    /// Reads a framed `<stream:error>` element: the condition is its first
    /// child in the streams-error namespace other than `<text>`, the text
    /// the first `<text>` in that namespace, in whatever order they come
    /// (RFC 6120 §4.9.2 fixes none that servers keep to). Children in other
    /// namespaces (application-specific conditions, §4.9.4) are passed over.
    ///
    /// Only namespaces declared inside the element are seen: the streams
    /// error namespace is declared on each child in practice (Prosody,
    /// ejabberd). The framer validated the bytes; a parse failure keeps
    /// what was gathered.
    pub fn parse(element: &[u8]) -> StreamError {
        let mut reader = Reader::default();
        let mut parser = RawParser::new();
        let mut input = element;
        // The end, a parse error or (impossible with `at_eof`) a need for
        // more data all end the reading alike.
        while let Ok(Some(event)) = parser.parse(&mut input, true) {
            reader.event(event);
        }
        let text = reader.text.map(|t| t.trim().to_owned());
        StreamError {
            condition: reader
                .condition
                .unwrap_or(StreamCondition::UndefinedCondition),
            text: text.filter(|t| !t.is_empty()),
        }
    }
}

/// A namespace declaration: `None` declares the default namespace.
type Decl = (Option<String>, String);

/// [`StreamError::parse`]'s state between parser events.
#[derive(Default)]
struct Reader {
    depth: usize,
    /// Declarations on the `<stream:error>` element itself.
    outer: Vec<Decl>,
    /// The child whose start tag is being read: prefix, local name and
    /// its own declarations.
    head: Option<(Option<String>, String, Vec<Decl>)>,
    /// Inside the `<text>` being kept.
    in_text: bool,
    condition: Option<StreamCondition>,
    text: Option<String>,
}

impl Reader {
    fn event(&mut self, event: RawEvent) {
        match event {
            RawEvent::ElementHeadOpen(_, (prefix, local)) => {
                self.depth += 1;
                if self.depth == 2 {
                    let prefix = prefix.map(|p| p.to_string());
                    self.head = Some((prefix, local.to_string(), Vec::new()));
                }
            }
            RawEvent::Attribute(_, (prefix, name), value) if self.depth <= 2 => {
                let decl = match prefix.as_ref().map(|p| p.as_str()) {
                    None if name.as_str() == "xmlns" => (None, value.to_string()),
                    Some("xmlns") => (Some(name.to_string()), value.to_string()),
                    _ => return,
                };
                match self.head.as_mut() {
                    Some((_, _, decls)) => decls.push(decl),
                    None => self.outer.push(decl),
                }
            }
            RawEvent::ElementHeadClose(_) if self.depth == 2 => {
                if let Some((prefix, local, decls)) = self.head.take() {
                    self.child(prefix, &local, &decls);
                }
            }
            RawEvent::ElementFoot(_) => {
                if self.depth == 2 {
                    self.in_text = false;
                }
                self.depth = self.depth.saturating_sub(1);
            }
            RawEvent::Text(_, t) if self.in_text && self.depth == 2 => {
                if let Some(text) = self.text.as_mut() {
                    text.push_str(&t);
                }
            }
            _ => {}
        }
    }

    /// A child's start tag is complete: keep it if it is the condition or
    /// the text.
    fn child(&mut self, prefix: Option<String>, local: &str, decls: &[Decl]) {
        let ns = decls
            .iter()
            .rev()
            .chain(self.outer.iter().rev())
            .find(|(p, _)| *p == prefix)
            .map(|(_, uri)| uri.as_str());
        if ns != Some(NS_STREAM_ERRORS) {
            return;
        }
        if local == "text" {
            if self.text.is_none() {
                self.text = Some(String::new());
                self.in_text = true;
            }
        } else if self.condition.is_none() {
            self.condition = Some(StreamCondition::from_name(local));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

    fn parse(s: &str) -> StreamError {
        StreamError::parse(s.as_bytes())
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_other() {
        for c in StreamCondition::ALL {
            if c != StreamCondition::Other {
                assert_eq!(StreamCondition::from_name(c.as_str()), c);
            }
        }
        assert_eq!(StreamCondition::from_name("other"), StreamCondition::Other);
        assert_eq!(StreamCondition::from_name("text"), StreamCondition::Other);
        assert_eq!(StreamCondition::from_name(""), StreamCondition::Other);
    }

    #[test]
    fn permanence() {
        assert!(StreamCondition::NotAuthorized.is_permanent());
        assert!(StreamCondition::HostUnknown.is_permanent());
        assert!(!StreamCondition::Conflict.is_permanent());
        assert!(!StreamCondition::SystemShutdown.is_permanent());
        assert!(!StreamCondition::Other.is_permanent());
    }

    /// Each row: the element, the condition and text read from it.
    #[test]
    fn reads_condition_and_text_in_either_order() {
        use StreamCondition::*;
        let rows: [(String, StreamCondition, Option<&str>); 8] = [
            (
                format!("<stream:error><conflict xmlns='{NS}'/><text xmlns='{NS}'>Replaced by new connection</text></stream:error>"),
                Conflict,
                Some("Replaced by new connection"),
            ),
            (
                format!("<stream:error><text xmlns='{NS}' xml:lang='en'> a &lt; b </text><host-unknown xmlns='{NS}'/></stream:error>"),
                HostUnknown,
                Some("a < b"),
            ),
            // An application-specific condition first, a prefixed defined
            // condition declared on the outer element, a foreign <text>.
            (
                format!("<stream:error xmlns:e='{NS}'><escape-your-data xmlns='urn:x'/><text xmlns='urn:x'>no</text><e:policy-violation/></stream:error>"),
                PolicyViolation,
                None,
            ),
            // Without the namespace it is no defined condition.
            ("<stream:error><conflict/></stream:error>".into(), UndefinedCondition, None),
            ("<stream:error/>".into(), UndefinedCondition, None),
            (
                format!("<stream:error><made-up xmlns='{NS}'/><text xmlns='{NS}'>  </text></stream:error>"),
                Other,
                None,
            ),
            // Text inside the condition is not the <text>.
            (
                format!("<stream:error><see-other-host xmlns='{NS}'>[::1]:5347</see-other-host></stream:error>"),
                SeeOtherHost,
                None,
            ),
            // Only the first <text> is kept.
            (
                format!("<stream:error><text xmlns='{NS}'>one</text><reset xmlns='{NS}'/><text xmlns='{NS}'>two</text></stream:error>"),
                Reset,
                Some("one"),
            ),
        ];
        for (element, condition, text) in rows {
            let read = parse(&element);
            assert_eq!(
                (read.condition, read.text.as_deref()),
                (condition, text),
                "{element}"
            );
        }
    }
}
