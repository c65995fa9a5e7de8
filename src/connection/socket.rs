//! The byte stream under a [`super::Connection`]: plain TCP, or direct
//! TLS over TCP (XEP-0114 servers offer TLS right after accept on their
//! component ports, never STARTTLS).
//!
//! An enum rather than a generic, so that every connection task, the
//! handshake and the writer keep one concrete type; the cost on the plain
//! path is one match per read or write call. A TCP socket splits into its
//! owned halves as before (no lock between reader and writer); a TLS
//! stream, whose one session state both directions share, is split with
//! [`tokio::io::split`].

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use super::quickack::QuickAck;

/// One connected socket, before it is split.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    /// Boxed: a TLS session's state is large, and most sockets are TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Self {
        Socket::Tcp(s)
    }
}

impl From<TlsStream<TcpStream>> for Socket {
    fn from(s: TlsStream<TcpStream>) -> Self {
        Socket::Tls(Box::new(s))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Socket {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Socket::from(TlsStream::Client(s))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Socket {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Socket::from(TlsStream::Server(s))
    }
}

impl Socket {
    /// Turns Nagle off on the TCP socket (under TLS too: a TLS record
    /// holds whole stanzas the writer means to go now).
    pub fn set_nodelay(&self) {
        let tcp = match self {
            Socket::Tcp(s) => s,
            Socket::Tls(s) => s.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
    }

    /// The read and write halves. With `quickack`, the read half re-arms
    /// `TCP_QUICKACK` on the TCP socket after every read (see
    /// [`QuickAck`]); when that cannot be set up the halves work as
    /// without it.
    pub fn split(self, quickack: bool) -> (SocketRead, SocketWrite) {
        let ack = if quickack {
            let tcp = match &self {
                Socket::Tcp(s) => s,
                Socket::Tls(s) => s.get_ref().0,
            };
            QuickAck::new(tcp)
        } else {
            None
        };
        let (half, w) = match self {
            Socket::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalfOf::Tcp(r), SocketWrite::Tcp(w))
            }
            Socket::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalfOf::Tls(r), SocketWrite::Tls(w))
            }
        };
        (SocketRead { half, ack }, w)
    }
}

/// The read half of a [`Socket`], and what re-arms quick ACKs on it.
#[derive(Debug)]
pub struct SocketRead {
    half: ReadHalfOf,
    ack: Option<QuickAck>,
}

#[derive(Debug)]
enum ReadHalfOf {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a [`Socket`]. Shutting it down under TLS sends the
/// `close_notify` alert before the TCP FIN.
#[derive(Debug)]
pub enum SocketWrite {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for SocketRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.half {
            ReadHalfOf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalfOf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        };
        if let (Some(ack), Poll::Ready(Ok(()))) = (&this.ack, &read) {
            if buf.filled().len() > before {
                ack.rearm();
            }
        }
        read
    }
}

impl AsyncWrite for SocketWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SocketWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            SocketWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SocketWrite::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            SocketWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SocketWrite::Tcp(w) => w.is_write_vectored(),
            SocketWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            SocketWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            SocketWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
