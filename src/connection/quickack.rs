//! `TCP_QUICKACK`, re-armed after each read.
//!
//! Linux delays an ACK (up to ~40 ms) hoping to piggyback it on data
//! going back. A peer with Nagle on — Prosody by default — will not send
//! a second small segment while the first is unacknowledged, so two
//! stanzas written back to back reach us ~40 ms apart when we have
//! nothing to send in between. Quick-ACK mode sends the ACK at once; the
//! kernel leaves that mode on its own, so it is set again after every
//! read that returned bytes (one `setsockopt`, no `unsafe` here: socket2
//! wraps it).
//!
//! The option is set through a duplicate of the socket's descriptor, so
//! that the read half can re-arm it under TLS too (where the TCP stream
//! sits inside the shared TLS session). Elsewhere than Linux it is a
//! no-op.

use tokio::net::TcpStream;

/// Re-arms quick ACKs on one TCP socket.
#[derive(Debug)]
pub struct QuickAck {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl QuickAck {
    /// `None` when the descriptor cannot be duplicated or the option is
    /// refused (the connection then works with the kernel's delayed ACKs).
    #[cfg(target_os = "linux")]
    pub fn new(tcp: &TcpStream) -> Option<QuickAck> {
        use std::os::fd::AsFd;
        let fd = tcp.as_fd().try_clone_to_owned().ok()?;
        let ack = QuickAck { fd };
        socket2::SockRef::from(&ack.fd)
            .set_tcp_quickack(true)
            .ok()?;
        Some(ack)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_tcp: &TcpStream) -> Option<QuickAck> {
        None
    }

    /// Back into quick-ACK mode; a failure only means delayed ACKs again.
    pub fn rearm(&self) {
        #[cfg(target_os = "linux")]
        {
            let _ = socket2::SockRef::from(&self.fd).set_tcp_quickack(true);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::connection::Socket;
    use socket2::SockRef;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// Clearing the option puts the socket in delayed-ACK ("pingpong")
    /// mode, which the kernel reports as off; set-up and each re-arm turn
    /// it back on, through the duplicate descriptor, on the socket itself.
    #[tokio::test]
    async fn set_up_and_rearm_turn_quickack_on() {
        let (client, _server) = pair().await;
        SockRef::from(&client).set_tcp_quickack(false).unwrap();
        assert!(!SockRef::from(&client).tcp_quickack().unwrap());
        let ack = QuickAck::new(&client).expect("quickack set up");
        assert!(SockRef::from(&client).tcp_quickack().unwrap());
        SockRef::from(&client).set_tcp_quickack(false).unwrap();
        ack.rearm();
        assert!(SockRef::from(&client).tcp_quickack().unwrap());
    }

    /// A read half split with `quickack` re-arms it after a read that
    /// returned bytes.
    #[tokio::test]
    async fn read_half_rearms_after_each_read() {
        let (client, mut server) = pair().await;
        let probe = dup(&client);
        let (mut r, _w) = Socket::from(client).split(true);
        for round in 0..3 {
            SockRef::from(&probe).set_tcp_quickack(false).unwrap();
            assert!(!SockRef::from(&probe).tcp_quickack().unwrap());
            server.write_all(b"<iq/>").await.unwrap();
            let mut buf = [0u8; 16];
            let n = r.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"<iq/>");
            assert!(
                SockRef::from(&probe).tcp_quickack().unwrap(),
                "round {round}"
            );
        }
    }

    /// A second descriptor of the test's socket, to look at it after the
    /// stream moved into the split halves.
    fn dup(tcp: &TcpStream) -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd;
        tcp.as_fd().try_clone_to_owned().unwrap()
    }
}
