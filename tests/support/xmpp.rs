//! Small helpers for tests that talk XMPP to a test server.
//!
//! * [`TestClient`]: a c2s client (tokio-xmpp 6 plaintext `Client`, no TLS,
//!   SCRAM over loopback) driven by a background task, so that subscription
//!   requests can be auto-accepted and incoming stanzas are queued even while
//!   the test is busy elsewhere.
//! * [`RawComponent`]: a raw XEP-0114 connection (TCP + handshake) that
//!   returns what the server writes as text, for checking the wire.
//!
//! Every wait takes a timeout. Stanzas are handled as minidom `Element`s
//! (namespace `jabber:client` on c2s).
//!
//! Caveats of tokio-xmpp 6 worth knowing in tests:
//! * a stanza the client cannot parse (e.g. an `<iq type='get'>` without
//!   exactly one child) makes it send a stream error and reconnect;
//! * after a disconnect it reconnects on its own and emits a new `Online`
//!   event (see [`TestClient::wait_online_count`]); presence is not re-sent.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_xmpp::connect::DnsConfig;
pub use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::jid::{FullJid, Jid};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

/// Default timeout for connects and receives in tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const NS_CLIENT: &str = "jabber:client";

enum Cmd {
    Send(Box<Stanza>, oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// A logged-in c2s client. Dropping it aborts the background task (the TCP
/// connection is closed without a stream footer); call [`TestClient::close`]
/// for an orderly `</stream:stream>`.
pub struct TestClient {
    jid: FullJid,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    in_rx: mpsc::UnboundedReceiver<Element>,
    /// Stanzas received but skipped by `recv_matching`, oldest first.
    backlog: VecDeque<Element>,
    /// (number of Online events so far, last bound JID)
    online: watch::Receiver<(u64, Option<FullJid>)>,
    auto_accept: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

/// Logs in `jid` (bare or full; a resource is requested if given) with
/// `password` at `server` (plaintext TCP) and waits for `Event::Online`.
/// Fails after `wait` (wrong password, server down: tokio-xmpp keeps
/// retrying silently, so only the timeout tells).
pub async fn connect(
    jid: &str,
    password: &str,
    server: SocketAddr,
    wait: Duration,
) -> Result<TestClient, String> {
    let parsed = Jid::from_str(jid).map_err(|e| format!("bad JID {jid:?}: {e}"))?;
    let mut client = Client::new_plaintext(
        parsed,
        password.to_string(),
        DnsConfig::addr(&server.to_string()),
        Timeouts::tight(),
    );
    let first = timeout(wait, async {
        while let Some(ev) = client.next().await {
            match ev {
                Event::Online { bound_jid, .. } => return Ok(bound_jid),
                Event::Disconnected(e) => return Err(format!("disconnected: {e}")),
                Event::Stanza(_) => {}
            }
        }
        Err("client stream ended".to_string())
    })
    .await;
    let bound = match first {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return Err(format!("{jid} at {server}: {e}")),
        Err(_) => {
            return Err(format!(
                "{jid} not online at {server} within {wait:?} (wrong password? server down?)"
            ))
        }
    };
    let full = bound
        .try_as_full()
        .map_err(|_| format!("bound JID {bound} is not full"))?
        .clone();

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (online_tx, online_rx) = watch::channel((1u64, Some(full.clone())));
    let auto_accept = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(drive(client, cmd_rx, in_tx, online_tx, auto_accept.clone()));
    Ok(TestClient {
        jid: full,
        cmd_tx,
        in_rx,
        backlog: VecDeque::new(),
        online: online_rx,
        auto_accept,
        task: Some(task),
    })
}

async fn drive(
    mut client: Client,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    in_tx: mpsc::UnboundedSender<Element>,
    online_tx: watch::Sender<(u64, Option<FullJid>)>,
    auto_accept: Arc<AtomicBool>,
) {
    let mut close_reply = None;
    loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                Some(Cmd::Send(stanza, reply)) => {
                    let r = client.send_stanza(*stanza).await.map(|_| ()).map_err(|e| e.to_string());
                    let _ = reply.send(r);
                }
                Some(Cmd::Close(reply)) => { close_reply = Some(reply); break; }
                None => break,
            },
            ev = client.next() => match ev {
                None => break,
                Some(Event::Online { bound_jid, .. }) => {
                    online_tx.send_modify(|(n, j)| {
                        *n += 1;
                        *j = bound_jid.try_as_full().ok().cloned();
                    });
                }
                Some(Event::Disconnected(_)) => {}
                Some(Event::Stanza(stanza)) => {
                    let el = Element::from(stanza);
                    if auto_accept.load(Ordering::Relaxed)
                        && el.name() == "presence"
                        && el.attr("type") == Some("subscribe")
                    {
                        if let Some(Ok(from)) = el.attr("from").map(Jid::from_str) {
                            let mut answer = Presence::new(PresenceType::Subscribed);
                            answer.to = Some(from.to_bare().into());
                            let _ = client.send_stanza(answer.into()).await;
                        }
                    }
                    let _ = in_tx.send(el);
                }
            },
        }
    }
    let _ = timeout(Duration::from_secs(5), client.send_end()).await;
    if let Some(r) = close_reply {
        let _ = r.send(());
    }
}

