//! Skipping one top-level element over a limit, while it streams.
//!
//! On the upstream link every stanza was written by some user, so a
//! stanza over the size, depth or token limit must cost that stanza, not
//! the session (see DESIGN.md, "One stanza never ends the upstream
//! session"). When a tokenizer reports a limit, [`super::Framer`] hands
//! the unframed bytes to a [`Skipper`], which rescans them from the
//! element's first byte and reads on until its end tag, discarding each
//! byte once scanned: memory stays flat however large the element is
//! (nothing is kept but the scan state and a few capped copies of the
//! start tag's attributes).
//!
//! The scan is structural, not validating: it counts depth over start
//! tags, end tags and empty-element tags, reads quoted attribute values
//! (a `>` in a value is not the tag's end) and CDATA sections (a `<` in
//! one is text). It still refuses what no conforming server sends and
//! what a cheap check catches: comments, processing instructions and
//! DTDs (`restricted-xml`), and bytes that are not UTF-8 or characters XML
//! forbids (`not-well-formed`), so those keep ending the stream as they do
//! outside a skipped stanza. What it cannot see without a name stack as
//! deep as the element, it does not check: end tags are counted, not
//! matched against their start tags (a mismatched end tag inside a skipped
//! stanza goes unnoticed; a conforming server cannot send one), and
//! prefixes, entities and duplicate attributes inside the element are
//! not looked at.
//!
//! Synchronous and I/O-free like the tokenizers: fed the read buffer,
//! `Ok(false)` for "need more bytes".

use bytes::{Buf, BytesMut};
use memchr::memchr;

use super::fast::first_fault;
use super::framer::{complete_utf8_prefix, FrameError};

/// Longest element or attribute name the skipper keeps for the head.
pub const MAX_NAME: usize = 1024;
/// Longest raw attribute value it keeps: a JID may take 3071 bytes, six
/// times that escaped.
pub const MAX_VALUE: usize = 24 * 1024;
/// Most bytes it keeps for the whole head (many `xmlns:*` declarations).
pub const MAX_HEAD: usize = 128 * 1024;

/// Why skipping could not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipError {
    /// The bytes at the front are not the start of an element (the
    /// stream's end tag, or text): there is no stanza to skip, and the
    /// tokenizer's error stands.
    NoElement,
    /// Bytes no conforming server sends, found inside the element: fatal
    /// to the stream.
    Frame(FrameError),
}

/// Where the scan stands between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the element: whitespace, an empty CDATA section, `<`.
    Lead,
    /// Just after `<`.
    Lt,
    /// After `<!`, this many bytes of `[CDATA[` matched.
    Bang(u8),
    /// In a CDATA section, after this many `]`.
    Cdata(u8),
    /// In a start tag's name.
    StartName,
    /// In a start tag, between attributes.
    Tag,
    /// In an attribute name.
    AttrName,
    /// After an attribute name, before the value's quote.
    Eq,
    /// In an attribute value delimited by this quote.
    Value(u8),
    /// After `/` in a start tag.
    Slash,
    /// In an end tag.
    EndTag,
    /// Between markup inside the element.
    Content,
}

/// The top-level start tag, as far as it is kept.
#[derive(Debug, Default)]
struct Capture {
    name: Vec<u8>,
    /// (name, quote, raw value) of the attributes a head needs.
    attrs: Vec<(Vec<u8>, u8, Vec<u8>)>,
    /// The attribute name being read.
    cur: Vec<u8>,
    /// …was longer than [`MAX_NAME`] (so it is none the head needs).
    cur_over: bool,
    /// The value being read is kept.
    want: bool,
    /// Bytes kept so far.
    kept: usize,
    /// Something the head needs went over a cap.
    lost: bool,
    /// The start tag ended (`>` or `/>`).
    complete: bool,
}

