//! The metrics endpoint under traffic: jatproxy between a fake XMPP server
//! and fake instances (loopback, deterministic), scraped over HTTP while
//! requests are in flight and after, every counter checked against what
//! the test itself sent and received.

#[path = "support/fake.rs"]
mod fake;
#[path = "support/scrape.rs"]
mod scrape;

use std::time::Duration;

use fake::{error_condition, start, FakeInstance, FakeServer, D, WAIT};
use jatproxy::proxy::Proxy;
use scrape::scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: &str = "impl@example.test";
const ALICE: &str = "alice@example.test/phone";
const SETTINGS: &str = r#"
[client_proxy]
target_address = "impl@example.test"

[routing]
balancing = "round-robin"
iq_timeout = "60s"
# The module's answer to a lost member, which phase 3 counts.
redispatch = "none"
hold_when_empty = "0s"

[metrics]
listen = "127.0.0.1:0"
"#;

/// The value of one series (`name{labels}` exactly as exposed); `None`
/// if there is no such series.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Checks every expected series, showing the whole exposition on failure.
fn check(text: &str, expected: &[(&str, u64)]) {
    for (series, v) in expected {
        assert_eq!(value(text, series), Some(*v), "{series} in\n{text}");
    }
}

fn traffic(peer: &str, dir: &str) -> (String, String) {
    (
        format!("jatproxy_stanzas_total{{peer=\"{peer}\",direction=\"{dir}\"}}"),
        format!("jatproxy_stanza_bytes_total{{peer=\"{peer}\",direction=\"{dir}\"}}"),
    )
}

/// Sums what crossed one link in one direction.
#[derive(Default)]
struct Tally {
    stanzas: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, xml: &[u8]) {
        self.stanzas += 1;
        self.bytes += xml.len() as u64;
    }

    fn check(&self, text: &str, peer: &str, dir: &str) {
        let (s, b) = traffic(peer, dir);
        check(text, &[(&s, self.stanzas), (&b, self.bytes)]);
    }
}

async fn wait(proxy: &Proxy, what: &str, cond: impl Fn(&jatproxy::proxy::Status) -> bool) {
    assert!(
        proxy.wait_for(WAIT, cond).await,
        "{what}; status {:?}",
        proxy.status()
    );
}

