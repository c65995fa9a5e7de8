//! The framer as a `tokio_util::codec::Decoder`, so a connection reads
//! frames with `FramedRead` and the framer itself stays free of I/O.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::frame::Frame;
use super::framer::FrameError;
use super::tokenizer::Framer;

/// A read failure: either the socket or the bytes on it. Both end the stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed; the peer is gone or the network broke.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that cannot be framed; send the stream error
    /// [`FrameError::condition`] and close.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Decoder for Framer {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.next_frame(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.next_frame_eof(src)?)
    }
}
