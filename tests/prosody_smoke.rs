//! Smoke tests of the test harness itself against a private Prosody 0.12:
//! c2s login and an iq round trip through the example implementing client,
//! a raw XEP-0114 handshake, and the target's presence reaching the
//! component domain when the target's roster holds it with subscription
//! `from`. Needs `prosody` (Debian package) on PATH.

mod support;

use std::time::{Duration, Instant};

use support::prosody::{Prosody, ProsodyConfig, Subscription};
use support::xmpp::{self, RawComponent, TIMEOUT};

const PROXY: &str = "proxy.example.test";
const SECRET: &str = "s3cret";

/// Prints what the component socket received, one element per line.
fn show(what: &str, elements: &[String]) {
    println!("component socket, after: {what}");
    for e in elements {
        println!("    {e}");
    }
}

/// Sends a probe from the component to impl's bare JID and returns the
/// first stanza that comes back.
async fn probe(comp: &mut RawComponent, id: &str) -> String {
    comp.send_raw(&format!(
        "<presence type='probe' from='{PROXY}' to='impl@example.test' id='{id}'/>"
    ))
    .await
    .expect("send probe");
    comp.read_stanza(TIMEOUT).await.expect("probe answered")
}

/// Prosody with impl (offline, no roster entry) and the component, which
/// has asked impl for a subscription; returns what the component got up
/// to Prosody's receipt (the `unavailable` of the offline target).
async fn subscribe_while_offline() -> (Prosody, RawComponent, Vec<String>) {
    let server = Prosody::start(
        ProsodyConfig::new()
            .user("impl", "implpw")
            .component(PROXY, SECRET),
    )
    .await
    .expect("prosody starts");
    let mut comp = RawComponent::connect(server.component_addr(), PROXY, SECRET, TIMEOUT)
        .await
        .expect("component handshake");
    comp.send_raw(&format!(
        "<presence type='subscribe' from='{PROXY}' to='impl@example.test' id='sub1'/>"
    ))
    .await
    .expect("send subscribe");
    let got = comp
        .read_until_contains("unavailable", TIMEOUT)
        .await
        .expect("receipt of the subscribe");
    (server, comp, got)
}

fn is_presence_from(el: &xmpp::Element, from: &str) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from)
}

#[tokio::test]
async fn c2s_iq_roundtrip_through_example_client() {
    let t0 = Instant::now();
    let server = Prosody::start(
        ProsodyConfig::new()
            .user("alice", "alicepw")
            .user("impl", "implpw")
            .user("bob", "bobpw")
            // alice gets impl's presence: tells the test the example is up.
            .roster_item("impl", "alice@example.test", Subscription::From),
    )
    .await
    .expect("prosody starts");
    println!(
        "prosody up in {:?} (pid {:?})",
        server.startup_time(),
        server.pid()
    );

    let mut alice = xmpp::connect(
        "alice@example.test/phone",
        "alicepw",
        server.c2s_addr(),
        TIMEOUT,
    )
    .await
    .expect("alice online");
    alice.send_presence().await.expect("alice presence");

    // The example implementing client, as users run it; killed on drop.
    let mut example = tokio::process::Command::new(
        std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned()),
    )
    .arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/implementing_client.py"
    ))
    .args(["--jid", "impl@example.test/a", "--password", "implpw"])
    .args(["--server", &server.c2s_addr().to_string()])
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("python3 runs the example implementing client");

    let p = alice
        .recv_matching(TIMEOUT, |e| {
            is_presence_from(e, "impl@example.test/a") && e.attr("type").is_none()
        })
        .await
        .expect("impl's presence reaches alice");
    println!("alice got: {}", xmpp::to_xml(&p));

    for (kind, id) in [("get", "e1"), ("set", "e2")] {
        alice
            .send_xml(&format!(
                "<iq type='{kind}' id='{id}' to='impl@example.test/a'><echo xmlns='urn:example:echo'>hello {id}</echo></iq>"
            ))
            .await
            .expect("send echo");
        let r = alice
            .recv_iq_response(id, TIMEOUT)
            .await
            .expect("echo answer");
        println!("alice got: {}", xmpp::to_xml(&r));
        assert_eq!(r.attr("type"), Some("result"));
        assert_eq!(r.attr("from"), Some("impl@example.test/a"));
        let echo = r
            .get_child("echo", "urn:example:echo")
            .expect("echo payload");
        assert_eq!(echo.attr("from-resource"), Some("a"));
        assert_eq!(echo.text(), format!("hello {id}"));
    }

    // Any other request: service-unavailable.
    alice
        .send_xml("<iq type='get' id='v1' to='impl@example.test/a'><query xmlns='jabber:iq:version'/></iq>")
        .await
        .expect("send version");
    let r = alice
        .recv_iq_response("v1", TIMEOUT)
        .await
        .expect("error answer");
    println!("alice got: {}", xmpp::to_xml(&r));
    assert_eq!(r.attr("type"), Some("error"));
    let err = r.get_child("error", xmpp::NS_CLIENT).expect("error child");
    assert!(err.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));

    // The example accepts subscription requests. (alice is already
    // subscribed, so Prosody itself would answer hers: use bob, who fetches
    // his roster first, because Prosody delivers an inbound `subscribed`
    // only to resources that requested the roster.)
    let mut bob = xmpp::connect(
        "bob@example.test/laptop",
        "bobpw",
        server.c2s_addr(),
        TIMEOUT,
    )
    .await
    .expect("bob online");
    bob.send_xml("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await
        .expect("roster get");
    bob.recv_iq_response("r1", TIMEOUT)
        .await
        .expect("roster result");
    bob.send_presence().await.expect("bob presence");
    bob.send_xml("<presence type='subscribe' to='impl@example.test'/>")
        .await
        .expect("send subscribe");
    let s = bob
        .recv_matching(TIMEOUT, |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribed")
        })
        .await
        .expect("subscribed");
    println!("bob got: {}", xmpp::to_xml(&s));
    assert_eq!(s.attr("from"), Some("impl@example.test"));
    let p = bob
        .recv_matching(TIMEOUT, |e| {
            is_presence_from(e, "impl@example.test/a") && e.attr("type").is_none()
        })
        .await
        .expect("impl's presence reaches bob after approval");
    println!("bob got: {}", xmpp::to_xml(&p));

    let roster_file = server.data_path().join("example%2etest/roster/impl.dat");
    println!(
        "impl's roster as Prosody saved it:\n{}",
        std::fs::read_to_string(&roster_file).expect("roster file")
    );

    bob.close().await;
    let _ = example.kill().await;
    alice.close().await;
    println!("c2s test took {:?}", t0.elapsed());
}

