//! Small helpers for tests that talk XMPP to a test server.
//!
//! * [`TestClient`]: a c2s client. It is slixmpp's `ClientXMPP` in a child
//!   process (`c2s_client.py`), driven over JSON lines on stdin/stdout:
//!   real client code that reads its socket on its own, so incoming
//!   stanzas are taken off the wire even while the test is busy elsewhere.
//!   (tokio-xmpp 6's client intermittently stopped surfacing incoming
//!   stanzas under load while the server had delivered them, which made
//!   the Prosody suites flaky; see the README.)
//! * [`RawComponent`]: a raw XEP-0114 connection (TCP + handshake) that
//!   returns what the server writes as text, for checking the wire.
//!
//! Every wait takes a timeout. Stanzas are handled as minidom `Element`s
//! (namespace `jabber:client` on c2s).
//!
//! After a disconnect the client reconnects on its own and says `online`
//! again (see [`TestClient::wait_online_count`]); presence is not re-sent.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use minidom::Element;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, timeout_at, Instant};

/// Default timeout for connects and receives in tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const NS_CLIENT: &str = "jabber:client";

/// The client program, next to this file.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/c2s_client.py");

/// A full JID as bound by the server (`node@domain/resource`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullJid(String);

impl FullJid {
    pub fn resource(&self) -> &str {
        self.0.split_once('/').map(|(_, r)| r).unwrap_or("")
    }
    pub fn bare(&self) -> &str {
        self.0.split_once('/').map(|(b, _)| b).unwrap_or(&self.0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FullJid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// A logged-in c2s client. Dropping it kills the child process, so the TCP
/// connection is cut without a stream footer; call [`TestClient::close`]
/// for an orderly `</stream:stream>`.
pub struct TestClient {
    jid: FullJid,
    child: Child,
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_cmd: std::sync::atomic::AtomicU64,
    sent: Waiters,
    in_rx: mpsc::UnboundedReceiver<Element>,
    /// Stanzas received but skipped by `recv_matching`, oldest first.
    backlog: VecDeque<Element>,
    /// Number of `online` events so far.
    online: watch::Receiver<u64>,
    /// Number of `disconnected` events so far (sessions that ended).
    disconnects: watch::Receiver<u64>,
    closed: Option<oneshot::Receiver<()>>,
    /// stderr of the child (slixmpp's warnings), for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The interpreter: `$PYTHON` or `python3`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// What the client program says on stdout.
enum Said {
    Online(String),
    Stanza(String),
    Sent(u64),
    SendFailed(u64, String),
    Disconnected,
    Closed,
}

fn parse_said(line: &str) -> Result<Said, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad line {line:?}: {e}"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let n = || v.get("n").and_then(|x| x.as_u64()).unwrap_or(u64::MAX);
    match v.get("ev").and_then(|x| x.as_str()) {
        Some("online") => Ok(Said::Online(s("jid"))),
        Some("stanza") => Ok(Said::Stanza(s("xml"))),
        Some("sent") => Ok(Said::Sent(n())),
        Some("send_failed") => Ok(Said::SendFailed(n(), s("error"))),
        Some("disconnected") => Ok(Said::Disconnected),
        Some("closed") => Ok(Said::Closed),
        _ => Err(format!("unknown line {line:?}")),
    }
}

/// Logs in `jid` (bare or full; a resource is requested if given) with
/// `password` at `server` (plaintext TCP) and waits until the session is
/// established. Fails after `wait` (wrong password, server down: the
/// client keeps retrying, so only the timeout tells).
pub async fn connect(
    jid: &str,
    password: &str,
    server: SocketAddr,
    wait: Duration,
) -> Result<TestClient, String> {
    connect_with(jid, password, server, wait, false).await
}

/// [`connect`], and with `auto_accept` every `<presence type='subscribe'>`
/// is answered with `subscribed` from the first stanza of the session on
/// (a subscription request Prosody stored is delivered right at login,
/// before a later [`TestClient::set_auto_accept_subscribe`] could act).
pub async fn connect_with(
    jid: &str,
    password: &str,
    server: SocketAddr,
    wait: Duration,
    auto_accept: bool,
) -> Result<TestClient, String> {
    let extra: &[&str] = if auto_accept { &["--auto-accept"] } else { &[] };
    connect_args(jid, password, server, wait, extra).await
}

/// [`connect`] with extra arguments for `c2s_client.py`, e.g.
/// `["--disco-feature", VAR]`: the client's disco plugin answers
/// `disco#info` listing VAR (those requests are not passed to the test).
pub async fn connect_args(
    jid: &str,
    password: &str,
    server: SocketAddr,
    wait: Duration,
    extra: &[&str],
) -> Result<TestClient, String> {
    let mut cmd = Command::new(python());
    cmd.arg(SCRIPT)
        .args(["--host", &server.ip().to_string()])
        .args(["--port", &server.port().to_string()])
        .args(["--jid", jid, "--password", password])
        .args(extra);
    // slixmpp's debug log (every byte on the wire) in failure messages.
    if std::env::var_os("C2S_CLIENT_DEBUG").is_some() {
        cmd.arg("--debug");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {} {SCRIPT}: {e}", python()))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr_pipe = child.stderr.take().ok_or("no stderr")?;

    let stderr = Arc::new(Mutex::new(Vec::new()));
    {
        let stderr = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut v) = stderr.lock() {
                    v.push(line);
                }
            }
        });
    }

