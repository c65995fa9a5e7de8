//! The fast tokenizer: the same framer as [`super::framer::RxmlFramer`],
//! byte-level instead of event-level.
//!
//! rxml builds an event (and allocates its strings) for every name, value
//! and text run; routing needs none of that inside a stanza. This scanner
//! works on the read buffer in place: one pass over each new chunk checks
//! it is UTF-8 and free of characters XML forbids, then `memchr` jumps
//! from one `<`, `&`, `]` or quote to the next. Only the facts routing
//! uses (names, namespace declarations, `to`/`from`/`type`/`id`) are
//! decoded into strings.
//!
//! It must accept and refuse what the rxml framer does, with the same
//! stream error, and cut the same frames: rxml is the reference (see
//! `fast_tests.rs` and the `fast_vs_rxml` fuzz target). Where rxml is
//! stricter than XML 1.0 on what servers deliver, both framers follow XML
//! (issue 11; each point is commented where it is decided): a raw CR
//! anywhere (§2.11; the rxml framer feeds rxml a lone CR as LF), and,
//! here only, character references of more than 8 digits ([66]; the
//! differential knows). It copies rxml's other limits (a token limit on
//! names and values) and reports an error of the same class as rxml
//! would at the same point: a fault is reported in stream order, the
//! size limit wins over
//! a fault lying past it, and text at stream level is judged where rxml
//! flushes it (at the next `<` or `&`, or at the end of a read).
//!
//! Resuming after a partial read costs at most one start-tag attribute,
//! reference or end tag: text and CDATA are never rescanned, and the
//! start of a stanza is not rescanned once its start tag is complete.

use std::collections::HashSet;
use std::ops::ControlFlow;

use bytes::BytesMut;
use memchr::{memchr, memchr2, memchr3};

use super::frame::{
    element_name_raw, namespace_raw, offset, stanza_type, stanza_type_raw, Attr, Frame, Kind,
    Stanza, StreamHeader, Text, NS_COMPONENT, NS_STREAMS,
};
use super::framer::{complete_utf8_prefix, FrameError, FramerLimits};

const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// rxml's `MAX_REFERENCE_LENGTH`: the longest entity name it reads
/// before refusing the reference (no declared entity is longer).
const MAX_REF: usize = 8;

/// The most digits a character reference may have. XML 1.0 [66] `CharRef`
/// puts no bound on them (`&#0000000065;` is `A`), but rxml refuses more
/// than [`MAX_REF`]; this framer follows XML up to a bound that keeps
/// rescanning a reference split across reads cheap. No server writes
/// such a reference (they serialise characters, not references): it
/// only has to be accepted, not fast.
const MAX_CHAR_REF_DIGITS: usize = 256;

/// Where the scanner stands, at a point it can resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the root. `decl`: an XML declaration was read (another is
    /// a processing instruction); `skip_ws`: whitespace is skipped (right
    /// after the declaration) rather than lexed as text, which rxml
    /// refuses before the root.
    Prolog { decl: bool, skip_ws: bool },
    /// Between markup at depth ≥ 1.
    Content,
    /// Inside a start tag whose name has been read; `after_value`: the
    /// last thing read was an attribute value (whitespace must follow).
    Tag { after_value: bool },
    /// Inside a CDATA section below stream level.
    Cdata,
    /// The root was `<stream:stream/>`: its end comes as an empty frame.
    RootEnd,
}

/// A namespace declaration in scope, its strings in [`Scope::text`].
#[derive(Debug, Clone, Copy)]
struct NsDecl {
    /// Prefix bytes (empty with `default`).
    prefix: (u32, u32),
    default: bool,
    uri: (u32, u32),
}

/// Namespace declarations and open element names, stored in two arenas so
/// that entering and leaving an element allocates nothing. Prefixes and
/// URIs are kept as bytes: the chunk they came from was checked UTF-8
/// once, and only a URI a frame carries is turned into a `str`.
#[derive(Debug, Default)]
struct Scope {
    text: Vec<u8>,
    decls: Vec<NsDecl>,
    /// Per open element: (decls.len(), text.len()) before its declarations.
    marks: Vec<(usize, usize)>,
    names: Vec<u8>,
    name_ends: Vec<usize>,
}

impl Scope {
    fn str(&self, r: (u32, u32)) -> &[u8] {
        self.text.get(r.0 as usize..r.1 as usize).unwrap_or(b"")
    }

    fn push(&mut self, s: &[u8]) -> (u32, u32) {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(s);
        (start, self.text.len() as u32)
    }

    fn resolve(&self, prefix: Option<&[u8]>) -> Result<&[u8], FrameError> {
        if prefix == Some(b"xml") {
            return Ok(NS_XML.as_bytes());
        }
        for d in self.decls.iter().rev() {
            let hit = match prefix {
                None => d.default,
                Some(p) => !d.default && self.str(d.prefix) == p,
            };
            if hit {
                return Ok(self.str(d.uri));
            }
        }
        match prefix {
            None => Ok(b""),
            Some(p) => Err(FrameError::UndeclaredPrefix(
                String::from_utf8_lossy(p).into_owned(),
            )),
        }
    }

    fn top_name(&self) -> &[u8] {
        let end = self.name_ends.last().copied().unwrap_or(0);
        let start = self
            .name_ends
            .len()
            .checked_sub(2)
            .map_or(0, |i| self.name_ends[i]);
        &self.names[start..end]
    }

    fn pop(&mut self) {
        if let Some((d, t)) = self.marks.pop() {
            self.decls.truncate(d);
            self.text.truncate(t);
        }
        self.name_ends.pop();
        let end = self.name_ends.last().copied().unwrap_or(0);
        self.names.truncate(end);
    }
}

/// A qualified name in the buffer: `prefix` is empty without a colon.
#[derive(Debug, Clone, Copy, Default)]
struct QName {
    start: usize,
    colon: Option<usize>,
    end: usize,
}

impl QName {
    fn prefix<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        self.colon.map(|c| &data[self.start..c])
    }
    fn local<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.colon.map_or(self.start, |c| c + 1)..self.end]
    }
}

/// A byte range `(start, end)`.
type Span = (usize, usize);

/// The start tag being read: collected until `>` so prefixes and
/// duplicates can be checked once all attributes are known.
#[derive(Debug, Default)]
struct Head {
    name: QName,
    attrs: Vec<QName>,
    /// Pending declarations: (prefix range in buffer or None, decoded uri
    /// as a range of `uris`).
    decls: Vec<(Option<Span>, Span)>,
    /// The decoded URIs of `decls`, one arena reused for every tag.
    uris: Vec<u8>,
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
    version: Option<String>,
    lang: Option<String>,
    xmlns: Option<String>,
}

/// What a scan step produced.
enum Step {
    /// More bytes are needed; `pos` is where to resume.
    Need,
    /// A frame ends at this offset (exclusive) in the buffer.
    Header(usize),
    Stanza(usize),
    Whitespace(usize),
    End(usize),
    /// Keep scanning (state changed).
    Go,
}

/// The fast framer. Same contract as [`super::framer::RxmlFramer`].
#[derive(Debug)]
pub struct FastFramer {
    limits: FramerLimits,
    /// rxml's token limit (names, attribute values), as the rxml framer
    /// configures it: [`FramerLimits::token_limit`].
    token_limit: usize,
    state: State,
    /// Resume offset in the buffer (the buffer starts at the frame start).
    pos: usize,
    /// Bytes `[0, clean)` of the buffer are valid UTF-8 holding only
    /// characters XML allows.
    clean: usize,
    /// A fault (bad UTF-8, forbidden character) sits at `clean`.
    fault: bool,
    /// Where rxml notices that fault, for the size limit's sake: a
    /// forbidden ASCII character at once, bad UTF-8 or a non-character
    /// only where it flushes the token holding it.
    fault_seen: usize,
    /// Bytes rxml would have been fed: the buffer without a trailing
    /// incomplete UTF-8 sequence.
    avail: usize,
    /// 0 before the root, 1 inside the stream, 2 inside a stanza, …
    depth: usize,
    scope: Scope,
    head: Head,
    top: Top,
    /// Depth-1 text: decoded characters since the last flush, all
    /// whitespace so far.
    text_pending: bool,
    /// …and it is all whitespace.
    text_ws: bool,
    ended: bool,
    failed: Option<FrameError>,
    /// The caller signalled the end of input: a trailing CR is a lone CR.
    eof: bool,
}

