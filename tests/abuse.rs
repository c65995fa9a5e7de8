//! Hostile and faulty peers against the real `jatproxy` binary, run as a
//! child process between a fake XMPP server (upstream, in this test) and
//! fake component instances on its listener.
//!
//! - `bad_input_is_answered_and_memory_stays_bounded`: every bad input
//!   (not-well-formed, invalid UTF-8, a DTD before or after the handshake,
//!   entity expansion, 100 000-deep nesting, a 100 MB stanza, a slowloris
//!   header, a wrong secret, a stanza before the handshake, a second
//!   handshake, invalid `from` addresses, too many unauthenticated
//!   connections, and the upstream's stream errors, bad XML, oversized
//!   stanza and a close in the middle of a stanza) gets the stream error
//!   RFC 6120 / XEP-0114 names, on that connection only, with one log line
//!   naming the peer and the limit; a well-behaved instance answers a
//!   request between the cases, and keeps answering during the slowloris
//!   and the 100 MB stanza; a `from` with the domain's trailing dot is
//!   relayed; the process's peak RSS stays under [`RSS_BOUND_KIB`].
//! - `slowloris_stanza_after_the_handshake_meets_idle_timeout`: a stanza
//!   dribbled a byte at a time on an authenticated instance is cut by
//!   `limits.idle_timeout`, while another instance keeps serving.
//! - `sigterm_answers_pending_closes_streams_and_exits_zero`: graceful
//!   shutdown as an operator sees it.
//! - `secrets_never_reach_the_logs_at_trace_level`: the binary at `trace`,
//!   upstream and instance secrets, refused and wrong-secret handshakes.
//! - `dead_upstream_link_is_pinged_and_replaced`,
//!   `answered_pings_keep_the_link`: dead-link detection.

#[path = "support/fake.rs"]
mod fake;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake::{error_condition, text, FakeInstance, FakeServer, Session, D, INSTANCE_SECRET, WAIT};
use jatproxy::handshake;
use jatproxy::xml::StreamCondition;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Peak resident memory allowed for the whole abuse run. The largest
/// buffer jatproxy may hold for one connection is one stanza
/// (`max_stanza_bytes`, 512 KiB) plus its read buffer; a 100 MB stanza
/// that were buffered whole would blow this at once.
const RSS_BOUND_KIB: u64 = 32 * 1024;

const UPSTREAM_SECRET: &str = fake::UPSTREAM_SECRET;

// ---------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------

/// TOML added to the binary's configuration.
#[derive(Default, Clone, Copy)]
struct Settings {
    upstream: &'static str,
    instances: &'static str,
    extra: &'static str,
}

/// A running `jatproxy` binary; killed on drop. Its stderr (the log) goes
/// to a file, read back by the assertions.
struct Bin {
    child: Child,
    dir: tempfile::TempDir,
    listen: SocketAddr,
}

impl Bin {
    /// Starts the binary against `server`, with the instance listener on a
    /// free port. `upstream` and `instances` are added to those tables,
    /// `extra` TOML appended (whole tables). `env` is added to its
    /// environment.
    fn start(server: &FakeServer, s: Settings, env: &[(&str, &str)]) -> Bin {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = free_port();
        let secret_file = dir.path().join("instance.secret");
        std::fs::write(&secret_file, format!("{INSTANCE_SECRET}\n")).expect("secret file");
        let toml = format!(
            r#"
[upstream]
server = "{}"
domain = "{D}"
secret_env = "TEST_UPSTREAM_SECRET"
reconnect_min = "20ms"
reconnect_max = "200ms"
{}

[instances]
listen = "{listen}"
secret_file = "{}"
{}

{}
"#,
            server.addr(),
            s.upstream,
            secret_file.display(),
            s.instances,
            s.extra,
        );
        let cfg = dir.path().join("jatproxy.toml");
        std::fs::write(&cfg, toml).expect("config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_jatproxy"))
            .arg("--config")
            .arg(&cfg)
            .env("TEST_UPSTREAM_SECRET", UPSTREAM_SECRET)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("jatproxy binary starts");
        Bin { child, dir, listen }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The log so far, without terminal colour codes.
    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        strip_ansi(&s)
    }

    /// Peak resident set size (VmHWM) in KiB, from /proc.
    fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `wait`.
    async fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A fake server, the binary started against it with `settings`, its
/// upstream session, and an instance `name` serving requests.
async fn with_echo(settings: Settings, name: &str) -> (FakeServer, Bin, Session, Echo) {
    let server = FakeServer::bind().await;
    let bin = Bin::start(&server, settings, &[]);
    let mut up = server.accept().await;
    listener_up(bin.listen).await;
    let echo = Echo::ready(bin.listen, &mut up, name).await;
    (server, bin, up, echo)
}