#[tokio::test]
async fn component_handshake_and_target_presence() {
    let t0 = Instant::now();
    let mut server = Prosody::start(
        ProsodyConfig::new()
            .user("impl", "implpw")
            .component(PROXY, SECRET)
            .roster_item("impl", PROXY, Subscription::From),
    )
    .await
    .expect("prosody starts");
    println!("prosody up in {:?}", server.startup_time());

    // Wrong secret: refused.
    let bad = RawComponent::connect(server.component_addr(), PROXY, "wrong", TIMEOUT).await;
    match bad {
        Ok(_) => panic!("handshake with a wrong secret accepted"),
        Err(e) => {
            println!("wrong secret -> {e}");
            assert!(e.contains("not-authorized"), "{e}");
        }
    }

    let mut comp = RawComponent::connect(server.component_addr(), PROXY, SECRET, TIMEOUT)
        .await
        .expect("component handshake");
    println!("component stream header: {}", comp.header);
    println!("component stream id: {}", comp.stream_id);

    // Target comes online: the component receives its available presence.
    let impl_a = xmpp::connect("impl@example.test/a", "implpw", server.c2s_addr(), TIMEOUT)
        .await
        .expect("impl/a online");
    impl_a.send_presence().await.expect("impl/a presence");
    let got = comp
        .read_until_contains("impl@example.test/a", TIMEOUT)
        .await
        .expect("component gets impl/a presence");
    show("impl/a sends initial presence", &got);
    let p = got.last().expect("one element");
    assert!(p.starts_with("<presence"), "{p}");
    assert!(p.contains(&format!("to='{PROXY}'")), "{p}");
    assert!(!p.contains("type="), "available presence has no type: {p}");

    // A second resource.
    let impl_b = xmpp::connect("impl@example.test/b", "implpw", server.c2s_addr(), TIMEOUT)
        .await
        .expect("impl/b online");
    impl_b.send_presence().await.expect("impl/b presence");
    let got = comp
        .read_until_contains("impl@example.test/b", TIMEOUT)
        .await
        .expect("component gets impl/b presence");
    show("impl/b sends initial presence", &got);

    // /a goes away: unavailable presence.
    impl_a.close().await;
    let got = comp
        .read_stanzas_until(TIMEOUT, |s| {
            s.contains("impl@example.test/a") && s.contains("type='unavailable'")
        })
        .await
        .expect("component gets impl/a unavailable");
    show("impl/a closes its stream", &got);

    // A component connecting while the target is online is sent nothing;
    // a probe from the component domain is answered with the current
    // presence of each online resource (the first element after the probe).
    comp.close().await;
    let mut comp2 = RawComponent::connect(server.component_addr(), PROXY, SECRET, TIMEOUT)
        .await
        .expect("second component handshake");
    let first = probe(&mut comp2, "probe1").await;
    show("new component sends a probe", std::slice::from_ref(&first));
    assert!(
        first.contains("from='impl@example.test/b'") && first.contains("<delay"),
        "{first}"
    );

    // `subscribe` while already subscribed: Prosody answers by itself with
    // `subscribed` and the current presence of every online resource.
    comp2
        .send_raw(&format!(
            "<presence type='subscribe' from='{PROXY}' to='impl@example.test' id='sub1'/>"
        ))
        .await
        .expect("send subscribe");
    let got = comp2
        .read_stanzas_until(TIMEOUT, |s| s.contains("impl@example.test/b"))
        .await
        .expect("subscribe answered");
    show("component sends subscribe (already subscribed)", &got);
    assert!(got[0].contains("type='subscribed'"), "{got:?}");

    // Restart: same ports, same data; the c2s client reconnects by itself.
    let pid_before = server.pid();
    comp2.close().await;
    let t_stop = Instant::now();
    server.stop().await.expect("stop");
    let stop_took = t_stop.elapsed();
    server.restart().await.expect("start again");
    println!(
        "stop took {stop_took:?}, start again {:?} (pid {:?} -> {:?})",
        server.startup_time(),
        pid_before,
        server.pid()
    );
    let mut impl_b = impl_b;
    impl_b
        .wait_online_count(2, Duration::from_secs(30))
        .await
        .expect("impl/b reconnects after restart");
    let comp3 = RawComponent::connect(server.component_addr(), PROXY, SECRET, TIMEOUT)
        .await
        .expect("handshake after restart");
    comp3.close().await;
    impl_b.close().await;
    println!("component test took {:?}", t0.elapsed());
}