impl Capture {
    fn keep(&mut self, into: Which, bytes: &[u8], cap: usize) {
        if let Which::Cur = into {
            // Not counted in `kept` until the head takes it.
            if self.cur.len() + bytes.len() > cap {
                self.cur_over = true;
            } else if !self.cur_over {
                self.cur.extend_from_slice(bytes);
            }
            return;
        }
        if self.lost {
            return;
        }
        let v = match into {
            Which::Name | Which::Cur => &mut self.name,
            Which::Value => match self.attrs.last_mut() {
                Some(a) => &mut a.2,
                None => return,
            },
        };
        if v.len() + bytes.len() > cap || self.kept + bytes.len() > MAX_HEAD {
            self.lost = true;
            return;
        }
        v.extend_from_slice(bytes);
        self.kept += bytes.len();
    }
}

#[derive(Clone, Copy)]
enum Which {
    Name,
    Cur,
    Value,
}

/// An attribute the head keeps: `to`, `from`, `id`, `type` and the
/// namespace declarations its name may need.
fn wanted(name: &[u8]) -> bool {
    matches!(name, b"to" | b"from" | b"id" | b"type" | b"xmlns") || name.starts_with(b"xmlns:")
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What a name may hold, as loosely as the tokenizers lex it.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'.' | b'_') || b >= 0x80
}

/// The end of the name starting at `i`: the first byte that is not a
/// name byte, or the end of `data`.
#[inline(always)]
fn name_end(data: &[u8], i: usize) -> usize {
    data[i..]
        .iter()
        .position(|&c| !name_byte(c))
        .map_or(data.len(), |o| i + o)
}

fn nwf(what: &str) -> SkipError {
    SkipError::Frame(FrameError::NotWellFormed(what.to_owned()))
}

/// Scans one top-level element from the front of the buffer to its end.
#[derive(Debug)]
pub struct Skipper {
    st: St,
    /// Open elements; 0 until the top-level start tag has closed.
    depth: u64,
    /// Bytes consumed.
    len: u64,
    cap: Capture,
    done: bool,
}

impl Default for Skipper {
    fn default() -> Self {
        Self::new()
    }
}

impl Skipper {
    pub fn new() -> Self {
        Skipper {
            st: St::Lead,
            depth: 0,
            len: 0,
            cap: Capture::default(),
            done: false,
        }
    }