fn nwf(what: &str) -> FrameError {
    FrameError::NotWellFormed(what.to_owned())
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// rxml's `maybe_name`: bytes a name token may hold before validation.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'.' | b'_') || b >= 0x80
}

fn ascii_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn ascii_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// A valid XML `Name` with at most one colon, neither first nor last,
/// and a local part that starts like a name: what rxml's `split_name`
/// accepts. Returns the colon position (relative).
fn check_qname(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    if bytes.is_ascii() {
        let first = *bytes.first().ok_or_else(|| nwf("empty name"))?;
        if !(ascii_name_start(first) || first == b':') {
            return Err(nwf("invalid name start"));
        }
        let mut colon = None;
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            if b == b':' {
                if colon.is_some() {
                    return Err(nwf("name with several colons"));
                }
                colon = Some(i);
            } else if !ascii_name_char(b) {
                return Err(nwf("invalid name character"));
            }
        }
        if first == b':' {
            return Err(nwf("empty name part"));
        }
        if let Some(c) = colon {
            if c + 1 == bytes.len() {
                return Err(nwf("empty name part"));
            }
            if !ascii_name_start(bytes[c + 1]) {
                return Err(nwf("invalid local name"));
            }
        }
        return Ok(colon);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| nwf("invalid utf-8 in name"))?;
    let name = rxml::Name::try_from(s).map_err(|e| nwf(&e.to_string()))?;
    let (prefix, _) = name.split_name().map_err(|e| nwf(&e.to_string()))?;
    Ok(prefix.map(|p| p.len()))
}

/// A character XML allows (what rxml checks character references against).
fn xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

/// What the router sees a stanza as: its local name in the component
/// namespace (anything else, or another namespace, is `Other`).
#[inline]
fn stanza_kind(local: &Text, ns: &Text) -> Kind {
    if *ns != NS_COMPONENT {
        return Kind::Other;
    }
    match local.as_ref() {
        "iq" => Kind::Iq,
        "message" => Kind::Message,
        "presence" => Kind::Presence,
        _ => Kind::Other,
    }
}

/// Result of reading a reference at `&`.
enum Ref {
    Need,
    /// End offset (after `;`) and the decoded character.
    Char(usize, char),
}

/// The predefined entities with their `;`, and what they stand for.
const PREDEFINED: [(&[u8], char); 5] = [
    (b"amp;", '&'),
    (b"lt;", '<'),
    (b"gt;", '>'),
    (b"apos;", '\''),
    (b"quot;", '"'),
];

/// Reads the reference starting at `at` (the `&`) as rxml's lexer does.
fn reference(data: &[u8], at: usize) -> Result<Ref, FrameError> {
    // The five predefined entities are nearly all references in real
    // text: recognise them whole before the general lexer.
    let rest = data.get(at + 1..).unwrap_or_default();
    for (name, c) in PREDEFINED {
        if rest.starts_with(name) {
            return Ok(Ref::Char(at + 1 + name.len(), c));
        }
    }
    let Some((radix, start)) = ref_radix(data, at) else {
        return Ok(Ref::Need);
    };
    let Some(end) = ref_body_end(data, start, radix)? else {
        return Ok(Ref::Need);
    };
    let c = ref_char(&data[start..end], radix)?;
    Ok(Ref::Char(end + 1, c))
}

/// The kind of reference at `at` (the `&`) and where its body starts:
/// radix 0 for an entity name, 10 after `&#`, 16 after `&#x` (`#` and
/// `x` are only special right at the start). None: the bytes end first.
#[inline]
fn ref_radix(data: &[u8], at: usize) -> Option<(u32, usize)> {
    let mut i = at + 1;
    let mut radix = 0u32;
    loop {
        let b = *data.get(i)?;
        if radix == 0 && b == b'#' {
            radix = 10;
            i += 1;
            continue;
        }
        if radix == 10 && b == b'x' && data[i - 1] == b'#' {
            radix = 16;
            i += 1;
            continue;
        }
        return Some((radix, i));
    }
}

/// The offset of the `;` ending the reference body that starts at
/// `start`, refusing a byte the body may not hold or a body past its
/// length limit (rxml's for names, [`MAX_CHAR_REF_DIGITS`] for numbers)
/// at the byte where rxml would. Ok(None): the bytes end first.
#[inline]
fn ref_body_end(data: &[u8], start: usize, radix: u32) -> Result<Option<usize>, FrameError> {
    let accept = |b: u8| match radix {
        0 => name_byte(b),
        10 => b.is_ascii_digit(),
        _ => b.is_ascii_hexdigit(),
    };
    let max = if radix == 0 {
        MAX_REF
    } else {
        MAX_CHAR_REF_DIGITS
    };
    let mut end = start;
    loop {
        let Some(&b) = data.get(end) else {
            return Ok(None);
        };
        if accept(b) {
            if end - start >= max {
                return Err(nwf("undeclared entity"));
            }
            end += 1;
            continue;
        }
        if b != b';' {
            return Err(nwf("unexpected byte in reference"));
        }
        return Ok(Some(end));
    }
}

/// The character a complete reference body (between `&`/`&#`/`&#x` and
/// `;`) stands for: one of the predefined entities, or a number naming a
/// character XML allows.
#[inline]
fn ref_char(body: &[u8], radix: u32) -> Result<char, FrameError> {
    if body.is_empty() {
        return Err(nwf("empty reference"));
    }
    if radix == 0 {
        return match body {
            b"amp" => Ok('&'),
            b"lt" => Ok('<'),
            b"gt" => Ok('>'),
            b"apos" => Ok('\''),
            b"quot" => Ok('"'),
            _ => Err(nwf("undeclared entity")),
        };
    }
    // Leading zeros are legal in any number (XML 1.0 [66]); what is left
    // must name a Char ([2]), so more than 8 significant digits is out of
    // range whatever they are.
    let digits = match body.iter().position(|&b| b != b'0') {
        Some(i) => &body[i..],
        None => &b"0"[..],
    };
    if digits.len() > 8 {
        return Err(nwf("invalid character reference"));
    }
    let s = std::str::from_utf8(digits).map_err(|_| nwf("bad reference"))?;
    let n = u32::from_str_radix(s, radix).map_err(|_| nwf("bad reference"))?;
    match char::from_u32(n) {
        Some(c) if xml_char(n) => Ok(c),
        _ => Err(nwf("invalid character reference")),
    }
}

/// Where rxml stops reading a bad reference at `at`: the byte that ends
/// it (or the first one past its length limit). The size limit is judged
/// there, not at the `&`.
fn ref_end(data: &[u8], at: usize) -> usize {
    let last = data.len().saturating_sub(1);
    let mut i = at + 1;
    let class: fn(u8) -> bool = if data.get(i) == Some(&b'#') {
        i += 1;
        if data.get(i) == Some(&b'x') {
            i += 1;
            |b| b.is_ascii_hexdigit()
        } else {
            |b| b.is_ascii_digit()
        }
    } else {
        name_byte
    };
    let max = if i > at + 1 {
        MAX_CHAR_REF_DIGITS
    } else {
        MAX_REF
    };
    let start = i;
    while i < data.len() && class(data[i]) && i - start < max {
        i += 1;
    }
    i.min(last).max(at)
}

