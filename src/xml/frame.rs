//! What the framer hands out: one [`Frame`] per top-level unit of a stream.
//!
//! A frame owns its bytes as a [`Bytes`] slice of the read buffer, so
//! forwarding a stanza unchanged is a reference-count bump, not a copy. The
//! parsed facts beside the bytes are exactly what routing needs and no more.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

/// `jabber:component:accept`, the namespace of stanzas on XEP-0114 streams.
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// The namespace of `<stream:stream>` and `<stream:error>`.
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The namespace of stream error conditions.
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// The namespace of stanza error conditions.
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// An element name or namespace as a frame carries it. The few every
/// stream is made of are static strings, anything else is owned: two
/// allocations per stanza fewer on the relay path.
pub type Text = Cow<'static, str>;

/// `local` as a [`Text`], borrowed for the names streams are made of.
pub fn element_name(local: &str) -> Text {
    element_name_raw(local.as_bytes())
}

/// [`element_name`] of a name's bytes, which the framer checked are
/// UTF-8: the known names are matched on bytes, so only another name is
/// converted (and copied).
pub fn element_name_raw(local: &[u8]) -> Text {
    const KNOWN: [&str; 7] = [
        "iq",
        "message",
        "presence",
        "handshake",
        "error",
        "stream",
        "features",
    ];
    text(local, &KNOWN)
}

/// `ns` as a [`Text`], borrowed for the namespaces streams are made of.
pub fn namespace(ns: &str) -> Text {
    namespace_raw(ns.as_bytes())
}

/// [`namespace`] of a URI's bytes, which the framer checked are UTF-8.
pub fn namespace_raw(ns: &[u8]) -> Text {
    const KNOWN: [&str; 5] = [
        NS_COMPONENT,
        NS_STREAMS,
        "jabber:client",
        "jabber:server",
        "",
    ];
    text(ns, &KNOWN)
}

/// A `type` attribute's value as a [`Text`], borrowed for the values
/// RFC 6120 and 6121 define.
pub fn stanza_type(value: &str) -> Option<Text> {
    stanza_type_raw(value.as_bytes())
}

/// [`stanza_type`] of a raw value's bytes: a value spelt with a
/// reference is not among them.
pub fn stanza_type_raw(value: &[u8]) -> Option<Text> {
    const KNOWN: [&str; 15] = [
        "get",
        "set",
        "result",
        "error",
        "chat",
        "groupchat",
        "normal",
        "headline",
        "unavailable",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
        "probe",
        "available",
    ];
    known(value, &KNOWN).map(Cow::Borrowed)
}

/// The static copy of `value` in `list`, if it is there.
fn known(value: &[u8], list: &[&'static str]) -> Option<&'static str> {
    list.iter().find(|k| k.as_bytes() == value).copied()
}

/// `value` borrowed from `list` when it is there, owned otherwise (the
/// framers hand only UTF-8 here, so the lossy conversion never replaces).
fn text(value: &[u8], list: &[&'static str]) -> Text {
    known(value, list).map_or_else(
        || Cow::Owned(String::from_utf8_lossy(value).into_owned()),
        Cow::Borrowed,
    )
}

/// One unit of a component stream, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The `<stream:stream …>` start tag (with any XML declaration before it).
    Header(StreamHeader),
    /// One complete top-level element: a stanza, `<handshake/>`, `<stream:error/>`…
    Stanza(Stanza),
    /// Whitespace between top-level elements: keepalives.
    Whitespace(Bytes),
    /// `</stream:stream>` (with any whitespace before it in the same read).
    End(Bytes),
    /// A top-level element over a limit, skipped whole while streaming
    /// (only with [`super::FramerLimits::per_stanza`]). Its bytes are gone:
    /// [`Skipped::len`] says how many there were.
    Skipped(Skipped),
}

/// Bytes of a skipped element whose head could not be recovered.
static NO_BYTES: Bytes = Bytes::new();

impl Frame {
    /// The exact bytes this frame was cut from. For [`Frame::Skipped`],
    /// which has none, the head's synthetic start tag (or nothing).
    pub fn bytes(&self) -> &Bytes {
        match self {
            Frame::Header(h) => &h.bytes,
            Frame::Stanza(s) => &s.bytes,
            Frame::Whitespace(b) | Frame::End(b) => b,
            Frame::Skipped(s) => s.head.as_ref().map_or(&NO_BYTES, |h| &h.bytes),
        }
    }
}

/// Which per-stanza limit a skipped stanza broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_stanza_bytes`.
    Size,
    /// `max_depth`.
    Depth,
    /// `max_token_bytes`: an attribute value or name.
    Token,
}

impl Limit {
    /// Every limit, in the order counters are kept.
    pub const ALL: [Limit; 3] = [Limit::Size, Limit::Depth, Limit::Token];

    /// Its place in [`Limit::ALL`], for arrays of counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Size => "size",
            Limit::Depth => "depth",
            Limit::Token => "token",
        }
    }

    /// The limit's name in the configuration, for log lines.
    pub fn key(self) -> &'static str {
        match self {
            Limit::Size => "max_stanza_bytes",
            Limit::Depth => "max_depth",
            Limit::Token => "max_token_bytes",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A top-level element that broke a limit and was skipped, whole, without
/// being buffered past the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub limit: Limit,
    /// The limit's value.
    pub max: usize,
    /// Bytes of the stream the skipped element took (start tag to end
    /// tag, with any empty CDATA section glued before it).
    pub len: u64,
    /// The element's start tag as a [`Stanza`] (kind, name, ns, type, id,
    /// to, from decoded exactly as for a normal stanza; `bytes` a
    /// synthetic self-closing start tag holding only those attributes and
    /// the namespace declarations), or None when it cannot be recovered:
    /// the start tag did not end well-formed, or its name or one of those
    /// attributes was over the skipper's capture caps
    /// (see `skip::MAX_NAME`, `skip::MAX_VALUE`).
    pub head: Option<Stanza>,
}

