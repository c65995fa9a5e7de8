//! Live reload over loopback fakes: `Proxy::reload` under load (balancing
//! and timeout change, nothing lost), refusals that keep the running
//! settings, secrets and addresses that change with or without a new
//! upstream session; and SIGHUP to the real binary.

#[path = "support/fake.rs"]
mod fake;

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake::{error_condition, start, FakeInstance, FakeServer, D, INSTANCE_SECRET, WAIT};
use jatproxy::config::{Balancing, Secret};
use jatproxy::reload::ReloadError;
use jatproxy::xml::{Frame, Stanza};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const ALICE: &str = "alice@example.test/phone";
const ROUND_ROBIN: &str = "[routing]\nbalancing = \"round-robin\"\niq_timeout = \"60s\"\n";

/// Runs an instance that answers every iq request at once, except ids
/// starting with `hold`; reports (name, id) of each request it reads.
fn answerer(
    mut inst: FakeInstance,
    name: &'static str,
    seen: mpsc::UnboundedSender<(&'static str, String)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let st = match inst.r.try_next_frame(Duration::from_secs(3600)).await {
                Ok(Some(Frame::Stanza(st))) => st,
                Ok(Some(Frame::Whitespace(_))) => continue,
                _ => return,
            };
            if !st.is_iq_request() {
                continue;
            }
            let id = st.id().unwrap_or_default().to_owned();
            let _ = seen.send((name, id.clone()));
            if id.starts_with("hold") {
                continue;
            }
            let reply = format!(
                "<iq type='result' id='{id}' from='{D}' to='{}'/>",
                st.from().unwrap_or_default()
            );
            if inst.w.try_send(&reply).await.is_err() {
                return;
            }
        }
    })
}

fn request(id: &str) -> String {
    format!("<iq type='get' id='{id}' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>")
}

/// Reads `n` answers from upstream: id → the stanza, each id once.
async fn answers(up: &mut fake::Session, n: usize) -> HashMap<String, Stanza> {
    let mut got = HashMap::new();
    for _ in 0..n {
        let st = up.r.recv().await;
        let id = st.id().expect("answer has an id").to_owned();
        assert!(got.insert(id.clone(), st).is_none(), "{id} answered twice");
    }
    got
}

