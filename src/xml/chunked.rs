//! The chunk-feeding driver the framer's unit tests, the differential
//! oracle and the fuzz targets share: a stream arriving in pieces of chosen
//! sizes, as a socket delivers it. For tests and fuzzing only (behind
//! `cfg(test)` or the `fuzzing` feature); the relay path reads through
//! [`super::codec`].

use bytes::BytesMut;

use super::fast::FastFramer;
use super::frame::Frame;
use super::framer::{FrameError, RxmlFramer};
use super::tokenizer::Framer;

/// A framer the driver can feed: the [`Framer`] the codec uses, and each
/// tokenizer's own framer (their unit tests run on those directly).
pub trait Frames {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError>;
    fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError>;
}

macro_rules! frames {
    ($($t:ty),*) => {$(
        impl Frames for $t {
            fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
                <$t>::next_frame(self, buf)
            }
            fn next_frame_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
                <$t>::next_frame_eof(self, buf)
            }
        }
    )*};
}
frames!(Framer, FastFramer, RxmlFramer);

/// What a framer made of one input.
#[derive(Debug)]
pub struct Run {
    pub frames: Vec<Frame>,
    pub error: Option<FrameError>,
    /// How many input bytes had been handed to the framer when it first
    /// reported the error (the input length when there was none).
    pub fed: usize,
}

impl Run {
    /// The frames' bytes, concatenated: what the framer consumed.
    pub fn consumed(&self) -> Vec<u8> {
        self.frames
            .iter()
            .flat_map(|f| f.bytes().to_vec())
            .collect()
    }
}

/// Feeds `input` to `f` in pieces of `sizes` (cycled; a size of 0 counts
/// as 1, no sizes as 1), draining frames after each piece, then signals
/// the end of input and drains what that releases.
///
/// Also checks that an error, once reported, stays reported: the codec
/// relies on it, so every test and fuzz target that drives a framer checks
/// it for free.
pub fn drive<F: Frames>(f: &mut F, input: &[u8], sizes: &[usize]) -> Run {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let (mut at, mut i) = (0, 0);
    loop {
        loop {
            match f.next_frame(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return failed(f, &mut buf, frames, e, at),
            }
        }
        if at >= input.len() {
            break;
        }
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1);
        let n = size.max(1).min(input.len() - at);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        i += 1;
    }
    loop {
        match f.next_frame_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => return failed(f, &mut buf, frames, e, at),
        }
    }
    Run {
        frames,
        error: None,
        fed: at,
    }
}

fn failed<F: Frames>(
    f: &mut F,
    buf: &mut BytesMut,
    frames: Vec<Frame>,
    e: FrameError,
    fed: usize,
) -> Run {
    assert_eq!(f.next_frame(buf), Err(e.clone()), "an error must repeat");
    Run {
        frames,
        error: Some(e),
        fed,
    }
}

/// Adjacent whitespace frames merged into one: how a keepalive run is cut
/// depends on how it arrived, and that is allowed to differ.
pub fn merged(frames: &[Frame]) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::with_capacity(frames.len());
    for f in frames {
        if let (Some(Frame::Whitespace(prev)), Frame::Whitespace(b)) = (out.last_mut(), f) {
            let mut joined = prev.to_vec();
            joined.extend_from_slice(b);
            *prev = joined.into();
            continue;
        }
        out.push(f.clone());
    }
    out
}