impl TestClient {
    /// The bound full JID.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    /// Answer every `<presence type='subscribe'>` with `subscribed` (the
    /// request is still delivered to `recv*`). Works while the client is
    /// alive, whether or not the test is receiving.
    pub fn set_auto_accept_subscribe(&self, on: bool) {
        self.auto_accept.store(on, Ordering::Relaxed);
    }

    /// Sends a stanza and waits until it is written to the socket.
    pub async fn send(&self, stanza: impl Into<Stanza>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(Cmd::Send(Box::new(stanza.into()), tx))
            .map_err(|_| "client task gone".to_string())?;
        match timeout(TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("client task gone".to_string()),
            Err(_) => Err(format!("send not written within {TIMEOUT:?}")),
        }
    }

    /// Sends a minidom element (`iq`, `message` or `presence` in
    /// `jabber:client`).
    pub async fn send_element(&self, el: Element) -> Result<(), String> {
        let text = String::from(&el);
        let stanza = Stanza::try_from(el).map_err(|e| format!("not a stanza: {e:?}: {text}"))?;
        self.send(stanza).await
    }

    /// Sends raw XML, e.g. `<iq type='get' id='a1' to='x'><ping xmlns='urn:xmpp:ping'/></iq>`.
    /// `xmlns='jabber:client'` is added to the root if it has none.
    pub async fn send_xml(&self, xml: &str) -> Result<(), String> {
        self.send_element(parse_xml(xml)?).await
    }

    /// Initial available presence (`<presence/>`).
    pub async fn send_presence(&self) -> Result<(), String> {
        self.send_element(Element::builder("presence", NS_CLIENT).build())
            .await
    }

    /// The next stanza (first from the backlog of skipped stanzas).
    pub async fn recv(&mut self, wait: Duration) -> Result<Element, String> {
        self.recv_matching(wait, |_| true).await
    }