/// The first offset in `data` that is not clean: invalid UTF-8, a
/// control character other than TAB, LF and CR, or U+FFFE/U+FFFF.
///
/// This is the one pass over every byte of a stream, so it sets the
/// framer's ceiling: UTF-8 is checked with `simdutf8` (SIMD, several
/// GB/s whatever the text; `std`'s check runs at about 1 GB/s on
/// non-ASCII text), control characters 64 bytes at a time.
pub(super) fn first_fault(data: &[u8]) -> Option<usize> {
    let utf8_end = match simdutf8::compat::from_utf8(data) {
        Ok(_) => data.len(),
        Err(e) => e.valid_up_to(),
    };
    let valid = &data[..utf8_end];
    let mut bad = first_control(valid);
    {
        // memmem skips ASCII text at memory speed; no separate ASCII pass.
        let mut from = 0;
        while let Some(i) =
            memchr::memmem::find(&valid[from..bad.unwrap_or(valid.len())], b"\xEF\xBF")
        {
            let at = from + i;
            if matches!(valid.get(at + 2), Some(0xBE | 0xBF)) {
                bad = Some(at);
                break;
            }
            from = at + 2;
        }
    }
    match bad {
        Some(b) => Some(b),
        None if utf8_end < data.len() => Some(utf8_end),
        None => None,
    }
}

/// A byte below 0x20 other than TAB, LF and CR: XML forbids it.
fn is_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, 9 | 10 | 13)
}

