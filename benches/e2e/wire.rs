//! A blocking XMPP stream end for the load generator, with its own cheap
//! splitter instead of jatproxy's framer.
//!
//! The generator must be much faster than what it measures: jatproxy's
//! validating framer runs at ~100 MB/s per core, the same cost as the
//! proxy itself, so a generator framing with it would be the bottleneck.
//! Validity is checked another way: every stanza the bench receives must
//! equal, byte for byte, the stanza it should be (see `traffic.rs`).
//!
//! Blocking threads rather than tokio tasks: the generator must not share
//! a scheduler with what it measures, and a thread per socket end keeps
//! one slow side from delaying the other's timestamps.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::tls::{Link, LinkWriter};

/// How often a blocked reader looks at its stop flag.
pub const POLL: Duration = Duration::from_millis(50);
/// Larger than anything the bench sends; a bigger element is an error.
const MAX_ELEMENT: usize = 1 << 20;

/// One top-level element: its bytes and its start tag's name and
/// attributes (raw values: the bench's JIDs need no unescaping).
#[derive(Debug, Clone)]
pub struct Elem {
    pub bytes: Bytes,
    pub name: String,
    attrs: Vec<(String, String)>,
}

impl Elem {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn to(&self) -> Option<&str> {
        self.attr("to")
    }
    pub fn from(&self) -> Option<&str> {
        self.attr("from")
    }
    pub fn id(&self) -> Option<&str> {
        self.attr("id")
    }
    pub fn stanza_type(&self) -> Option<&str> {
        self.attr("type")
    }
}

/// One unit of a stream.
#[derive(Debug)]
pub enum Unit {
    Header(Elem),
    Stanza(Elem),
    End,
}

/// Resumable element splitter: depth counting over tags, quote-aware
/// inside tags, so each byte is looked at once.
#[derive(Default)]
struct Splitter {
    pos: usize,
    depth: usize,
    tag_start: Option<usize>,
    quote: u8,
}

impl Splitter {
    fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Unit>, String> {
        loop {
            let Some(ts) = self.tag_start else {
                match memchr_lt(&buf[self.pos..]) {
                    Some(i) => {
                        self.pos += i;
                        if self.depth <= 1 {
                            // Whitespace between stanzas (or before the
                            // header): drop it.
                            buf.advance(self.pos);
                            self.pos = 0;
                        }
                        self.tag_start = Some(self.pos);
                        self.pos += 1;
                    }
                    None => {
                        self.pos = buf.len();
                        if self.depth <= 1 {
                            buf.clear();
                            self.pos = 0;
                        }
                        return Ok(None);
                    }
                }
                continue;
            };
            let mut closed = false;
            while self.pos < buf.len() {
                let c = buf[self.pos];
                self.pos += 1;
                if self.quote != 0 {
                    if c == self.quote {
                        self.quote = 0;
                    }
                } else if c == b'\'' || c == b'"' {
                    self.quote = c;
                } else if c == b'>' {
                    closed = true;
                    break;
                }
            }
            if !closed {
                if self.pos > MAX_ELEMENT {
                    return Err("element too large".into());
                }
                return Ok(None);
            }
            self.tag_start = None;
            let tag = &buf[ts..self.pos];
            if tag.starts_with(b"<?") || tag.starts_with(b"<!") {
                continue;
            }
            if tag.starts_with(b"</") {
                self.depth = self.depth.checked_sub(1).ok_or("end tag at depth 0")?;
                match self.depth {
                    0 => {
                        buf.advance(self.pos);
                        self.pos = 0;
                        return Ok(Some(Unit::End));
                    }
                    1 => return Ok(Some(Unit::Stanza(self.cut(buf)?))),
                    _ => continue,
                }
            }
            if tag.ends_with(b"/>") {
                if self.depth == 1 {
                    return Ok(Some(Unit::Stanza(self.cut(buf)?)));
                }
                continue;
            }
            self.depth += 1;
            if self.depth == 1 {
                return Ok(Some(Unit::Header(self.cut(buf)?)));
            }
        }
    }

    /// Splits the finished element off the front of `buf`.
    fn cut(&mut self, buf: &mut BytesMut) -> Result<Elem, String> {
        let bytes = buf.split_to(self.pos).freeze();
        self.pos = 0;
        parse_start_tag(bytes)
    }
}

