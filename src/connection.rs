//! One XMPP stream over one socket, as every connection task holds it:
//! the upstream session, its shutdown stragglers, each instance, and the
//! handshake on both sides.
//!
//! A [`Connection`] is made from a socket and the framer limits for its
//! side. While the stream is negotiated it reads frames
//! ([`Connection::read_frame`]) and writes straight to the socket
//! ([`Connection::send`], [`Connection::close`]), so a write error is the
//! handshake's to report. Once the stream is up,
//! [`Connection::start_writer`] hands the write half to a task
//! ([`write::write_loop`]) that batches output from a bounded queue, and
//! splits the connection into its [`Reader`] and its [`Writer`], the
//! handle that queues closes and aborts that task when dropped.
//!
//! Reading maps the framer's results the same way for every caller: the
//! peer's `</stream:stream>` and EOF are both [`Frame::End`]; a failure is
//! a [`CodecError`], fatal to the stream (bytes that cannot be framed are
//! owed the stream error [`crate::xml::FrameError::condition`]).
//!
//! It knows sockets, the framer and the stream-error bytes, and nothing
//! of what the stream carries: it may not import the handshake, the
//! router, the core, the app or any connection task, and it reads no
//! configuration (callers pass the limits and queue sizes).

mod budget;
mod quickack;
mod socket;
mod write;
mod writer;

use std::any::Any;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;

use crate::xml::frame::NS_STREAM_ERRORS;
use crate::xml::{escape, CodecError, Frame, Framer, FramerLimits, StreamCondition, Tokenizer};

pub use budget::QueueBytes;
pub use socket::{Socket, SocketRead, SocketWrite};
pub use write::{write_loop, Out, Progress, Tracked};
pub use writer::{Writer, WriterSettings};

/// Closes our side of a stream.
pub const STREAM_END: &[u8] = b"</stream:stream>";

/// How much a connection reads at once: a burst of stanzas is framed from
/// one read instead of many.
const READ_CAPACITY: usize = 64 * 1024;

/// The frames of a socket's read half (TCP or TLS).
pub type SocketFrames = FramedRead<SocketRead, Framer>;

/// Whatever a connection reads frames from: a `FramedRead<_, Framer>`,
/// or a `&mut` one.
pub trait FrameSource: Stream<Item = Result<Frame, CodecError>> + Unpin {}

impl<T: Stream<Item = Result<Frame, CodecError>> + Unpin> FrameSource for T {}

/// A stream being negotiated: frames in, writes straight to the socket.
///
/// `F` yields the framer's results (a `FramedRead<_, Framer>`, or a
/// `&mut` one for callers that keep their own); `W` is the write half.
/// The defaults are a [`Socket`]'s (TCP or TLS).
#[derive(Debug)]
pub struct Connection<F = SocketFrames, W = SocketWrite> {
    reader: Reader<F>,
    write: W,
}

impl Connection {
    /// A connection over `sock` (a TCP stream or a TLS session over one),
    /// framed with `limits` by `tokenizer`. Nagle is off: every stanza
    /// the writer flushes is meant to go now.
    pub fn new(sock: impl Into<Socket>, limits: FramerLimits, tokenizer: Tokenizer) -> Self {
        Connection::build(sock.into(), limits, tokenizer, false)
    }

    /// As [`Connection::new`], and every read re-arms `TCP_QUICKACK` on
    /// Linux, so what we read is acknowledged at once. For the upstream
    /// link: a server that leaves Nagle on (Prosody's default) holds a
    /// second small stanza until the first is acknowledged, and a delayed
    /// ACK here would make that wait up to ~40 ms.
    pub fn with_quickack(
        sock: impl Into<Socket>,
        limits: FramerLimits,
        tokenizer: Tokenizer,
    ) -> Self {
        Connection::build(sock.into(), limits, tokenizer, true)
    }

    fn build(sock: Socket, limits: FramerLimits, tokenizer: Tokenizer, quickack: bool) -> Self {
        sock.set_nodelay();
        let (r, w) = sock.split(quickack);
        let frames =
            FramedRead::with_capacity(r, Framer::with_tokenizer(limits, tokenizer), READ_CAPACITY);
        Connection::from_parts(frames, w)
    }
}

impl<F: FrameSource, W: AsyncWrite + Unpin> Connection<F, W> {
    /// A connection over frames and a writer made elsewhere (in-memory
    /// streams in tests, a caller that keeps its own `FramedRead`).
    pub fn from_parts(frames: F, write: W) -> Self {
        Connection {
            reader: Reader { frames },
            write,
        }
    }

    /// The next frame; see [`Reader::read_frame`].
    pub async fn read_frame(&mut self) -> Result<Frame, CodecError> {
        self.reader.read_frame().await
    }

    /// Writes `bytes` and flushes, so nothing the peer waits for sits in
    /// a buffer.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.write.flush().await
    }

    /// Ends the stream with the stream error `condition` (RFC 6120 §4.9:
    /// the error, then `</stream:stream>`). The socket stays open for
    /// the caller to drop.
    pub async fn close(&mut self, condition: StreamCondition) -> std::io::Result<()> {
        self.send(&stream_error(condition, None)).await
    }

    /// Ends the stream without an error: `</stream:stream>`.
    pub async fn end_stream(&mut self) -> std::io::Result<()> {
        self.send(STREAM_END).await
    }

    /// Hands the write half to a writer task on `tasks` and splits the
    /// connection: from now on output goes through the returned
    /// [`Writer`]'s queue, and the [`Reader`] reads on where this
    /// connection stopped (frames already buffered are kept).
    pub fn start_writer(self, tasks: &TaskTracker, settings: WriterSettings) -> (Reader<F>, Writer)
    where
        W: Send + 'static,
    {
        let writer = Writer::start(self.write, tasks, settings);
        (self.reader, writer)
    }
}

