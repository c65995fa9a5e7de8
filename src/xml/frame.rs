//! What the framer hands out: one [`Frame`] per top-level unit of a stream.
//!
//! A frame owns its bytes as a [`Bytes`] slice of the read buffer, so
//! forwarding a stanza unchanged is a reference-count bump, not a copy. The
//! parsed facts beside the bytes are exactly what routing needs and no more.

use std::ops::{Deref, Range};

use bytes::Bytes;

/// `jabber:component:accept`, the namespace of stanzas on XEP-0114 streams.
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// The namespace of `<stream:stream>` and `<stream:error>`.
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The namespace of stream error conditions.
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// The namespace of stanza error conditions.
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// An element name, namespace or type as a frame carries it. The few
/// every stream is made of are static strings, anything else is owned:
/// no allocation per stanza on the relay path. 16 bytes (a `Cow<str>`
/// takes 24): the rare owned string sits behind one more pointer so a
/// [`Stanza`] stays small to move and cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Text {
    /// One of the known names, no allocation.
    Borrowed(&'static str),
    /// Any other name, owned.
    Owned(Box<String>),
}

impl Text {
    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }

    /// The text as an owned `String`.
    pub fn into_owned(self) -> String {
        match self {
            Text::Borrowed(s) => s.to_owned(),
            Text::Owned(s) => *s,
        }
    }

    /// An owned text.
    pub fn owned(s: String) -> Text {
        Text::Owned(Box::new(s))
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Borrowed("")
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

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
    known(value, &KNOWN).map(Text::Borrowed)
}

/// The static copy of `value` in `list`, if it is there.
fn known(value: &[u8], list: &[&'static str]) -> Option<&'static str> {
    list.iter().find(|k| k.as_bytes() == value).copied()
}

/// `value` borrowed from `list` when it is there, owned otherwise (the
/// framers hand only UTF-8 here, so the lossy conversion never replaces).
fn text(value: &[u8], list: &[&'static str]) -> Text {
    known(value, list).map_or_else(
        || Text::owned(String::from_utf8_lossy(value).into_owned()),
        Text::Borrowed,
    )
}

/// One unit of a component stream, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The `<stream:stream …>` start tag (with any XML declaration before it).
    Header(Box<StreamHeader>),
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
    pub head: Option<Box<Stanza>>,
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

/// The quote character an attribute value is delimited with. An enum
/// rather than a `u8` so `Option<Attr>` needs no tag of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Quote {
    Single = b'\'',
    Double = b'"',
}

impl Quote {
    /// The quote of the byte `b`, which a framer found closing a value.
    pub fn of(b: u8) -> Quote {
        if b == b'"' {
            Quote::Double
        } else {
            Quote::Single
        }
    }
}

/// A `to`, `from` or `id` attribute: its decoded value, for routing, and
/// where its raw value sits in the stanza bytes, for rewriting in place.
///
/// The usual value is spelt without a reference or whitespace to
/// normalise, so its raw bytes are its value: then nothing is copied and
/// [`Attr::value`] reads it from the stanza (no allocation per stanza).
/// Offsets are `u32`: a frame is cut under the size limit, far below
/// 4 GiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The value after entity expansion and attribute-value
    /// normalisation, only when it differs from the raw bytes at
    /// [`Attr::span`] (None exactly when they are the value).
    pub decoded: Option<Box<String>>,
    start: u32,
    end: u32,
    quote: Quote,
}

impl Attr {
    /// An attribute whose raw value is at `span` of the stanza bytes,
    /// delimited with `quote`.
    pub fn new(decoded: Option<String>, span: Range<usize>, quote: u8) -> Attr {
        Attr {
            decoded: decoded.map(Box::new),
            start: offset(span.start),
            end: offset(span.end),
            quote: Quote::of(quote),
        }
    }

    /// Byte range of the raw value, between the quotes, relative to the
    /// start of [`Stanza::bytes`].
    pub fn span(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The quote character the value is delimited with (`'` or `"`).
    pub fn quote(&self) -> u8 {
        self.quote as u8
    }

    /// The decoded value; `stanza` is the bytes `span` points into.
    /// Framers check every byte of a stanza is UTF-8 before cutting it,
    /// so this is None only for an `Attr` paired with other bytes.
    pub fn value<'a>(&'a self, stanza: &'a [u8]) -> Option<&'a str> {
        match &self.decoded {
            Some(s) => Some(s),
            None => std::str::from_utf8(stanza.get(self.span())?).ok(),
        }
    }

    /// The decoded value, owned (for the stream header's fields).
    pub fn to_value(&self, stanza: &[u8]) -> Option<String> {
        self.value(stanza).map(str::to_owned)
    }
}

/// `at` as a stored offset. Frames are cut under the size limit, far
/// below 4 GiB; saturating keeps an impossible one from wrapping.
pub(crate) fn offset(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
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
    /// start tag: where a missing attribute is inserted. Read it with
    /// [`Stanza::insert_at`].
    pub(crate) insert_at: u32,
}

impl Stanza {
    /// Offset (relative to `bytes`) just after the last attribute of the
    /// start tag: where a missing attribute is inserted.
    pub fn insert_at(&self) -> usize {
        self.insert_at as usize
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames are moved through the framer's layers and the router by
    /// value, so their size is per-stanza cost (it was 264 bytes for a
    /// `Stanza` with `Cow` names and `Range<usize>` spans).
    #[test]
    fn a_stanza_is_small_to_move() {
        let sizes = [
            std::mem::size_of::<Text>(),
            std::mem::size_of::<Option<Attr>>(),
            std::mem::size_of::<Stanza>(),
            std::mem::size_of::<Frame>(),
        ];
        assert_eq!(sizes, [16, 24, 168, 168]);
    }

    /// A cloned stanza without owned fields shares its bytes and allocates
    /// nothing: `hold::own` clones every held stanza.
    #[test]
    fn the_usual_stanza_clones_without_owned_fields() {
        let st = super::super::parse_one(b"<iq to='a' from='b' id='c' type='get'/>")
            .expect("a well-formed iq");
        let c = st.clone();
        assert_eq!(c.bytes.as_ptr(), st.bytes.as_ptr());
        assert!(matches!(c.name, Text::Borrowed("iq")));
        assert!([&c.to, &c.from, &c.id]
            .iter()
            .all(|a| a.as_ref().is_some_and(|a| a.decoded.is_none())));
    }
}
