//! The framer: bytes of a component stream in, [`Frame`]s out.
//!
//! Synchronous and I/O-free so it can be unit-tested at every split point
//! and fuzzed without a runtime. It sits on `rxml`'s [`RawParser`] because
//! that is the one rxml layer that still tells where each attribute is in
//! the input: the running sum of event lengths gives absolute offsets,
//! whatever the chunking. What RawParser leaves to its caller
//! (namespace prefixes, duplicate attributes) is checked here, so that a
//! stanza the framer accepts is one `rxml::Parser` accepts too.
//!
//! The parser keeps its state across reads, so each byte is scanned once:
//! the framer only ever feeds the bytes after the ones already fed. A
//! lone CR is fed as LF (XML 1.0 §2.11, which rxml does not apply inside
//! attribute values; see [`eol_slice`]); frames are still cut from the
//! caller's bytes, untouched.
//!
//! Where a frame ends is taken from the bytes the parser has consumed, not
//! from the sum: rxml returns an element's closing event as soon as it has
//! read that `>`, so the count is exact there. A text event's length is
//! not always exact with text buffering off: rxml 0.14 under-counts a
//! CDATA section holding a `]` by up to three bytes, and counts the
//! undecodable bytes it keeps back for later in the text it flushes now.
//! Each frame restarts the sum; inside a frame it only places the spans in
//! a stanza's start tag, which no text precedes, and the end of whitespace
//! between stanzas, whose bytes are checked to be ASCII.

use std::collections::HashSet;

use bytes::BytesMut;
use rxml::error::EndOrError;
use rxml::{NcName, Options, Parse, RawEvent, RawParser, WithOptions};

use super::frame::{
    element_name, namespace, offset, stanza_type, Attr, Frame, Kind, Stanza, StreamHeader, Text,
    NS_COMPONENT, NS_STREAMS,
};
use super::stream_error::StreamCondition;

const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Limits the framer enforces while bytes arrive (not after buffering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    /// Largest top-level element (or stream header) in bytes. Prosody's
    /// default is 512 KiB; exceeding it closes the stream with
    /// `policy-violation` before the rest is read.
    pub max_stanza_bytes: usize,
    /// Deepest nesting inside a stanza, the stanza element itself being 1.
    pub max_depth: usize,
    /// Longest attribute value (decoded) or name. A JID may take 3071
    /// bytes, up to six times that escaped; keeping partial tokens
    /// bounded is what this limit is for. It was `max_stanza_bytes`
    /// clamped to 32 KiB; it is its own limit now, so that breaking it
    /// is reported as what it is.
    pub max_token_bytes: usize,
    /// true: a stanza over any limit is skipped while streaming and
    /// reported as [`super::Frame::Skipped`], the stream goes on (the
    /// upstream link: every stanza there was written by some user).
    /// false: the limit is fatal to the stream (instance links, XEP-0114
    /// practice). A limit broken by the stream header is fatal either way.
    pub per_stanza: bool,
}

impl Default for FramerLimits {
    fn default() -> Self {
        FramerLimits {
            max_stanza_bytes: 512 * 1024,
            max_depth: 64,
            max_token_bytes: 32 * 1024,
            per_stanza: false,
        }
    }
}

impl FramerLimits {
    /// The token limit both tokenizers apply: a token longer than a
    /// stanza breaks the size limit anyway, and rxml reserves its scratch
    /// buffer at this size, so it never exceeds `max_stanza_bytes`.
    pub fn token_limit(&self) -> usize {
        self.max_token_bytes.min(self.max_stanza_bytes).max(1)
    }

    /// The error for a token over [`FramerLimits::token_limit`]: the
    /// token limit when it is the smaller one, the size limit otherwise.
    pub fn token_error(&self) -> FrameError {
        if self.max_token_bytes <= self.max_stanza_bytes {
            FrameError::TokenTooLong {
                limit: self.max_token_bytes,
            }
        } else {
            FrameError::TooLarge {
                limit: self.max_stanza_bytes,
            }
        }
    }
}