/// The stream header's attributes, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub bytes: Bytes,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    /// The default namespace the header declares (`jabber:component:accept`).
    pub xmlns: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
}

/// What kind of stanza a top-level element is. Only elements in
/// [`NS_COMPONENT`] are stanzas: an `<iq xmlns='jabber:client'>` on a
/// component stream is [`Kind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Iq,
    Message,
    Presence,
    Other,
}

/// A `to`, `from` or `id` attribute: its decoded value, for routing, and
/// where its raw value sits in the stanza bytes, for rewriting in place.
///
/// The usual value is spelt without a reference or whitespace to
/// normalise, so its raw bytes are its value: then nothing is copied and
/// [`Attr::value`] reads it from the stanza (no allocation per stanza).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The value after entity expansion and attribute-value
    /// normalisation, only when it differs from the raw bytes at `span`
    /// (None exactly when they are the value).
    pub decoded: Option<String>,
    /// Byte range of the raw value, between the quotes, relative to the
    /// start of [`Stanza::bytes`].
    pub span: Range<usize>,
    /// The quote character the value is delimited with (`'` or `"`).
    pub quote: u8,
}

impl Attr {
    /// The decoded value; `stanza` is the bytes `span` points into.
    /// Framers check every byte of a stanza is UTF-8 before cutting it,
    /// so this is None only for an `Attr` paired with other bytes.
    pub fn value<'a>(&'a self, stanza: &'a [u8]) -> Option<&'a str> {
        match &self.decoded {
            Some(s) => Some(s),
            None => std::str::from_utf8(stanza.get(self.span.clone())?).ok(),
        }
    }

    /// The decoded value, owned (for the stream header's fields).
    pub fn to_value(&self, stanza: &[u8]) -> Option<String> {
        self.value(stanza).map(str::to_owned)
    }
}

/// One complete top-level element and the facts the router needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub bytes: Bytes,
    pub kind: Kind,
    /// Local name of the element (`iq`, `handshake`, `error`…).
    pub name: Text,
    /// The namespace the element's name resolves to.
    pub ns: Text,
    pub stanza_type: Option<Text>,
    pub id: Option<Attr>,
    pub to: Option<Attr>,
    pub from: Option<Attr>,
    /// Offset (relative to `bytes`) just after the last attribute of the
    /// start tag: where a missing attribute is inserted.
    pub insert_at: usize,
}

impl Stanza {
    /// Decoded `to`, if present.
    pub fn to(&self) -> Option<&str> {
        self.to.as_ref().and_then(|a| a.value(&self.bytes))
    }

    /// Decoded `from`, if present.
    pub fn from(&self) -> Option<&str> {
        self.from.as_ref().and_then(|a| a.value(&self.bytes))
    }

    /// The `type` attribute, if present.
    pub fn stanza_type(&self) -> Option<&str> {
        self.stanza_type.as_deref()
    }

    /// The `id` attribute, if present.
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().and_then(|a| a.value(&self.bytes))
    }

    /// True for an iq of type get or set (a request that must be answered).
    pub fn is_iq_request(&self) -> bool {
        self.kind == Kind::Iq && matches!(self.stanza_type(), Some("get") | Some("set"))
    }

    /// True for an iq of type result or error (an answer).
    pub fn is_iq_response(&self) -> bool {
        self.kind == Kind::Iq && matches!(self.stanza_type(), Some("result") | Some("error"))
    }

    /// True when the stanza has `type='error'` (never answered with an error).
    pub fn is_error(&self) -> bool {
        self.stanza_type() == Some("error")
    }
}
