//! jatproxy against an in-process fake XMPP server over loopback TCP, for
//! the faults a real server will not produce on demand: refused secrets,
//! conflicts, a server cutting the stream mid-stanza, members that never
//! answer, a full pending table. Every test counts that each request got
//! exactly one answer.

#[path = "support/fake.rs"]
mod fake;

use fake::{
    client_proxy_config, error_condition, text, FakeInstance, FakeServer, Session, D, T,
    UPSTREAM_SECRET, WAIT,
};
use jatproxy::proxy::{Proxy, Status};
use jatproxy::xml::Frame;

async fn start(server: &FakeServer, extra: &str) -> Proxy {
    Proxy::start(client_proxy_config(&server.addr(), extra))
        .await
        .expect("proxy starts")
}

/// A proxy registered with `server`, subscription granted, and the given
/// resources of the target online in its pool.
/// `[routing]` keys for the module's answer to a lost member and an
/// empty pool (at once), which the tests using it read; re-dispatch and
/// the hold, the defaults since issue 13, are tests/e2e_survive.rs's.
const MODULE_LOSS: &str = "redispatch = \"none\"\nhold_when_empty = \"0s\"\n";

async fn online_with(server: &FakeServer, extra: &str, resources: &[&str]) -> (Proxy, Session) {
    let proxy = start(server, extra).await;
    let mut s = server.accept().await;
    s.expect_subscription().await;
    let presences: String = resources
        .iter()
        .map(|r| format!("<presence from='{T}/{r}' to='{D}'/>"))
        .collect();
    s.w.send(&presences).await;
    let n = resources.len();
    assert!(proxy.wait_for(WAIT, |st: &Status| st.pool.len() == n).await);
    (proxy, s)
}

