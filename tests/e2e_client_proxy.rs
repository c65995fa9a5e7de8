//! End to end against a real Prosody (Debian's package, started on
//! loopback with its own config, s2s off) with real XMPP clients
//! (slixmpp): jatproxy as the external component `proxy.example.test`
//! in front of `impl@example.test`'s resources, as mod_client_proxy.
//!
//! These tests need `prosody` installed (`scripts/setup.sh` does it);
//! they fail, never skip, without it.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::differences::module_differences;
use support::flows::{error_of, load, message_refused, responder, seed_request};
use support::prosody::{Prosody, ProsodyConfig, Subscription};
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, TestClient};
use support::{ALICE, D, NS_ECHO, NS_STANZAS, PW, SECRET, WAIT, WINDOW};

const T: &str = "impl@example.test";

/// Prosody with alice and impl, the component, and impl's roster already
/// holding the component with subscription `from` (as a deployment's
/// `prosodyctl mod_roster_command subscribe` leaves it).
async fn prosody(provisioned: bool) -> Prosody {
    let mut cfg = ProsodyConfig::new()
        .user("alice", PW)
        .user("impl", PW)
        .component(D, SECRET);
    if provisioned {
        cfg = cfg.roster_item("impl", D, Subscription::From);
    }
    Prosody::start(cfg)
        .await
        .expect("prosody starts (is it installed? run scripts/setup.sh)")
}

async fn proxy(p: &Prosody, extra: &str) -> Proxy {
    let toml = format!(
        "{}\n[client_proxy]\ntarget_address = \"{T}\"\n\n[routing]\niq_timeout = \"10s\"\n{extra}\n",
        upstream_toml(p.component_addr())
    );
    start_registered(&toml, || p.log_tail(30)).await
}

async fn client(p: &Prosody, jid: &str) -> TestClient {
    online(p, jid, false).await
}

/// A client that accepts subscription requests from its first stanza on.
async fn accepting_client(p: &Prosody, jid: &str) -> TestClient {
    online(p, jid, true).await
}