/// Why the framer gave up on a stream. Every variant is fatal to the
/// stream it came from (XML offers no resynchronisation point) and to no
/// other; [`FrameError::condition`] names the stream error to send. The
/// three limits ([`FrameError::TooDeep`], [`FrameError::TooLarge`],
/// [`FrameError::TokenTooLong`]) are the exception with
/// [`FramerLimits::per_stanza`]: there the stanza is skipped instead, and
/// they stay fatal only on the stream header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not XML 1.0: syntax, invalid UTF-8, mismatched end tag, undeclared entity.
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    /// XML that XMPP forbids: comments, processing instructions, DTDs.
    #[error("restricted XML: {0} are not allowed")]
    Restricted(&'static str),
    /// A prefix used on an element or attribute without a declaration in scope.
    #[error("undeclared namespace prefix {0:?}")]
    UndeclaredPrefix(String),
    /// The same attribute twice on one element (e.g. two `to`s: smuggling).
    #[error("duplicate attribute {0:?}")]
    DuplicateAttribute(String),
    /// Nesting deeper than [`FramerLimits::max_depth`].
    #[error("elements nested deeper than {limit} (max_depth)")]
    TooDeep { limit: usize },
    /// A stanza (or the stream header) larger than [`FramerLimits::max_stanza_bytes`].
    #[error("stanza larger than {limit} bytes (max_stanza_bytes)")]
    TooLarge { limit: usize },
    /// An attribute value or name longer than [`FramerLimits::max_token_bytes`].
    #[error("attribute value or name longer than {limit} bytes (max_token_bytes)")]
    TokenTooLong { limit: usize },
    /// Character data other than whitespace between stanzas.
    #[error("text at stream level")]
    TextAtStreamLevel,
    /// The root element is not `<stream:stream>` in the streams namespace.
    #[error("bad stream header: {0}")]
    BadHeader(String),
    /// The peer closed the connection in the middle of a stanza.
    #[error("connection closed in the middle of a stanza")]
    Truncated,
}

impl FrameError {
    /// The RFC 6120 §4.9.3 stream error condition for this failure.
    pub fn condition(&self) -> StreamCondition {
        match self {
            FrameError::NotWellFormed(_)
            | FrameError::UndeclaredPrefix(_)
            | FrameError::DuplicateAttribute(_)
            | FrameError::Truncated => StreamCondition::NotWellFormed,
            FrameError::Restricted(_) => StreamCondition::RestrictedXml,
            FrameError::TooDeep { .. }
            | FrameError::TooLarge { .. }
            | FrameError::TokenTooLong { .. } => StreamCondition::PolicyViolation,
            FrameError::TextAtStreamLevel => StreamCondition::BadFormat,
            FrameError::BadHeader(_) => StreamCondition::InvalidNamespace,
        }
    }
}

/// One namespace declaration in scope: `None` is the default namespace.
#[derive(Debug)]
struct NsDecl {
    prefix: Option<NcName>,
    uri: String,
}

/// The start tag being read: collected until `>` so prefixes and
/// duplicates can be checked once all attributes are known.
#[derive(Debug, Default)]
struct Head {
    prefix: Option<NcName>,
    local: Option<NcName>,
    attrs: Vec<(Option<NcName>, NcName)>,
    decls: Vec<NsDecl>,
}

/// Facts of the top-level element being read.
#[derive(Debug, Default)]
struct Top {
    stanza_type: Option<Text>,
    id: Option<Attr>,
    to: Option<Attr>,
    from: Option<Attr>,
    kind: Option<Kind>,
    name: Text,
    ns: Text,
    insert_at: usize,
    // header-only facts
    version: Option<String>,
    lang: Option<String>,
    xmlns: Option<String>,
}

