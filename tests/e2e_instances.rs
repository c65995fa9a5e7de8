//! End to end, the instance pool: a real Prosody (Debian's package, on
//! loopback with its own config, s2s off) holds the component domain;
//! jatproxy connects to it, and real component code (slixmpp's
//! `ComponentXMPP`, `tests/support/echo_component.py`) connects to
//! jatproxy's listener unchanged, several copies at once. A real client
//! (tokio-xmpp) is the requester.
//!
//! Needs `prosody` and python3 with slixmpp (`scripts/setup.sh` installs
//! both); without them these tests fail, never skip.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::echo::EchoComponent;
use support::flows::error_of;
use support::prosody::{Prosody, ProsodyConfig};
use support::scrape::get;
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, Element, TestClient};
use support::{ALICE, D, NS_ECHO, PW, SECRET, WAIT, WINDOW};

const INSTANCE_SECRET: &str = "instance-secret";

/// What each echo component printed, for failure messages.
fn outputs(inst: &[EchoComponent]) -> String {
    inst.iter()
        .map(|c| c.output())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Prosody, jatproxy registered at it as `D` with only an instance pool,
/// and `names` instances of the echo component connected to jatproxy.
async fn setup(names: &[&str]) -> (Prosody, Proxy, Vec<EchoComponent>) {
    let p = Prosody::start(ProsodyConfig::new().user("alice", PW).component(D, SECRET))
        .await
        .expect("prosody starts (is it installed? run scripts/setup.sh)");
    // The module's answer to a lost member, which these tests read:
    // re-dispatch and the hold are tests/e2e_survive.rs's.
    let toml = format!(
        "{}\n[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n\n\
         [routing]\niq_timeout = \"10s\"\nredispatch = \"none\"\nhold_when_empty = \"0s\"\n",
        upstream_toml(p.component_addr())
    );
    let proxy = start_registered(&toml, || p.log_tail(30)).await;
    let listener = proxy.listen_addr().expect("listener");
    let mut instances = Vec::new();
    for name in names {
        let c = EchoComponent::start(listener, D, INSTANCE_SECRET, name, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        instances.push(c);
    }
    let n = names.len();
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == n).await,
        "{:?}",
        proxy.status()
    );
    (p, proxy, instances)
}

async fn alice(p: &Prosody) -> TestClient {
    let c = xmpp::connect(&format!("{ALICE}/phone"), PW, p.c2s_addr(), WAIT)
        .await
        .expect("alice online");
    c.send_presence().await.expect("presence");
    c
}

/// How a request ended: `result:NAME` (the instance that answered, after
/// checking the echoed text) or `error:CONDITION`.
fn outcome(r: &Element, sent_text: &str) -> String {
    match r.attr("type") {
        Some("result") => {
            let echo = r.get_child("echo", NS_ECHO).expect("echo payload");
            assert_eq!(echo.text(), sent_text, "the instance's own answer");
            format!("result:{}", echo.attr("from-instance").unwrap_or_default())
        }
        _ => format!(
            "error:{}",
            error_of(r).map(|e| e.1).unwrap_or_else(|| xmpp::to_xml(r))
        ),
    }
}

/// Sends `n` echo requests from alice, `WINDOW` in flight, and returns
/// each id's outcomes in arrival order. `delay_ms` asks the instance to
/// wait before answering. `between` runs after each answer with the
/// number answered so far; it returns true once it has done its job.
async fn load(
    alice: &mut TestClient,
    n: usize,
    prefix: &str,
    delay_ms: u32,
    mut between: impl FnMut(usize) -> bool,
) -> HashMap<String, Vec<String>> {
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    let (mut sent, mut done) = (0, 0);
    let mut hook_done = false;
    while done < n {
        while sent < n && sent - done < WINDOW {
            alice
                .send_xml(&format!(
                    "<iq id='{prefix}{sent}' to='{D}' type='get'><echo xmlns='{NS_ECHO}' delay-ms='{delay_ms}'>text {sent}</echo></iq>"
                ))
                .await
                .expect("send");
            sent += 1;
        }
        let r = alice
            .recv_matching(WAIT, |e| {
                e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with(prefix))
            })
            .await
            .expect("every request is answered");
        let id = r.attr("id").unwrap_or_default().to_owned();
        assert_eq!(r.attr("from"), Some(D), "{}", xmpp::to_xml(&r));
        let k: usize = id[prefix.len()..].parse().expect("our id");
        answers
            .entry(id)
            .or_default()
            .push(outcome(&r, &format!("text {k}")));
        done += 1;
        if !hook_done {
            hook_done = between(done);
        }
    }
    answers
}