#[tokio::test]
async fn reload_under_load_changes_balancing_and_timeout_and_loses_nothing() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(&server, "", ROUND_ROBIN).await;
    let listen = proxy.listen_addr().expect("listener");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let _a = answerer(FakeInstance::connect(listen, "a").await, "a", tx.clone());
    let _b = answerer(FakeInstance::connect(listen, "b").await, "b", tx);
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);

    // 40 requests, the reload in the middle: once the first 20 reached
    // the instances (so they were routed under the old settings), while
    // their answers are still on the way.
    for i in 0..20 {
        up.w.send(&request(&format!("r{i}"))).await;
    }
    let mut by: HashMap<String, &str> = HashMap::new();
    for _ in 0..20 {
        let (name, id) = seen.recv().await.expect("instance report");
        by.insert(id, name);
    }
    let mut cfg = (*proxy.config()).clone();
    cfg.routing.balancing = Balancing::Sticky;
    cfg.routing.iq_timeout = Duration::from_millis(300);
    let plan = proxy.reload(cfg).await.expect("live settings reload");
    assert_eq!(plan.live, ["routing.balancing", "routing.iq_timeout"]);
    for i in 20..40 {
        up.w.send(&request(&format!("r{i}"))).await;
    }
    let got = answers(&mut up, 40).await;
    for (id, st) in &got {
        assert_eq!(st.stanza_type(), Some("result"), "{id} got {st:?}");
    }
    for _ in 20..40 {
        let (name, id) = seen.recv().await.expect("instance report");
        by.insert(id, name);
    }
    // Before: round-robin over both. After: one requester, one instance.
    let before: HashSet<&str> = (0..20).map(|i| by[&format!("r{i}")]).collect();
    let after: HashSet<&str> = (20..40).map(|i| by[&format!("r{i}")]).collect();
    assert_eq!(before.len(), 2, "round-robin used both: {by:?}");
    assert_eq!(after.len(), 1, "sticky used one: {by:?}");

    // The new timeout: an unanswered request gets its error in about
    // 300 ms, not the 60 s it had.
    let t0 = Instant::now();
    up.w.send(&request("hold-1")).await;
    let e = up.r.recv().await;
    assert_eq!(e.id(), Some("hold-1"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-timeout")
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let s = proxy.status();
    assert_eq!(s.upstream_sessions, 1, "no reconnect for live settings");
    assert_eq!(s.counters.reloads_applied, 1);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn refused_reload_keeps_the_running_settings() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(&server, "", ROUND_ROBIN).await;
    let listen = proxy.listen_addr().expect("listener");
    let (tx, _seen) = mpsc::unbounded_channel();
    let _a = answerer(FakeInstance::connect(listen, "a").await, "a", tx);
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    let mut cfg = (*proxy.config()).clone();
    cfg.upstream.domain = "other.example.test".into();
    cfg.routing.balancing = Balancing::Sticky;
    let e = proxy
        .reload(cfg)
        .await
        .expect_err("a new domain needs a restart");
    assert_eq!(e, ReloadError::NeedsRestart(vec!["upstream.domain"]));
    // Not even the live part was applied.
    let running = proxy.config();
    assert_eq!(running.upstream.domain, D);
    assert_eq!(running.routing.balancing, Balancing::RoundRobin);
    up.w.send(&request("still")).await;
    let r = up.r.recv().await;
    assert_eq!((r.id(), r.stanza_type()), (Some("still"), Some("result")));
    assert!(
        proxy
            .wait_for(WAIT, |s| s.counters.reloads_refused == 1
                && s.counters.reloads_applied == 0)
            .await
    );
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn instance_secret_change_applies_to_new_connections_only() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(&server, "", ROUND_ROBIN).await;
    let listen = proxy.listen_addr().expect("listener");
    let (tx, _seen) = mpsc::unbounded_channel();
    let _a = answerer(FakeInstance::connect(listen, "a").await, "a", tx.clone());
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    let mut cfg = (*proxy.config()).clone();
    cfg.instances.secret = Some(Secret::new("rotated"));
    let plan = proxy.reload(cfg).await.expect("instance secret reloads");
    assert_eq!(plan.next_connection, ["instances.secret"]);

    let old = FakeInstance::connect_as(listen, D, INSTANCE_SECRET, "old").await;
    assert!(old.is_err(), "the old secret is refused now");
    let b = FakeInstance::connect_as(listen, D, "rotated", "b")
        .await
        .expect("the new secret is accepted");
    let _b = answerer(b, "b", tx);
    // The instance connected before the reload stays, next to the new one.
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    up.w.send(&request("x")).await;
    assert_eq!(up.r.recv().await.stanza_type(), Some("result"));
    assert_eq!(proxy.status().upstream_sessions, 1);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn upstream_secret_change_reconnects_with_it() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(&server, "", ROUND_ROBIN).await;
    let mut cfg = (*proxy.config()).clone();
    cfg.upstream.secret = Secret::new("new-upstream-secret");
    let plan = proxy.reload(cfg).await.expect("upstream secret reloads");
    assert_eq!(plan.reconnect, ["upstream.secret"]);
    // The old session is closed properly...
    loop {
        match up.r.next_frame().await {
            Some(Frame::End(_)) | None => break,
            Some(Frame::Whitespace(_)) => {}
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }
    // ...and a new one made at once with the new secret.
    let _up2 = server.accept_with_secret("new-upstream-secret").await;
    assert!(
        proxy
            .wait_for(WAIT, |s| s.upstream_online && s.upstream_sessions == 2)
            .await
    );
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn target_change_keeps_the_session() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(
        &server,
        "",
        "[client_proxy]\ntarget_address = \"impl@example.test\"\n",
    )
    .await;
    let sub = up.r.recv().await;
    assert_eq!(sub.to(), Some("impl@example.test"));
    up.w.send(&format!("<presence from='impl@example.test/r' to='{D}'/>"))
        .await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    let mut cfg = (*proxy.config()).clone();
    cfg.client_proxy.target_address = Some("other@example.test".parse().expect("jid"));
    proxy.reload(cfg).await.expect("a new target reloads");
    let sub = up.r.recv().await;
    assert_eq!(sub.stanza_type(), Some("subscribe"));
    assert_eq!(sub.to(), Some("other@example.test"));
    let s = proxy.status();
    assert!(s.pool.is_empty(), "the old account's resources left: {s:?}");
    assert_eq!(s.upstream_sessions, 1);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

// ----- the binary ------------------------------------------------------------

fn write_config(path: &Path, server: &str, extra: &str) {
    let text = format!(
        r#"
[upstream]
server = "{server}"
domain = "{D}"
secret_file = "upstream.secret"
reconnect_min = "20ms"
reconnect_max = "200ms"

[metrics]
listen = "127.0.0.1:0"

{extra}
"#
    );
    // Write then rename, so the process never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The child's stderr, line by line.
struct Log {
    rx: mpsc::UnboundedReceiver<String>,
    all: Vec<String>,
}

impl Log {
    /// The first line from now on containing every needle.
    async fn expect(&mut self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no log line with {needles:?} in:\n{}", self.all.join("\n"))
                })
                .unwrap_or_else(|| panic!("jatproxy exited; log:\n{}", self.all.join("\n")));
            self.all.push(line.clone());
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
    }
}

/// Kills the child if the test fails before it exits.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// One scrape; an error when the endpoint refused or cut the connection
/// (it does so when all its slots are taken).
async fn scrape(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

/// Connects to the metrics endpoint with every one of its slots taken
/// and expects to be closed at once, unanswered; jatproxy logs that at
/// `debug` ("metrics: too many scrapes at once").
async fn refused_scrape(addr: &str) {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed at once: every metrics slot is taken")
        .unwrap_or(0);
    assert_eq!(n, 0, "a refused scrape gets no answer");
}

/// Slots of the metrics endpoint (`MAX_CONCURRENT` in src/metrics.rs).
const METRICS_SLOTS: usize = 8;

/// The value of `key=` in a log line (`addr=127.0.0.1:4242`).
fn log_field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let server = FakeServer::bind().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("upstream.secret"), fake::UPSTREAM_SECRET).expect("secret");
    let config = dir.path().join("jatproxy.toml");
    // The same listener in every file (it cannot change by reload).
    let instances =
        format!("[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n");
    write_config(
        &config,
        &server.addr(),
        &format!("[client_proxy]\ntarget_address = \"impl@example.test\"\n{instances}"),
    );

    let child = Command::new(env!("CARGO_BIN_EXE_jatproxy"))
        .arg("--config")
        .arg(&config)
        .env_remove("JATPROXY_UPSTREAM_SECRET")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jatproxy");
    let mut child = Guard(Some(child));
    let pid = child.0.as_ref().map(|c| c.id()).expect("child");
    let stderr = child
        .0
        .as_mut()
        .and_then(|c| c.stderr.take())
        .expect("stderr");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Log {
        rx,
        all: Vec::new(),
    };

    let start = log
        .expect(&["jatproxy starting", "version=\"0.1.0\""])
        .await;
    assert!(start.contains("routing.balancing=random"), "{start}");
    let metrics = log.expect(&["serving metrics at http://"]).await;
    let addr = log_field(&metrics, "addr").to_owned();
    let listening = log.expect(&["listening for component instances"]).await;
    let listen: std::net::SocketAddr = log_field(&listening, "addr")
        .parse()
        .unwrap_or_else(|e| panic!("listener address in {listening}: {e}"));
    let mut up = server.accept().await;
    // One span per connection, with the peer and its role.
    log.expect(&["upstream session established", "role=\"upstream\""])
        .await;
    assert_eq!(up.r.recv().await.to(), Some("impl@example.test"));

    // An instance that answers every request at once; until the core has
    // it in the pool, a request finds no member.
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let _inst = answerer(FakeInstance::connect(listen, "a").await, "a", seen_tx);
    let deadline = Instant::now() + WAIT;
    for k in 0.. {
        assert!(
            Instant::now() < deadline,
            "the instance never joined the pool"
        );
        up.w.send(&request(&format!("ready-{k}"))).await;
        let r = up.r.recv().await;
        assert_eq!(r.id(), Some(format!("ready-{k}").as_str()));
        if r.stanza_type() == Some("result") {
            break;
        }
        assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    }

    // Every metrics slot taken by an idle connection, and one more
    // refused: at `info`, the refusal is not logged.
    let mut idle = Vec::new();
    for _ in 0..METRICS_SLOTS {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    refused_scrape(&addr).await;

    // N requests with a window in flight; SIGHUP (a new target, balancing
    // and log level) once a quarter are answered, so the reload lands
    // with requests pending. The last quarter waits for the reload's
    // subscribe, so the load cannot end before the reload is applied.
    // Each request gets exactly one result.
    const N: usize = 200;
    const IN_FLIGHT: usize = 16;
    let (mut sent, mut results) = (0, HashMap::<String, usize>::new());
    let mut subscribes = Vec::new();
    let mut hup_at = None;
    // Requests sent and not yet answered when the subscribe arrived.
    let mut pending_at_subscribe = None;
    while results.values().sum::<usize>() < N {
        while sent < N
            && sent - results.values().sum::<usize>() < IN_FLIGHT
            && (sent < 3 * N / 4 || !subscribes.is_empty())
        {
            up.w.send(&request(&format!("hup-{sent}"))).await;
            sent += 1;
        }
        let st = up.r.recv().await;
        if st.name == "presence" {
            pending_at_subscribe.get_or_insert(sent - results.values().sum::<usize>());
            subscribes.push(st);
            continue;
        }
        let id = st.id().unwrap_or_default().to_owned();
        assert!(id.starts_with("hup-"), "{st:?}");
        assert_eq!(st.stanza_type(), Some("result"), "{id}: {st:?}");
        *results.entry(id).or_default() += 1;
        if hup_at.is_none() && results.len() == N / 4 {
            write_config(
                &config,
                &server.addr(),
                &format!(
                    "[client_proxy]\ntarget_address = \"other@example.test\"\n{instances}\
                     [routing]\nbalancing = \"sticky\"\n[log]\nlevel = \"debug\"\n"
                ),
            );
            signal(pid, "-HUP");
            hup_at = Some(sent - results.len());
        }
    }
    assert_eq!(results.len(), N, "every request answered");
    assert!(
        results.values().all(|&n| n == 1),
        "exactly one result each: {results:?}"
    );
    let in_flight = hup_at.expect("SIGHUP sent");
    let pending = pending_at_subscribe.expect("the reload's subscribe arrived");
    println!(
        "SIGHUP with {in_flight} requests in flight, {pending} still unanswered when the \
         reload's subscribe arrived; {N} requests, one result each"
    );
    assert!(
        in_flight > 0 && pending > 0,
        "requests were in flight across the reload"
    );
    // A new target: subscribed on the same session.
    assert_eq!(subscribes.len(), 1, "{subscribes:?}");
    assert_eq!(
        (subscribes[0].stanza_type(), subscribes[0].to()),
        (Some("subscribe"), Some("other@example.test"))
    );
    let reloaded = log.expect(&["configuration reloaded"]).await;
    for key in [
        "client_proxy.target_address",
        "routing.balancing",
        "log.level",
    ] {
        assert!(reloaded.contains(key), "{key} in {reloaded}");
    }
    let debug_before: Vec<&String> = log.all.iter().filter(|l| l.contains("DEBUG")).collect();
    assert!(
        debug_before.is_empty(),
        "DEBUG lines at info: {debug_before:?}"
    );
    // The level changed: the same refusal is now logged at DEBUG.
    refused_scrape(&addr).await;
    let debug = log.expect(&["DEBUG", "too many scrapes"]).await;
    println!("after the reload: {debug}");
    drop(idle);

    // An invalid file: one error line, the running settings stay.
    write_config(
        &config,
        &server.addr(),
        &format!(
            "[client_proxy]\ntarget_address = \"third@example.test\"\n{instances}\
             [routing]\niq_timeout = \"0s\"\n"
        ),
    );
    signal(pid, "-HUP");
    let refused = log
        .expect(&["configuration reload refused", "routing.iq_timeout"])
        .await;
    assert!(refused.contains("ERROR"), "{refused}");
    // Still serving, and the refused file's target was not taken up (no
    // subscribe to third@): the next stanza is the answer.
    up.w.send(&request("alive")).await;
    let r = up.r.recv().await;
    assert_eq!(
        (r.id(), r.stanza_type()),
        (Some("alive"), Some("result")),
        "{r:?}"
    );
    // The counters are published by the core after the batch of events
    // that changed them: wait until both reloads show. Scrapes may be
    // refused until the idle connections' slots are given back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&addr).await.unwrap_or_default();
        if text.contains("jatproxy_config_reloads_total{result=\"refused\"} 1\n")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("jatproxy_config_reloads_total{result=\"applied\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("jatproxy_config_reloads_total{result=\"refused\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("jatproxy_upstream_sessions_total 1\n"),
        "{text}"
    );

    signal(pid, "-TERM");
    let mut exiting = child.0.take().expect("child");
    let waited = tokio::task::spawn_blocking(move || {
        let status = exiting.wait();
        (exiting, status)
    });
    let (exited, status) = tokio::time::timeout(WAIT, waited)
        .await
        .expect("jatproxy exits on SIGTERM in time")
        .expect("join");
    drop(exited);
    let status = status.expect("wait");
    assert!(status.success(), "{status:?}");
    // The secret never reached the log.
    while let Ok(line) = log.rx.try_recv() {
        log.all.push(line);
    }
    let all = log.all.join("\n");
    assert!(!all.contains(fake::UPSTREAM_SECRET), "{all}");
}
