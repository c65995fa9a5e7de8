//! Which tokenizer frames a stream, and the [`Framer`] callers use.
//!
//! Two implementations sit behind one interface: [`RxmlFramer`] (rxml's
//! event parser, the reference) and [`FastFramer`] (a byte-level scanner,
//! several times faster). Both accept and refuse the same streams with
//! the same frames; the fast one is checked against rxml by unit tests,
//! property tests and the `fast_vs_rxml` fuzz target. Both follow XML 1.0
//! rather than rxml where rxml is stricter (a raw CR in an attribute
//! value); one point remains where `--tokenizer rxml` is stricter: a
//! character reference of more than 8 digits (`&#0000000065;`, legal
//! XML but never written by a server, which serialises characters) is
//! refused by rxml, whose lexer stops at 8, and accepted by the fast
//! tokenizer. A same-length rewrite cannot shorten a reference, so the
//! rxml framer cannot feed rxml an equivalent. `rxml` stays
//! selectable (`--tokenizer rxml`) as the fallback should a difference
//! ever show up in the field.

use bytes::{Bytes, BytesMut};

use super::fast::FastFramer;
use super::frame::{Frame, Limit, Skipped, Stanza};
use super::framer::{FrameError, FramerLimits, RxmlFramer};
use super::skip::{SkipError, Skipper};

/// The tokenizer a [`Framer`] runs on (`limits.tokenizer`, `--tokenizer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// rxml's parser: slower, the reference the fast one is tested
    /// against, and the fallback.
    Rxml,
    /// The byte-level scanner: the default since it ran 10 minutes of
    /// differential fuzzing against rxml clean (see the README).
    #[default]
    Fast,
}

impl Tokenizer {
    pub fn as_str(self) -> &'static str {
        match self {
            Tokenizer::Rxml => "rxml",
            Tokenizer::Fast => "fast",
        }
    }
}

impl std::fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The streaming framer. Feed it with [`Framer::next_frame`] (or use it as
/// a `tokio_util::codec::Decoder`, see [`super::codec`]).
///
/// With [`FramerLimits::per_stanza`], a stanza over a limit does not end
/// the stream: the tokenizer reports the limit, the framer hands the
/// bytes from the stanza's first one to a [`Skipper`] (which reads on to
/// the stanza's end, discarding as it goes), then starts a fresh
/// tokenizer primed with the stream header it kept, and returns
/// [`Frame::Skipped`]. The bytes after the stanza frame as if it had not
/// been there.
#[derive(Debug)]
pub struct Framer {
    engine: Engine,
    limits: FramerLimits,
    /// A copy of the stream header's bytes, once framed: replayed into a
    /// fresh tokenizer after a skip, and the context the skipped
    /// stanza's head is decoded in. Copied, not shared, so it does not
    /// pin a read buffer's allocation for the life of the stream.
    header: Option<Bytes>,
    /// The stanza being skipped and the limit it broke.
    skipping: Option<(Skipper, Limit, usize)>,
    /// An error found while skipping: it repeats, as the tokenizers' do.
    failed: Option<FrameError>,
}

#[derive(Debug)]
enum Engine {
    Rxml(Box<RxmlFramer>),
    Fast(Box<FastFramer>),
}

impl Engine {
    fn new(limits: FramerLimits, tokenizer: Tokenizer) -> Self {
        match tokenizer {
            Tokenizer::Rxml => Engine::Rxml(Box::new(RxmlFramer::new(limits))),
            Tokenizer::Fast => Engine::Fast(Box::new(FastFramer::new(limits))),
        }
    }

    fn tokenizer(&self) -> Tokenizer {
        match self {
            Engine::Rxml(_) => Tokenizer::Rxml,
            Engine::Fast(_) => Tokenizer::Fast,
        }
    }

    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self {
            Engine::Rxml(f) => f.next_frame(buf),
            Engine::Fast(f) => f.next_frame(buf),
        }
    }

    fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self {
            Engine::Rxml(f) => f.next_frame_eof(buf),
            Engine::Fast(f) => f.next_frame_eof(buf),
        }
    }
}

/// The per-stanza limit an error reports, with the limit's value.
fn limit_of(e: &FrameError) -> Option<(Limit, usize)> {
    match *e {
        FrameError::TooLarge { limit } => Some((Limit::Size, limit)),
        FrameError::TooDeep { limit } => Some((Limit::Depth, limit)),
        FrameError::TokenTooLong { limit } => Some((Limit::Token, limit)),
        _ => None,
    }
}

impl Framer {
    /// A framer on the default tokenizer.
    pub fn new(limits: FramerLimits) -> Self {
        Self::with_tokenizer(limits, Tokenizer::default())
    }

    pub fn with_tokenizer(limits: FramerLimits, tokenizer: Tokenizer) -> Self {
        Framer {
            engine: Engine::new(limits, tokenizer),
            limits,
            header: None,
            skipping: None,
            failed: None,
        }
    }

