//! The admin endpoint over real TCP (loopback): `/readyz` following the
//! upstream session and the pool of a running proxy (fake server and fake
//! instances), `/status` as JSON and HTML, the answers the hand-written
//! server gave (404, 405, 400, 431, HEAD, `Connection: close`), and the
//! bounds on what a scraper may cost: the concurrency cap and the
//! per-connection timeout.

#[path = "support/fake.rs"]
mod fake;
#[path = "support/scrape.rs"]
mod scrape;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fake::{FakeInstance, FakeServer, WAIT};
use jatproxy::admin::{self, Limits, Sources};
use jatproxy::proxy::Proxy;
use jatproxy::status::Status;
use scrape::{get, split};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SETTINGS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// Sends `request` and reads the whole answer (the server closes after
/// one); what came before the close, possibly nothing.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    read_all(&mut s).await
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    // A reset after the answer still leaves what was read.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("the server closes in time");
    String::from_utf8(raw).expect("utf-8")
}

async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn wait(proxy: &Proxy, what: &str, cond: impl Fn(&Status) -> bool) {
    assert!(
        proxy.wait_for(WAIT, cond).await,
        "{what}; status {:?}",
        proxy.status()
    );
}

async fn readyz(addr: SocketAddr) -> (u16, String) {
    get(addr, "/readyz").await
}