/// The first byte below 0x20 other than TAB, LF, CR. Blocks of 64 bytes
/// are tested with a branch-free fold the compiler vectorises; only a
/// block that holds one is searched byte by byte.
fn first_control(data: &[u8]) -> Option<usize> {
    const BLOCK: usize = 64;
    let mut blocks = data.chunks_exact(BLOCK);
    let mut at = 0;
    for block in &mut blocks {
        let hit = block.iter().fold(false, |acc, &b| acc | is_control(b));
        if hit {
            return block.iter().position(|&b| is_control(b)).map(|i| at + i);
        }
        at += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(|&b| is_control(b))
        .map(|i| at + i)
}

impl FastFramer {
    pub fn new(limits: FramerLimits) -> Self {
        FastFramer {
            limits,
            token_limit: limits.token_limit(),
            state: State::Prolog {
                decl: false,
                skip_ws: false,
            },
            pos: 0,
            clean: 0,
            fault: false,
            fault_seen: 0,
            avail: 0,
            depth: 0,
            scope: Scope::default(),
            head: Head::default(),
            top: Top::default(),
            text_pending: false,
            text_ws: true,
            ended: false,
            failed: None,
            eof: false,
        }
    }

    /// True once `</stream:stream>` has been framed.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// True while part of a top-level element (or the header) has been
    /// read but not yet framed.
    pub fn mid_frame(&self) -> bool {
        self.depth != 1 || self.avail > 0
    }

    /// See [`super::framer::RxmlFramer::next_frame`].
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.ended {
            return Ok(None);
        }
        let res = self.step(buf);
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    /// See [`super::framer::RxmlFramer::next_frame_eof`].
    pub fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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

    /// An error found at offset `at` of the current frame: past the size
    /// limit, rxml would have stopped at the limit first.
    fn err_at(&self, at: usize, e: FrameError) -> FrameError {
        if at >= self.limits.max_stanza_bytes {
            self.too_large()
        } else {
            e
        }
    }

    /// A deferred fault in text (`cdata`: in a CDATA section) is noticed
    /// where rxml flushes that text.
    fn text_fault(&mut self, data: &[u8], cdata: bool) {
        if !self.fault || data.get(self.clean).is_none_or(|&b| b < 0x80) {
            return;
        }
        let rest = &data[self.clean..];
        let flush = if cdata {
            memchr::memmem::find(rest, b"]]>").map(|i| i + 2)
        } else {
            memchr2(b'<', b'&', rest)
        };
        self.fault_seen = self.clean + flush.unwrap_or(rest.len().saturating_sub(1));
    }

    /// Text at stream level found at `at`: rxml flushes text at its token
    /// limit at the latest, so it judges long text before the size limit.
    fn text_at_stream_level(&self, at: usize) -> FrameError {
        self.err_at(
            at.min(self.token_limit.saturating_sub(1)),
            FrameError::TextAtStreamLevel,
        )
    }

    fn fault_err(&self) -> FrameError {
        self.err_at(self.fault_seen, nwf("invalid utf-8 or character"))
    }

    fn too_large(&self) -> FrameError {
        FrameError::TooLarge {
            limit: self.limits.max_stanza_bytes,
        }
    }

    /// A name or value over the token limit (see [`FramerLimits::token_error`]).
    fn token_too_long(&self) -> FrameError {
        self.limits.token_error()
    }

    /// The scan reached `at` and needs what follows: a fault there is
    /// reported, otherwise wait for more bytes.
    fn need(&mut self, resume: usize, at: usize) -> Result<Step, FrameError> {
        self.pos = resume;
        if self.fault && at >= self.clean {
            return Err(self.fault_err());
        }
        Ok(Step::Need)
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Validate what arrived since the last call, up to a first fault.
        self.avail = complete_utf8_prefix(buf);
        if !self.fault && self.clean < self.avail {
            match first_fault(&buf[self.clean..self.avail]) {
                Some(i) => {
                    self.clean += i;
                    self.fault = true;
                }
                None => self.clean = self.avail,
            }
        }
        if self.fault {
            let b = buf.get(self.clean).copied().unwrap_or(0);
            self.fault_seen = if b < 0x80 {
                self.clean
            } else {
                let rest = &buf[self.clean..self.avail];
                let flush = rest.iter().position(|&c| {
                    matches!(c, b'<' | b'&' | b'>' | b'\'' | b'"' | b'/' | b'=' | b'?') || is_ws(c)
                });
                self.clean + flush.unwrap_or(rest.len().saturating_sub(1))
            };
        }
        loop {
            let step = {
                let data = &buf[..self.avail];
                self.scan(data)?
            };
            let end = match step {
                Step::Go => continue,
                Step::Need => {
                    let pending_ws = self.depth == 1 && self.text_pending;
                    if self.avail > self.limits.max_stanza_bytes && !pending_ws {
                        return Err(self.too_large());
                    }
                    return Ok(None);
                }
                Step::Header(e) | Step::Stanza(e) | Step::Whitespace(e) | Step::End(e) => e,
            };
            if end > self.limits.max_stanza_bytes && !matches!(step, Step::Whitespace(_)) {
                return Err(self.too_large());
            }
            let bytes = buf.split_to(end).freeze();
            self.pos -= end;
            self.clean -= end;
            self.avail -= end;
            // Built in place (a direct call, not through a function
            // pointer): a frame is a few hundred bytes.
            return Ok(Some(match step {
                Step::Header(_) => self.header_frame(bytes),
                Step::Stanza(_) => self.stanza_frame(bytes),
                Step::Whitespace(_) => Frame::Whitespace(bytes),
                _ => Frame::End(bytes),
            }));
        }
    }

    fn header_frame(&mut self, bytes: bytes::Bytes) -> Frame {
        let top = std::mem::take(&mut self.top);
        Frame::Header(Box::new(StreamHeader {
            to: top.to.and_then(|a| a.to_value(&bytes)),
            from: top.from.and_then(|a| a.to_value(&bytes)),
            id: top.id.and_then(|a| a.to_value(&bytes)),
            xmlns: top.xmlns,
            lang: top.lang,
            version: top.version,
            bytes,
        }))
    }

    /// The stanza's facts are taken field by field (no copy of the whole
    /// [`Top`] on the way); the next start tag at depth 2 resets the rest.
    #[inline]
    fn stanza_frame(&mut self, bytes: bytes::Bytes) -> Frame {
        let top = &mut self.top;
        Frame::Stanza(Stanza {
            bytes,
            kind: top.kind.take().unwrap_or(Kind::Other),
            name: std::mem::take(&mut top.name),
            ns: std::mem::take(&mut top.ns),
            stanza_type: top.stanza_type.take(),
            id: top.id.take(),
            to: top.to.take(),
            from: top.from.take(),
            insert_at: offset(top.insert_at),
        })
    }

    fn scan(&mut self, data: &[u8]) -> Result<Step, FrameError> {
        match self.state {
            State::Prolog { decl, skip_ws } => self.prolog(data, decl, skip_ws),
            State::Content if self.depth == 1 => self.stream_level(data),
            State::Content => self.content(data),
            State::Tag { after_value } => self.tag(data, after_value),
            State::Cdata => self.cdata(data),
            State::RootEnd => {
                self.ended = true;
                self.depth = 0;
                Ok(Step::End(0))
            }
        }
    }

    /// Before the root: an optional XML declaration, whitespace after it,
    /// and the root's start tag.
    fn prolog(&mut self, data: &[u8], decl: bool, skip_ws: bool) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut i = self.pos;
        if skip_ws {
            while i < lim && is_ws(data[i]) {
                i += 1;
            }
        }
        let Some(&b) = data.get(i).filter(|_| i < lim) else {
            return self.need(i, i);
        };
        if b != b'<' {
            if !skip_ws {
                return self.prolog_text(data, i);
            }
            return Err(self.err_at(i, nwf("text before the root element")));
        }
        match data.get(i + 1) {
            None => self.need(i, i + 1),
            Some(b'?') => {
                let want: &[u8] = b"<?xml";
                let have = &data[i..data.len().min(i + want.len())];
                if !want.starts_with(have) {
                    return Err(self.err_at(
                        i + have.len() - 1,
                        FrameError::Restricted("processing instructions"),
                    ));
                }
                if have.len() < want.len() {
                    return self.need(i, i + have.len());
                }
                if decl {
                    return Err(
                        self.err_at(i + 4, FrameError::Restricted("processing instructions"))
                    );
                }
                self.pos = i;
                self.xml_decl(data, i + 5)
            }
            Some(b'!') if data.get(i + 2) == Some(&b'[') => {
                // An empty CDATA section yields no text event: rxml lets
                // it pass; any content is text before the root.
                match self.bang(data, i, Some(()))? {
                    Step::Go => {}
                    other => return Ok(other),
                }
                let s = i + 9;
                match memchr(b']', &data[s..lim]).map(|o| s + o) {
                    Some(r) if r == s && data[r..lim].starts_with(b"]]>") => {
                        self.pos = s + 3;
                        self.state = State::Prolog {
                            decl,
                            skip_ws: false,
                        };
                        Ok(Step::Go)
                    }
                    Some(r) if b"]]>".starts_with(&data[r..lim]) => self.need(i, lim),
                    Some(r) => Err(self.err_at(r + 1, nwf("text before the root element"))),
                    None => self.need(i, lim),
                }
            }
            Some(b'!') => self.bang(data, i, None),
            Some(b'/') => Err(self.err_at(i + 1, nwf("end tag before the root element"))),
            Some(_) if i + 1 >= lim => self.need(i, i + 1),
            Some(_) => self.start_tag(data, i),
        }
    }

    /// Text as the very first thing: rxml refuses it once flushed.
    fn prolog_text(&mut self, data: &[u8], from: usize) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut i = from;
        while i < lim {
            match data[i] {
                b'<' => {
                    return Err(self.err_at(
                        i.min(self.token_limit - 1),
                        nwf("text before the root element"),
                    ))
                }
                b'&' => {
                    if i > from {
                        return Err(self.err_at(
                            i.min(self.token_limit - 1),
                            nwf("text before the root element"),
                        ));
                    }
                    return match reference(&data[..lim], i) {
                        Ok(Ref::Need) => self.need(from, lim),
                        Ok(Ref::Char(..)) => Err(self.err_at(
                            i.min(self.token_limit - 1),
                            nwf("text before the root element"),
                        )),
                        Err(e) => Err(self.err_at(ref_end(data, i), e)),
                    };
                }
                b']' if data.get(i + 1) == Some(&b']') && data.get(i + 2) == Some(&b'>') => {
                    return Err(self.err_at(i + 2, nwf("]]> in text")));
                }
                _ => i += 1,
            }
        }
        // At the end of a read rxml flushes the text (and refuses it),
        // unless it waits on a CR or a `]`. At the end of input no byte
        // follows a CR: the rxml framer feeds it to rxml as a line feed,
        // which is flushed and refused like any other text here.
        let waits = match data[lim - 1] {
            b'\r' => !self.eof,
            b']' => true,
            _ => false,
        };
        if self.fault || waits {
            return self.need(from, lim);
        }
        // (rxml flushes at its token limit at the latest.)
        Err(self.err_at(
            (lim - 1).min(self.token_limit - 1),
            nwf("text before the root element"),
        ))
    }

    /// `<!` at offset `at`: CDATA (returned as Ok(Go) after setting up
    /// with `cdata`), comment, DOCTYPE or nonsense.
    fn bang(&mut self, data: &[u8], at: usize, cdata: Option<()>) -> Result<Step, FrameError> {
        let Some(&b) = data.get(at + 2) else {
            return self.need(at, at + 2);
        };
        match b {
            b'-' => match data.get(at + 3) {
                None => self.need(at, at + 3),
                Some(b'-') => Err(self.err_at(at + 3, FrameError::Restricted("comments"))),
                Some(_) => Err(self.err_at(at + 3, nwf("malformed comment start"))),
            },
            b'[' => {
                let want: &[u8] = b"<![CDATA[";
                let have = &data[at..data.len().min(at + want.len())];
                if !want.starts_with(have) {
                    return Err(self.err_at(at + have.len(), nwf("malformed cdata section start")));
                }
                if have.len() < want.len() {
                    return self.need(at, at + have.len());
                }
                if cdata.is_none() {
                    return Err(self.err_at(at + 8, nwf("text before the root element")));
                }
                self.pos = at + want.len();
                Ok(Step::Go)
            }
            b'D' => Err(self.err_at(at + 2, FrameError::Restricted("document type declarations"))),
            _ => Err(self.err_at(at + 2, nwf("malformed section start"))),
        }
    }

    /// `<?xml` has been read; `i` is just after it. `version`, then
    /// optionally `encoding`, then optionally `standalone`, then `?>`.
    fn xml_decl(&mut self, data: &[u8], mut i: usize) -> Result<Step, FrameError> {
        const FIELDS: [&[u8]; 3] = [b"version", b"encoding", b"standalone"];
        let start = self.pos;
        let lim = self.clean;
        let mut field = 0;
        loop {
            let ws_from = i;
            while i < lim && is_ws(data[i]) {
                i += 1;
            }
            let Some(&b) = data.get(i).filter(|_| i < lim) else {
                return self.need(start, i);
            };
            if b == b'?' {
                return match data.get(i + 1).filter(|_| i + 1 < lim) {
                    None => self.need(start, i + 1),
                    Some(b'>') if field >= 1 => {
                        self.state = State::Prolog {
                            decl: true,
                            skip_ws: true,
                        };
                        self.pos = i + 2;
                        Ok(Step::Go)
                    }
                    Some(_) => Err(self.err_at(i + 1, nwf("bad XML declaration"))),
                };
            }
            if !name_byte(b) || i == ws_from || field == 3 {
                return Err(self.err_at(i, nwf("bad XML declaration")));
            }
            let ((name_end, _), (vs, ve)) = match self.attribute(data, i)? {
                None => return self.need(start, lim),
                Some(a) => a,
            };
            if &data[i..name_end] != FIELDS[field] {
                return Err(self.err_at(name_end, nwf("bad XML declaration")));
            }
            let v = self.decode(data, vs, ve)?;
            let ok = match field {
                0 => v == "1.0",
                1 => v.eq_ignore_ascii_case("utf-8"),
                _ => v.eq_ignore_ascii_case("yes"),
            };
            if !ok {
                return Err(self.err_at(
                    ve,
                    FrameError::Restricted(match field {
                        0 => "only XML version 1.0 is allowed",
                        1 => "only utf-8 encoding is allowed",
                        _ => "only standalone documents are allowed",
                    }),
                ));
            }
            field += 1;
            i = ve + 1;
        }
    }

    /// Reads `name ws* = ws* 'value'` at `i` (a name byte). Returns the
    /// name end (and colon), and the value's raw range (between quotes),
    /// or None when the bytes end first.
    #[allow(clippy::type_complexity)]
    fn attribute(
        &self,
        data: &[u8],
        i: usize,
    ) -> Result<Option<((usize, Option<usize>), (usize, usize))>, FrameError> {
        let Some((e, colon, q)) = self.attribute_name_eq(data, i)? else {
            return Ok(None);
        };
        let Some(ve) = self.attribute_value(data, q)? else {
            return Ok(None);
        };
        Ok(Some(((e, colon.map(|c| i + c)), (q + 1, ve))))
    }

    /// The part of an attribute before its value: the name at `i`
    /// (checked as a QName and against the token limit), `=`, and the
    /// whitespace around it. Returns the name's end, its colon (relative
    /// to `i`) and the offset of the opening quote; None when the bytes
    /// end first.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn attribute_name_eq(
        &self,
        data: &[u8],
        i: usize,
    ) -> Result<Option<(usize, Option<usize>, usize)>, FrameError> {
        let lim = self.clean;
        let mut e = i;
        while e < lim && name_byte(data[e]) {
            e += 1;
            if e - i > self.token_limit {
                return Err(self.token_too_long());
            }
        }
        if e >= lim {
            return self.partial(e);
        }
        let colon = check_qname(&data[i..e]).map_err(|err| self.err_at(e, err))?;
        let mut j = e;
        while j < lim && is_ws(data[j]) {
            j += 1;
        }
        if j >= lim {
            return self.partial(j);
        }
        if data[j] != b'=' {
            return self.stray_value(data, j);
        }
        j += 1;
        while j < lim && is_ws(data[j]) {
            j += 1;
        }
        if j >= lim {
            return self.partial(j);
        }
        let q = data[j];
        if q != b'\'' && q != b'"' {
            return Err(self.err_at(j, nwf("unquoted attribute value")));
        }
        Ok(Some((e, colon, j)))
    }

    /// The attribute value whose opening quote is at `open`: checks every
    /// reference, refuses `<`, and judges the decoded length against the
    /// token limit. Returns the offset of the closing quote; None when the
    /// bytes end first.
    #[inline(always)]
    fn attribute_value(&self, data: &[u8], open: usize) -> Result<Option<usize>, FrameError> {
        let lim = self.clean;
        let q = data[open];
        let vstart = open + 1;
        let mut k = vstart;
        let mut refs = false;
        loop {
            let Some(off) = memchr3(q, b'&', b'<', &data[k..lim]) else {
                // The value may still be too long for rxml's token limit.
                if lim - vstart > self.token_limit
                    && self.decoded_len(data, vstart, lim) > self.token_limit
                {
                    return Err(self.token_too_long());
                }
                return self.partial(lim);
            };
            let at = k + off;
            match data[at] {
                b'&' => match reference(&data[..lim], at) {
                    Ok(Ref::Char(end, _)) => {
                        refs = true;
                        k = end;
                    }
                    Ok(Ref::Need) => return self.partial(lim),
                    Err(err) => return Err(self.value_err(data, vstart, ref_end(data, at), err)),
                },
                b'<' => {
                    return Err(self.value_err(data, vstart, at, nwf("< in attribute value")));
                }
                _ => {
                    // Closing quote. A raw CR anywhere in the value is
                    // well-formed (XML 1.0 §2.11, §3.3.3): Prosody delivers
                    // a user's `&#13;` as one, and rxml's refusal of a CR
                    // followed by anything but CR, TAB, LF, `&` or the
                    // quote is not followed (the rxml framer feeds such a
                    // CR to rxml as LF, see `eol_slice`).
                    if (at - vstart > self.token_limit || refs)
                        && self.decoded_len(data, vstart, at) > self.token_limit
                    {
                        return Err(self.token_too_long());
                    }
                    return Ok(Some(at));
                }
            }
        }
    }

    fn partial<T>(&self, at: usize) -> Result<Option<T>, FrameError> {
        if self.fault && at >= self.clean {
            return Err(self.fault_err());
        }
        Ok(None)
    }

    /// A fault inside a value: past rxml's token limit it never got there.
    fn value_err(&self, data: &[u8], vstart: usize, at: usize, e: FrameError) -> FrameError {
        if at - vstart > self.token_limit && self.decoded_len(data, vstart, at) > self.token_limit {
            return self.token_too_long();
        }
        self.err_at(at, e)
    }

    fn decoded_len(&self, data: &[u8], from: usize, to: usize) -> usize {
        self.decode_raw(data, from, to)
            .map_or(to - from, |s| s.len())
    }

    /// The decoded value of the raw attribute value `data[from..to]`.
    fn decode(&self, data: &[u8], from: usize, to: usize) -> Result<String, FrameError> {
        self.decode_raw(data, from, to)
            .map_err(|e| self.err_at(to, e))
    }

    fn decode_raw(&self, data: &[u8], from: usize, to: usize) -> Result<String, FrameError> {
        let raw = &data[from..to];
        let text = std::str::from_utf8(raw).map_err(|_| nwf("invalid utf-8"))?;
        if memchr3(b'&', b'\r', b'\t', raw).is_none() && memchr(b'\n', raw).is_none() {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            match b {
                b'&' => match reference(raw, i)? {
                    Ref::Char(end, c) => {
                        out.push(c);
                        i = end;
                        continue;
                    }
                    Ref::Need => return Err(nwf("bad reference")),
                },
                // XML 1.0 §3.3.3 normalisation after §2.11 end-of-line
                // handling: TAB, LF, a lone CR and CRLF each become one
                // space (rxml drops a lone CR); `&#13;` stays a CR
                // (decoded above).
                b'\t' | b'\n' => out.push(' '),
                b'\r' => {
                    out.push(' ');
                    if raw.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                _ => {
                    let n = utf8_len(b);
                    out.push_str(text.get(i..i + n).unwrap_or(""));
                    i += n;
                    continue;
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// `<` at `at` starts a start tag (a name byte follows).
    fn start_tag(&mut self, data: &[u8], at: usize) -> Result<Step, FrameError> {
        let lim = self.clean;
        let first = data[at + 1];
        if !name_byte(first) {
            return Err(self.err_at(at + 1, nwf("unexpected byte after <")));
        }
        let s = at + 1;
        let mut e = s;
        while e < lim && name_byte(data[e]) {
            e += 1;
            if e - s > self.token_limit {
                return Err(self.token_too_long());
            }
        }
        if e >= lim {
            return self.need(at, e);
        }
        let d = data[e];
        if !(is_ws(d) || matches!(d, b'"' | b'\'' | b'=' | b'>' | b'/')) {
            return Err(self.err_at(e, nwf("unexpected byte in start tag")));
        }
        let colon = check_qname(&data[s..e]).map_err(|err| self.err_at(e, err))?;
        self.depth += 1;
        if self.depth >= 2 && self.depth - 1 > self.limits.max_depth {
            return Err(self.err_at(
                e,
                FrameError::TooDeep {
                    limit: self.limits.max_depth,
                },
            ));
        }
        if self.depth <= 2 {
            self.top = Top::default();
        }
        self.head.name = QName {
            start: s,
            colon: colon.map(|c| s + c),
            end: e,
        };
        self.head.attrs.clear();
        self.head.decls.clear();
        self.head.uris.clear();
        self.state = State::Tag { after_value: false };
        self.pos = e;
        Ok(Step::Go)
    }

    /// Inside a start tag, at `pos`: attributes, then `>` or `/>`.
    fn tag(&mut self, data: &[u8], after_value: bool) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut after_value = after_value;
        loop {
            let from = self.pos;
            let mut i = from;
            while i < lim && is_ws(data[i]) {
                i += 1;
            }
            let Some(&b) = data.get(i).filter(|_| i < lim) else {
                return self.need(from, i);
            };
            match b {
                b'>' => return self.head_close(data, i, false),
                b'/' => {
                    return match data.get(i + 1).filter(|_| i + 1 < lim) {
                        None => self.need(from, i + 1),
                        Some(b'>') => self.head_close(data, i + 1, true),
                        Some(_) => Err(self.err_at(i + 1, nwf("/ not followed by >"))),
                    };
                }
                b if name_byte(b) => {
                    if after_value && i == from {
                        return Err(self.err_at(i, nwf("space required before attribute names")));
                    }
                    let ((name_end, colon), (vs, ve)) = match self.attribute(data, i)? {
                        None => {
                            self.state = State::Tag { after_value };
                            return self.need(from, lim);
                        }
                        Some(a) => a,
                    };
                    self.on_attribute(
                        data,
                        QName {
                            start: i,
                            colon,
                            end: name_end,
                        },
                        vs,
                        ve,
                    )?;
                    after_value = true;
                    self.pos = ve + 1;
                    self.state = State::Tag { after_value };
                }
                b'\'' | b'"' => {
                    return match self.stray_value(data, i)? {
                        None => self.need(from, lim),
                        Some(()) => Err(nwf("value without attribute name")),
                    };
                }
                _ => return Err(self.err_at(i, nwf("unexpected byte in start tag"))),
            }
        }
    }

    /// A quote where rxml expects `=` or a name: it lexes the value before
    /// refusing it, so a fault (or the size limit) inside comes first.
    /// Ok(None): the value is not complete yet; Err: the refusal.
    fn stray_value<T>(&self, data: &[u8], at: usize) -> Result<Option<T>, FrameError> {
        let q = data[at];
        if q != b'\'' && q != b'"' {
            return Err(self.err_at(at, nwf("attribute without value")));
        }
        let lim = self.clean;
        let mut k = at + 1;
        loop {
            let Some(o) = memchr3(q, b'<', b'&', &data[k..lim]) else {
                return self.partial(lim);
            };
            let c = k + o;
            if data[c] != b'&' {
                return Err(self.err_at(c, nwf("misplaced attribute value")));
            }
            match reference(&data[..lim], c) {
                Ok(Ref::Char(end, _)) => k = end,
                Ok(Ref::Need) => return self.partial(lim),
                Err(e) => return Err(self.err_at(ref_end(data, c), e)),
            }
        }
    }

    /// An attribute of the start tag being read, its value's raw range
    /// `vs..ve`: a namespace declaration is queued for the element's
    /// scope, a routing fact (`to`, `from`, `type`, `id`, the header's
    /// `version` and `xml:lang`) is decoded and kept, any other attribute
    /// only noted for the duplicate check.
    fn on_attribute(
        &mut self,
        data: &[u8],
        name: QName,
        vs: usize,
        ve: usize,
    ) -> Result<(), FrameError> {
        let prefix = name.prefix(data);
        let local = name.local(data);
        if prefix == Some(b"xmlns") && local == b"xmlns" {
            return Err(self.err_at(name.end, nwf("reserved namespace prefix")));
        }
        let is_decl = prefix == Some(b"xmlns") || (prefix.is_none() && local == b"xmlns");
        let want = is_decl
            || (self.depth <= 2
                && prefix.is_none()
                && matches!(local, b"to" | b"from" | b"type" | b"id"))
            || (self.depth == 1
                && ((prefix.is_none() && local == b"version")
                    || (prefix == Some(b"xml") && local == b"lang")));
        if !want {
            // Only validity matters; `attribute` checked the syntax and
            // every reference, and the length limit.
            self.head.attrs.push(name);
            return Ok(());
        }
        if prefix.is_none() && local == b"type" {
            // Nearly always one of the defined values, spelt without
            // references: no decoding, no allocation.
            if let Some(t) = stanza_type_raw(&data[vs..ve]) {
                self.top.stanza_type.get_or_insert(t);
                self.head.attrs.push(name);
                return Ok(());
            }
        }
        if is_decl {
            return self.declare_namespace(data, name, prefix.is_some(), local, vs..ve);
        }
        // The usual value needs no decoding: its raw bytes (checked UTF-8
        // with the chunk) are its value, read from the frame when asked.
        let decoded = if needs_decoding(&data[vs..ve]) {
            Some(self.decode(data, vs, ve)?)
        } else {
            None
        };
        self.keep_routing_attr(data, prefix, local, decoded, vs..ve);
        self.head.attrs.push(name);
        Ok(())
    }

    /// `xmlns` (`prefixed` false) or `xmlns:local` whose raw value is
    /// `data[span]`: refuses what Namespaces in XML reserves (`xml:`
    /// bound to another namespace, the `xml` namespace bound to any other
    /// prefix or as the default, a prefix undeclared with an empty value)
    /// and queues the declaration (its URI decoded into the head's arena,
    /// no allocation) until the start tag closes; the stream header's
    /// default namespace is also kept for the header frame.
    #[inline]
    fn declare_namespace(
        &mut self,
        data: &[u8],
        name: QName,
        prefixed: bool,
        local: &[u8],
        span: std::ops::Range<usize>,
    ) -> Result<(), FrameError> {
        let start = self.head.uris.len();
        if needs_decoding(&data[span.clone()]) {
            let v = self.decode(data, span.start, span.end)?;
            self.head.uris.extend_from_slice(v.as_bytes());
        } else {
            self.head.uris.extend_from_slice(&data[span.clone()]);
        }
        let value = &self.head.uris[start..];
        let xml = NS_XML.as_bytes();
        let bad = if prefixed {
            if local == b"xml" {
                value != xml
            } else {
                value == xml || value.is_empty()
            }
        } else {
            value == xml
        };
        if bad {
            return Err(self.err_at(span.end, nwf("reserved or empty namespace")));
        }
        if !prefixed && self.depth == 1 {
            self.top.xmlns = Some(String::from_utf8_lossy(value).into_owned());
        }
        let p = prefixed.then(|| (name.colon.map_or(0, |c| c + 1), name.end));
        let uri = (start, self.head.uris.len());
        self.head.decls.push((p, uri));
        Ok(())
    }

    /// Keeps a routing attribute (`on_attribute` chose which) for the
    /// frame: `decoded` is its value when the raw bytes at `span` (between
    /// its quotes) are not; the first `to`/`from`/`type`/`id` wins, as in
    /// the rxml framer.
    #[inline]
    fn keep_routing_attr(
        &mut self,
        data: &[u8],
        prefix: Option<&[u8]>,
        local: &[u8],
        decoded: Option<String>,
        span: std::ops::Range<usize>,
    ) {
        let (slot, quote) = match (prefix, local) {
            (None, b"to") => (&mut self.top.to, data[span.end]),
            (None, b"from") => (&mut self.top.from, data[span.end]),
            (None, b"id") => (&mut self.top.id, data[span.end]),
            _ => {
                // `type` with a value not defined, the header's `version`
                // and `xml:lang`: rare, owned.
                let value =
                    decoded.unwrap_or_else(|| String::from_utf8_lossy(&data[span]).into_owned());
                match local {
                    b"type" => {
                        self.top.stanza_type.get_or_insert_with(|| {
                            stanza_type(&value).unwrap_or(Text::owned(value))
                        });
                    }
                    b"version" => self.top.version = Some(value),
                    _ => self.top.lang = Some(value),
                }
                return;
            }
        };
        slot.get_or_insert(Attr::new(decoded, span, quote));
    }

    /// The start tag ends at `gt` (its `>`); `empty` for `/>`.
    fn head_close(&mut self, data: &[u8], gt: usize, empty: bool) -> Result<Step, FrameError> {
        let end = gt + 1;
        self.check_head(data).map_err(|e| self.err_at(gt, e))?;
        self.enter_scope(data);
        let name = self.head.name;
        // Below the stanza the namespace is only checked, not kept.
        let resolved = self.scope.resolve(name.prefix(data));
        let elem_ns = match resolved {
            Ok(ns) if self.depth <= 2 => namespace_raw(ns),
            Ok(_) => Text::Borrowed(""),
            Err(e) => return Err(self.err_at(gt, e)),
        };
        self.check_attrs(data).map_err(|e| self.err_at(gt, e))?;
        self.scope
            .names
            .extend_from_slice(&data[name.start..name.end]);
        self.scope.name_ends.push(self.scope.names.len());
        self.state = State::Content;
        self.pos = end;
        let local = if self.depth <= 2 {
            element_name_raw(name.local(data))
        } else {
            Text::Borrowed("")
        };
        match self.depth {
            1 => self.root_opened(local, elem_ns, gt, empty),
            2 => {
                self.top.insert_at = name.end.max(self.head_insert_at(data, gt, empty));
                self.top.kind = Some(stanza_kind(&local, &elem_ns));
                self.top.name = local;
                self.top.ns = elem_ns;
                if empty {
                    self.scope.pop();
                    self.depth -= 1;
                    return Ok(Step::Stanza(end));
                }
                Ok(Step::Go)
            }
            _ => {
                if empty {
                    self.scope.pop();
                    self.depth -= 1;
                }
                Ok(Step::Go)
            }
        }
    }

    /// Enters the scope of the element whose start tag just closed: its
    /// queued namespace declarations move into the scope's arenas.
    #[inline]
    fn enter_scope(&mut self, data: &[u8]) {
        self.scope
            .marks
            .push((self.scope.decls.len(), self.scope.text.len()));
        for &(p, (us, ue)) in &self.head.decls {
            let prefix = match p {
                Some((s, e)) => self.scope.push(&data[s..e]),
                None => (0, 0),
            };
            let uri = self.scope.push(&self.head.uris[us..ue]);
            self.scope.decls.push(NsDecl {
                prefix,
                default: p.is_none(),
                uri,
            });
        }
    }

    /// The root's start tag closed at `gt`: it must be `<stream>` in the
    /// streams namespace; `<stream:stream/>` ends the stream at once.
    fn root_opened(
        &mut self,
        local: Text,
        elem_ns: Text,
        gt: usize,
        empty: bool,
    ) -> Result<Step, FrameError> {
        if local != "stream" || elem_ns != NS_STREAMS {
            return Err(self.err_at(
                gt,
                // The peer's text, quoted and escaped as the
                // rxml framer does (no raw CR in a log line).
                FrameError::BadHeader(format!(
                    "root element is <{local}> in namespace {elem_ns:?}, \
                     not <stream> in {NS_STREAMS:?}"
                )),
            ));
        }
        if empty {
            self.state = State::RootEnd;
        }
        Ok(Step::Header(gt + 1))
    }

    /// rxml's ElementHeadClose event starts after the last attribute's
    /// closing quote (or the name): the insert point.
    fn head_insert_at(&self, data: &[u8], gt: usize, empty: bool) -> usize {
        let close = if empty { gt - 1 } else { gt };
        // Walk back over whitespace to the end of the last attribute/name.
        let mut i = close;
        while i > 0 && is_ws(data[i - 1]) {
            i -= 1;
        }
        i
    }

    /// Namespace declarations are unique (same rule and messages as the
    /// rxml framer).
    fn check_head(&self, data: &[u8]) -> Result<(), FrameError> {
        let decls = &self.head.decls;
        let key = |i: usize| decls[i].0.map(|(s, e)| &data[s..e]);
        let dup = if decls.len() <= 16 {
            (1..decls.len()).find(|&i| (0..i).any(|j| key(j) == key(i)))
        } else {
            let mut seen = HashSet::with_capacity(decls.len());
            (0..decls.len()).find(|&i| !seen.insert(key(i)))
        };
        match dup.map(key) {
            Some(Some(p)) => Err(FrameError::DuplicateAttribute(format!(
                "xmlns:{}",
                String::from_utf8_lossy(p)
            ))),
            Some(None) => Err(FrameError::DuplicateAttribute("xmlns".to_owned())),
            None => Ok(()),
        }
    }

    /// Every attribute prefix is declared and no two attributes share a
    /// (namespace, local name).
    fn check_attrs(&self, data: &[u8]) -> Result<(), FrameError> {
        let attrs = &self.head.attrs;
        if attrs.len() <= 16 {
            // The usual tag: namespaces resolved into an array, no
            // allocation; local names compared first, as they rarely
            // match, and the (long, often equal) URIs only then.
            let mut ns: [&[u8]; 16] = [b""; 16];
            for (slot, a) in ns.iter_mut().zip(attrs) {
                if let Some(p) = a.prefix(data) {
                    *slot = self.scope.resolve(Some(p))?;
                }
            }
            let dup = (1..attrs.len()).find(|&i| {
                let l = attrs[i].local(data);
                (0..i).any(|j| same_name(attrs[j].local(data), l) && ns[j] == ns[i])
            });
            return dup.map_or(Ok(()), |i| Err(duplicate(ns[i], attrs[i].local(data))));
        }
        let mut resolved: Vec<(&[u8], &[u8])> = Vec::with_capacity(attrs.len());
        for a in attrs {
            let ns = match a.prefix(data) {
                None => &b""[..],
                p => self.scope.resolve(p)?,
            };
            resolved.push((ns, a.local(data)));
        }
        let mut seen = HashSet::with_capacity(resolved.len());
        match resolved.iter().copied().find(|r| !seen.insert(*r)) {
            Some((ns, local)) => Err(duplicate(ns, local)),
            None => Ok(()),
        }
    }

    /// `</` at `at`.
    fn end_tag(&mut self, data: &[u8], at: usize) -> Result<Step, FrameError> {
        let lim = self.clean;
        let s = at + 2;
        let mut e = s;
        while e < lim && name_byte(data[e]) {
            e += 1;
            if e - s > self.token_limit {
                return Err(self.token_too_long());
            }
        }
        if e >= lim {
            return self.need(at, e);
        }
        let d = data[e];
        if !(is_ws(d) || d == b'>') {
            return Err(self.err_at(e, nwf("unexpected byte in end tag")));
        }
        check_qname(&data[s..e]).map_err(|err| self.err_at(e, err))?;
        if self.scope.top_name() != &data[s..e] {
            return Err(self.err_at(e, nwf("element mismatch")));
        }
        let mut g = e;
        while g < lim && is_ws(data[g]) {
            g += 1;
        }
        if g >= lim {
            return self.need(at, g);
        }
        if data[g] != b'>' {
            return Err(self.err_at(g, nwf("unexpected byte in end tag")));
        }
        self.scope.pop();
        self.depth -= 1;
        self.pos = g + 1;
        match self.depth {
            1 => Ok(Step::Stanza(g + 1)),
            0 => {
                self.ended = true;
                Ok(Step::End(g + 1))
            }
            _ => Ok(Step::Go),
        }
    }

    /// Markup at `at` (a `<`) inside an element.
    fn markup(&mut self, data: &[u8], at: usize) -> Result<Step, FrameError> {
        let Some(&b) = data.get(at + 1) else {
            return self.need(at, at + 1);
        };
        if at + 1 >= self.clean && !matches!(b, b'?' | b'!') {
            return self.need(at, at + 1);
        }
        match b {
            b'/' => self.end_tag(data, at),
            b'!' => {
                let r = self.bang(data, at, Some(()))?;
                if matches!(r, Step::Go) {
                    self.state = State::Cdata;
                }
                Ok(r)
            }
            b'?' => {
                let want: &[u8] = b"<?xml";
                let have = &data[at..data.len().min(at + want.len())];
                if want.starts_with(have) && have.len() < want.len() {
                    return self.need(at, at + have.len());
                }
                Err(self.err_at(
                    at + have.len().min(want.len()),
                    FrameError::Restricted("processing instructions"),
                ))
            }
            _ => self.start_tag(data, at),
        }
    }

    /// Character data inside a stanza: only validated.
    fn content(&mut self, data: &[u8]) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut i = self.pos;
        self.text_fault(data, false);
        loop {
            let Some(off) = memchr3(b'<', b'&', b']', &data[i..lim]) else {
                return self.need(lim, lim);
            };
            let at = i + off;
            match data[at] {
                b'<' => {
                    self.pos = at;
                    return self.markup(data, at);
                }
                b'&' => match reference(&data[..lim], at) {
                    Ok(Ref::Char(end, _)) => i = end,
                    Ok(Ref::Need) => return self.need(at, lim),
                    Err(e) => return Err(self.err_at(ref_end(data, at), e)),
                },
                _ => {
                    // `]]>` is not allowed in text.
                    match (
                        data.get(at + 1).filter(|_| at + 1 < lim),
                        data.get(at + 2).filter(|_| at + 2 < lim),
                    ) {
                        (None, _) => return self.need(at, at + 1),
                        (Some(b']'), None) => return self.need(at, at + 2),
                        (Some(b']'), Some(b'>')) => {
                            return Err(self.err_at(at + 2, nwf("]]> in text")));
                        }
                        _ => i = at + 1,
                    }
                }
            }
        }
    }

    /// Inside `<![CDATA[` below stream level, at `pos`.
    fn cdata(&mut self, data: &[u8]) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut i = self.pos;
        self.text_fault(data, true);
        loop {
            let Some(off) = memchr(b']', &data[i..lim]) else {
                return self.need(lim, lim);
            };
            let at = i + off;
            match (
                data.get(at + 1).filter(|_| at + 1 < lim),
                data.get(at + 2).filter(|_| at + 2 < lim),
            ) {
                (None, _) => return self.need(at, at + 1),
                (Some(b']'), None) => return self.need(at, at + 2),
                (Some(b']'), Some(b'>')) => {
                    self.pos = at + 3;
                    self.state = State::Content;
                    return Ok(Step::Go);
                }
                _ => i = at + 1,
            }
        }
    }

    /// Between stanzas: whitespace keepalives, a stanza, or the stream's
    /// end. Text is judged where rxml flushes it.
    fn stream_level(&mut self, data: &[u8]) -> Result<Step, FrameError> {
        let lim = self.clean;
        let mut i = self.pos;
        loop {
            let Some(&b) = data.get(i).filter(|_| i < lim) else {
                return self.stream_level_end(data, i);
            };
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.text_pending = true;
                    i += 1;
                }
                b'<' => {
                    if let Some(step) = self.flush_text_at(i)? {
                        return Ok(step);
                    }
                    match data.get(i + 1) {
                        None => return self.need(i, i + 1),
                        Some(b'!') if data.get(i + 2) == Some(&b'[') => {
                            match self.stream_level_cdata(data, i)? {
                                ControlFlow::Continue(next) => i = next,
                                ControlFlow::Break(step) => return Ok(step),
                            }
                        }
                        Some(_) => {
                            self.pos = i;
                            return self.markup(data, i);
                        }
                    }
                }
                b'&' => {
                    if let Some(step) = self.flush_text_at(i)? {
                        return Ok(step);
                    }
                    match reference(&data[..lim], i) {
                        Ok(Ref::Char(end, c)) => {
                            self.text_pending = true;
                            if !matches!(c, ' ' | '\t' | '\r' | '\n') {
                                self.text_ws = false;
                            }
                            i = end;
                        }
                        Ok(Ref::Need) => return self.need(i, lim),
                        Err(e) => return Err(self.err_at(ref_end(data, i), e)),
                    }
                }
                b']' => {
                    if i + 2 < lim && data[i + 1] == b']' && data[i + 2] == b'>' {
                        return Err(self.err_at(i + 2, nwf("]]> in text")));
                    }
                    self.text_pending = true;
                    self.text_ws = false;
                    i += 1;
                }
                _ => {
                    self.text_pending = true;
                    self.text_ws = false;
                    i += 1;
                }
            }
        }
    }

    /// Stream level at `i`, the end of what arrived: rxml flushes pending
    /// text here, unless it waits on a CR, `]` or partial reference.
    fn stream_level_end(&mut self, data: &[u8], i: usize) -> Result<Step, FrameError> {
        if self.fault {
            // rxml flushes the valid start of the text before it
            // judges the bytes after it.
            if self.text_pending && !self.text_ws {
                return Err(self.text_at_stream_level(i));
            }
            return self.need(i, i);
        }
        // (At the end of input a CR is lone, XML 1.0 §2.11:
        // whitespace like any other.)
        let wait = match data[..i].last() {
            Some(b'\r') => !self.eof,
            Some(b']') => true,
            _ => false,
        };
        if wait {
            self.pos = i;
            return Ok(Step::Need);
        }
        self.flush_text(i, i)
    }

    /// A CDATA section at stream level, its `<![` at `i`: its text counts
    /// as stream-level text, which rxml flushes at its end and at any `]`
    /// that does not end it. Continue(offset after `]]>`) to read on, or
    /// Break with the step to return (a keepalive, or need more bytes).
    fn stream_level_cdata(
        &mut self,
        data: &[u8],
        i: usize,
    ) -> Result<ControlFlow<Step, usize>, FrameError> {
        let lim = self.clean;
        match self.bang(data, i, Some(()))? {
            Step::Go => {}
            other => return Ok(ControlFlow::Break(other)),
        }
        let s = self.pos;
        let r = memchr(b']', &data[s..lim]).map(|o| s + o);
        let off = match r {
            Some(r) if data[r..lim].starts_with(b"]]>") => r - s,
            Some(r) if b"]]>".starts_with(&data[r..lim]) => {
                return self.need(i, lim).map(ControlFlow::Break);
            }
            Some(r) => {
                return Err(self.err_at(r + 1, FrameError::TextAtStreamLevel));
            }
            None => return self.need(i, lim).map(ControlFlow::Break),
        };
        let content = &data[s..s + off];
        if !content.is_empty() {
            self.text_pending = true;
            if !content.iter().all(|&c| is_ws(c)) {
                return Err(self.err_at(s + off + 2, FrameError::TextAtStreamLevel));
            }
        }
        let next = s + off + 3;
        if let Some(step) = self.flush_text_at(next)? {
            return Ok(ControlFlow::Break(step));
        }
        self.pos = next;
        Ok(ControlFlow::Continue(next))
    }

    /// rxml flushes pending text at `<` and `&`: whitespace becomes a
    /// keepalive frame ending at `at`, anything else is refused.
    fn flush_text_at(&mut self, at: usize) -> Result<Option<Step>, FrameError> {
        if !self.text_pending {
            return Ok(None);
        }
        self.text_pending = false;
        if !std::mem::replace(&mut self.text_ws, true) {
            return Err(self.text_at_stream_level(at));
        }
        self.pos = at;
        Ok(Some(Step::Whitespace(at)))
    }

    fn flush_text(&mut self, at: usize, resume: usize) -> Result<Step, FrameError> {
        match self.flush_text_at(at)? {
            Some(step) => Ok(step),
            None => {
                self.pos = resume;
                Ok(Step::Need)
            }
        }
    }
}