#[tokio::test]
async fn component_subscribe_to_offline_target_is_delivered_at_login() {
    // No roster provisioning: the component asks while the target is offline.
    let (server, mut comp, got) = subscribe_while_offline().await;
    show(
        "subscribe while the target is offline and not subscribed",
        &got,
    );
    // (Do not probe now: see the next test.)

    // The target logs in later and accepts what Prosody stored.
    let mut implc = xmpp::connect_with(
        "impl@example.test/a",
        "implpw",
        server.c2s_addr(),
        TIMEOUT,
        true,
    )
    .await
    .expect("impl online");
    implc.send_presence().await.expect("impl presence");
    let req = implc
        .recv_matching(TIMEOUT, |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await
        .expect("stored subscribe delivered at login");
    println!("impl got: {}", xmpp::to_xml(&req));
    let got = comp
        .read_until_contains("impl@example.test/a", TIMEOUT)
        .await
        .expect("subscribed and presence reach the component");
    show("target accepts the stored subscribe at login", &got);
    assert!(got[0].contains("type='subscribed'"), "{got:?}");
    // Now subscribed: a probe is answered with the online resource.
    let got = probe(&mut comp, "probe2").await;
    show("probe once subscribed", std::slice::from_ref(&got));
    assert!(got.contains("from='impl@example.test/a'"), "{got}");
    // No resource online: a probe gets `unavailable` from the bare JID.
    implc.close().await;
    let got = comp
        .read_until_contains("type='unavailable'", TIMEOUT)
        .await
        .expect("unavailable of impl/a");
    show("target logs out", &got);
    let got = probe(&mut comp, "probe3").await;
    show("probe with no resource online", std::slice::from_ref(&got));
    comp.close().await;
}

/// Prosody 0.12 pitfall: a probe from a contact that is not subscribed is
/// answered with `unsubscribed`, and Prosody processes that answer as the
/// user's own cancellation: the stored subscription request is dropped.
#[tokio::test]
async fn prosody_probe_without_subscription_cancels_pending_subscribe() {
    let (server, mut comp, _) = subscribe_while_offline().await;
    let roster_file = server.data_path().join("example%2etest/roster/impl.dat");
    let stored = std::fs::read_to_string(&roster_file).expect("roster file");
    assert!(
        stored.contains("[\"proxy.example.test\"]"),
        "pending request stored: {stored}"
    );

    let got = probe(&mut comp, "probe1").await;
    show("probe while not subscribed", std::slice::from_ref(&got));
    assert!(got.contains("type='unsubscribed'"), "{got}");
    let after = std::fs::read_to_string(&roster_file).expect("roster file");
    println!("impl's roster after the probe:\n{after}");
    assert!(
        !after.contains("proxy.example.test"),
        "pending request gone: {after}"
    );
    comp.close().await;
}

#[tokio::test]
async fn start_fails_with_log_when_prosody_dies() {
    let t0 = Instant::now();
    let r = Prosody::start(ProsodyConfig::new().extra_global("this is not lua")).await;
    let err = match r {
        Ok(_) => panic!("a broken config started"),
        Err(e) => e,
    };
    println!("start error after {:?}:\n{err}", t0.elapsed());
    assert!(err.contains("exited"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}