#[tokio::test]
async fn counters_match_the_traffic_sent() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) = start(&server, "", SETTINGS).await;
    let metrics = proxy.metrics_addr().expect("metrics endpoint is on");
    let listen = proxy.listen_addr().expect("instance listener");
    let (mut up_in, mut up_out, mut inst_in, mut inst_out) = (
        Tally::default(),
        Tally::default(),
        Tally::default(),
        Tally::default(),
    );

    // The subscription request jatproxy sends when its session is up.
    let sub = up.r.recv().await;
    assert_eq!(sub.stanza_type(), Some("subscribe"));
    up_out.add(&sub.bytes);

    // Two instances (members 1 and 2), and one with a wrong secret
    // (connection 3), refused in its handshake.
    let mut a = FakeInstance::connect(listen, "a").await;
    let mut b = FakeInstance::connect(listen, "b").await;
    let bad = FakeInstance::connect_as(listen, D, "wrong", "bad").await;
    assert!(bad.is_err(), "a wrong secret is refused");
    wait(&proxy, "two instances in the pool", |s| s.pool.len() == 2).await;
    wait(&proxy, "the refused handshake counted", |s| {
        s.counters
            .handshake_failures(jatproxy::metrics::Side::Instance)
            == 1
    })
    .await;

    // Phase 1: ten requests, held by the instances (round-robin: five each).
    for i in 0..10 {
        let xml =
            format!("<iq type='get' id='q{i}' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>");
        up.w.send(&xml).await;
        up_in.add(xml.as_bytes());
    }
    let mut held_a = Vec::new();
    let mut held_b = Vec::new();
    for _ in 0..5 {
        held_a.push(a.r.recv().await);
        held_b.push(b.r.recv().await);
    }
    for st in held_a.iter().chain(&held_b) {
        inst_out.add(&st.bytes);
    }
    wait(&proxy, "ten requests in flight", |s| s.pending == 10).await;

    let during = scrape(metrics).await;
    check(
        &during,
        &[
            ("jatproxy_upstream_up", 1),
            ("jatproxy_upstream_sessions_total", 1),
            ("jatproxy_upstream_reconnects_total", 0),
            ("jatproxy_instances_connected", 2),
            ("jatproxy_pool_members{kind=\"instance\"}", 2),
            ("jatproxy_pool_members{kind=\"resource\"}", 0),
            ("jatproxy_pending_requests", 10),
            ("jatproxy_requests_routed_total", 10),
            ("jatproxy_replies_delivered_total", 0),
            (
                "jatproxy_member_requests_routed_total{kind=\"instance\",member=\"1\"}",
                5,
            ),
            (
                "jatproxy_member_requests_routed_total{kind=\"instance\",member=\"2\"}",
                5,
            ),
            (
                "jatproxy_member_requests_answered_total{kind=\"instance\",member=\"1\"}",
                0,
            ),
            (
                "jatproxy_handshake_failures_total{side=\"instance\",reason=\"rejected\",condition=\"not-authorized\"}",
                1,
            ),
        ],
    );
    up_in.check(&during, "upstream", "in");
    up_out.check(&during, "upstream", "out");
    inst_out.check(&during, "instance", "out");

    // Phase 2: a answers all five, b three; b repeats one answer (a
    // duplicate, dropped as unmatched).
    for (inst, held, n) in [(&mut a, &held_a, 5), (&mut b, &held_b, 3)] {
        for st in &held[..n] {
            let xml = format!(
                "<iq type='result' id='{}' from='{D}' to='{ALICE}'/>",
                st.id().expect("id")
            );
            inst.w.send(&xml).await;
            inst_in.add(xml.as_bytes());
        }
    }
    let dup = format!(
        "<iq type='result' id='{}' from='{D}' to='{ALICE}'/>",
        held_b[0].id().expect("id")
    );
    b.w.send(&dup).await;
    inst_in.add(dup.as_bytes());
    for _ in 0..8 {
        let r = up.r.recv().await;
        assert_eq!(r.stanza_type(), Some("result"));
        up_out.add(&r.bytes);
    }
    wait(&proxy, "eight answered, a duplicate dropped", |s| {
        s.stats.replies_delivered == 8 && s.stats.replies_unmatched == 1
    })
    .await;
    let after = scrape(metrics).await;
    check(
        &after,
        &[
            ("jatproxy_pending_requests", 2),
            ("jatproxy_replies_delivered_total", 8),
            ("jatproxy_replies_dropped_total{reason=\"unmatched\"}", 1),
            (
                "jatproxy_member_requests_answered_total{kind=\"instance\",member=\"1\"}",
                5,
            ),
            (
                "jatproxy_member_requests_answered_total{kind=\"instance\",member=\"2\"}",
                3,
            ),
        ],
    );
    inst_in.check(&after, "instance", "in");
    up_out.check(&after, "upstream", "out");

    // Phase 3: b leaves with two requests unanswered (recipient-unavailable
    // for both), a leaves too; their series go with them.
    drop(b);
    for _ in 0..2 {
        let e = up.r.recv().await;
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("recipient-unavailable")
        );
        up_out.add(&e.bytes);
    }
    drop(a);
    wait(&proxy, "instances gone", |s| s.pool.is_empty()).await;

    // Phase 4: a shorter timeout by reload; a client resource joins; a
    // reply from another resource is spoofed, the right one delivered; one
    // request is left to time out and its late reply is dropped.
    let mut shorter = (*proxy.config()).clone();
    shorter.routing.iq_timeout = Duration::from_millis(500);
    proxy.reload(shorter).await.expect("a timeout reloads");
    let presence = format!("<presence from='{T}/r' to='{D}'/>");
    up.w.send(&presence).await;
    up_in.add(presence.as_bytes());
    wait(&proxy, "the resource joined", |s| s.pool.len() == 1).await;
    for id in ["c1", "c2"] {
        let xml = format!("<iq type='get' id='{id}' to='{D}' from='{ALICE}'/>");
        up.w.send(&xml).await;
        up_in.add(xml.as_bytes());
        let fwd = up.r.recv().await;
        assert_eq!(fwd.to(), Some(format!("{T}/r").as_str()));
        up_out.add(&fwd.bytes);
    }
    for (from, id) in [("s", "c1"), ("r", "c1")] {
        let xml = format!("<iq type='result' id='{id}' to='{D}/{ALICE}' from='{T}/{from}'/>");
        up.w.send(&xml).await;
        up_in.add(xml.as_bytes());
    }
    let delivered = up.r.recv().await;
    assert_eq!(delivered.id(), Some("c1"));
    up_out.add(&delivered.bytes);
    let timeout = up.r.recv().await;
    assert_eq!(
        error_condition(&timeout).as_deref(),
        Some("remote-server-timeout")
    );
    assert_eq!(timeout.id(), Some("c2"));
    up_out.add(&timeout.bytes);
    let late = format!("<iq type='result' id='c2' to='{D}/{ALICE}' from='{T}/r'/>");
    up.w.send(&late).await;
    up_in.add(late.as_bytes());
    wait(&proxy, "the late reply dropped", |s| {
        s.stats.replies_unmatched == 2
    })
    .await;

    let end = scrape(metrics).await;
    check(
        &end,
        &[
            ("jatproxy_instances_connected", 0),
            ("jatproxy_pool_members{kind=\"resource\"}", 1),
            ("jatproxy_pending_requests", 0),
            ("jatproxy_requests_routed_total", 12),
            ("jatproxy_replies_delivered_total", 9),
            ("jatproxy_replies_dropped_total{reason=\"unmatched\"}", 2),
            ("jatproxy_replies_dropped_total{reason=\"spoofed\"}", 1),
            (
                "jatproxy_errors_generated_total{condition=\"recipient-unavailable\"}",
                2,
            ),
            (
                "jatproxy_errors_generated_total{condition=\"remote-server-timeout\"}",
                1,
            ),
            (
                "jatproxy_errors_generated_total{condition=\"service-unavailable\"}",
                0,
            ),
            ("jatproxy_timeouts_total", 1),
            (
                "jatproxy_member_requests_routed_total{kind=\"resource\",member=\"impl@example.test/r\"}",
                2,
            ),
            (
                "jatproxy_member_requests_answered_total{kind=\"resource\",member=\"impl@example.test/r\"}",
                1,
            ),
            ("jatproxy_upstream_connect_failures_total", 0),
            ("jatproxy_config_reloads_total{result=\"applied\"}", 1),
            ("jatproxy_config_reloads_total{result=\"refused\"}", 0),
        ],
    );
    for departed in ["member=\"1\"", "member=\"2\""] {
        assert!(!end.contains(departed), "{departed} still exposed:\n{end}");
    }
    up_in.check(&end, "upstream", "in");
    up_out.check(&end, "upstream", "out");
    inst_in.check(&end, "instance", "in");
    inst_out.check(&end, "instance", "out");

    // Anything but GET /metrics is answered, not served.
    let mut s = TcpStream::connect(metrics).await.expect("connect");
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.1 405 "), "{raw}");

    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn upstream_failures_are_counted() {
    // A server that refuses the secret, then one that accepts: one
    // handshake failure (refused, not-authorized) and one session.
    let server = FakeServer::bind().await;
    let proxy = Proxy::start(fake::instances_config(&server.addr(), "", SETTINGS))
        .await
        .expect("proxy starts");
    server.refuse_handshake("not-authorized").await;
    let _up = server.accept().await;
    assert!(proxy.wait_for(WAIT, |s| s.upstream_online).await);
    let text = scrape(proxy.metrics_addr().expect("metrics")).await;
    check(
        &text,
        &[
            (
                "jatproxy_handshake_failures_total{side=\"upstream\",reason=\"refused\",condition=\"not-authorized\"}",
                1,
            ),
            ("jatproxy_upstream_sessions_total", 1),
        ],
    );
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}