/// Waits until the binary's listener accepts connections.
async fn listener_up(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "listener {addr} never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Raw connections to the listener
// ---------------------------------------------------------------------------

fn instance_header() -> String {
    String::from_utf8_lossy(&handshake::client_header(D)).into_owned()
}

/// Reads until the peer closes (or `wait` passes) and returns everything.
async fn read_to_close(s: &mut (impl AsyncRead + Unpin), wait: Duration) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `note` on `s`, which jatproxy must relay to the server as it is,
/// then ends the stream, which jatproxy must close without a stream error.
async fn relayed_then_closed(s: &mut TcpStream, up: &mut Session, note: &str) {
    s.write_all(note.as_bytes()).await.expect("write");
    let relayed = up.r.recv().await;
    assert_eq!(text(&relayed), note);
    s.write_all(handshake::STREAM_END).await.expect("end");
    let got = read_to_close(s, WAIT).await;
    assert!(
        got.ends_with("</stream:stream>") && !got.contains("<stream:error>"),
        "{got:?}"
    );
}

/// The defined condition of the stream error in `text`, if any, and
/// whether the stream was closed after it.
fn stream_error(text: &str) -> Option<String> {
    let at = text.find("<stream:error>")? + "<stream:error><".len();
    let name: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '-')
        .collect();
    text.ends_with("</stream:stream>").then_some(name)
}

/// A raw connection that completed the handshake with the instance
/// secret; the rest of the stream is the caller's.
async fn authenticated(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(instance_header().as_bytes())
        .await
        .expect("header");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let id = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("server header in time")
            .expect("read");
        assert!(n > 0, "closed before the header");
        got.extend_from_slice(&chunk[..n]);
        let t = String::from_utf8_lossy(&got);
        if let Some(i) = t.find(" id='") {
            if let Some(end) = t[i + 5..].find('\'') {
                break t[i + 5..i + 5 + end].to_owned();
            }
        }
    };
    let digest = handshake::digest(&id, INSTANCE_SECRET);
    s.write_all(format!("<handshake>{digest}</handshake>").as_bytes())
        .await
        .expect("handshake");
    let mut ok = Vec::new();
    while !String::from_utf8_lossy(&ok).contains("<handshake/>") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("handshake answer in time")
            .expect("read");
        assert!(n > 0, "refused: {}", String::from_utf8_lossy(&ok));
        ok.extend_from_slice(&chunk[..n]);
    }
    s
}

/// One abuse case's outcome, for the table and the assertions.
struct Outcome {
    case: &'static str,
    condition: String,
    /// Time from the first byte sent to the stream being closed.
    took: Duration,
    /// Log lines naming this connection's peer address.
    log_lines: Vec<String>,
}

/// Sends `bytes` on `s` (a connection from local port `port`) and reads
/// the stream error jatproxy closes it with.
async fn send_and_expect(bin: &Bin, case: &'static str, mut s: TcpStream, bytes: &[u8]) -> Outcome {
    let port = s.local_addr().expect("local").port();
    let t0 = Instant::now();
    // Written in the background: jatproxy may close before reading it all.
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = w.write_all(bytes).await;
        std::future::pending::<()>().await;
    };
    let text = tokio::select! {
        t = read_to_close(&mut r, WAIT) => t,
        _ = write => unreachable!(),
    };
    let took = t0.elapsed();
    outcome(bin, case, port, &text, took).await
}