    /// The next stanza for which `pred` holds. Stanzas looked at and not
    /// matching are kept in a backlog (oldest first) for later calls; the
    /// backlog is searched first.
    pub async fn recv_matching<F>(&mut self, wait: Duration, mut pred: F) -> Result<Element, String>
    where
        F: FnMut(&Element) -> bool,
    {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return Ok(self.backlog.remove(i).expect("index from position"));
        }
        let deadline = Instant::now() + wait;
        loop {
            match timeout_at(deadline, self.in_rx.recv()).await {
                Ok(Some(el)) => {
                    if pred(&el) {
                        return Ok(el);
                    }
                    self.backlog.push_back(el);
                }
                Ok(None) => return Err(format!("{}: client task ended", self.jid)),
                Err(_) => {
                    let seen: Vec<String> = self.backlog.iter().map(String::from).collect();
                    return Err(format!(
                        "{}: no matching stanza within {wait:?}; unmatched so far: {seen:#?}",
                        self.jid
                    ));
                }
            }
        }
    }

    /// Waits for the iq `type='result'|'error'` with this `id`.
    pub async fn recv_iq_response(&mut self, id: &str, wait: Duration) -> Result<Element, String> {
        self.recv_matching(wait, |e| {
            e.name() == "iq"
                && e.attr("id") == Some(id)
                && matches!(e.attr("type"), Some("result") | Some("error"))
        })
        .await
    }

    /// Takes everything received so far without waiting (backlog first).
    pub fn drain(&mut self) -> Vec<Element> {
        let mut v: Vec<Element> = self.backlog.drain(..).collect();
        while let Ok(el) = self.in_rx.try_recv() {
            v.push(el);
        }
        v
    }

    /// Number of `Online` events so far (1 after `connect`; +1 per
    /// automatic reconnect, e.g. after a server restart).
    pub fn online_count(&self) -> u64 {
        self.online.borrow().0
    }

    /// Waits until at least `n` `Online` events have happened.
    pub async fn wait_online_count(&mut self, n: u64, wait: Duration) -> Result<(), String> {
        let r = timeout(wait, self.online.wait_for(|(c, _)| *c >= n))
            .await
            .map(|inner| inner.map(|_| ()));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("client task ended".to_string()),
            Err(_) => Err(format!(
                "{}: online count {} < {n} after {wait:?}",
                self.jid,
                self.online_count()
            )),
        }
    }

    /// Orderly close (`</stream:stream>`), bounded by 5 s.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Cmd::Close(tx)).is_ok() {
            let _ = timeout(Duration::from_secs(6), rx).await;
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Parses one XML element; adds `xmlns='jabber:client'` to the root when
/// it declares no default namespace.
pub fn parse_xml(xml: &str) -> Result<Element, String> {
    let xml = xml.trim();
    let with_ns;
    let src = if root_has_default_ns(xml) {
        xml
    } else {
        let name_end = xml[1..]
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .map(|i| i + 1)
            .ok_or_else(|| format!("not an element: {xml}"))?;
        with_ns = format!(
            "{} xmlns='{NS_CLIENT}'{}",
            &xml[..name_end],
            &xml[name_end..]
        );
        &with_ns
    };
    src.parse::<Element>()
        .map_err(|e| format!("bad XML ({e}): {src}"))
}

fn root_has_default_ns(xml: &str) -> bool {
    let head_end = xml.find('>').unwrap_or(xml.len());
    let head = &xml[..head_end];
    head.contains(" xmlns=") || head.contains(" xmlns =")
}

/// Serialises an element (for printing / assertions on text).
pub fn to_xml(el: &Element) -> String {
    String::from(el)
}

/// `hex(sha1(stream_id + secret))`, the XEP-0114 handshake value.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// A raw XEP-0114 component connection. What the server writes is returned
/// as text, one top-level element at a time (split by a small tag-depth
/// scanner, not a parser), so tests see exactly what arrived on the wire.
pub struct RawComponent {
    stream: TcpStream,
    /// Bytes read but not yet returned (complete UTF-8 only).
    buf: String,
    /// A trailing partial UTF-8 sequence.
    partial: Vec<u8>,
    pub stream_id: String,
    /// The server's stream header, verbatim.
    pub header: String,
}

impl RawComponent {
    /// Connects, opens the `jabber:component:accept` stream to `domain`,
    /// reads the stream id, sends `<handshake>` (hex SHA-1 of id + secret)
    /// and waits for `<handshake/>`. On refusal returns what the server said.
    pub async fn connect(
        addr: SocketAddr,
        domain: &str,
        secret: &str,
        wait: Duration,
    ) -> Result<RawComponent, String> {
        let deadline = Instant::now() + wait;
        let stream = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timeout"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut c = RawComponent {
            stream,
            buf: String::new(),
            partial: Vec::new(),
            stream_id: String::new(),
            header: String::new(),
        };
        c.send_raw(&format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await?;
        while stream_header_end(&c.buf).is_none() {
            c.fill(deadline).await?;
        }
        let end = stream_header_end(&c.buf).expect("checked above");
        c.header = c.buf[..end].to_string();
        c.buf.drain(..end);
        c.stream_id = attr_value(&c.header, "id")
            .ok_or_else(|| format!("no id in stream header: {}", c.header))?;
        c.send_raw(&format!(
            "<handshake>{}</handshake>",
            handshake_digest(&c.stream_id, secret)
        ))
        .await?;
        let answer = c
            .read_stanza(deadline.saturating_duration_since(Instant::now()))
            .await?;
        if answer == "<handshake/>" || answer == "<handshake></handshake>" {
            Ok(c)
        } else {
            let rest = c.buf.clone();
            Err(format!("handshake refused: {answer}{rest}"))
        }
    }