async fn online(p: &Prosody, jid: &str, auto_accept: bool) -> TestClient {
    let c = xmpp::connect_with(jid, PW, p.c2s_addr(), WAIT, auto_accept)
        .await
        .expect("client online");
    c.send_presence().await.expect("presence");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_matches_the_module_on_the_wire() {
    let p = prosody(true).await;
    let proxy = proxy(&p, "").await;
    let mut a = client(&p, &format!("{T}/a")).await;
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
        "impl/a joined the pool"
    );
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;

    seed_request(&mut a, &mut alice).await;

    // An error answered by the implementing client is passed back as is.
    alice
        .send_xml(&format!("<iq id='err-1' to='{D}' type='set'><echo xmlns='{NS_ECHO}' mode='error'>please fail</echo></iq>"))
        .await
        .expect("send");
    let req = a
        .recv_matching(WAIT, |e| e.attr("id") == Some("err-1"))
        .await
        .expect("impl gets it");
    a.send_xml(&format!(
        "<iq type='error' to='{}' id='err-1'><error type='cancel'><item-not-found xmlns='{NS_STANZAS}'/><text xmlns='{NS_STANZAS}'>echo says no</text></error></iq>",
        req.attr("from").unwrap_or_default()
    ))
    .await
    .expect("reply");
    let res = alice
        .recv_iq_response("err-1", WAIT)
        .await
        .expect("alice gets the error");
    assert_eq!(
        error_of(&res),
        Some(("cancel".into(), "item-not-found".into()))
    );
    assert_eq!(res.attr("from"), Some(D));

    // The implementing client may ping the requester through the proxy
    // (the module refuses this with feature-not-implemented).
    a.send_xml(&format!(
        "<iq id='implreq-1' to='{D}/{ALICE}/phone' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await
    .expect("send");
    let ping = alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("implreq-1"))
        .await
        .expect("alice is pinged");
    assert_eq!(ping.attr("from"), Some(D));
    alice
        .send_xml(&format!("<iq type='result' id='implreq-1' to='{D}'/>"))
        .await
        .expect("pong");
    let pong = a
        .recv_iq_response("implreq-1", WAIT)
        .await
        .expect("impl gets the pong");
    assert_eq!(pong.attr("type"), Some("result"));
    assert_eq!(
        pong.attr("from"),
        Some(format!("{D}/{ALICE}/phone").as_str())
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_errors_match_the_module() {
    let p = prosody(true).await;
    let proxy = proxy(&p, "").await;
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;

    // No resource online.
    alice
        .send_xml(&format!(
            "<iq id='none-1' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>anyone?</echo></iq>"
        ))
        .await
        .expect("send");
    let e = alice
        .recv_iq_response("none-1", WAIT)
        .await
        .expect("answered");
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(e.attr("from"), Some(D));
    assert_eq!(
        error_of(&e),
        Some(("cancel".into(), "service-unavailable".into()))
    );
    assert!(
        e.get_child("echo", NS_ECHO).is_none(),
        "no payload copied back"
    );

    // A message, with or without resources.
    let _a = client(&p, &format!("{T}/a")).await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    let m1 = format!("<message type='chat' to='{D}' id='m1'><body>hi proxy</body></message>");
    message_refused(&mut alice, &m1, "m1", D, "feature-not-implemented").await;

    // Presence from anyone but the target.
    alice
        .send_xml(&format!("<presence to='{D}' id='p1'/>"))
        .await
        .expect("send");
    let e = alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("p1"))
        .await
        .expect("answered");
    assert_eq!((e.name(), e.attr("type")), ("presence", Some("error")));
    assert_eq!(error_of(&e), Some(("cancel".into(), "bad-request".into())));
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_spread_over_both_resources() {
    let p = prosody(true).await;
    let proxy = proxy(&p, "").await;
    let ra = responder(client(&p, &format!("{T}/a")).await);
    let rb = responder(client(&p, &format!("{T}/b")).await);
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;
    let answers = load(&mut alice, D, 1000, WINDOW, "load-").await;
    assert_eq!(answers.len(), 1000);
    let mut per_resource: HashMap<&str, usize> = HashMap::new();
    for a in answers.values() {
        assert_eq!(a.len(), 1, "exactly one answer");
        assert_eq!(a[0].0, "result");
        *per_resource.entry(a[0].1.as_str()).or_default() += 1;
    }
    println!("requests per resource: {per_resource:?}");
    assert!(
        per_resource.get("a").copied().unwrap_or(0) > 300,
        "{per_resource:?}"
    );
    assert!(
        per_resource.get("b").copied().unwrap_or(0) > 300,
        "{per_resource:?}"
    );
    ra.abort();
    rb.abort();
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_going_offline_mid_load_loses_nothing() {
    let p = prosody(true).await;
    // The module's answer to a lost member, which this test checks:
    // `recipient-unavailable` at once. Re-dispatch (the default) sends
    // the gets to b instead: tests/e2e_survive.rs.
    let proxy = proxy(&p, "redispatch = \"none\"\nhold_when_empty = \"0s\"").await;
    // Resource a takes requests and never answers, then drops its
    // connection without a goodbye; b answers everything.
    let a = client(&p, &format!("{T}/a")).await;
    let rb = responder(client(&p, &format!("{T}/b")).await);
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;

    // a is dropped (connection cut, no goodbye) as soon as requests are
    // pending on it.
    let mut watch = proxy.watch();
    let dropper = tokio::spawn(async move {
        let a = a;
        let _ = watch.wait_for(|s| s.pending >= WINDOW - 2).await;
        drop(a);
    });
    let n = 300;
    let answers = load(&mut alice, D, n, WINDOW, "off-").await;
    dropper.await.expect("dropper");
    let answers: HashMap<String, Vec<String>> = answers
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.into_iter()
                    .map(|(t, w)| if t == "result" { t } else { w })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(answers.len(), n, "none lost");
    assert!(answers.values().all(|v| v.len() == 1), "none duplicated");
    let errors: HashSet<&str> = answers
        .values()
        .map(|v| v[0].as_str())
        .filter(|w| *w != "result")
        .collect();
    let n_err = answers.values().filter(|v| v[0] != "result").count();
    println!(
        "offline mid-load: {} results, {n_err} errors {errors:?}",
        n - n_err
    );
    assert!(n_err > 0, "a held requests when it vanished");
    assert_eq!(errors, HashSet::from(["recipient-unavailable"]));
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    // Nothing more arrives later (no duplicates after the fact).
    let late = alice
        .recv_matching(Duration::from_millis(500), |e| e.name() == "iq")
        .await;
    assert!(late.is_err(), "late stanza: {late:?}");
    rb.abort();
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implementing_account_accepts_the_subscription() {
    // No roster provisioned: the proxy's own subscribe must do it.
    let p = prosody(false).await;
    let a = accepting_client(&p, &format!("{T}/a")).await;
    let proxy = proxy(&p, "").await;
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
        "after impl accepts the subscription, Prosody sends its presence; log:\n{}",
        p.log_tail(30)
    );
    let rb = responder(a);
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;
    let answers = load(&mut alice, D, 10, WINDOW, "sub-").await;
    assert!(answers.values().all(|v| v.len() == 1 && v[0].0 == "result"));
    rb.abort();
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sent_while_the_target_is_offline_is_delivered_at_login() {
    let p = prosody(false).await;
    let proxy = proxy(&p, "").await;
    assert!(
        proxy
            .wait_for(WAIT, |s| s.stats == Default::default() && s.upstream_online)
            .await
    );
    // impl logs in only now; Prosody stored the subscription request.
    let mut a = accepting_client(&p, &format!("{T}/a")).await;
    let sub = a
        .recv_matching(WAIT, |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await
        .expect("the stored subscribe is delivered at login");
    assert_eq!(sub.attr("from"), Some(D));
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
        "log:\n{}",
        p.log_tail(30)
    );
    assert!(proxy.shutdown(WAIT).await);
}

/// Issue 11, the smaller differences from the module, through a real
/// Prosody: see [`support::differences::module_differences`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_prepared_replies_and_directed_presence_as_the_module_or_better() {
    let p = prosody(true).await;
    let proxy = proxy(&p, "").await;
    let mut a = client(&p, &format!("{T}/a")).await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    let mut alice = client(&p, &format!("{ALICE}/phone")).await;
    module_differences(&proxy, &mut a, &mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}