    let sent: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (online_tx, online) = watch::channel(0u64);
    let (disconnects_tx, disconnects) = watch::channel(0u64);
    let (jid_tx, jid_rx) = oneshot::channel::<String>();
    let (closed_tx, closed) = oneshot::channel();
    {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut jid_tx = Some(jid_tx);
            let mut closed_tx = Some(closed_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match parse_said(&line) {
                    Ok(Said::Online(j)) => {
                        if let Some(tx) = jid_tx.take() {
                            let _ = tx.send(j);
                        }
                        online_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Said::Stanza(xml)) => match parse_xml(&xml) {
                        Ok(el) => {
                            let _ = in_tx.send(el);
                        }
                        // minidom (rxml) refuses some well-formed input:
                        // a raw CR in an attribute value (XML normalises it
                        // to a space; retried with CR as `&#13;`, so such a
                        // value reads as CR), an attribute value over 8 KiB
                        // (kept as a stand-in with the stanza's head), so
                        // tests still see the stanza arrive.
                        Err(e) => match parse_xml(&xml.replace('\r', "&#13;"))
                            .ok()
                            .or_else(|| unparsable_stand_in(&xml))
                        {
                            Some(el) => {
                                let _ = in_tx.send(el);
                            }
                            None => eprintln!("c2s client: unparsable stanza: {e}"),
                        },
                    },
                    Ok(Said::Sent(n)) => {
                        if let Some(w) = sent.lock().ok().and_then(|mut m| m.remove(&n)) {
                            let _ = w.send(Ok(()));
                        }
                    }
                    Ok(Said::SendFailed(n, e)) => {
                        if let Some(w) = sent.lock().ok().and_then(|mut m| m.remove(&n)) {
                            let _ = w.send(Err(format!("not sent: {e}")));
                        }
                    }
                    Ok(Said::Disconnected) => disconnects_tx.send_modify(|n| *n += 1),
                    Ok(Said::Closed) => {
                        if let Some(tx) = closed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(e) => eprintln!("c2s client: {e}"),
                }
            }
        });
    }

    let bound = match timeout(wait, jid_rx).await {
        Ok(Ok(j)) => j,
        Ok(Err(_)) | Err(_) => {
            let _ = child.start_kill();
            let err = stderr.lock().map(|v| v.join("\n")).unwrap_or_default();
            return Err(format!(
                "{jid} not online at {server} within {wait:?} (wrong password? server down?); client stderr:\n{err}"
            ));
        }
    };
    if !bound.contains('/') {
        return Err(format!("bound JID {bound} is not full"));
    }
    Ok(TestClient {
        jid: FullJid(bound),
        child,
        stdin: tokio::sync::Mutex::new(stdin),
        next_cmd: std::sync::atomic::AtomicU64::new(0),
        sent,
        in_rx,
        backlog: VecDeque::new(),
        online,
        disconnects,
        closed: Some(closed),
        stderr,
    })
}