/// The read side of a connection.
#[derive(Debug)]
pub struct Reader<F = SocketFrames> {
    frames: F,
}

impl<F: FrameSource> Reader<F> {
    /// The next frame. The peer's `</stream:stream>` and the connection's
    /// EOF are both [`Frame::End`] (after an EOF, every later call says so
    /// again); every error is fatal to the stream. Cancel-safe: a frame is
    /// never lost to a `select!` that drops this future.
    pub async fn read_frame(&mut self) -> Result<Frame, CodecError> {
        match self.frames.next().await {
            Some(read) => read,
            None => Ok(Frame::End(Bytes::new())),
        }
    }

    /// The next frame if it is already at hand: framed from what the
    /// last read left in the buffer, or from a read the socket can answer
    /// without waiting. `None` when getting one would mean waiting. Lets
    /// a reader hand the core every frame of one read at once instead of
    /// one wake-up of the core per frame.
    pub fn try_read_frame(&mut self) -> Option<Result<Frame, CodecError>> {
        match self.frames.next().now_or_never()? {
            Some(read) => Some(read),
            None => Some(Ok(Frame::End(Bytes::new()))),
        }
    }
}

/// A stream error followed by the end of the stream, the only way RFC 6120
/// §4.9 lets a stream error be sent.
///
/// [`StreamCondition::Other`] names no condition: it is written as
/// `undefined-condition`. `text` is escaped.
pub fn stream_error(condition: StreamCondition, text: Option<&str>) -> Bytes {
    let condition = match condition {
        StreamCondition::Other => StreamCondition::UndefinedCondition,
        defined => defined,
    };
    let mut out = format!("<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>");
    if let Some(text) = text {
        out.push_str(&format!(
            "<text xmlns='{NS_STREAM_ERRORS}'>{}</text>",
            escape::text(text)
        ));
    }
    out.push_str("</stream:error></stream:stream>");
    Bytes::from(out)
}

/// The message a panic carried, for the one log line that reports a
/// connection task's (or the core's) panic.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic without a message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::FrameError;
    use tokio::io::AsyncReadExt;

    fn over(input: &'static [u8]) -> Connection<FramedRead<&'static [u8], Framer>, Vec<u8>> {
        let framer = Framer::new(FramerLimits::default());
        Connection::from_parts(FramedRead::new(input, framer), Vec::new())
    }

    const HDR: &[u8] = b"<stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' to='d'>";

    /// The peer's end tag and a bare EOF read the same, and keep reading
    /// the same: callers have one arm for "the peer is done".
    #[tokio::test]
    async fn end_tag_and_eof_are_both_the_end() {
        let mut ended = over(
            b"<stream:stream xmlns='jabber:component:accept' \
            xmlns:stream='http://etherx.jabber.org/streams' to='d'></stream:stream>",
        );
        assert!(matches!(ended.read_frame().await, Ok(Frame::Header(_))));
        assert!(matches!(ended.read_frame().await, Ok(Frame::End(_))));
        let mut cut = over(HDR);
        assert!(matches!(cut.read_frame().await, Ok(Frame::Header(_))));
        for _ in 0..2 {
            assert!(matches!(cut.read_frame().await, Ok(Frame::End(_))));
        }
    }

    #[tokio::test]
    async fn a_framing_error_is_an_error() {
        let mut bad = over(
            b"<stream:stream xmlns='jabber:component:accept' \
            xmlns:stream='http://etherx.jabber.org/streams' to='d'><a><!-- c --></a>",
        );
        assert!(matches!(bad.read_frame().await, Ok(Frame::Header(_))));
        let e = bad.read_frame().await.expect_err("a comment is restricted");
        assert!(
            matches!(e, CodecError::Frame(FrameError::Restricted(_))),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn close_writes_the_error_and_the_end_of_the_stream() {
        let mut conn = over(b"");
        conn.close(StreamCondition::ConnectionTimeout)
            .await
            .expect("written");
        conn.end_stream().await.expect("written");
        assert_eq!(
            String::from_utf8_lossy(&conn.write),
            "<stream:error><connection-timeout \
             xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
             </stream:stream></stream:stream>"
        );
    }

    /// Frames that arrived with the last negotiation step stay for the
    /// reader, and the writer task writes what is queued to the socket.
    #[tokio::test]
    async fn start_writer_keeps_buffered_frames_and_writes_the_queue() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(ours);
        let framer = Framer::new(FramerLimits::default());
        let mut conn = Connection::from_parts(FramedRead::new(r, framer), w);
        let mut input = HDR.to_vec();
        input.extend_from_slice(b"<handshake/><iq id='1'/>");
        theirs.write_all(&input).await.expect("written");
        assert!(matches!(conn.read_frame().await, Ok(Frame::Header(_))));
        assert!(matches!(conn.read_frame().await, Ok(Frame::Stanza(_))));
        let tasks = TaskTracker::new();
        let settings = WriterSettings {
            queue: 4,
            queue_bytes: None,
            keepalive: None,
            urgent: None,
        };
        let (mut reader, writer) = conn.start_writer(&tasks, settings);
        match reader.read_frame().await {
            Ok(Frame::Stanza(s)) => assert_eq!(&s.bytes[..], b"<iq id='1'/>"),
            other => panic!("{other:?}"),
        }
        writer.close(StreamCondition::SystemShutdown);
        assert!(
            writer
                .finish_within(std::time::Duration::from_secs(5))
                .await
        );
        let mut out = Vec::new();
        theirs.read_to_end(&mut out).await.expect("EOF after close");
        assert_eq!(out, stream_error(StreamCondition::SystemShutdown, None));
    }
}