/// `limits.upstream_buffer` is exposed as `jatproxy_upstream_buffer` and
/// `jatproxy_upstream_buffer_dropped_total`, and for one release still
/// under the old `backlog` names, with the same values and a HELP text
/// that says they are deprecated aliases.
#[tokio::test]
async fn the_upstream_buffer_is_exposed_under_its_name_and_the_deprecated_one() {
    let server = FakeServer::bind().await;
    let settings = "[limits]\nupstream_buffer = 1\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let (proxy, up) = start(&server, "", settings).await;
    let metrics = proxy.metrics_addr().expect("metrics endpoint is on");
    let mut inst = FakeInstance::connect(proxy.listen_addr().expect("listener"), "a").await;
    wait(&proxy, "the instance in the pool", |s| s.pool.len() == 1).await;
    // Upstream goes away; the server does not answer the reconnect yet.
    drop(up);
    wait(&proxy, "upstream down", |s| !s.upstream_online).await;
    for id in ["kept", "dropped"] {
        inst.w
            .send(&format!(
                "<message from='{D}' to='bob@example.test' id='{id}'/>"
            ))
            .await;
    }
    wait(&proxy, "one held, one dropped", |s| {
        s.upstream_buffer == 1 && s.upstream_buffer_dropped == 1
    })
    .await;
    let away = scrape(metrics).await;
    check(
        &away,
        &[
            ("jatproxy_upstream_buffer", 1),
            ("jatproxy_upstream_buffer_dropped_total", 1),
            ("jatproxy_upstream_backlog", 1),
            ("jatproxy_upstream_backlog_dropped_total", 1),
        ],
    );
    for help in [
        "# HELP jatproxy_upstream_backlog Deprecated alias of jatproxy_upstream_buffer,",
        "# HELP jatproxy_upstream_backlog_dropped_total Deprecated alias of \
         jatproxy_upstream_buffer_dropped_total,",
    ] {
        assert!(away.contains(help), "no {help:?} in\n{away}");
    }

    // Back: the held message goes out and the gauges say so; the counters
    // keep what was dropped.
    let mut up = server.accept().await;
    assert_eq!(up.r.recv().await.id(), Some("kept"));
    wait(&proxy, "the buffer emptied", |s| s.upstream_buffer == 0).await;
    let back = scrape(metrics).await;
    check(
        &back,
        &[
            ("jatproxy_upstream_buffer", 0),
            ("jatproxy_upstream_buffer_dropped_total", 1),
            ("jatproxy_upstream_backlog", 0),
            ("jatproxy_upstream_backlog_dropped_total", 1),
        ],
    );
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}
