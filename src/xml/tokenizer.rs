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

use bytes::BytesMut;

use super::fast::FastFramer;
use super::frame::Frame;
use super::framer::{FrameError, FramerLimits, RxmlFramer};

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
#[derive(Debug)]
pub struct Framer(Engine);

#[derive(Debug)]
enum Engine {
    Rxml(Box<RxmlFramer>),
    Fast(Box<FastFramer>),
}

impl Framer {
    /// A framer on the default tokenizer.
    pub fn new(limits: FramerLimits) -> Self {
        Self::with_tokenizer(limits, Tokenizer::default())
    }

    pub fn with_tokenizer(limits: FramerLimits, tokenizer: Tokenizer) -> Self {
        Framer(match tokenizer {
            Tokenizer::Rxml => Engine::Rxml(Box::new(RxmlFramer::new(limits))),
            Tokenizer::Fast => Engine::Fast(Box::new(FastFramer::new(limits))),
        })
    }

    pub fn tokenizer(&self) -> Tokenizer {
        match self.0 {
            Engine::Rxml(_) => Tokenizer::Rxml,
            Engine::Fast(_) => Tokenizer::Fast,
        }
    }

    /// True once `</stream:stream>` has been framed.
    pub fn ended(&self) -> bool {
        match &self.0 {
            Engine::Rxml(f) => f.ended(),
            Engine::Fast(f) => f.ended(),
        }
    }

    /// True while part of a top-level element (or the header) has been read
    /// but not yet framed.
    pub fn mid_frame(&self) -> bool {
        match &self.0 {
            Engine::Rxml(f) => f.mid_frame(),
            Engine::Fast(f) => f.mid_frame(),
        }
    }

    /// Frames the next unit from `buf`, which holds every byte not yet
    /// framed (frames are split off its front). `Ok(None)` means more bytes
    /// are needed. After an error, every call returns that error again.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match &mut self.0 {
            Engine::Rxml(f) => f.next_frame(buf),
            Engine::Fast(f) => f.next_frame(buf),
        }
    }

    /// Like [`Framer::next_frame`], for the end of the input: bytes left
    /// over in the middle of an element are an error, a clean cut between
    /// stanzas is not (the connection layer decides what a missing
    /// `</stream:stream>` means).
    pub fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match &mut self.0 {
            Engine::Rxml(f) => f.next_frame_eof(buf),
            Engine::Fast(f) => f.next_frame_eof(buf),
        }
    }
}