async fn outcome(bin: &Bin, case: &'static str, port: u16, text: &str, took: Duration) -> Outcome {
    let condition = stream_error(text).unwrap_or_else(|| format!("(none) got {text:?}"));
    let needle = format!("127.0.0.1:{port}");
    // The log line is written as the connection ends; give it a moment.
    let mut log_lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    while log_lines.is_empty() && Instant::now() < deadline {
        log_lines = bin
            .log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect();
        if log_lines.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Outcome {
        case,
        condition,
        took,
        log_lines,
    }
}

/// The well-behaved instance: answers every request it reads. Returns
/// once it has answered `n` more.
struct Echo {
    inst: FakeInstance,
    served: usize,
}

impl Echo {
    /// Connects the well-behaved instance and waits until jatproxy routes
    /// to it: the handshake answer is written before the core has the
    /// instance in its pool, so until then a request gets
    /// `service-unavailable`.
    async fn ready(addr: SocketAddr, up: &mut Session, name: &str) -> Echo {
        let mut echo = Echo {
            inst: FakeInstance::connect(addr, name).await,
            served: 0,
        };
        let deadline = Instant::now() + WAIT;
        for n in 0.. {
            assert!(
                Instant::now() < deadline,
                "instance {name} never joined the pool"
            );
            let id = format!("ready-{n}");
            up.w.send(&format!(
                "<iq type='get' id='{id}' to='{D}' from='alice@example.test/x'/>"
            ))
            .await;
            tokio::select! {
                req = echo.inst.r.recv() => {
                    assert_eq!(req.id(), Some(id.as_str()));
                    echo.inst.w.send(&format!(
                        "<iq type='result' id='{id}' from='{D}' to='alice@example.test/x'/>"
                    )).await;
                    assert_eq!(up.r.recv().await.id(), Some(id.as_str()));
                    return echo;
                }
                e = up.r.recv() => {
                    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"), "{}", text(&e));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        unreachable!()
    }

    /// One request from upstream, answered by this instance. A request
    /// that reached a connection jatproxy was closing at that moment (the
    /// listener reports a framing error's connection gone just after
    /// writing its stream error) comes back `recipient-unavailable` and
    /// is sent again; anything else is a failure.
    async fn serve_one(&mut self, up: &mut Session, tag: &str) {
        for attempt in 0..5 {
            self.served += 1;
            let id = format!("ok-{tag}-{}", self.served);
            up.w.send(&format!(
                "<iq type='get' id='{id}' to='{D}' from='alice@example.test/x'><q xmlns='urn:example:echo'/></iq>"
            ))
            .await;
            let req = tokio::select! {
                r = self.inst.r.recv_within(WAIT) => r,
                e = up.r.recv() => {
                    assert_eq!(
                        error_condition(&e).as_deref(),
                        Some("recipient-unavailable"),
                        "{tag}: {}",
                        text(&e)
                    );
                    println!("{tag}: attempt {attempt} hit a closing connection; again");
                    continue;
                }
            };
            let Some(req) = req else {
                panic!("{tag}: the instance got no request");
            };
            assert_eq!(req.id(), Some(id.as_str()), "{}", text(&req));
            self.inst
                .w
                .send(&format!(
                    "<iq type='result' id='{id}' from='{D}' to='alice@example.test/x'/>"
                ))
                .await;
            let answer = up.r.recv().await;
            assert_eq!(answer.id(), Some(id.as_str()), "{}", text(&answer));
            assert_eq!(answer.stanza_type(), Some("result"), "{}", text(&answer));
            return;
        }
        panic!("{tag}: never reached the well-behaved instance");
    }
}

/// Runs `abuse` while the well-behaved instance keeps serving: requests
/// from upstream, at most two in flight, each answered by `echo`, until
/// `abuse` is over. A request that jatproxy routed to the abusive
/// connection (when it is an authenticated instance, in the pool) comes
/// back `recipient-unavailable` once that connection is cut; any other
/// outcome fails. Returns `abuse`'s output and the number of results
/// that reached upstream before `abuse` ended.
async fn during<T>(
    echo: &mut Echo,
    up: &mut Session,
    tag: &str,
    abuse: impl std::future::Future<Output = T>,
) -> (T, usize) {
    let finished = std::cell::Cell::new(false);
    let (out, served) = tokio::join!(
        async {
            let o = abuse.await;
            finished.set(true);
            o
        },
        async {
            let mut outstanding = std::collections::HashSet::new();
            let (mut k, mut served) = (0, 0);
            loop {
                while !finished.get() && outstanding.len() < 2 {
                    k += 1;
                    let id = format!("during-{tag}-{k}");
                    up.w.send(&format!(
                        "<iq type='get' id='{id}' to='{D}' from='alice@example.test/x'><q xmlns='urn:example:echo'/></iq>"
                    ))
                    .await;
                    outstanding.insert(id);
                }
                if outstanding.is_empty() {
                    return served;
                }
                tokio::select! {
                    req = echo.inst.r.recv() => {
                        let id = req.id().unwrap_or_default().to_owned();
                        assert!(outstanding.contains(&id), "{tag}: {}", text(&req));
                        echo.inst.w.send(&format!(
                            "<iq type='result' id='{id}' from='{D}' to='alice@example.test/x'/>"
                        ))
                        .await;
                    }
                    a = up.r.recv() => {
                        let id = a.id().unwrap_or_default().to_owned();
                        assert!(outstanding.remove(&id), "{tag}: unexpected {}", text(&a));
                        if a.stanza_type() == Some("result") {
                            echo.served += 1;
                            if !finished.get() {
                                served += 1;
                            }
                        } else {
                            assert_eq!(
                                error_condition(&a).as_deref(),
                                Some("recipient-unavailable"),
                                "{tag}: {}",
                                text(&a)
                            );
                        }
                    }
                }
            }
        }
    );
    (out, served)
}

/// Dribbles `bytes` on `s`, one byte every 200 ms, reading whatever comes
/// back, until jatproxy closes the connection (or [`WAIT`] passes).
/// Returns the outcome and how many bytes were written.
async fn dribble(
    bin: &Bin,
    case: &'static str,
    mut s: TcpStream,
    bytes: &[u8],
) -> (Outcome, usize) {
    let port = s.local_addr().expect("local").port();
    let t0 = Instant::now();
    let (mut r, mut w) = s.split();
    let mut sent = 0;
    let got = {
        // Pacing the writer, not waiting for a condition.
        let write = async {
            for b in bytes {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            g = read_to_close(&mut r, WAIT) => g,
            _ = write => unreachable!(),
        }
    };
    let took = t0.elapsed();
    (outcome(bin, case, port, &got, took).await, sent)
}

/// A connection that sent its stream header and got jatproxy's: accepted
/// and holding one of the `max_unauthenticated` slots. A connection
/// refused because an earlier one has not given its slot back yet is
/// tried again.
async fn unauthenticated(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(instance_header().as_bytes())
            .await
            .expect("header");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        let answered = loop {
            let t = String::from_utf8_lossy(&got).into_owned();
            if t.contains("<stream:error>") {
                break false;
            }
            let header = t
                .find("<stream:stream")
                .is_some_and(|i| t[i..].contains('>'));
            if header && t.contains(" id='") {
                break true;
            }
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("jatproxy's header in time")
                .unwrap_or(0);
            if n == 0 {
                break false;
            }
            got.extend_from_slice(&chunk[..n]);
        };
        if answered {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never accepted: {}",
            String::from_utf8_lossy(&got)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The abuse run
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_memory_stays_bounded() {
    let (server, bin, mut up, mut echo) = with_echo(
        Settings {
            instances: "max_unauthenticated = 4",
            extra: "[limits]\nheader_timeout = \"1s\"",
            ..Settings::default()
        },
        "good",
    )
    .await;
    echo.serve_one(&mut up, "start").await;
    let rss_start = bin.rss_kib();

    let hdr = instance_header();
    let mut outcomes = Vec::new();

    // Before the handshake.
    let pre: Vec<(&'static str, Vec<u8>)> = vec![
        ("not-well-formed", format!("{hdr}<a></b>").into_bytes()),
        ("invalid UTF-8", {
            let mut b = format!("{hdr}<handshake>").into_bytes();
            b.extend_from_slice(b"\xff\xfe\xfd</handshake>");
            b
        }),
        (
            "DTD with entity",
            format!(
                "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;'>]>{hdr}"
            )
            .into_bytes(),
        ),
        (
            "entity expansion, undeclared",
            format!("{hdr}<handshake>&b;&b;&b;</handshake>").into_bytes(),
        ),
        ("100 000-deep nesting", {
            let mut b = hdr.clone().into_bytes();
            b.extend(std::iter::repeat_n(&b"<a>"[..], 100_000).flatten());
            b
        }),
        ("wrong secret", format!("{hdr}<handshake>{}</handshake>", "0".repeat(40)).into_bytes()),
        (
            "stanza before handshake",
            format!("{hdr}<iq type='get' id='1' from='{D}' to='alice@example.test'/>").into_bytes(),
        ),
        (
            "wrong domain",
            instance_header().replace(D, "other.example.test").into_bytes(),
        ),
        (
            "not the component namespace",
            hdr.replace("jabber:component:accept", "jabber:client")
                .into_bytes(),
        ),
    ];
    for (case, bytes) in pre {
        let s = TcpStream::connect(bin.listen).await.expect("connect");
        outcomes.push(send_and_expect(&bin, case, s, &bytes).await);
        echo.serve_one(&mut up, case).await;
    }

    // Slowloris: a header dribbled a byte every 200 ms, each byte well
    // within any per-read timeout; header_timeout (1s) is a total deadline.
    // The well-behaved instance serves requests the whole time.
    {
        let (o, served) = during(&mut echo, &mut up, "slowloris", async {
            let s = TcpStream::connect(bin.listen).await.expect("connect");
            let (o, sent) =
                dribble(&bin, "slowloris header, 1 byte/200ms", s, hdr.as_bytes()).await;
            assert!(
                sent < hdr.len(),
                "the whole header got through ({sent} bytes)"
            );
            o
        })
        .await;
        assert!(
            o.took < Duration::from_millis(2500),
            "slowloris held the connection {:?} with a 1s header_timeout",
            o.took
        );
        println!("slowloris header: {served} requests served meanwhile");
        outcomes.push(o);
    }

    // Too many connections still in the handshake: with
    // max_unauthenticated = 4, the fifth is refused at once.
    {
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(unauthenticated(bin.listen).await);
        }
        let mut s = TcpStream::connect(bin.listen).await.expect("connect");
        let port = s.local_addr().expect("local").port();
        let t0 = Instant::now();
        let got = read_to_close(&mut s, WAIT).await;
        outcomes.push(
            outcome(
                &bin,
                "5th unauthenticated connection",
                port,
                &got,
                t0.elapsed(),
            )
            .await,
        );
        drop(idle);
        echo.serve_one(&mut up, "unauth").await;
    }

    // After the handshake.
    let post: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "not-well-formed stanza",
            b"<message><a></b></message>".to_vec(),
        ),
        (
            "invalid UTF-8 in a stanza",
            b"<message><body>\xc3\x28</body></message>".to_vec(),
        ),
        ("text at stream level", b"hello".to_vec()),
        ("100 000-deep nesting in a stanza", {
            let mut b = b"<message>".to_vec();
            b.extend(std::iter::repeat_n(&b"<a>"[..], 100_000).flatten());
            b
        }),
        (
            "from failing stringprep",
            format!("<message from='a b@{D}' to='alice@example.test'/>").into_bytes(),
        ),
        (
            "from with a 1024-byte node",
            format!(
                "<message from='{}@{D}' to='alice@example.test'/>",
                "n".repeat(1024)
            )
            .into_bytes(),
        ),
        (
            "from outside the domain",
            b"<message from='evil.example.test' to='alice@example.test'/>".to_vec(),
        ),
        ("stream header again", instance_header().into_bytes()),
        (
            "DTD after the handshake",
            b"<!DOCTYPE message [<!ENTITY a 'aaaaaaaaaa'>]><message>&a;</message>".to_vec(),
        ),
    ];
    for (case, bytes) in post {
        let s = authenticated(bin.listen).await;
        outcomes.push(send_and_expect(&bin, case, s, &bytes).await);
        echo.serve_one(&mut up, case).await;
    }

    // A 100 MB stanza, streamed: refused once it passes max_stanza_bytes,
    // long before it ends, and never buffered whole. The well-behaved
    // instance serves requests meanwhile (a request may land on the
    // abusive instance while it is in the pool: it comes back
    // `recipient-unavailable` when that one is cut, and is sent again).
    {
        let (o, served) = during(&mut echo, &mut up, "100MB", async {
            let mut s = authenticated(bin.listen).await;
            let port = s.local_addr().expect("local").port();
            let t0 = Instant::now();
            let (mut r, mut w) = s.split();
            let mut written = 0usize;
            let chunk = vec![b'x'; 1 << 20];
            let write = async {
                if w.write_all(b"<message><body>").await.is_err() {
                    return;
                }
                for _ in 0..100 {
                    if w.write_all(&chunk).await.is_err() {
                        return;
                    }
                    written += chunk.len();
                }
                let _ = w.write_all(b"</body></message>").await;
            };
            let read = async {
                let mut buf = Vec::new();
                let mut c = [0u8; 8192];
                loop {
                    match tokio::time::timeout(WAIT, r.read(&mut c)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(n)) => buf.extend_from_slice(&c[..n]),
                    }
                }
                String::from_utf8_lossy(&buf).into_owned()
            };
            let (_, got) = tokio::join!(write, read);
            let took = t0.elapsed();
            assert!(
                written < 16 << 20,
                "jatproxy kept reading the oversized stanza: {written} bytes accepted"
            );
            outcome(&bin, "100 MB stanza (streamed)", port, &got, took).await
        })
        .await;
        println!("100 MB stanza: {served} requests served meanwhile");
        outcomes.push(o);
    }

    // A second handshake on an authenticated stream: ignored, as Prosody
    // does; the stream goes on working.
    {
        let mut s = authenticated(bin.listen).await;
        s.write_all(b"<handshake>0000</handshake>")
            .await
            .expect("write");
        let note = format!(
            "<message from='{D}' to='alice@example.test'><body>still here</body></message>"
        );
        relayed_then_closed(&mut s, &mut up, &note).await;
        echo.serve_one(&mut up, "second handshake").await;
    }

    // A `from` in the domain written with the trailing dot (`D.`): the
    // same domain, as servers prepare it, so it is relayed unchanged.
    {
        let mut s = authenticated(bin.listen).await;
        let note = format!(
            "<message from='room@{D}./nick' to='alice@example.test'><body>dot</body></message>"
        );
        relayed_then_closed(&mut s, &mut up, &note).await;
        echo.serve_one(&mut up, "trailing dot").await;
    }

    let table = format_table(&outcomes);
    println!("{table}");
    // Each case: the stream error, and what its log line must name (the
    // rule or limit hit).
    let expected = [
        ("not-well-formed", "not-well-formed", "not well-formed"),
        ("invalid UTF-8", "not-well-formed", "not well-formed"),
        ("DTD with entity", "restricted-xml", "restricted XML"),
        (
            "entity expansion, undeclared",
            "not-well-formed",
            "not well-formed",
        ),
        ("100 000-deep nesting", "policy-violation", "deeper than 64"),
        (
            "wrong secret",
            "not-authorized",
            "does not match the instance secret",
        ),
        (
            "stanza before handshake",
            "not-authorized",
            "before <handshake>",
        ),
        ("wrong domain", "host-unknown", "other.example.test"),
        (
            "not the component namespace",
            "invalid-namespace",
            "jabber:client",
        ),
        (
            "slowloris header, 1 byte/200ms",
            "connection-timeout",
            "not finished within 1s",
        ),
        (
            "5th unauthenticated connection",
            "policy-violation",
            "instances.max_unauthenticated",
        ),
        (
            "not-well-formed stanza",
            "not-well-formed",
            "not well-formed",
        ),
        (
            "invalid UTF-8 in a stanza",
            "not-well-formed",
            "not well-formed",
        ),
        ("text at stream level", "bad-format", "text at stream level"),
        (
            "100 000-deep nesting in a stanza",
            "policy-violation",
            "deeper than 64",
        ),
        (
            "from failing stringprep",
            "invalid-from",
            "not an address in the domain",
        ),
        (
            "from with a 1024-byte node",
            "invalid-from",
            "not an address in the domain",
        ),
        (
            "from outside the domain",
            "invalid-from",
            "not an address in the domain",
        ),
        ("stream header again", "restricted-xml", "restricted XML"),
        (
            "DTD after the handshake",
            "restricted-xml",
            "restricted XML",
        ),
        (
            "100 MB stanza (streamed)",
            "policy-violation",
            "larger than 524288 bytes",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, cond, names) in expected {
        let o = outcomes
            .iter()
            .find(|o| o.case == case)
            .unwrap_or_else(|| panic!("case {case} not run"));
        if o.condition != cond {
            wrong.push(format!("{case}: expected {cond}, got {}", o.condition));
        }
        let failure_lines: Vec<&String> = o
            .log_lines
            .iter()
            .filter(|l| !l.contains("instance connected"))
            .collect();
        if failure_lines.len() != 1 || !failure_lines[0].contains(names) {
            wrong.push(format!(
                "{case}: expected one log line naming the peer and {names:?}, got {:#?}",
                failure_lines
            ));
        }
    }

    // Upstream: its stream errors and bad XML end that session only;
    // jatproxy reconnects and the instance stays.
    up.w
        .send("<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
        .await;
    let mut up = server.accept().await;
    echo.serve_one(&mut up, "after system-shutdown").await;
    up.w.send("<iq type='get'><a></b></iq>").await;
    let (cond, _) = up.r.expect_stream_error().await;
    if cond != StreamCondition::NotWellFormed {
        wrong.push(format!("upstream bad XML: got {cond}"));
    }
    let mut up = server.accept().await;
    echo.serve_one(&mut up, "after upstream bad XML").await;
    // A stanza over the upstream limit (2 MiB by default) is a user's,
    // not the server's fault: skipped, answered policy-violation, and the
    // session stays (issue "Any user can cut the component link").
    let big = format!(
        "<message id='big' to='{D}' from='alice@example.test/x'><body>{}</body></message>",
        "y".repeat(3 * 1024 * 1024)
    );
    let _ = up.w.try_send(&big).await;
    let answer = up.r.recv().await;
    if answer.id() != Some("big")
        || error_condition(&answer).as_deref() != Some("policy-violation")
        || !text(&answer).contains("limits.upstream_max_stanza_bytes")
    {
        wrong.push(format!("upstream oversized stanza: got {}", text(&answer)));
    }
    echo.serve_one(&mut up, "after upstream oversized, same session")
        .await;

    // The server closes its connection in the middle of a stanza while a
    // request is pending on the instance: jatproxy reconnects, the
    // instance stays, and its answer reaches the server on the new
    // session, once.
    up.w.send(&format!(
        "<iq type='get' id='mid-close' to='{D}' from='alice@example.test/x'/>"
    ))
    .await;
    let held = echo.inst.r.recv().await;
    assert_eq!(held.id(), Some("mid-close"), "{}", text(&held));
    up.w.send(&format!(
        "<message to='{D}' from='alice@example.test/x'><body>half a sta"
    ))
    .await;
    drop(up);
    let mut up = server.accept().await;
    echo.inst
        .w
        .send(&format!(
            "<iq type='result' id='mid-close' from='{D}' to='alice@example.test/x'/>"
        ))
        .await;
    let answer = up.r.recv().await;
    if (answer.id(), answer.stanza_type()) != (Some("mid-close"), Some("result")) {
        wrong.push(format!(
            "upstream closed mid-stanza: the pending request got {}",
            text(&answer)
        ));
    }
    echo.serve_one(&mut up, "after upstream closed mid-stanza")
        .await;

    let peak = bin.peak_rss_kib();
    println!(
        "jatproxy RSS: {rss_start} KiB after start, peak {peak} KiB (bound {RSS_BOUND_KIB} KiB); \
         the well-behaved instance answered {} requests",
        echo.served
    );
    assert!(peak > 0, "read /proc");
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB over {RSS_BOUND_KIB} KiB"
    );
    assert!(wrong.is_empty(), "{}\n{table}", wrong.join("\n"));
}

fn format_table(outcomes: &[Outcome]) -> String {
    let mut t = String::from("| bad input | stream error | closed after |\n|---|---|---:|\n");
    for o in outcomes {
        t.push_str(&format!(
            "| {} | `{}` | {} ms |\n",
            o.case,
            o.condition,
            o.took.as_millis()
        ));
    }
    t
}

/// `limits.idle_timeout` is a deadline for the next complete stanza: a
/// stanza dribbled a byte at a time, each byte well within it, does not
/// keep an authenticated instance alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_stanza_after_the_handshake_meets_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(2);
    let (_server, bin, mut up, mut echo) = with_echo(
        Settings {
            // A request stuck on the dribbling instance (it is in the
            // pool) makes it the busier one: the rest go to "good".
            extra: "[limits]\nidle_timeout = \"2s\"\n[routing]\nbalancing = \"least-pending\"",
            ..Settings::default()
        },
        "good",
    )
    .await;
    let stanza = format!(
        "<message from='{D}' to='alice@example.test'><body>slow, slow, slow</body></message>"
    );
    let ((o, sent), served) = during(&mut echo, &mut up, "slowloris stanza", async {
        let s = authenticated(bin.listen).await;
        dribble(&bin, "slowloris stanza, 1 byte/200ms", s, stanza.as_bytes()).await
    })
    .await;
    echo.serve_one(&mut up, "after").await;
    println!(
        "| {} | `{}` | {} ms | ({sent} of {} bytes sent; {served} requests served meanwhile)",
        o.case,
        o.condition,
        o.took.as_millis(),
        stanza.len()
    );
    assert_eq!(o.condition, "connection-timeout", "{:#?}", o.log_lines);
    assert!(sent < stanza.len(), "the whole stanza got through");
    assert!(
        o.took >= IDLE - Duration::from_millis(300) && o.took < IDLE + Duration::from_millis(1500),
        "cut after {:?} with idle_timeout {IDLE:?}",
        o.took
    );
    assert!(
        o.log_lines.iter().any(|l| l.contains("silent too long")),
        "{:#?}",
        o.log_lines
    );
    // Nothing of the dribbled stanza was relayed: "after" found its own
    // answer next on the upstream stream.
    assert!(served > 0, "the good instance served during the slowloris");
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_pending_closes_streams_and_exits_zero() {
    let (_server, mut bin, mut up, echo) = with_echo(
        Settings {
            extra: "[service]\nshutdown_grace = \"3s\"",
            ..Settings::default()
        },
        "holder",
    )
    .await;
    let mut inst = echo.inst;
    // Three requests the instance reads and never answers.
    for i in 0..3 {
        up.w.send(&format!(
            "<iq type='get' id='held-{i}' to='{D}' from='alice@example.test/x'/>"
        ))
        .await;
        assert_eq!(inst.r.recv().await.id(), Some(format!("held-{i}").as_str()));
    }
    let t0 = Instant::now();
    bin.signal("TERM");

    // Upstream: one error per pending request, then the stream end.
    let mut answered = Vec::new();
    loop {
        match up.r.next_frame().await {
            Some(jatproxy::xml::Frame::Stanza(st)) => {
                assert_eq!(st.stanza_type(), Some("error"), "{}", text(&st));
                answered.push((
                    st.id().unwrap_or_default().to_owned(),
                    error_condition(&st).unwrap_or_default(),
                ));
            }
            Some(jatproxy::xml::Frame::Whitespace(_)) => {}
            Some(jatproxy::xml::Frame::End(_)) => break,
            other => panic!("upstream: expected errors then the end, got {other:?}"),
        }
    }
    // As a server does: close our side too (jatproxy waits for it, up to
    // half the grace period, to answer requests still on their way).
    up.w.send("</stream:stream>").await;
    drop(up);
    answered.sort();
    assert_eq!(
        answered,
        (0..3)
            .map(|i| (format!("held-{i}"), "recipient-unavailable".to_owned()))
            .collect::<Vec<_>>()
    );
    // The instance's stream is closed properly too.
    loop {
        match inst.r.next_frame().await {
            Some(jatproxy::xml::Frame::Whitespace(_)) => {}
            Some(jatproxy::xml::Frame::End(_)) => break,
            other => panic!("instance: expected the stream end, got {other:?}"),
        }
    }
    let status = bin.wait_exit(Duration::from_secs(3) + WAIT).await;
    let took = t0.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status; log:\n{}",
        bin.log()
    );
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    assert!(
        TcpStream::connect(bin.listen).await.is_err(),
        "still accepting after shutdown"
    );
    println!("SIGTERM to exit 0: {} ms", took.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_pending_exits_zero_at_once() {
    let server = FakeServer::bind().await;
    let mut bin = Bin::start(&server, Settings::default(), &[]);
    let mut up = server.accept().await;
    listener_up(bin.listen).await;
    let mut inst = FakeInstance::connect(bin.listen, "idle").await;
    let t0 = Instant::now();
    bin.signal("INT");
    assert!(matches!(
        up.r.next_frame().await,
        Some(jatproxy::xml::Frame::End(_))
    ));
    // As a server does: close our side too. jatproxy waits for that (up
    // to half the grace period) to answer requests still on their way.
    up.w.send("</stream:stream>").await;
    drop(up);
    assert!(matches!(
        inst.r.next_frame().await,
        Some(jatproxy::xml::Frame::End(_))
    ));
    let status = bin.wait_exit(WAIT).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", bin.log());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_at_trace_level() {
    let server = FakeServer::bind().await;
    let mut bin = Bin::start(
        &server,
        Settings {
            extra: "[log]\nlevel = \"trace\"",
            ..Settings::default()
        },
        &[("RUST_LOG", "trace")],
    );
    // The server refuses the first handshake, accepts the second.
    {
        let mut sock = server.accept_socket().await;
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        sock.write_all(&handshake::server_header(D, "refused-1"))
            .await
            .expect("header");
        let _ = sock.read(&mut buf).await;
        sock.write_all(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
            .await
            .expect("refusal");
    }
    let mut up = server.accept().await;
    listener_up(bin.listen).await;
    // Instances with a wrong secret, then the right one, and traffic.
    let wrong = "wrong-instance-secret-4242";
    let refused = FakeInstance::connect_as(bin.listen, D, wrong, "wrong").await;
    assert!(refused.is_err());
    let mut echo = Echo::ready(bin.listen, &mut up, "right").await;
    echo.serve_one(&mut up, "traffic").await;
    bin.signal("TERM");
    let _ = bin.wait_exit(WAIT).await;

    let log = bin.log();
    assert!(
        log.contains("log.level=\"trace\""),
        "logging at trace: {log}"
    );
    assert!(log.contains("upstream handshake failed"), "{log}");
    assert!(log.contains("instance handshake failed"), "{log}");
    // The secrets, and the digests that would allow an offline guess.
    let mut secrets = vec![
        UPSTREAM_SECRET.to_owned(),
        INSTANCE_SECRET.to_owned(),
        wrong.to_owned(),
        handshake::digest("refused-1", UPSTREAM_SECRET),
        handshake::digest("stream-1", UPSTREAM_SECRET),
    ];
    secrets.dedup();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "{s:?} in the log:\n{log}");
    }
    // No handshake digest of any stream (the instances' stream ids are
    // random): a SHA-1 in hex is a run of 40 hex digits. Stream ids are
    // 32.
    let hex_runs: Vec<&str> = log
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|run| run.len() >= 40)
        .collect();
    assert!(
        hex_runs.is_empty(),
        "digest-like {hex_runs:?} in the log:\n{log}"
    );
    println!(
        "{} log lines at trace level, none holding any of {} secrets or digests",
        log.lines().count(),
        secrets.len()
    );
}

// ---------------------------------------------------------------------------
// Dead-link detection
// ---------------------------------------------------------------------------

/// A server that stops answering (no FIN, no RST: the fake just goes
/// silent) is pinged after `ping_interval`, given up after
/// `ping_timeout`, and replaced by a new session; the instance stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_link_is_pinged_and_replaced() {
    let (server, bin, mut up, mut echo) = with_echo(
        Settings {
            upstream:
                "ping_interval = \"300ms\"\nping_timeout = \"300ms\"\nkeepalive_interval = \"60s\"",
            ..Settings::default()
        },
        "stays",
    )
    .await;
    echo.serve_one(&mut up, "before").await;
    let t0 = Instant::now();
    let ping = up.r.recv().await;
    let ping_text = text(&ping);
    assert_eq!(ping.stanza_type(), Some("get"), "{ping_text}");
    assert_eq!(ping.to(), Some("example.test"), "{ping_text}");
    assert_eq!(ping.from(), Some(D), "{ping_text}");
    assert!(
        ping_text.contains("<ping xmlns='urn:xmpp:ping'/>"),
        "{ping_text}"
    );
    // Say nothing, keep the socket open: jatproxy gives up on its own.
    let mut next = server.accept().await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the dead link was replaced after {took:?}"
    );
    assert!(bin.log().contains("link dead"), "{}", bin.log());
    echo.serve_one(&mut next, "after").await;
    drop(up);
    println!(
        "dead link detected and replaced {} ms after the ping",
        took.as_millis()
    );
}

/// Answered pings keep the session; the answers are absorbed, not routed
/// (no error comes back for them), and requests flow in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_pings_keep_the_link() {
    let (server, bin, mut up, mut echo) = with_echo(
        Settings {
            upstream: "ping_interval = \"200ms\"\nping_timeout = \"300ms\"",
            ..Settings::default()
        },
        "stays",
    )
    .await;
    let answer = |ping: &jatproxy::xml::Stanza| {
        assert!(text(ping).contains("urn:xmpp:ping"), "{}", text(ping));
        format!(
            "<iq type='result' id='{}' from='example.test' to='{D}'/>",
            ping.id().unwrap_or_default()
        )
    };
    for round in 0..4 {
        let ping = up.r.recv().await;
        up.w.send(&answer(&ping)).await;
        echo.serve_one(&mut up, &format!("round{round}")).await;
    }
    // For a second more, answering each ping: still the first session,
    // nothing waiting to be accepted.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut pings = 4;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            _ = server.accept_socket() => panic!("jatproxy reconnected although its pings were answered:\n{}", bin.log()),
            p = up.r.recv() => {
                up.w.send(&answer(&p)).await;
                pings += 1;
            }
        }
    }
    assert!(!bin.log().contains("link dead"), "{}", bin.log());
    println!("{pings} pings answered on one session");
}