impl TestClient {
    /// The bound full JID.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    async fn command(&self, cmd: serde_json::Value) -> Result<(), String> {
        let mut line = cmd.to_string();
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: client process gone: {e}", self.jid))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("{}: client process gone: {e}", self.jid))
    }

    /// Answer every `<presence type='subscribe'>` with `subscribed` (the
    /// request is still delivered to `recv*`). Works while the client is
    /// alive, whether or not the test is receiving.
    pub async fn set_auto_accept_subscribe(&self, on: bool) {
        let _ = self
            .command(serde_json::json!({"cmd": "auto_accept", "on": on}))
            .await;
    }

    /// Sends a minidom element (`iq`, `message` or `presence` in
    /// `jabber:client`) and waits until it is written to the socket.
    pub async fn send_element(&self, el: Element) -> Result<(), String> {
        self.send_raw(&String::from(&el)).await
    }

    /// Sends raw XML, e.g. `<iq type='get' id='a1' to='x'><ping xmlns='urn:xmpp:ping'/></iq>`.
    /// `xmlns='jabber:client'` is added to the root if it has none.
    pub async fn send_xml(&self, xml: &str) -> Result<(), String> {
        self.send_element(parse_xml(xml)?).await
    }

    /// Writes `xml` to the stream as is (no parsing, no namespace added:
    /// the stream's default `jabber:client` applies) and waits until it is
    /// written. For stanzas minidom cannot carry: character references kept
    /// as typed (`&#13;`), attribute values over rxml's 8 KiB token limit.
    pub async fn send_raw(&self, xml: &str) -> Result<(), String> {
        let n = self
            .next_cmd
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.sent.lock() {
            m.insert(n, tx);
        }
        self.command(serde_json::json!({"cmd": "send", "n": n, "xml": xml}))
            .await?;
        match timeout(TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("{}: client process gone", self.jid)),
            Err(_) => Err(format!("{}: send not written within {TIMEOUT:?}", self.jid)),
        }
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
            if let Some(el) = self.backlog.remove(i) {
                return Ok(el);
            }
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
                Ok(None) => return Err(format!("{}: client process ended", self.jid)),
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

    /// Number of sessions so far (1 after `connect`; +1 per automatic
    /// reconnect, e.g. after a server restart).
    pub fn online_count(&self) -> u64 {
        *self.online.borrow()
    }

    /// Number of sessions that ended so far (the stream or the TCP
    /// connection closed, e.g. in a server restart).
    pub fn disconnects(&self) -> u64 {
        *self.disconnects.borrow()
    }

    /// Waits until at least `n` sessions have started.
    pub async fn wait_online_count(&mut self, n: u64, wait: Duration) -> Result<(), String> {
        let r = timeout(wait, self.online.wait_for(|c| *c >= n))
            .await
            .map(|inner| inner.map(|_| ()));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("client process ended".to_string()),
            Err(_) => Err(format!(
                "{}: online count {} < {n} after {wait:?}",
                self.jid,
                self.online_count()
            )),
        }
    }

    /// What the client program wrote on stderr so far (slixmpp warnings).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// Orderly close (`</stream:stream>`), bounded by 6 s; then the
    /// process is gone.
    pub async fn close(mut self) {
        if self
            .command(serde_json::json!({"cmd": "close"}))
            .await
            .is_ok()
        {
            if let Some(closed) = self.closed.take() {
                let _ = timeout(Duration::from_secs(6), closed).await;
            }
        }
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(2), self.child.wait()).await;
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

/// Namespace of the child [`unparsable_stand_in`] adds.
pub const NS_UNPARSABLE: &str = "urn:jatproxy:test:unparsable";

/// For a received stanza minidom cannot parse: an element with the same
/// name and `id`/`type`/`to`/`from` (raw, as written in the start tag),
/// holding one `<unparsable xmlns=NS_UNPARSABLE bytes=N/>`. `None` if
/// there is no start tag to read.
pub fn unparsable_stand_in(xml: &str) -> Option<Element> {
    let xml = xml.trim_start();
    let head_end = start_tag_end(xml)?;
    let head = &xml[..head_end];
    let name: String = head[1..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/')
        .collect();
    if name.is_empty() {
        return None;
    }
    // The raw values are already escaped; only a `'` from a value in
    // double quotes needs it, as the stand-in uses single quotes.
    let mut attrs = String::new();
    for a in ["id", "type", "to", "from"] {
        if let Some(v) = attr_value(head, a) {
            attrs.push_str(&format!(" {a}='{}'", v.replace('\'', "&apos;")));
        }
    }
    parse_xml(&format!(
        "<{name} xmlns='{NS_CLIENT}'{attrs}><unparsable xmlns='{NS_UNPARSABLE}' bytes='{}'/></{name}>",
        xml.len()
    ))
    .ok()
}

/// End (exclusive) of the first start tag in `xml`, quote-aware.
fn start_tag_end(xml: &str) -> Option<usize> {
    if !xml.starts_with('<') {
        return None;
    }
    let mut quote = None;
    for (i, c) in xml.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'') | (None, '"') => quote = Some(c),
            (None, '>') => return Some(i + 1),
            _ => {}
        }
    }
    None
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
