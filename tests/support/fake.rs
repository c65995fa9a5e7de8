//! Loopback fakes for driving a jatproxy [`Proxy`] over real TCP: the
//! upstream XMPP server's component port ([`FakeServer`]) and component
//! instances connecting to jatproxy's listener ([`FakeInstance`]), both
//! built on jatproxy's own framer and XEP-0114 handshake helpers.
//!
//! Every wait is bounded by [`WAIT`], and a stream that ends or
//! misbehaves panics with what was seen. The one harness for every test
//! that puts a fake XMPP server before jatproxy: instance pools
//! ([`instances_config`]) and client proxies ([`client_proxy_config`],
//! [`Session::expect_subscription`]).
//!
//! Included with `#[path = "support/fake.rs"] mod fake;` so that test
//! binaries that do not use it (the Prosody ones) do not compile it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use jatproxy::config::{self, Secret};
use jatproxy::handshake::{self, HandshakeError};
use jatproxy::proxy::Proxy;
use jatproxy::xml::{
    inspect, CodecError, Frame, Framer, FramerLimits, Stanza, StreamCondition, StreamError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::FramedRead;

/// The component domain jatproxy serves.
pub const D: &str = "proxy.example.test";
/// What jatproxy presents to the (fake) server.
pub const UPSTREAM_SECRET: &str = "s3cret-for-tests";
/// The client proxy's target account ([`client_proxy_config`]).
pub const T: &str = "impl@example.test";
/// What instances present to jatproxy.
pub const INSTANCE_SECRET: &str = "instance-s3cret";
/// The bound on every wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// jatproxy with only an instance pool (no target account), its upstream
/// pointed at `server`. `instances` goes into `[instances]`; `rest` is
/// appended after it (whole tables such as `[routing]`).
pub fn instances_config(server: &str, instances: &str, rest: &str) -> config::Config {
    instances_config_with_upstream(server, "", instances, rest)
}

/// [`instances_config`] with `upstream` added to the `[upstream]` table
/// (`keepalive_interval = "200ms"`).
pub fn instances_config_with_upstream(
    server: &str,
    upstream: &str,
    instances: &str,
    rest: &str,
) -> config::Config {
    config_for(
        server,
        upstream,
        &format!(
            "[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n{instances}\n\n{rest}"
        ),
    )
}

/// jatproxy as a client proxy for the account [`T`] (no instance pool),
/// its upstream pointed at `server`; `extra` is appended after the
/// `[client_proxy]` table (whole tables such as `[routing]`).
pub fn client_proxy_config(server: &str, extra: &str) -> config::Config {
    config_for(
        server,
        "",
        &format!("[client_proxy]\ntarget_address = \"{T}\"\n{extra}"),
    )
}

/// The settings every fake-server test shares, with `upstream` added to
/// the `[upstream]` table and `pool` (whole tables) after them.
fn config_for(server: &str, upstream: &str, pool: &str) -> config::Config {
    let toml = format!(
        r#"
[upstream]
server = "{server}"
domain = "{D}"
secret = "{UPSTREAM_SECRET}"
reconnect_min = "20ms"
reconnect_max = "200ms"
handshake_timeout = "5s"
{upstream}

# The fake server does not answer our </stream:stream>: after shutdown
# jatproxy waits half the grace for it (to answer late requests).
[service]
shutdown_grace = "400ms"

{pool}
"#
    );
    config::from_toml_str(&toml).expect("test config is valid")
}

/// A listening fake XMPP server (its component port).
pub struct FakeServer {
    listener: TcpListener,
}

/// The read half of a stream, framed by jatproxy's own framer.
pub struct Reader {
    frames: FramedRead<OwnedReadHalf, Framer>,
    /// Who is reading, for panic messages.
    who: String,
}

/// The write half of a stream.
pub struct Writer {
    w: OwnedWriteHalf,
}

/// The proxy's upstream session as the fake server sees it.
pub struct Session {
    pub r: Reader,
    pub w: Writer,
}

impl FakeServer {
    pub async fn bind() -> Self {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    pub fn addr(&self) -> String {
        self.listener.local_addr().expect("addr").to_string()
    }

    /// Accepts the proxy's next connection and leaves the stream to the
    /// caller.
    pub async fn accept_socket(&self) -> TcpStream {
        let (sock, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("proxy connects in time")
            .expect("accept");
        sock
    }

    /// Accepts the proxy's connection and completes the handshake as a
    /// server does (checking the digest).
    pub async fn accept(&self) -> Session {
        self.accept_with_secret(UPSTREAM_SECRET).await
    }

    /// [`FakeServer::accept`], for a proxy configured with `secret`.
    pub async fn accept_with_secret(&self, secret: &str) -> Session {
        let (mut s, ok) = self.accept_raw("stream-1", secret).await;
        assert!(ok, "the proxy sent the digest of {secret:?}");
        s.w.send("<handshake/>").await;
        s
    }

    /// Accepts the proxy's connection, answers its header with stream id
    /// `id` and reads its handshake, leaving the answer to the caller;
    /// also returns whether the digest is the one of `id` and `secret`.
    pub async fn accept_raw(&self, id: &str, secret: &str) -> (Session, bool) {
        let mut s = self.accept_header(id).await;
        let hs = s.r.recv().await;
        assert_eq!(hs.name, "handshake");
        let digest = inspect::element_text(&hs.bytes);
        (s, digest == handshake::digest(id, secret))
    }

    /// Accepts the proxy's connection and refuses its handshake with the
    /// stream error `condition`, as a server does for a wrong secret.
    pub async fn refuse_handshake(&self, condition: &str) {
        let mut s = self.accept_header("stream-1").await;
        let hs = s.r.recv().await;
        assert_eq!(hs.name, "handshake");
        s.w.send(&format!(
            "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        ))
        .await;
    }

    /// Accepts a connection and exchanges stream headers (stream id `id`).
    async fn accept_header(&self, id: &str) -> Session {
        let (sock, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("proxy connects in time")
            .expect("accept");
        let _ = sock.set_nodelay(true);
        let (r, w) = sock.into_split();
        let mut s = Session {
            r: Reader::new(r, "fake server"),
            w: Writer { w },
        };
        match s.r.next_frame().await {
            Some(Frame::Header(h)) => assert_eq!(h.to.as_deref(), Some(D)),
            other => panic!("expected a stream header, got {other:?}"),
        }
        s.w.send(&String::from_utf8_lossy(&handshake::server_header(D, id)))
            .await;
        s
    }
}

impl Session {
    /// Consumes the subscribe a client proxy sends after each handshake,
    /// grants it as a server does, and consumes the probe that follows.
    pub async fn expect_subscription(&mut self) {
        let sub = self.r.recv().await;
        assert_eq!((sub.stanza_type(), sub.to()), (Some("subscribe"), Some(T)));
        self.w
            .send(&format!(
                "<presence type='subscribed' from='{T}' to='{D}'/>"
            ))
            .await;
        let probe = self.r.recv().await;
        assert_eq!((probe.stanza_type(), probe.to()), (Some("probe"), Some(T)));
    }

    /// Checks that nothing more is on its way to the server (a late
    /// duplicate answer, say): a marker request sent now must be the next
    /// thing the proxy sends, forwarded to a member or refused.
    pub async fn expect_nothing_more(&mut self, marker: &str) {
        self.w
            .send(&format!(
                "<iq type='get' id='{marker}' to='{D}' from='marker@example.test/m'/>"
            ))
            .await;
        let next = self.r.recv().await;
        assert_eq!(
            next.id(),
            Some(marker),
            "something else came first: {}",
            text(&next)
        );
    }
}

impl Reader {
    fn new(r: OwnedReadHalf, who: &str) -> Self {
        Reader {
            frames: FramedRead::with_capacity(r, Framer::new(big_limits()), 64 * 1024),
            who: who.to_owned(),
        }
    }

    /// The next frame; `None` at the end of the connection. Panics after
    /// [`WAIT`] without one.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match self.try_next_frame(WAIT).await {
            Ok(f) => f,
            Err(e) => panic!("{}: {e}", self.who),
        }
    }

    /// The next frame, or why there is none within `wait`.
    pub async fn try_next_frame(&mut self, wait: Duration) -> Result<Option<Frame>, String> {
        match tokio::time::timeout(wait, self.frames.next()).await {
            Ok(Some(Ok(f))) => Ok(Some(f)),
            Ok(Some(Err(CodecError::Io(e)))) => Err(format!("connection failed: {e}")),
            Ok(Some(Err(e))) => Err(format!("peer sent bad XML: {e}")),
            Ok(None) => Ok(None),
            Err(_) => Err(format!("nothing within {wait:?}")),
        }
    }

    /// The next stanza, skipping keepalives.
    pub async fn recv(&mut self) -> Stanza {
        loop {
            match self.next_frame().await {
                Some(Frame::Stanza(s)) => return s,
                Some(Frame::Whitespace(_)) => continue,
                other => panic!("{}: expected a stanza, got {other:?}", self.who),
            }
        }
    }

    /// The next stanza within `wait`, if any (keepalives skipped); `None`
    /// on silence. Panics if the stream ends.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Stanza> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.frames.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Frame::Stanza(s)))) => return Some(s),
                Ok(Some(Ok(Frame::Whitespace(_)))) => continue,
                Ok(other) => panic!("{}: expected a stanza, got {other:?}", self.who),
            }
        }
    }

    /// Reads until the peer closes the stream with a stream error and
    /// returns its condition; stanzas before it are returned too.
    pub async fn expect_stream_error(&mut self) -> (StreamCondition, Vec<Stanza>) {
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                Some(Frame::Stanza(s)) if s.name == "error" => {
                    return (StreamError::parse(&s.bytes).condition, before);
                }
                Some(Frame::Stanza(s)) => before.push(s),
                Some(Frame::Whitespace(_)) => {}
                other => panic!(
                    "{}: expected a stream error, got {other:?} after {before:?}",
                    self.who
                ),
            }
        }
    }
}