/// The rxml-based streaming framer: the reference the fast tokenizer is
/// held to, and the fallback `--tokenizer rxml` selects. Callers use it
/// through [`super::Framer`].
#[derive(Debug)]
pub struct RxmlFramer {
    parser: RawParser,
    limits: FramerLimits,
    /// Absolute stream offset of the first byte of the caller's buffer.
    base: u64,
    /// Absolute offset up to which bytes have been handed to the parser.
    fed: u64,
    /// Absolute offset of the end of the last event: the running sum,
    /// reset to `fed` at each frame-ending `>` (see the module docs).
    pos: u64,
    /// 0 before the root, 1 inside the stream, 2 inside a stanza, …
    depth: usize,
    ns: Vec<NsDecl>,
    ns_marks: Vec<usize>,
    head: Head,
    top: Top,
    ended: bool,
    failed: Option<FrameError>,
    /// The caller signalled the end of input: a trailing CR is a lone CR.
    eof: bool,
    /// Absolute offset up to which the bytes from `fed` on are known to
    /// hold no lone CR (see [`eol_slice`]).
    no_lone_cr: u64,
}

impl RxmlFramer {
    pub fn new(limits: FramerLimits) -> Self {
        let opts = Options {
            // Also how long a text event may grow before rxml splits it
            // (and the scratch buffer it reserves up front): bounded by
            // the stanza limit (see `token_limit`), whatever is configured.
            max_token_length: limits.token_limit(),
            ..Options::default()
        };
        let mut parser = RawParser::with_options(opts);
        // Whitespace keepalives must come out when they arrive, not when
        // the next stanza starts.
        parser.set_text_buffering(false);
        RxmlFramer {
            parser,
            limits,
            base: 0,
            fed: 0,
            pos: 0,
            depth: 0,
            ns: Vec::new(),
            ns_marks: Vec::new(),
            head: Head::default(),
            top: Top::default(),
            ended: false,
            failed: None,
            eof: false,
            no_lone_cr: 0,
        }
    }

    /// True once `</stream:stream>` has been framed.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// True while part of a top-level element (or the header) has been read
    /// but not yet framed.
    pub fn mid_frame(&self) -> bool {
        self.depth != 1 || self.fed > self.base
    }