fn memchr_lt(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'<')
}

/// Name and attributes of the start tag at the front of `bytes`.
fn parse_start_tag(bytes: Bytes) -> Result<Elem, String> {
    let bad = || format!("bad start tag: {}", crate::traffic::preview(&bytes));
    let end = bytes.iter().position(|&c| c == b'>').ok_or_else(bad)?;
    let tag = std::str::from_utf8(&bytes[1..end]).map_err(|_| bad())?;
    let tag = tag.strip_suffix('/').unwrap_or(tag);
    let name_end = tag
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(tag.len());
    let name = tag[..name_end].to_owned();
    let mut attrs = Vec::new();
    let mut rest = &tag[name_end..];
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=').ok_or_else(bad)?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let q = after.chars().next().ok_or_else(bad)?;
        let close = after[1..].find(q).ok_or_else(bad)?;
        attrs.push((key, after[1..1 + close].to_owned()));
        rest = &after[close + 2..];
    }
    Ok(Elem { bytes, name, attrs })
}

/// The reading side of a stream: socket, splitter state and unsplit
/// bytes, kept together across runs so one stream can carry many.
pub struct Conn {
    pub link: Link,
    /// Setup's writes (handshakes, logins); a run writes through its own
    /// [`Link::writer`].
    writer: LinkWriter,
    split: Splitter,
    buf: BytesMut,
    scratch: Vec<u8>,
    pub who: String,
}

/// What a read produced.
pub enum Read1 {
    Unit(Unit),
    /// Nothing within [`POLL`]; the caller checks whether to stop.
    Idle,
}

impl Conn {
    pub fn new(sock: TcpStream, who: impl Into<String>) -> io::Result<Conn> {
        Conn::over(Link::Plain(sock), who)
    }

    /// A stream end over plain TCP or TLS.
    pub fn over(mut link: Link, who: impl Into<String>) -> io::Result<Conn> {
        link.sock().set_nodelay(true)?;
        link.sock().set_read_timeout(Some(POLL))?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        link.drain_pending(&mut buf)?;
        Ok(Conn {
            writer: link.writer()?,
            link,
            split: Splitter::default(),
            buf,
            scratch: vec![0; 256 * 1024],
            who: who.into(),
        })
    }

    /// A new stream on the same socket (after SASL success).
    pub fn restart(&mut self) {
        self.split = Splitter::default();
    }

    pub fn write_all(&mut self, b: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(b)
            .map_err(|e| format!("{}: write: {e}", self.who))
    }

    /// The next unit, or [`Read1::Idle`] after [`POLL`] of silence.
    pub fn read(&mut self) -> Result<Read1, String> {
        loop {
            if let Some(u) = self
                .split
                .next(&mut self.buf)
                .map_err(|e| format!("{}: {e}", self.who))?
            {
                return Ok(Read1::Unit(u));
            }
            match self.link.read_into(&mut self.scratch, &mut self.buf) {
                Ok(false) => return Err(format!("{}: peer closed the connection", self.who)),
                Ok(true) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Read1::Idle)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: read: {e}", self.who)),
            }
        }
    }

    /// The next unit within `limit` (setup only: handshakes, logins).
    pub fn unit_within(&mut self, limit: Duration) -> Result<Unit, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.read()? {
                Read1::Unit(u) => return Ok(u),
                Read1::Idle if Instant::now() >= deadline => {
                    return Err(format!("{}: nothing within {limit:?}", self.who))
                }
                Read1::Idle => {}
            }
        }
    }

    /// The next stanza within `limit`; a header or stream end is an error.
    pub fn stanza_within(&mut self, limit: Duration) -> Result<Elem, String> {
        match self.unit_within(limit)? {
            Unit::Stanza(s) => Ok(s),
            other => Err(format!("{}: expected a stanza, got {other:?}", self.who)),
        }
    }

    /// The next stream header within `limit`.
    pub fn header_within(&mut self, limit: Duration) -> Result<Elem, String> {
        match self.unit_within(limit)? {
            Unit::Header(h) => Ok(h),
            other => Err(format!(
                "{}: expected a stream header, got {other:?}",
                self.who
            )),
        }
    }
}