impl Writer {
    pub async fn send(&mut self, xml: &str) {
        self.w
            .write_all(xml.as_bytes())
            .await
            .expect("write to proxy");
    }

    /// Like `send`, for when the peer may be gone.
    pub async fn try_send(&mut self, xml: &str) -> std::io::Result<()> {
        self.w.write_all(xml.as_bytes()).await
    }
}

/// Framer limits for test readers: jatproxy may relay stanzas up to its
/// own limit, which tests raise for large payloads.
fn big_limits() -> FramerLimits {
    FramerLimits {
        max_stanza_bytes: 4 << 20,
        ..FramerLimits::default()
    }
}

/// A component instance connected to jatproxy's listener, speaking plain
/// XEP-0114 through jatproxy's own handshake code (the component side,
/// the one jatproxy uses upstream).
pub struct FakeInstance {
    pub r: Reader,
    pub w: Writer,
}

impl FakeInstance {
    /// Connects and authenticates as `domain` with `secret`; the error is
    /// the handshake's (a refusal carries the stream error condition).
    pub async fn connect_as(
        addr: SocketAddr,
        domain: &str,
        secret: &str,
        name: &str,
    ) -> Result<FakeInstance, HandshakeError> {
        let sock = TcpStream::connect(addr).await.expect("connect to listener");
        Self::handshake(sock, domain, secret, name).await
    }