    pub fn tokenizer(&self) -> Tokenizer {
        self.engine.tokenizer()
    }

    /// True once `</stream:stream>` has been framed.
    pub fn ended(&self) -> bool {
        self.skipping.is_none()
            && match &self.engine {
                Engine::Rxml(f) => f.ended(),
                Engine::Fast(f) => f.ended(),
            }
    }

    /// True while part of a top-level element (or the header) has been read
    /// but not yet framed (or skipped).
    pub fn mid_frame(&self) -> bool {
        self.skipping.is_some()
            || match &self.engine {
                Engine::Rxml(f) => f.mid_frame(),
                Engine::Fast(f) => f.mid_frame(),
            }
    }

    /// Frames the next unit from `buf`, which holds every byte not yet
    /// framed (frames are split off its front, a skipped stanza's bytes
    /// are dropped from it). `Ok(None)` means more bytes are needed.
    /// After an error, every call returns that error again.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.frame(buf, false)
    }

    /// Like [`Framer::next_frame`], for the end of the input: bytes left
    /// over in the middle of an element are an error, a clean cut between
    /// stanzas is not (the connection layer decides what a missing
    /// `</stream:stream>` means).
    pub fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.frame(buf, true)
    }

    fn frame(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.skipping.is_none() {
            let res = if eof {
                self.engine.next_frame_eof(buf)
            } else {
                self.engine.next_frame(buf)
            };
            // Matched by reference and returned whole: a frame is a few
            // hundred bytes, and taking it apart and rebuilding it cost a
            // copy per stanza (the profile's `memmove`).
            match &res {
                Ok(Some(Frame::Header(h))) => {
                    self.header = Some(Bytes::copy_from_slice(&h.bytes));
                    return res;
                }
                // The header itself over a limit stays fatal: there is no
                // stream to go on with.
                Err(e) if self.limits.per_stanza && self.header.is_some() => {
                    let Some((limit, max)) = limit_of(e) else {
                        return res;
                    };
                    self.skipping = Some((Skipper::new(), limit, max));
                    // Kept for the case there is no stanza to skip.
                    self.failed = res.err();
                }
                _ => return res,
            }
        }
        self.skip(buf, eof)
    }

    /// Reads on through the stanza being skipped.
    fn skip(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Frame>, FrameError> {
        let Some((skipper, limit, max)) = &mut self.skipping else {
            return Ok(None);
        };
        let (limit, max) = (*limit, *max);
        match skipper.feed(buf) {
            Ok(true) => {}
            Ok(false) if eof => return Err(self.fail(FrameError::Truncated)),
            Ok(false) => {
                // Skipping: the limit's error is not this stream's end.
                self.failed = None;
                return Ok(None);
            }
            Err(SkipError::NoElement) => {
                let e = self
                    .failed
                    .clone()
                    .unwrap_or(FrameError::TooLarge { limit: max });
                return Err(self.fail(e));
            }
            Err(SkipError::Frame(e)) => return Err(self.fail(e)),
        }
        self.failed = None;
        let (len, tag) = (skipper.len(), skipper.head_tag());
        self.skipping = None;
        self.engine = self.primed()?;
        let head = tag.and_then(|t| self.decode_head(&t));
        Ok(Some(Frame::Skipped(Skipped {
            limit,
            max,
            len,
            head: head.map(Box::new),
        })))
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.skipping = None;
        self.failed = Some(e.clone());
        e
    }

    /// A fresh tokenizer that has read the stream header again, so it
    /// stands between stanzas with the header's namespaces in scope.
    fn primed(&mut self) -> Result<Engine, FrameError> {
        let mut engine = Engine::new(self.limits, self.engine.tokenizer());
        let header = self.header.clone().unwrap_or_default();
        let mut b = BytesMut::from(&header[..]);
        match engine.next_frame(&mut b) {
            Ok(Some(Frame::Header(_))) if b.is_empty() => Ok(engine),
            // The header framed once already, with the same limits.
            other => {
                let e = FrameError::BadHeader(format!(
                    "the stream header did not frame again after a skip: {other:?}"
                ));
                Err(self.fail(e))
            }
        }
    }

    /// The skipped stanza's head: the synthetic start tag `tag` framed by
    /// a fresh tokenizer after the stream header, so it is decoded (and
    /// validated) exactly as a stanza is. None if it does not frame.
    fn decode_head(&self, tag: &[u8]) -> Option<Stanza> {
        let header = self.header.as_ref()?;
        let size = header.len().max(tag.len()) + 1;
        let limits = FramerLimits {
            max_stanza_bytes: size,
            max_depth: 1,
            max_token_bytes: size,
            per_stanza: false,
        };
        let mut engine = Engine::new(limits, self.engine.tokenizer());
        let mut b = BytesMut::with_capacity(header.len() + tag.len());
        b.extend_from_slice(header);
        b.extend_from_slice(tag);
        loop {
            match engine.next_frame(&mut b) {
                Ok(Some(Frame::Stanza(s))) => return Some(s),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }
}