/// Sends one more request and checks it is the next iq alice gets: no
/// late or duplicate answer was on its way.
async fn nothing_late(alice: &mut TestClient, prefix: &str) {
    alice
        .send_xml(&format!(
            "<iq id='marker' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>m</echo></iq>"
        ))
        .await
        .expect("send");
    alice
        .recv_iq_response("marker", WAIT)
        .await
        .expect("marker answered");
    let late: Vec<String> = alice
        .drain()
        .iter()
        .filter(|e| e.attr("id").is_some_and(|i| i.starts_with(prefix)))
        .map(xmpp::to_xml)
        .collect();
    assert!(late.is_empty(), "late answers: {late:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_over_both_instances() {
    let (p, proxy, mut inst) = setup(&["one", "two"]).await;
    let mut alice = alice(&p).await;

    // One request looked at closely: the instance answered alice itself,
    // through jatproxy, from the domain.
    alice
        .send_xml(&format!(
            "<iq id='first' to='{D}' type='set'><echo xmlns='{NS_ECHO}'>hello</echo></iq>"
        ))
        .await
        .expect("send");
    let r = alice
        .recv_iq_response("first", WAIT)
        .await
        .expect("answered");
    assert_eq!(r.attr("type"), Some("result"), "{}", xmpp::to_xml(&r));
    assert_eq!(r.attr("from"), Some(D));
    assert_eq!(r.attr("to"), Some(format!("{ALICE}/phone").as_str()));
    let who = outcome(&r, "hello");

    let n = 200;
    let answers = load(&mut alice, n, "s-", 0, |_| true).await;
    assert_eq!(answers.len(), n);
    let mut per: HashMap<&str, usize> = HashMap::new();
    for a in answers.values() {
        assert_eq!(a.len(), 1, "exactly one answer: {a:?}");
        *per.entry(a[0].as_str()).or_default() += 1;
    }
    println!("first request: {who}; {n} requests: {per:?}");
    let (one, two) = (
        per.get("result:one").copied().unwrap_or(0),
        per.get("result:two").copied().unwrap_or(0),
    );
    assert_eq!(one + two, n, "{per:?}");
    assert!(one >= 50 && two >= 50, "random balancing: {per:?}");
    // Each instance saw exactly the requests it answered.
    let asked = |c: &mut EchoComponent| {
        c.lines_so_far()
            .iter()
            .filter(|l| l.starts_with("REQ s-"))
            .count()
    };
    assert_eq!((asked(&mut inst[0]), asked(&mut inst[1])), (one, two));
    nothing_late(&mut alice, "s-").await;
    assert_eq!(proxy.status().pending, 0);
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_loses_no_request() {
    let (p, proxy, mut inst) = setup(&["one", "two"]).await;
    let mut alice = alice(&p).await;
    let mut two = inst.pop().expect("two");
    // Each answer waits 300 ms, so requests are in flight on both
    // instances all along. After 30 answers, "two" is killed (SIGKILL: no
    // stream end) right after it announced a request it got less than
    // 100 ms ago: that one, at least, is in flight on it.
    let n = 120;
    let mut killed_holding = Vec::new();
    let mut killed_after = 0;
    let answers = load(&mut alice, n, "k-", 300, |done| {
        if done < 30 {
            return false;
        }
        let holding = two.holding(Duration::from_millis(100));
        if holding.is_empty() {
            return false;
        }
        two.kill();
        killed_holding = holding;
        killed_after = done;
        true
    })
    .await;
    assert!(
        !killed_holding.is_empty(),
        "two was never seen holding a request; its output:\n{}",
        two.output()
    );
    assert_eq!(answers.len(), n, "none lost");
    let mut per: HashMap<&str, usize> = HashMap::new();
    for (id, a) in &answers {
        assert_eq!(a.len(), 1, "{id} answered {a:?}");
        *per.entry(a[0].as_str()).or_default() += 1;
    }
    println!(
        "two killed after {killed_after} answers holding {killed_holding:?}; outcomes {per:?}"
    );
    for id in &killed_holding {
        assert_eq!(
            answers[id],
            ["error:recipient-unavailable"],
            "{id} was in flight on two; two's output:\n{}",
            two.output()
        );
    }
    let errors: HashSet<&str> = per
        .keys()
        .copied()
        .filter(|k| k.starts_with("error:"))
        .collect();
    assert_eq!(errors, HashSet::from(["error:recipient-unavailable"]));
    assert_eq!(
        per.keys().filter(|k| k.starts_with("result:")).count(),
        2,
        "both answered before the kill: {per:?}"
    );
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    // The rest went to one; it keeps serving.
    let after = load(&mut alice, 20, "after-", 0, |_| true).await;
    assert!(
        after.values().all(|a| a == &["result:one"]),
        "{after:?}\none's output:\n{}",
        inst[0].output()
    );
    nothing_late(&mut alice, "k-").await;
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_own_ping_gets_its_reply_back() {
    let (p, proxy, mut inst) = setup(&["one", "two"]).await;
    let mut alice = alice(&p).await;
    let me = format!("{ALICE}/phone");
    // alice asks the component (whichever instance her messages stick to)
    // to ping her.
    alice
        .send_xml(&format!(
            "<message type='chat' to='{D}' id='cmd'><body>ping {me}</body></message>"
        ))
        .await
        .expect("send");
    let ping = alice
        .recv_matching(WAIT, |e| {
            e.name() == "iq" && e.get_child("ping", "urn:xmpp:ping").is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", outputs(&inst)));
    assert_eq!(ping.attr("type"), Some("get"));
    // From the domain with jatproxy's token: the reply comes back to it.
    let from = ping.attr("from").unwrap_or_default().to_owned();
    assert!(
        from.strip_prefix(D).is_some_and(|r| r.starts_with('/')),
        "{}",
        xmpp::to_xml(&ping)
    );
    alice
        .send_xml(&format!(
            "<iq type='result' id='{}' to='{from}'/>",
            ping.attr("id").unwrap_or_default()
        ))
        .await
        .expect("pong");
    // The instance that pinged reports the pong: it got alice's reply,
    // addressed to its own address again.
    let report = alice
        .recv_matching(WAIT, |e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", outputs(&inst)));
    assert_eq!(report.attr("from"), Some(D));
    let body = report
        .get_child("body", xmpp::NS_CLIENT)
        .map(|b| b.text())
        .unwrap_or_default();
    let words: Vec<&str> = body.split(' ').collect();
    assert_eq!(words.len(), 4, "{body}");
    assert_eq!(words[0], "pong", "{body}");
    assert_eq!(words[2], format!("from={me}"));
    assert_eq!(words[3], format!("to={D}"));
    let pinger = inst
        .iter_mut()
        .find(|c| c.name == words[1])
        .expect("a known instance");
    pinger
        .wait_line(WAIT, |l| l == body)
        .await
        .expect("the pinging instance printed the pong too");
    assert_eq!(proxy.status().pending, 0);
    assert_eq!(proxy.status().stats.requests_outbound, 1);
    assert!(proxy.shutdown(WAIT).await);
}

/// `/readyz` against a real Prosody: 503 while no instance is connected,
/// 200 once one is in the pool, 503 again when Prosody stops (the
/// component session gone), each time with the reason.
#[tokio::test]
async fn readyz_follows_prosody_and_the_pool() {
    let mut p = Prosody::start(ProsodyConfig::new().component(D, SECRET))
        .await
        .expect("prosody starts (is it installed? run scripts/setup.sh)");
    let toml = format!(
        "{}\n[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        upstream_toml(p.component_addr())
    );
    let proxy = start_registered(&toml, || p.log_tail(30)).await;
    let http = proxy.metrics_addr().expect("admin endpoint");
    let (code, why) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("no qualified member"), "{why}");

    let listener = proxy.listen_addr().expect("listener");
    let echo = EchoComponent::start(listener, D, INSTANCE_SECRET, "a", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    assert_eq!(get(http, "/readyz").await, (200, "ready\n".to_owned()));
    let (_, status) = get(http, "/status").await;
    let j: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(
        j["upstream"]["server"],
        p.component_addr().to_string(),
        "{j}"
    );
    assert_eq!(j["members"][0]["kind"], "instance", "{j}");

    p.stop().await.expect("prosody stops");
    assert!(proxy.wait_for(WAIT, |s| !s.upstream_online).await);
    let (code, why) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("upstream session down"), "{why}");
    // Alive throughout.
    assert_eq!(get(http, "/healthz").await.0, 200);
    drop(echo);
    assert!(proxy.shutdown(Duration::from_secs(5)).await);
}