    /// Bytes of the stream skipped so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the element's end has been consumed.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Consumes bytes from the front of `buf` up to the element's end.
    /// Returns true once the end is consumed (the bytes after it stay in
    /// `buf`), false when every complete character was consumed and more
    /// are needed; a trailing partial UTF-8 sequence (up to 3 bytes) stays.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<bool, SkipError> {
        if self.done {
            return Ok(true);
        }
        let avail = complete_utf8_prefix(buf);
        let fault = first_fault(&buf[..avail]);
        let lim = fault.unwrap_or(avail);
        let used = self.scan(&buf[..lim])?;
        buf.advance(used);
        self.len += used as u64;
        if self.done {
            return Ok(true);
        }
        if fault.is_some() {
            return Err(nwf("invalid utf-8 or character"));
        }
        Ok(false)
    }

    /// The top-level start tag as a synthetic self-closing tag holding
    /// only the attributes a head needs, or None when it did not end, or
    /// something it needs was over a cap.
    pub fn head_tag(&self) -> Option<Vec<u8>> {
        let c = &self.cap;
        if !c.complete || c.lost || c.name.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(c.kept + 8 * c.attrs.len() + 4);
        out.push(b'<');
        out.extend_from_slice(&c.name);
        for (name, quote, value) in &c.attrs {
            out.push(b' ');
            out.extend_from_slice(name);
            out.push(b'=');
            out.push(*quote);
            out.extend_from_slice(value);
            out.push(*quote);
        }
        out.extend_from_slice(b"/>");
        Some(out)
    }

    /// The element's start tag closed (`empty`: with `/>`).
    fn opened(&mut self, empty: bool) {
        if self.depth == 0 {
            self.cap.complete = true;
        }
        if empty {
            if self.depth == 0 {
                self.done = true;
            }
        } else {
            self.depth += 1;
        }
        self.st = St::Content;
    }

    /// Scans `data`; returns the bytes consumed (all of them, unless the
    /// element ended first).
    ///
    /// One step per state: each returns the offset to go on from (the
    /// same offset when the byte is to be read again in the new state).
    fn scan(&mut self, data: &[u8]) -> Result<usize, SkipError> {
        let mut i = 0;
        while i < data.len() && !self.done {
            let b = data[i];
            i = match self.st {
                St::Lead => {
                    if b == b'<' {
                        self.st = St::Lt;
                    } else if !is_ws(b) {
                        return Err(SkipError::NoElement);
                    }
                    i + 1
                }
                St::Lt => self.after_lt(b, i)?,
                St::Bang(n) => self.section_start(n, b, i)?,
                St::Cdata(n) => self.in_cdata(n, data, i),
                St::StartName => self.start_name(data, i)?,
                St::Tag => self.in_tag(b, i)?,
                St::AttrName => {
                    let e = name_end(data, i);
                    if self.depth == 0 {
                        self.cap.keep(Which::Cur, &data[i..e], MAX_NAME);
                    }
                    if e < data.len() {
                        self.st = St::Eq;
                    }
                    e
                }
                St::Eq => self.before_value(b, i)?,
                St::Value(q) => self.in_value(q, data, i),
                St::Slash => {
                    if b != b'>' {
                        return Err(nwf("/ not followed by >"));
                    }
                    self.opened(true);
                    i + 1
                }
                St::EndTag => self.in_end_tag(data, i),
                St::Content => match memchr(b'<', &data[i..]) {
                    Some(o) => {
                        self.st = St::Lt;
                        i + o + 1
                    }
                    None => data.len(),
                },
            };
        }
        Ok(i)
    }

    /// `b` at `i` follows a `<`: an end tag, a section, or a start tag's
    /// name (read again in [`St::StartName`]). An end tag before the
    /// element opened is the stream's: there is nothing to skip.
    #[inline(always)]
    fn after_lt(&mut self, b: u8, i: usize) -> Result<usize, SkipError> {
        match b {
            b'/' if self.depth == 0 => return Err(SkipError::NoElement),
            b'/' => self.st = St::EndTag,
            b'!' => self.st = St::Bang(0),
            b'?' => {
                return Err(SkipError::Frame(FrameError::Restricted(
                    "processing instructions",
                )))
            }
            b if name_byte(b) => {
                self.st = St::StartName;
                return Ok(i); // read as part of the name
            }
            _ => return Err(nwf("unexpected byte after <")),
        }
        Ok(i + 1)
    }

    /// `b` at `i` is byte `n` after `<!`: only `[CDATA[` may follow;
    /// comments and DTDs are refused as outside a skipped stanza.
    #[inline(always)]
    fn section_start(&mut self, n: u8, b: u8, i: usize) -> Result<usize, SkipError> {
        const WANT: &[u8] = b"[CDATA[";
        match (n, b) {
            (0, b'-') => return Err(SkipError::Frame(FrameError::Restricted("comments"))),
            (0, b'D') => {
                return Err(SkipError::Frame(FrameError::Restricted(
                    "document type declarations",
                )))
            }
            _ if WANT.get(usize::from(n)) == Some(&b) => {
                self.st = if usize::from(n) + 1 == WANT.len() {
                    St::Cdata(0)
                } else {
                    St::Bang(n + 1)
                };
            }
            _ => return Err(nwf("malformed section start")),
        }
        Ok(i + 1)
    }

    /// In a CDATA section after `n` `]`: counts `]`s up to the `]]>` that
    /// ends it and jumps over everything else (a `<` in one is text).
    #[inline(always)]
    fn in_cdata(&mut self, n: u8, data: &[u8], i: usize) -> usize {
        match data[i] {
            b']' => self.st = St::Cdata(n.saturating_add(1).min(2)),
            b'>' if n >= 2 => {
                self.st = if self.depth == 0 {
                    St::Lead
                } else {
                    St::Content
                }
            }
            _ => {
                self.st = St::Cdata(0);
                // Jump to the next `]`.
                return memchr(b']', &data[i..]).map_or(data.len(), |o| i + o);
            }
        }
        i + 1
    }

    /// In a start tag's name at `i`: the top-level name is kept for the
    /// head; the byte after the name says what follows it.
    #[inline(always)]
    fn start_name(&mut self, data: &[u8], i: usize) -> Result<usize, SkipError> {
        let e = name_end(data, i);
        if self.depth == 0 {
            self.cap.keep(Which::Name, &data[i..e], MAX_NAME);
        }
        let Some(&d) = data.get(e) else {
            return Ok(e);
        };
        match d {
            b'>' => self.opened(false),
            b'/' => self.st = St::Slash,
            d if is_ws(d) => self.st = St::Tag,
            _ => return Err(nwf("unexpected byte in start tag")),
        }
        Ok(e + 1)
    }

    /// `b` at `i` lies in a start tag between attributes: its end, or an
    /// attribute name (read again in [`St::AttrName`]).
    #[inline(always)]
    fn in_tag(&mut self, b: u8, i: usize) -> Result<usize, SkipError> {
        match b {
            b'>' => self.opened(false),
            b'/' => self.st = St::Slash,
            b if is_ws(b) => {}
            b if name_byte(b) => {
                self.st = St::AttrName;
                self.cap.cur.clear();
                self.cap.cur_over = false;
                return Ok(i);
            }
            _ => return Err(nwf("unexpected byte in start tag")),
        }
        Ok(i + 1)
    }

    /// `b` at `i` lies between an attribute's name and its value: at the
    /// opening quote, decides whether the head keeps the value.
    #[inline(always)]
    fn before_value(&mut self, b: u8, i: usize) -> Result<usize, SkipError> {
        match b {
            b'=' => {}
            b if is_ws(b) => {}
            b'\'' | b'"' => {
                self.cap.want = self.depth == 0 && !self.cap.cur_over && wanted(&self.cap.cur);
                if self.cap.want {
                    let name = std::mem::take(&mut self.cap.cur);
                    self.cap.kept += name.len();
                    self.cap.attrs.push((name, b, Vec::new()));
                }
                self.st = St::Value(b);
            }
            _ => return Err(nwf("unexpected byte in attribute")),
        }
        Ok(i + 1)
    }

    /// In an attribute value delimited by `q`, at `i`: jumps to the
    /// closing quote (a `>` inside is not the tag's end), keeping the
    /// bytes when the head wants them.
    #[inline(always)]
    fn in_value(&mut self, q: u8, data: &[u8], i: usize) -> usize {
        let end = memchr(q, &data[i..]).map(|o| i + o);
        let stop = end.unwrap_or(data.len());
        if self.cap.want {
            self.cap.keep(Which::Value, &data[i..stop], MAX_VALUE);
        }
        if end.is_some() {
            self.st = St::Tag;
            return stop + 1;
        }
        stop
    }

    /// In an end tag at `i`: counted at its `>`, not matched against its
    /// start tag (see the module docs); the last one ends the element.
    #[inline(always)]
    fn in_end_tag(&mut self, data: &[u8], i: usize) -> usize {
        let Some(o) = memchr(b'>', &data[i..]) else {
            return data.len();
        };
        self.depth -= 1;
        self.st = St::Content;
        if self.depth == 0 {
            self.done = true;
        }
        i + o + 1
    }
}

#[cfg(test)]
#[path = "skip_tests.rs"]
mod tests;