/// Two names are equal. Names that differ mostly differ in length or
/// first byte: comparing those first keeps a `memcmp` call (which the
/// profile showed at 10 % of framing) out of the common case.
/// The error for a second attribute named `local` in namespace `ns`
/// (empty: none), worded as the rxml framer words it.
fn duplicate(ns: &[u8], local: &[u8]) -> FrameError {
    let local = String::from_utf8_lossy(local);
    if ns.is_empty() {
        FrameError::DuplicateAttribute(local.into_owned())
    } else {
        FrameError::DuplicateAttribute(format!("{{{}}}{local}", String::from_utf8_lossy(ns)))
    }
}

/// A raw attribute value whose decoded value differs from its bytes: a
/// reference, or whitespace that normalisation turns into a space.
fn needs_decoding(raw: &[u8]) -> bool {
    raw.iter()
        .any(|&b| matches!(b, b'&' | b'\r' | b'\t' | b'\n'))
}

fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.first() == b.first() && a == b
}

fn utf8_len(b: u8) -> usize {
    match b {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// The rxml framer's unit tests, run against this framer too.
#[cfg(test)]
use FastFramer as Framer;

#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "framer_tests.rs"]
mod framer_tests;

#[cfg(test)]
#[path = "fast_tests.rs"]
mod tests;