#[tokio::test]
async fn seed_flow_over_tcp() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = online_with(&server, "", &["a"]).await;
    s.w.send(&format!(
        "<iq type='get' id='1234' to='{D}' from='alice@example.test/abc'><q xmlns='urn:x'>x</q></iq>"
    ))
    .await;
    let fwd = s.r.recv().await;
    assert_eq!(
        text(&fwd),
        format!("<iq type='get' id='1234' to='{T}/a' from='{D}/alice@example.test/abc'><q xmlns='urn:x'>x</q></iq>")
    );
    s.w.send(&format!(
        "<iq type='result' id='1234' to='{D}/alice@example.test/abc' from='{T}/a'/>"
    ))
    .await;
    let back = s.r.recv().await;
    assert_eq!(
        text(&back),
        format!("<iq type='result' id='1234' to='alice@example.test/abc' from='{D}'/>")
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn wrong_secret_is_refused_and_retried() {
    let server = FakeServer::bind().await;
    let proxy = start(&server, "").await;
    for attempt in 0..2 {
        let (mut s, ok) = server
            .accept_raw(&format!("bad-{attempt}"), UPSTREAM_SECRET)
            .await;
        assert!(ok, "the proxy's digest is right; the server refuses anyway");
        s.w.send("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
            .await;
    }
    // A third attempt comes, and this time the server accepts.
    let mut s = server.accept().await;
    s.expect_subscription().await;
    assert!(
        proxy
            .wait_for(WAIT, |st| st.upstream_online && st.upstream_sessions == 1)
            .await
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn conflict_then_success() {
    let server = FakeServer::bind().await;
    let proxy = start(&server, "").await;
    let (mut s, _) = server.accept_raw("c1", UPSTREAM_SECRET).await;
    s.w.send("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
        .await;
    let mut s2 = server.accept().await;
    s2.expect_subscription().await;
    assert!(proxy.wait_for(WAIT, |st| st.upstream_online).await);
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn server_closing_mid_stanza_loses_no_request() {
    let server = FakeServer::bind().await;
    let routing = format!("[routing]\n{MODULE_LOSS}");
    let (proxy, mut s) = online_with(&server, &routing, &["a"]).await;
    for i in 0..5 {
        s.w.send(&format!(
            "<iq type='get' id='m{i}' to='{D}' from='alice@example.test/abc'/>"
        ))
        .await;
    }
    for _ in 0..5 {
        assert_eq!(s.r.recv().await.stanza_type(), Some("get"));
    }
    // Cut the stream in the middle of a stanza.
    s.w.send("<iq type='result' id='m0' to='proxy.exa").await;
    drop(s);
    assert!(
        proxy
            .wait_for(WAIT, |st| !st.upstream_online && st.upstream_buffer == 5)
            .await
    );
    // After reconnecting, the five requesters get their one answer each:
    // the held answers follow the subscription refresh.
    let mut s = server.accept().await;
    let sub = s.r.recv().await;
    assert_eq!(sub.stanza_type(), Some("subscribe"));
    let mut answered = std::collections::HashSet::new();
    for _ in 0..5 {
        let e = s.r.recv().await;
        assert_eq!(e.to(), Some("alice@example.test/abc"));
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("recipient-unavailable")
        );
        assert!(answered.insert(e.id().map(str::to_owned)), "answered twice");
    }
    assert!(proxy.wait_for(WAIT, |st| st.pending == 0).await);
    s.expect_nothing_more("marker").await;
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn timeouts_and_a_full_table_answer_once() {
    let server = FakeServer::bind().await;
    let proxy = start(
        &server,
        "[routing]\niq_timeout = \"300ms\"\npending_capacity = 2\n",
    )
    .await;
    let mut s = server.accept().await;
    s.expect_subscription().await;
    s.w.send(&format!("<presence from='{T}/a' to='{D}'/>"))
        .await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    for i in 0..3 {
        s.w.send(&format!(
            "<iq type='get' id='t{i}' to='{D}' from='alice@example.test/abc'/>"
        ))
        .await;
    }
    // Every answer is kept, so that a second one for an id shows.
    let mut answers: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut forwarded = 0;
    let mut received = 0;
    while received < 3 {
        let st = s.r.recv().await;
        if st.to() == Some("alice@example.test/abc") {
            received += 1;
            answers
                .entry(st.id().unwrap_or_default().to_owned())
                .or_default()
                .push(error_condition(&st).unwrap_or_default());
        } else {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 3);
    assert_eq!(answers["t0"], ["resource-constraint"]);
    assert_eq!(answers["t1"], ["remote-server-timeout"]);
    assert_eq!(answers["t2"], ["remote-server-timeout"]);
    assert!(proxy.wait_for(WAIT, |st| st.pending == 0).await);
    // Late replies are dropped: the next thing the server sees is the
    // forwarded marker, no second answer to t1.
    s.w.send(&format!(
        "<iq type='result' id='t1' to='{D}/alice@example.test/abc' from='{T}/a'/>"
    ))
    .await;
    s.expect_nothing_more("fresh").await;
    assert!(
        proxy
            .wait_for(WAIT, |st| st.stats.replies_unmatched == 1)
            .await
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn resource_vanishing_under_load_answers_everything_once() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = online_with(
        &server,
        &format!("[routing]\nbalancing = \"round-robin\"\n{MODULE_LOSS}"),
        &["a", "b"],
    )
    .await;
    let n = 200;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "<iq type='get' id='v{i}' to='{D}' from='user{}@example.test/r'/>",
            i % 7
        ));
    }
    s.w.send(&batch).await;
    let mut answered: std::collections::HashMap<String, u32> = Default::default();
    let mut to_a = 0;
    let mut replies = String::new();
    for _ in 0..n {
        let f = s.r.recv().await;
        let to = f.to().unwrap_or_default().to_owned();
        if to == format!("{T}/b") {
            let enc = f.from().unwrap_or_default();
            replies.push_str(&format!(
                "<iq type='result' id='{}' to='{enc}' from='{T}/b'/>",
                f.id().unwrap_or_default()
            ));
        } else {
            to_a += 1;
        }
    }
    assert!(to_a > 0);
    // b answers everything it got; a goes away without answering.
    s.w.send(&replies).await;
    s.w.send(&format!(
        "<presence type='unavailable' from='{T}/a' to='{D}'/>"
    ))
    .await;
    while answered.len() < n {
        let f = s.r.recv().await;
        assert!(
            f.to().is_some_and(|t| t.starts_with("user")),
            "{}",
            text(&f)
        );
        *answered
            .entry(f.id().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(answered.values().all(|&c| c == 1));
    assert!(proxy.wait_for(WAIT, |st| st.pending == 0).await);
    // Nothing else is on its way: no second answer to any of them.
    s.expect_nothing_more("marker").await;
    assert!(proxy.shutdown(WAIT).await);
}

/// On upstream loss every request pending on a client resource is
/// answered while the server is away. Those answers are held however
/// small `limits.upstream_buffer` is: a request must not lose its one
/// answer to a buffer bound.
#[tokio::test]
async fn answers_held_past_the_upstream_buffer_all_arrive() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = online_with(
        &server,
        &format!("[limits]\nupstream_buffer = 4\n[routing]\n{MODULE_LOSS}"),
        &["a"],
    )
    .await;
    let n = 40;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "<iq type='get' id='h{i}' to='{D}' from='user{}@example.test/r'/>",
            i % 3
        ));
    }
    s.w.send(&batch).await;
    for _ in 0..n {
        assert_eq!(s.r.recv().await.stanza_type(), Some("get"));
    }
    assert!(proxy.wait_for(WAIT, |st| st.pending == n).await);
    drop(s);
    assert!(
        proxy
            .wait_for(WAIT, |st| !st.upstream_online && st.pending == 0)
            .await
    );
    let held = proxy.status();
    assert_eq!(
        (held.upstream_buffer, held.upstream_buffer_dropped),
        (n, 0),
        "{held:?}"
    );
    let mut s = server.accept().await;
    assert_eq!(s.r.recv().await.stanza_type(), Some("subscribe"));
    let mut answered: std::collections::HashMap<String, u32> = Default::default();
    for _ in 0..n {
        let e = s.r.recv().await;
        assert!(
            e.to().is_some_and(|t| t.starts_with("user")),
            "{}",
            text(&e)
        );
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("recipient-unavailable")
        );
        *answered
            .entry(e.id().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(answered.len(), n, "{answered:?}");
    assert!(answered.values().all(|&c| c == 1), "{answered:?}");
    // Nothing more: the marker, refused as the pool is empty now, is next.
    s.expect_nothing_more("marker").await;
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn shutdown_answers_pending_and_closes_the_stream() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = online_with(&server, "", &["a"]).await;
    s.w.send(&format!(
        "<iq type='set' id='sd' to='{D}' from='alice@example.test/abc'/>"
    ))
    .await;
    assert_eq!(s.r.recv().await.id(), Some("sd"));
    let stop = tokio::spawn(proxy.shutdown(WAIT));
    let e = s.r.recv().await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("recipient-unavailable")
    );
    assert!(matches!(s.r.next_frame().await, Some(Frame::End(_))));
    assert!(stop.await.expect("join"));
}

#[tokio::test]
async fn silent_instance_is_closed_after_the_idle_timeout() {
    let server = FakeServer::bind().await;
    let proxy = start(
        &server,
        "[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"i\"\n[limits]\nidle_timeout = \"300ms\"\n",
    )
    .await;
    let mut up = server.accept().await;
    up.expect_subscription().await;
    let mut inst = FakeInstance::connect_as(proxy.listen_addr().expect("listener"), D, "i", "i")
        .await
        .expect("the proxy accepts the instance's handshake");
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    // Say nothing: the proxy closes the stream with connection-timeout.
    let err = inst.r.recv().await;
    assert_eq!(err.name, "error");
    assert!(
        text(&err).contains("<connection-timeout "),
        "{}",
        text(&err)
    );
    assert!(proxy.wait_for(WAIT, |st| st.pool.is_empty()).await);
    assert!(proxy.shutdown(WAIT).await);
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Secrets never reach the logs, at any level, whatever happens: refused
/// handshakes, sessions, instances with a wrong secret, shutdown. (A
/// current-thread runtime keeps every task on this thread, under the
/// thread-local subscriber.)
#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_the_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = FakeServer::bind().await;
    let instance_secret = "instance-secret-7731";
    let proxy = start(
        &server,
        &format!("[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{instance_secret}\"\n"),
    )
    .await;
    let (mut refused, _) = server.accept_raw("r1", UPSTREAM_SECRET).await;
    refused
        .w.send("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
        .await;
    let mut s = server.accept().await;
    s.expect_subscription().await;

    // An instance with a wrong secret, then one with the right one.
    let addr = proxy.listen_addr().expect("listener");
    for secret in ["wrong-secret", instance_secret] {
        let ok = FakeInstance::connect_as(addr, D, secret, "i").await.is_ok();
        assert_eq!(ok, secret == instance_secret);
    }
    assert!(proxy.shutdown(WAIT).await);

    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert!(
        text.contains("upstream session established"),
        "logs were captured"
    );
    assert!(
        text.contains("instance handshake failed"),
        "the refusal was logged"
    );
    for secret in [UPSTREAM_SECRET, instance_secret] {
        assert!(
            !text.contains(secret),
            "secret {secret:?} leaked into the logs:\n{text}"
        );
    }
}

/// A stream error the server sends after the handshake is read as the
/// handshake reads one: the condition is the first child in the streams
/// namespace other than `<text>`, wherever `<text>` stands, and the
/// `<text>` is kept. The session's end is logged with both before the
/// proxy reconnects. (A current-thread runtime keeps every task under the
/// thread-local subscriber.)
#[tokio::test(flavor = "current_thread")]
async fn a_stream_error_after_the_handshake_keeps_its_condition_and_text() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = FakeServer::bind().await;
    let proxy = start(&server, "").await;
    const NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    let errors = [
        format!(
            "<stream:error><conflict xmlns='{NS}'/><text xmlns='{NS}'>Replaced by new connection</text></stream:error></stream:stream>"
        ),
        format!(
            "<stream:error><text xmlns='{NS}' xml:lang='en'>Going down</text><system-shutdown xmlns='{NS}'/></stream:error></stream:stream>"
        ),
    ];
    for error in &errors {
        let mut s = server.accept().await;
        s.expect_subscription().await;
        s.w.send(error).await;
    }
    // The proxy logs each end before it reconnects: once it has come
    // back after the last one, both lines are written.
    let mut s = server.accept().await;
    s.expect_subscription().await;
    assert!(proxy.shutdown(WAIT).await);

    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    for expected in [
        "the server sent stream error conflict (Replaced by new connection)",
        "the server sent stream error system-shutdown (Going down)",
    ] {
        assert!(
            text.contains(expected),
            "no {expected:?} in the logs:\n{text}"
        );
    }
}

/// Peak resident memory of this process, in KiB (Linux `VmHWM`).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// What the proxy answers a user's stanza over an upstream limit, as
/// text, or panics.
async fn expect_policy_violation(s: &mut Session, name: &str, id: &str, key: &str) {
    let err = s.r.recv().await;
    let t = text(&err);
    assert_eq!(err.name, name, "{t}");
    assert_eq!(err.stanza_type(), Some("error"), "{t}");
    assert_eq!(err.id(), Some(id), "{t}");
    assert_eq!(err.to(), Some("alice@example.test/abc"), "{t}");
    assert_eq!(err.from(), Some(D), "{t}");
    assert!(t.contains("<error type='modify'><policy-violation "), "{t}");
    assert!(t.contains(&format!("(limits.upstream_{key})")), "{t}");
}

/// A user's stanza over a per-stanza limit never ends the upstream
/// session: it is skipped while it streams in, its sender gets
/// `policy-violation` from the address it wrote to, and the requests
/// around it go on as usual. Issue "Any user can cut the component link".
#[tokio::test]
async fn oversize_stanzas_from_the_server_are_skipped_answered_and_the_session_stays() {
    let server = FakeServer::bind().await;
    let extra = "[limits]\nupstream_max_stanza_bytes = 65536\nupstream_max_depth = 16\n\
                 upstream_max_token_bytes = 8192\n";
    let (proxy, mut s) = online_with(&server, extra, &["a"]).await;
    let alice = "alice@example.test/abc";

    // One ordinary request in flight across every skip.
    s.w.send(&format!(
        "<iq type='get' id='before' to='{D}' from='{alice}'/>"
    ))
    .await;
    assert_eq!(s.r.recv().await.id(), Some("before"));

    // Size: a 100 KB payload.
    let big = "x".repeat(100_000);
    s.w.send(&format!(
        "<iq type='set' id='big' to='{D}' from='{alice}'><q xmlns='urn:x'>{big}</q></iq>"
    ))
    .await;
    expect_policy_violation(&mut s, "iq", "big", "max_stanza_bytes").await;

    // Depth: 17 levels below the stanza.
    let deep = format!("{}{}", "<a>".repeat(17), "</a>".repeat(17));
    s.w.send(&format!(
        "<message type='chat' id='deep' to='{D}' from='{alice}'>{deep}</message>"
    ))
    .await;
    expect_policy_violation(&mut s, "message", "deep", "max_depth").await;

    // Token: one attribute value of 9000 bytes, in the stanza's own start
    // tag (the head is recovered all the same).
    let long = "v".repeat(9000);
    s.w.send(&format!(
        "<presence id='tok' to='{D}' from='{alice}' x='{long}'/>"
    ))
    .await;
    expect_policy_violation(&mut s, "presence", "tok", "max_token_bytes").await;

    // An oversize reply is dropped, never answered.
    s.w.send(&format!(
        "<iq type='result' id='before' to='{D}/{alice}' from='{T}/a'><q xmlns='urn:x'>{big}</q></iq>"
    ))
    .await;
    s.expect_nothing_more("marker-1").await;

    // 100 MB streamed in 64 KiB writes: skipped without being buffered.
    let hwm_before = vm_hwm_kib();
    s.w.send(&format!(
        "<iq type='get' id='huge' to='{D}' from='{alice}'><q xmlns='urn:x'>"
    ))
    .await;
    let chunk = "y".repeat(64 * 1024);
    for _ in 0..(100 * 1024 * 1024 / chunk.len()) {
        s.w.send(&chunk).await;
    }
    s.w.send("</q></iq>").await;
    expect_policy_violation(&mut s, "iq", "huge", "max_stanza_bytes").await;
    let grew = vm_hwm_kib().saturating_sub(hwm_before);
    println!("peak RSS grew by {grew} KiB while skipping a 100 MB stanza");
    assert!(grew < 16 * 1024, "peak RSS grew by {grew} KiB");

    // The request in flight is answered normally, on the same session.
    s.w.send(&format!(
        "<iq type='result' id='before' to='{D}/{alice}' from='{T}/a'/>"
    ))
    .await;
    let back = s.r.recv().await;
    assert_eq!((back.id(), back.to()), (Some("before"), Some(alice)));
    s.expect_nothing_more("marker-2").await;

    let st = proxy.status();
    assert_eq!(st.upstream_sessions, 1, "the session was never lost");
    assert_eq!(st.stats.skipped, [3, 1, 1]);
    assert!(proxy.shutdown(WAIT).await);
}