    pub async fn send_raw(&mut self, xml: &str) -> Result<(), String> {
        self.stream
            .write_all(xml.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next complete top-level element (a stanza, `<stream:error>…`, or
    /// the closing `</stream:stream>`), verbatim; whitespace between
    /// elements is dropped.
    pub async fn read_stanza(&mut self, wait: Duration) -> Result<String, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = first_element_end(&self.buf) {
                let s: String = self.buf.drain(..end).collect();
                return Ok(s.trim_start().to_string());
            }
            self.fill(deadline).await?;
        }
    }

    /// Reads elements until one satisfies `pred`; returns all of them, the
    /// matching one last. On timeout/EOF the error lists what was read.
    pub async fn read_stanzas_until<F>(
        &mut self,
        wait: Duration,
        mut pred: F,
    ) -> Result<Vec<String>, String>
    where
        F: FnMut(&str) -> bool,
    {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_stanza(left).await {
                Ok(s) => {
                    let hit = pred(&s);
                    seen.push(s);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(e) => return Err(format!("{e}; elements read: {seen:#?}")),
            }
        }
    }

    /// Reads elements until one contains `needle`; returns all of them.
    pub async fn read_until_contains(
        &mut self,
        needle: &str,
        wait: Duration,
    ) -> Result<Vec<String>, String> {
        self.read_stanzas_until(wait, |s| s.contains(needle)).await
    }

    /// Whatever has been read and not returned yet (possibly partial).
    pub fn take_buffered(&mut self) -> String {
        std::mem::take(&mut self.buf)
    }

    pub async fn close(mut self) {
        let _ = self.send_raw("</stream:stream>").await;
        let _ = self.stream.shutdown().await;
    }

    async fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        let mut chunk = [0u8; 8192];
        match timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(format!("timeout; unparsed input: {:?}", self.buf)),
            Ok(Err(e)) => Err(format!("read: {e}; unparsed input: {:?}", self.buf)),
            Ok(Ok(0)) => Err(format!("EOF; unparsed input: {:?}", self.buf)),
            Ok(Ok(n)) => {
                self.partial.extend_from_slice(&chunk[..n]);
                let valid = match std::str::from_utf8(&self.partial) {
                    Ok(s) => s.len(),
                    Err(e) => e.valid_up_to(),
                };
                let s = std::str::from_utf8(&self.partial[..valid]).expect("checked UTF-8 prefix");
                self.buf.push_str(s);
                self.partial.drain(..valid);
                Ok(())
            }
        }
    }
}

fn stream_header_end(b: &str) -> Option<usize> {
    let start = b.find("<stream:stream")?;
    b[start..].find('>').map(|i| start + i + 1)
}

/// End (exclusive) of the first complete top-level element in `b`, or of a
/// lone closing tag (`</stream:stream>`). Quote-aware inside tags; skips
/// `<?…?>` and `<!…>`; CDATA is not handled (servers do not send it).
fn first_element_end(b: &str) -> Option<usize> {
    let bytes = b.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut quote = 0u8;
        while j < bytes.len() {
            let c = bytes[j];
            if quote != 0 {
                if c == quote {
                    quote = 0;
                }
            } else if c == b'\'' || c == b'"' {
                quote = c;
            } else if c == b'>' {
                break;
            }
            j += 1;
        }
        if j >= bytes.len() {
            return None;
        }
        let tag = &bytes[i..=j];
        if tag.starts_with(b"<?") || tag.starts_with(b"<!") {
            // declaration or comment: no depth change
        } else if tag.starts_with(b"</") {
            depth -= 1;
            if depth <= 0 {
                return Some(j + 1);
            }
        } else if tag.ends_with(b"/>") {
            if depth == 0 {
                return Some(j + 1);
            }
        } else {
            depth += 1;
        }
        i = j + 1;
    }
    None
}

/// Value of attribute `name` in a start tag (either quote style).
pub fn attr_value(tag: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let rest = &tag[i + pat.len()..];
            let end = rest.find(q)?;
            return Some(rest[..end].to_string());
        }
    }
    None
}