    /// Its end of the connection: the peer address jatproxy sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.w
            .w
            .local_addr()
            .expect("a connected socket has an address")
    }

    /// An instance of [`D`] with the right secret.
    pub async fn connect(addr: SocketAddr, name: &str) -> FakeInstance {
        Self::connect_as(addr, D, INSTANCE_SECRET, name)
            .await
            .unwrap_or_else(|e| panic!("instance {name}: handshake failed: {e}"))
    }

    /// An instance whose socket has a tiny receive buffer, so that when
    /// it stops reading, the kernel holds little for it and jatproxy's
    /// queue for it fills after a few large stanzas.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, name: &str) -> FakeInstance {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let sock = socket.connect(addr).await.expect("connect to listener");
        Self::handshake(sock, D, INSTANCE_SECRET, name)
            .await
            .unwrap_or_else(|e| panic!("instance {name}: handshake failed: {e}"))
    }

    async fn handshake(
        sock: TcpStream,
        domain: &str,
        secret: &str,
        name: &str,
    ) -> Result<FakeInstance, HandshakeError> {
        let _ = sock.set_nodelay(true);
        let (r, w) = sock.into_split();
        let mut r = Reader::new(r, &format!("instance {name}"));
        let mut w = Writer { w };
        handshake::connect(&mut r.frames, &mut w.w, domain, &Secret::new(secret), WAIT).await?;
        Ok(FakeInstance { r, w })
    }
}

/// Starts jatproxy for `server` with these extra settings, and waits for
/// its upstream session.
pub async fn start(server: &FakeServer, instances: &str, rest: &str) -> (Proxy, Session) {
    start_with_upstream(server, "", instances, rest).await
}

/// [`start`] with `upstream` added to the `[upstream]` table.
pub async fn start_with_upstream(
    server: &FakeServer,
    upstream: &str,
    instances: &str,
    rest: &str,
) -> (Proxy, Session) {
    let proxy = Proxy::start(instances_config_with_upstream(
        &server.addr(),
        upstream,
        instances,
        rest,
    ))
    .await
    .expect("proxy starts");
    let s = server.accept().await;
    assert!(proxy.wait_for(WAIT, |st| st.upstream_online).await);
    (proxy, s)
}

/// A stanza's bytes as text.
pub fn text(s: &Stanza) -> String {
    String::from_utf8_lossy(&s.bytes).into_owned()
}

/// The defined condition of a stanza error (`recipient-unavailable`…).
pub fn error_condition(s: &Stanza) -> Option<String> {
    let t = text(s);
    let i = t.find("urn:ietf:params:xml:ns:xmpp-stanzas")?;
    let head = &t[..i];
    let start = head.rfind('<')? + 1;
    let name = head[start..].split_whitespace().next()?;
    (name != "text").then(|| name.to_owned())
}

/// The value of attribute `name` on the first element in `xml` that has it
/// after `after` (a cheap look into payloads the test wrote itself).
pub fn attr_after(xml: &str, after: &str, name: &str) -> Option<String> {
    let rest = &xml[xml.find(after)? + after.len()..];
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = rest.find(&pat) {
            let v = &rest[i + pat.len()..];
            return v.find(q).map(|e| v[..e].to_owned());
        }
    }
    None
}