    /// Frames the next unit from `buf`, which holds every byte not yet
    /// framed (frames are split off its front). `Ok(None)` means more bytes
    /// are needed. After an error, every call returns that error again.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.ended {
            return Ok(None);
        }
        match self.step(buf) {
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    /// Like [`Framer::next_frame`], for the end of the input: bytes left
    /// over in the middle of an element are an error, a clean cut between
    /// stanzas is not (the connection layer decides what a missing
    /// `</stream:stream>` means).
    pub fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // No byte follows a CR held back at the end of the buffer any more.
        self.eof = true;
        match self.next_frame(buf)? {
            Some(f) => Ok(Some(f)),
            None if self.ended || !self.mid_frame() => Ok(None),
            None if self.depth == 0 && buf.iter().all(u8::is_ascii_whitespace) => Ok(None),
            None => {
                self.failed = Some(FrameError::Truncated);
                Err(FrameError::Truncated)
            }
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            let start = usize::try_from(self.fed - self.base).unwrap_or(usize::MAX);
            let avail = buf.get(start..).unwrap_or(&[]);
            let avail = &avail[..complete_utf8_prefix(avail)];
            let mut clean = usize::try_from(self.no_lone_cr.saturating_sub(self.fed)).unwrap_or(0);
            let (mut slice, more) = eol_slice(avail, &mut clean, self.eof);
            self.no_lone_cr = self.fed + clean as u64;
            let before = slice.len();
            let res = self.parser.parse(&mut slice, false);
            self.fed += (before - slice.len()) as u64;
            if self.fed - self.base > self.limits.max_stanza_bytes as u64 {
                return Err(FrameError::TooLarge {
                    limit: self.limits.max_stanza_bytes,
                });
            }
            let ev = match res {
                Ok(Some(ev)) => ev,
                // The piece ended at a lone CR (or was one): feed on.
                Ok(None) | Err(EndOrError::NeedMoreData) if more && slice.is_empty() => continue,
                Ok(None) | Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => return Err(self.map_error(e, buf)),
            };
            let ev_start = self.pos;
            self.pos += ev.metrics().len() as u64;
            if let Some(frame) = self.on_event(ev, ev_start, buf)? {
                return Ok(Some(frame));
            }
        }
    }

    fn map_error(&self, e: rxml::Error, buf: &BytesMut) -> FrameError {
        match e {
            rxml::Error::RestrictedXml("long name or reference") => self.limits.token_error(),
            rxml::Error::RestrictedXml("event too long") => FrameError::TooLarge {
                limit: self.limits.max_stanza_bytes,
            },
            rxml::Error::RestrictedXml(what) => FrameError::Restricted(what),
            rxml::Error::InvalidSyntax(_) if self.doctype_at_error(buf) => {
                FrameError::Restricted("document type declarations")
            }
            other => FrameError::NotWellFormed(other.to_string()),
        }
    }

    /// rxml reports `<!DOCTYPE` as a malformed section start; look at the
    /// bytes after the last event to name it properly.
    fn doctype_at_error(&self, buf: &BytesMut) -> bool {
        let from = usize::try_from(self.pos - self.base).unwrap_or(usize::MAX);
        let rest = buf.get(from..).unwrap_or(&[]);
        let rest = match rest.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => &rest[i..],
            None => return false,
        };
        rest.starts_with(b"<!D") || b"<!DOCTYPE".starts_with(rest)
    }

    /// Relative offset in `buf` of an absolute stream offset.
    fn rel(&self, abs: u64) -> usize {
        // Every absolute offset handed here lies within the bytes fed,
        // which are all still in `buf`.
        usize::try_from(abs - self.base).unwrap_or(usize::MAX)
    }

    /// Called on an event that ends a frame with its `>`: rxml has read
    /// exactly up to that byte, so the bytes fed mark the end, whatever
    /// the event lengths summed to (see the module docs).
    fn end_at_fed(&mut self) {
        debug_assert!(self.fed >= self.pos, "event lengths overran the input");
        self.pos = self.fed;
    }

    fn cut(&mut self, buf: &mut BytesMut) -> bytes::Bytes {
        let n = self.rel(self.pos);
        self.base = self.pos;
        buf.split_to(n).freeze()
    }

    fn on_event(
        &mut self,
        ev: RawEvent,
        ev_start: u64,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, FrameError> {
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(None),
            RawEvent::ElementHeadOpen(_, (prefix, local)) => {
                self.on_head_open(prefix, local)?;
                Ok(None)
            }
            RawEvent::Attribute(_, (prefix, local), value) => {
                self.on_attribute(prefix, local, value, ev_start, buf);
                Ok(None)
            }
            RawEvent::ElementHeadClose(_) => self.on_head_close(ev_start, buf),
            RawEvent::ElementFoot(_) => Ok(self.on_foot(buf)),
            RawEvent::Text(_, text) => self.on_text(&text, buf),
        }
    }

    /// A start tag opens: one level deeper (refused past the depth
    /// limit), and a fresh head to collect its attributes into.
    #[inline]
    fn on_head_open(&mut self, prefix: Option<NcName>, local: NcName) -> Result<(), FrameError> {
        // rxml has read the name and one byte after it. Resync the
        // sum here: bytes that yield no event (an empty CDATA
        // section before a stanza) would shift every span.
        self.pos = self.fed.saturating_sub(1).max(self.base);
        self.depth += 1;
        if self.depth >= 2 && self.depth - 1 > self.limits.max_depth {
            return Err(FrameError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        if self.depth <= 2 {
            self.top = Top::default();
        }
        self.head.prefix = prefix;
        self.head.local = Some(local);
        self.head.attrs.clear();
        self.head.decls.clear();
        Ok(())
    }

    /// An end tag: the element's namespace scope closes; at depth 1 a
    /// stanza is complete, at depth 0 the stream.
    #[inline]
    fn on_foot(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if let Some(mark) = self.ns_marks.pop() {
            self.ns.truncate(mark);
        }
        self.depth = self.depth.saturating_sub(1);
        match self.depth {
            1 => {
                self.end_at_fed();
                Some(self.stanza_frame(buf))
            }
            0 => {
                self.end_at_fed();
                self.ended = true;
                Some(Frame::End(self.cut(buf)))
            }
            _ => None,
        }
    }

    /// Text: inside a stanza it is the stanza's; at stream level only
    /// whitespace is allowed, and it becomes a keepalive frame.
    fn on_text(&mut self, text: &str, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.depth != 1 {
            return Ok(None);
        }
        if !text
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(FrameError::TextAtStreamLevel);
        }
        // The running sum is no end here: bytes that yield no
        // event (an empty CDATA section) are in no event's length.
        // rxml flushes text where it stopped reading, just after
        // the `<` or `&` that made it flush, if one did.
        let fed = self.rel(self.fed);
        let end = match fed.checked_sub(1).and_then(|i| buf.get(i)) {
            Some(b'<' | b'&') => fed - 1,
            _ => fed,
        };
        self.pos = self.base + end as u64;
        // With text buffering off, rxml flushes the valid UTF-8
        // prefix of what it has read, but the event's length also
        // counts the bytes it keeps back: a bad sequence it has not
        // rejected yet. Whitespace decodes from ASCII only, so a
        // non-ASCII byte here is one of those; refuse now rather
        // than forward it as a keepalive.
        let raw = buf.get(..self.rel(self.pos)).unwrap_or(&[]);
        if let Some(&b) = raw.iter().find(|b| !b.is_ascii()) {
            return Err(FrameError::NotWellFormed(
                rxml::Error::InvalidUtf8Byte(b).to_string(),
            ));
        }
        Ok(Some(Frame::Whitespace(self.cut(buf))))
    }

    fn on_attribute(
        &mut self,
        prefix: Option<NcName>,
        local: NcName,
        value: String,
        ev_start: u64,
        buf: &BytesMut,
    ) {
        match (prefix.as_ref().map(|p| p.as_str()), local.as_str()) {
            (None, "xmlns") => {
                if self.depth == 1 {
                    self.top.xmlns = Some(value.clone());
                }
                self.head.decls.push(NsDecl {
                    prefix: None,
                    uri: value,
                });
                return;
            }
            (Some("xmlns"), _) => {
                self.head.decls.push(NsDecl {
                    prefix: Some(local),
                    uri: value,
                });
                return;
            }
            _ => {}
        }
        if self.depth <= 2 {
            match (prefix.as_ref().map(|p| p.as_str()), local.as_str()) {
                (None, "to") | (None, "from") => {
                    let attr = self.attr_span(value, ev_start, buf);
                    if local.as_str() == "to" {
                        self.top.to.get_or_insert(attr);
                    } else {
                        self.top.from.get_or_insert(attr);
                    }
                }
                (None, "type") => {
                    self.top
                        .stanza_type
                        .get_or_insert_with(|| stanza_type(&value).unwrap_or(Text::owned(value)));
                }
                (None, "id") => {
                    let attr = self.attr_span(value, ev_start, buf);
                    self.top.id.get_or_insert(attr);
                }
                (None, "version") if self.depth == 1 => self.top.version = Some(value),
                (Some("xml"), "lang") if self.depth == 1 => self.top.lang = Some(value),
                _ => {}
            }
        }
        self.head.attrs.push((prefix, local));
    }

    /// Where the raw value of the attribute event just read sits, relative
    /// to the start of the current frame. The event spans
    /// `␠name␠=␠'value'`: the last byte is the closing quote and, since
    /// names, `=` and whitespace contain no quote, the first quote byte
    /// is the opening one.
    fn attr_span(&self, value: String, ev_start: u64, buf: &BytesMut) -> Attr {
        let start = self.rel(ev_start);
        let end = self.rel(self.pos);
        let raw = buf.get(start..end).unwrap_or(&[]);
        let quote = raw.last().copied().unwrap_or(b'\'');
        let open = raw.iter().position(|&b| b == quote).unwrap_or(0);
        // The frame starts at `base` (everything before it was cut off).
        let span = start + open + 1..end.saturating_sub(1);
        // The same representation as the fast framer's: the decoded
        // value only when the raw bytes are not it.
        let decoded = (raw.get(open + 1..raw.len().saturating_sub(1)) != Some(value.as_bytes()))
            .then_some(value);
        Attr::new(decoded, span, quote)
    }

    fn on_head_close(
        &mut self,
        ev_start: u64,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, FrameError> {
        self.ns_marks.push(self.ns.len());
        let decls = std::mem::take(&mut self.head.decls);
        check_unique_decls(&decls)?;
        self.ns.extend(decls);
        let elem_ns = namespace(self.resolve(self.head.prefix.as_ref().map(|p| p.as_str()))?);
        self.check_attrs()?;
        let local = element_name(self.head.local.take().as_deref().map_or("", |l| l.as_str()));
        match self.depth {
            1 => {
                if local != "stream" || elem_ns != NS_STREAMS {
                    // The namespace is the peer's text: quoted and
                    // escaped, so a `&#13;` in it cannot start a forged
                    // log line (found by fuzzing the handshake).
                    return Err(FrameError::BadHeader(format!(
                        "root element is <{local}> in namespace {elem_ns:?}, \
                         not <stream> in {NS_STREAMS:?}"
                    )));
                }
                let top = std::mem::take(&mut self.top);
                self.end_at_fed();
                let bytes = self.cut(buf);
                Ok(Some(Frame::Header(Box::new(StreamHeader {
                    to: top.to.and_then(|a| a.to_value(&bytes)),
                    from: top.from.and_then(|a| a.to_value(&bytes)),
                    id: top.id.and_then(|a| a.to_value(&bytes)),
                    bytes,
                    xmlns: top.xmlns,
                    lang: top.lang,
                    version: top.version,
                }))))
            }
            2 => {
                self.top.insert_at = self.rel(ev_start);
                self.top.kind = Some(if elem_ns == NS_COMPONENT {
                    match local.as_ref() {
                        "iq" => Kind::Iq,
                        "message" => Kind::Message,
                        "presence" => Kind::Presence,
                        _ => Kind::Other,
                    }
                } else {
                    Kind::Other
                });
                self.top.name = local;
                self.top.ns = elem_ns;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn stanza_frame(&mut self, buf: &mut BytesMut) -> Frame {
        let top = std::mem::take(&mut self.top);
        let bytes = self.cut(buf);
        Frame::Stanza(Stanza {
            bytes,
            kind: top.kind.unwrap_or(Kind::Other),
            name: top.name,
            ns: top.ns,
            stanza_type: top.stanza_type,
            id: top.id,
            to: top.to,
            from: top.from,
            insert_at: offset(top.insert_at),
        })
    }

    /// The namespace a prefix (None: the default namespace) resolves to.
    fn resolve(&self, prefix: Option<&str>) -> Result<&str, FrameError> {
        if prefix == Some("xml") {
            return Ok(NS_XML);
        }
        match self
            .ns
            .iter()
            .rev()
            .find(|d| d.prefix.as_ref().map(|p| p.as_str()) == prefix)
        {
            Some(d) => Ok(d.uri.as_str()),
            None if prefix.is_none() => Ok(""),
            None => Err(FrameError::UndeclaredPrefix(
                prefix.unwrap_or_default().to_owned(),
            )),
        }
    }

    /// Every attribute prefix is declared, and no two attributes share a
    /// (namespace, local name) — the rule `rxml::Parser` applies. Small
    /// elements are checked pairwise; large ones through a set, so a
    /// stanza of many attributes costs linear time, not quadratic.
    fn check_attrs(&self) -> Result<(), FrameError> {
        let attrs = &self.head.attrs;
        let mut resolved: Vec<(&str, &str)> = Vec::with_capacity(attrs.len());
        for (prefix, local) in attrs {
            let ns = match prefix.as_ref().map(|p| p.as_str()) {
                None => "",
                p => self.resolve(p)?,
            };
            resolved.push((ns, local.as_str()));
        }
        let dup = if resolved.len() <= 16 {
            (1..resolved.len())
                .find(|&i| resolved[..i].contains(&resolved[i]))
                .map(|i| resolved[i])
        } else {
            let mut seen = HashSet::with_capacity(resolved.len());
            resolved.iter().copied().find(|r| !seen.insert(*r))
        };
        match dup {
            Some(("", local)) => Err(FrameError::DuplicateAttribute(local.to_owned())),
            Some((ns, local)) => Err(FrameError::DuplicateAttribute(format!("{{{ns}}}{local}"))),
            None => Ok(()),
        }
    }
}

/// Frames one element as if it arrived on a component stream: for tests,
/// fuzzing and tools, not the relay path.
pub fn parse_one(element: &[u8]) -> Result<Stanza, FrameError> {
    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut framer = super::Framer::new(FramerLimits {
        max_stanza_bytes: element.len().max(HEADER.len()) + 1,
        max_depth: 1 << 16,
        ..FramerLimits::default()
    });
    let mut buf = BytesMut::with_capacity(HEADER.len() + element.len());
    buf.extend_from_slice(HEADER);
    buf.extend_from_slice(element);
    loop {
        match framer.next_frame_eof(&mut buf)? {
            Some(Frame::Stanza(s)) => return Ok(s),
            Some(_) => continue,
            None => return Err(FrameError::Truncated),
        }
    }
}

/// The piece of `avail` (the bytes not yet fed) to hand rxml next, with
/// XML 1.0 §2.11 end-of-line handling done for it: true when bytes remain
/// to feed after this piece.
///
/// XML turns CRLF and a lone CR into LF before parsing. rxml folds CRLF
/// itself, and a lone CR in text, but in an attribute value it drops a
/// lone CR and refuses one followed by anything but CR, TAB, LF, `&` or
/// the quote (`not well-formed XML: CR in attribute value`), so the
/// value Prosody delivers for a user's `a='x&#13;y'` (`a='x\ry'`) would
/// end the stream. A lone CR is therefore fed as an LF, which rxml
/// treats exactly as XML treats that CR everywhere (a space in a value,
/// a line feed in text, whitespace in a tag). The byte is substituted
/// in what rxml reads, never in the buffer frames are cut from, and is
/// the same length, so every offset stays exact. Whether a CR at the end
/// of `avail` is lone is known only once the next byte arrives: it is
/// held back until then, or until the end of input (`eof`), where it is
/// lone.
///
/// `*clean` is how many bytes at the start of `avail` are known to hold no
/// lone CR, so that no byte is searched twice; it is updated.
fn eol_slice<'a>(avail: &'a [u8], clean: &mut usize, eof: bool) -> (&'a [u8], bool) {
    let mut from = (*clean).min(avail.len());
    while let Some(i) = memchr::memchr(b'\r', &avail[from..]) {
        let at = from + i;
        *clean = at;
        match avail.get(at + 1) {
            // CRLF: rxml folds it as XML does.
            Some(b'\n') => from = at + 2,
            // A lone CR first: feed it as LF on its own.
            Some(_) if at == 0 => return (b"\n", true),
            None if at == 0 && eof => return (b"\n", false),
            // Feed up to the CR; it is dealt with on the next call.
            Some(_) => return (&avail[..at], true),
            None => return (&avail[..at], false),
        }
    }
    *clean = avail.len();
    (avail, false)
}

/// The length of `data` without a trailing, incomplete UTF-8 sequence.
///
/// rxml 0.14 under-counts an event's length when a multi-byte character
/// is split across two `parse` calls (one byte short per split character),
/// which would shift every offset after it. Holding the partial character
/// back until the rest arrives keeps the running sum exact.
pub(super) fn complete_utf8_prefix(data: &[u8]) -> usize {
    let n = data.len();
    for back in 1..=n.min(4) {
        let b = data[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let need = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

fn check_unique_decls(decls: &[NsDecl]) -> Result<(), FrameError> {
    let dup = if decls.len() <= 16 {
        (1..decls.len()).find(|&i| decls[..i].iter().any(|d| d.prefix == decls[i].prefix))
    } else {
        let mut seen = HashSet::with_capacity(decls.len());
        (0..decls.len()).find(|&i| !seen.insert(decls[i].prefix.as_deref()))
    };
    match dup.map(|i| decls[i].prefix.as_deref()) {
        Some(Some(p)) => Err(FrameError::DuplicateAttribute(format!("xmlns:{p}"))),
        Some(None) => Err(FrameError::DuplicateAttribute("xmlns".to_owned())),
        None => Ok(()),
    }
}

#[cfg(test)]
use RxmlFramer as Framer;

#[cfg(test)]
#[path = "framer_tests.rs"]
mod tests;