#[tokio::test]
async fn readyz_follows_the_upstream_session_and_the_pool() {
    let server = FakeServer::bind().await;
    let proxy = Proxy::start(fake::instances_config(&server.addr(), "", SETTINGS))
        .await
        .expect("proxy starts");
    let http = proxy.metrics_addr().expect("admin endpoint");
    let listen = proxy.listen_addr().expect("listener");

    // Upstream not accepted yet: alive, not ready.
    assert_eq!(get(http, "/healthz").await.0, 200);
    let (code, why) = readyz(http).await;
    assert_eq!((code, why.lines().count()), (503, 1), "{why}");
    assert!(why.starts_with("upstream session down"), "{why}");

    // Upstream up, nobody in the pool: still not ready, for the pool.
    let mut up = server.accept().await;
    wait(&proxy, "upstream up", |s| s.upstream_online).await;
    let (code, why) = readyz(http).await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("no qualified member"), "{why}");

    // An instance joins: ready.
    let a = FakeInstance::connect(listen, "a").await;
    wait(&proxy, "the instance in the pool", |s| s.pool.len() == 1).await;
    assert_eq!(readyz(http).await, (200, "ready\n".to_owned()));
    let j = status_json(http).await;
    assert_eq!(j["ready"], true, "{j}");
    assert_eq!(j["upstream"]["server"], server.addr(), "{j}");
    assert_eq!(j["upstream"]["online"], true, "{j}");
    assert!(j["upstream"]["since"].is_string(), "{j}");
    assert_eq!(j["upstream"]["reconnects"], 0, "{j}");
    assert_eq!(j["members"][0]["kind"], "instance", "{j}");
    assert_eq!(
        j["members"][0]["address"],
        a.local_addr().to_string(),
        "{j}"
    );
    assert_eq!(j["members"][0]["state"], "qualified", "{j}");

    // A request held by the instance shows in flight, on it and overall.
    up.w.send(&format!(
        "<iq type='get' id='q1' to='{}' from='alice@example.test/x'/>",
        fake::D
    ))
    .await;
    wait(&proxy, "one in flight", |s| s.pending == 1).await;
    let j = status_json(http).await;
    // The README's example.
    println!("GET /status: {j}");
    assert_eq!(j["members"][0]["in_flight"], 1, "{j}");
    assert_eq!(j["members"][0]["routed"], 1, "{j}");
    assert_eq!(j["requests"]["pending"], 1, "{j}");
    assert_eq!(j["requests"]["held"], 0, "{j}");

    // The instance leaves: not ready again.
    drop(a);
    wait(&proxy, "the pool empty", |s| s.pool.is_empty()).await;
    let (code, why) = readyz(http).await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("no qualified member"), "{why}");

    // Back with an instance, then upstream goes: not ready, for upstream.
    let _b = FakeInstance::connect(listen, "b").await;
    wait(&proxy, "b in the pool", |s| s.pool.len() == 1).await;
    assert_eq!(readyz(http).await.0, 200);
    drop(up);
    wait(&proxy, "upstream down", |s| !s.upstream_online).await;
    let (code, why) = readyz(http).await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("upstream session down"), "{why}");
    let j = status_json(http).await;
    assert_eq!(j["upstream"]["since"], serde_json::Value::Null, "{j}");

    // And ready once it is back; the session counts as a reconnect.
    let _up = server.accept().await;
    wait(&proxy, "upstream back", |s| s.upstream_online).await;
    assert_eq!(readyz(http).await.0, 200);
    assert_eq!(status_json(http).await["upstream"]["reconnects"], 1);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn status_is_a_self_contained_page_for_a_browser() {
    let server = FakeServer::bind().await;
    let (proxy, _up) = fake::start(&server, "", SETTINGS).await;
    let http = proxy.metrics_addr().expect("admin endpoint");
    let raw = exchange(
        http,
        b"GET /status HTTP/1.1\r\nHost: x\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\r\n",
    )
    .await;
    let (code, page) = split(&raw);
    assert_eq!(code, 200, "{raw}");
    assert!(
        raw.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{raw}"
    );
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains(&server.addr()), "{page}");
    for banned in ["<script", "src=", "href="] {
        assert!(!page.contains(banned), "{banned} in {page}");
    }
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// A resource name is whatever the server stamps: markup in it is shown,
/// escaped, never interpreted.
#[tokio::test]
async fn member_addresses_are_escaped_in_the_page() {
    let server = FakeServer::bind().await;
    let proxy = Proxy::start(fake::client_proxy_config(&server.addr(), SETTINGS))
        .await
        .expect("proxy starts");
    let http = proxy.metrics_addr().expect("admin endpoint");
    let mut up = server.accept().await;
    up.expect_subscription().await;
    up.w.send(&format!(
        "<presence from='{}/x&lt;b&gt;&amp;&quot;' to='{}'/>",
        fake::T,
        fake::D
    ))
    .await;
    wait(&proxy, "the resource in the pool", |s| s.pool.len() == 1).await;
    let j = status_json(http).await;
    let name = format!("{}/x<b>&\"", fake::T);
    assert_eq!(j["members"][0]["address"], name.as_str(), "{j}");
    assert_eq!(j["members"][0]["kind"], "resource", "{j}");
    let raw = exchange(
        http,
        b"GET /status HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
    )
    .await;
    let (_, page) = split(&raw);
    assert!(!page.contains("<b>"), "{page}");
    assert!(
        page.contains(&format!("{}/x&lt;b&gt;&amp;&quot;", fake::T)),
        "{page}"
    );
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// A resource kept out by name and a request waiting for a member show
/// on `/status`; both change when a resource that qualifies arrives.
#[tokio::test]
async fn status_shows_held_requests_and_resources_kept_out() {
    let server = FakeServer::bind().await;
    let extra =
        format!("resources = \"re:^good\"\n\n[routing]\nhold_when_empty = \"30s\"\n\n{SETTINGS}");
    let proxy = Proxy::start(fake::client_proxy_config(&server.addr(), &extra))
        .await
        .expect("proxy starts");
    let http = proxy.metrics_addr().expect("admin endpoint");
    let mut up = server.accept().await;
    up.expect_subscription().await;
    let (t, d) = (fake::T, fake::D);
    up.w.send(&format!("<presence from='{t}/bad' to='{d}'/>"))
        .await;
    wait(&proxy, "the refusal", |s| s.stats.admission.refused == 1).await;
    up.w.send(&format!(
        "<iq type='get' id='h1' to='{d}' from='alice@example.test/x'/>"
    ))
    .await;
    wait(&proxy, "the request held", |s| s.held == 1).await;
    let j = status_json(http).await;
    assert_eq!(j["requests"]["held"], 1, "{j}");
    assert_eq!(j["members"][0]["address"], format!("{t}/bad"), "{j}");
    assert_eq!(j["members"][0]["state"], "not in pool", "{j}");
    assert!(
        j["members"][0]["why_not"]
            .as_str()
            .is_some_and(|w| w.starts_with("refused: ")),
        "{j}"
    );
    assert_eq!(readyz(http).await.0, 503);

    up.w.send(&format!("<presence from='{t}/good' to='{d}'/>"))
        .await;
    let released = up.r.recv().await;
    assert_eq!(released.id(), Some("h1"));
    wait(&proxy, "the hold empty", |s| s.held == 0).await;
    let j = status_json(http).await;
    assert_eq!(j["requests"]["held"], 0, "{j}");
    assert_eq!(j["members"][0]["address"], format!("{t}/good"), "{j}");
    assert_eq!(j["members"][0]["state"], "qualified", "{j}");
    assert_eq!(j["members"][0]["in_flight"], 1, "{j}");
    assert_eq!(j["members"][1]["state"], "not in pool", "{j}");
    assert_eq!(readyz(http).await.0, 200);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// Every admin slot held by a silent client and a flood of connections
/// on top: requests still go through the proxy and are answered, and the
/// admin endpoint is back once the flood ends.
#[tokio::test]
async fn a_flooded_admin_endpoint_does_not_stop_the_proxy() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = fake::start(&server, "", SETTINGS).await;
    let http = proxy.metrics_addr().expect("admin endpoint");
    let mut inst = FakeInstance::connect(proxy.listen_addr().expect("listener"), "a").await;
    wait(&proxy, "the instance in the pool", |s| s.pool.len() == 1).await;
    let mut silent = Vec::new();
    for _ in 0..Limits::default().max_concurrent {
        silent.push(TcpStream::connect(http).await.expect("connect"));
    }
    let flood = tokio::spawn(async move {
        for _ in 0..200 {
            let r = exchange(http, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(r, "", "answered past the cap");
        }
    });
    for i in 0..50 {
        up.w.send(&format!(
            "<iq type='get' id='f{i}' to='{}' from='alice@example.test/x'/>",
            fake::D
        ))
        .await;
        let req = inst.r.recv().await;
        inst.w
            .send(&format!(
                "<iq type='result' id='{}' from='{}' to='alice@example.test/x'/>",
                req.id().expect("id"),
                fake::D
            ))
            .await;
        assert_eq!(up.r.recv().await.id(), Some(format!("f{i}").as_str()));
    }
    flood.await.expect("the flood ran");
    drop(silent);
    assert_eq!(scrape_until_answered(http).await, 200);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// The answers the hand-written server gave, kept.
#[tokio::test]
async fn answers_beside_the_paths() {
    let server = FakeServer::bind().await;
    let (proxy, _up) = fake::start(&server, "", SETTINGS).await;
    let http = proxy.metrics_addr().expect("admin endpoint");

    let r = exchange(http, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Connection: close\r\n"), "{r}");
    assert!(r.contains("jatproxy_upstream_up 1\n"), "{r}");
    // HTTP/1.0 without a Host, as simple scrapers send.
    let r = exchange(http, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(r.contains(" 200 OK\r\n"), "{r}");
    let r = exchange(http, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    let r = exchange(http, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = exchange(http, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
        "{r}"
    );
    let r = exchange(http, b"garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // A head that never ends is cut at the bound, not buffered.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', admin::MAX_HEAD * 2));
    let mut s = TcpStream::connect(http).await.expect("connect");
    // The server answers 431 and closes before taking it all: a failed
    // write is fine, the answer is already on its way.
    let _ = s.write_all(&huge).await;
    let r = read_all(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// An admin endpoint alone, on a snapshot the test holds.
async fn endpoint(limits: Limits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = fake::instances_config("127.0.0.1:5347", "", "");
    let (_status_tx, status) = watch::channel(Status::default());
    let (_config_tx, config) = watch::channel(Arc::new(config));
    let sources = Sources { status, config };
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::spawn(admin::serve_with(
        listener,
        sources,
        limits,
        stop.clone(),
        tasks,
    ));
    (addr, stop)
}

/// Scrapes until one is answered (a slot freed by a closed connection is
/// given back when the server sees the close); the answer's status code.
async fn scrape_until_answered(addr: SocketAddr) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if !r.is_empty() {
            return split(&r).0;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_unanswered() {
    let limits = Limits {
        max_concurrent: 2,
        request_timeout: Duration::from_secs(60),
    };
    let (addr, _stop) = endpoint(limits).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // A flood: every one past the cap is closed at once, unanswered,
    // even with a complete request.
    for _ in 0..20 {
        let r = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(r, "", "a connection past the cap is answered");
    }
    // One idle connection goes: its slot comes back.
    drop(idle.pop());
    assert_eq!(scrape_until_answered(addr).await, 200);
}

#[tokio::test]
async fn a_slow_scraper_is_cut_at_the_timeout_and_its_slot_freed() {
    let limits = Limits {
        max_concurrent: 1,
        request_timeout: Duration::from_millis(300),
    };
    let (addr, _stop) = endpoint(limits).await;

    // Sends nothing: cut, unanswered, no sooner than the timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let r = read_all(&mut silent).await;
    assert!(!r.contains("200 OK"), "{r}");
    assert!(started.elapsed() >= limits.request_timeout);

    // Sends its head a byte at a time, never finishing in time: cut too.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut = false;
    for b in head.iter().chain(std::iter::repeat(&b'a')) {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        // Whether the server closed: a read that returns at once.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(20), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => {
                let got = String::from_utf8_lossy(&buf[..n]);
                assert!(!got.contains("200 OK"), "{got}");
            }
            Err(_) => {}
        }
        assert!(started.elapsed() < WAIT, "the slow scraper was never cut");
    }
    assert!(cut);
    assert!(started.elapsed() >= limits.request_timeout);

    // The one slot is free again.
    assert_eq!(scrape_until_answered(addr).await, 200);
}

/// A client that goes away mid-request gets nothing and leaves nothing
/// behind: its slot is free for the next.
#[tokio::test]
async fn a_client_that_closes_early_frees_its_slot() {
    let limits = Limits {
        max_concurrent: 1,
        request_timeout: Duration::from_secs(60),
    };
    let (addr, _stop) = endpoint(limits).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /met").await.expect("send");
    s.shutdown().await.expect("half-close");
    assert_eq!(read_all(&mut s).await, "");
    drop(s);
    // Well before the minute's timeout: the close itself freed the slot.
    assert_eq!(scrape_until_answered(addr).await, 200);
}
