//! End to end against a real ejabberd 23.01 (Debian's package, on loopback
//! with its own config and node, s2s off) with real clients (slixmpp):
//! the seed flow, the instance pool, and two jatproxy processes serving
//! one component domain, which ejabberd balances, with one of them stopped
//! mid-load. In that last test a recording relay
//! ([`support::relay::Relay`]) sits between each process and ejabberd, so
//! every request the requester never got an answer to is attributed: to
//! ejabberd (dropped before reaching jatproxy, or jatproxy's answer
//! dropped) or to jatproxy (reached it, no answer came out), and the test
//! requires that jatproxy lost none.
//!
//! These tests need `ejabberd` installed (`scripts/setup.sh` does it);
//! they fail, never skip, without it.

mod support;

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::attribution::attribute;
use support::echo::EchoComponent;
use support::ejabberd::{Ejabberd, EjabberdConfig};
use support::flows::{load, load_counting_lost, responder, seed_request};
use support::relay::{Relay, Seen};
use support::setup::{spawn_jatproxy, start_registered, upstream_toml};
use support::xmpp::{self, TestClient};
use support::{ALICE, D, NS_ECHO, PW, SECRET, WAIT, WINDOW};
use tokio::sync::mpsc;

const T: &str = "impl@example.test";
const INSTANCE_SECRET: &str = "instance-secret";

/// ejabberd with alice and impl, the component `D`, and impl's roster
/// holding `D` with subscription `from` (as `ejabberdctl add_rosteritem`
/// leaves it in a deployment).
async fn ejabberd() -> Ejabberd {
    Ejabberd::start(
        EjabberdConfig::new()
            .user("alice", PW)
            .user("impl", PW)
            .component(D, SECRET)
            .roster_item("impl", D, "from"),
    )
    .await
    .unwrap_or_else(|e| panic!("ejabberd starts (is it installed? run scripts/setup.sh): {e}"))
}

/// jatproxy's settings for a component port at `server` (ejabberd's, or
/// a relay before it): the shared `[upstream]` table and a 10 s iq timeout.
fn base_toml(server: impl Display) -> String {
    format!(
        "{}\n[routing]\niq_timeout = \"10s\"\n",
        upstream_toml(server)
    )
}

/// jatproxy as the module, for impl's resources, registered at `e`.
async fn client_proxy(e: &Ejabberd) -> Proxy {
    let toml = format!(
        "{}\n[client_proxy]\ntarget_address = \"{T}\"\n",
        base_toml(e.component_addr())
    );
    start_registered(&toml, || e.log_tail(30)).await
}

async fn client(e: &Ejabberd, jid: &str) -> TestClient {
    let c = xmpp::connect(jid, PW, e.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}\nejabberd log:\n{}", e.log_tail(30)));
    c.send_presence().await.expect("presence");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_through_ejabberd() {
    let e = ejabberd().await;
    let proxy = client_proxy(&e).await;
    let mut a = client(&e, &format!("{T}/a")).await;
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
        "impl/a's presence reaches the proxy: {:?}\n{}",
        proxy.status(),
        e.log_tail(30)
    );
    let mut alice = client(&e, &format!("{ALICE}/phone")).await;

    // One request step by step: translated in, translated back (and, as
    // through Prosody, the payload untouched).
    seed_request(&mut a, &mut alice).await;

    // Then load over two resources.
    let ra = responder(a);
    let rb = responder(client(&e, &format!("{T}/b")).await);
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    let n = 300;
    let answers = load(&mut alice, D, n, WINDOW, "ej-").await;
    assert_eq!(answers.len(), n, "none lost");
    let mut per: HashMap<&str, usize> = HashMap::new();
    for v in answers.values() {
        assert_eq!(v.len(), 1, "exactly one answer: {v:?}");
        assert_eq!(v[0].0, "result", "{v:?}");
        *per.entry(v[0].1.as_str()).or_default() += 1;
    }
    println!("ejabberd seed flow, {n} requests per resource: {per:?}");
    assert!(per.get("a").copied().unwrap_or(0) > 50, "{per:?}");
    assert!(per.get("b").copied().unwrap_or(0) > 50, "{per:?}");
    ra.abort();
    rb.abort();
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_pool_behind_ejabberd() {
    let e = ejabberd().await;
    let toml = format!(
        "{}\n[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n",
        base_toml(e.component_addr())
    );
    let proxy = start_registered(&toml, || e.log_tail(30)).await;
    let listener = proxy.listen_addr().expect("listener");
    let mut instances = Vec::new();
    for name in ["one", "two"] {
        instances.push(
            EchoComponent::start(listener, D, INSTANCE_SECRET, name, WAIT)
                .await
                .unwrap_or_else(|err| panic!("{err}")),
        );
    }
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    let mut alice = client(&e, &format!("{ALICE}/phone")).await;
    let n = 200;
    let mut per: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        alice
            .send_xml(&format!(
                "<iq id='i-{i}' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>{i}</echo></iq>"
            ))
            .await
            .expect("send");
        let r = alice
            .recv_iq_response(&format!("i-{i}"), WAIT)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "{err}\n{}",
                    instances
                        .iter()
                        .map(|c| c.output())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
        assert_eq!(r.attr("type"), Some("result"), "{}", xmpp::to_xml(&r));
        // The instance saw the real requester and answered it directly.
        assert_eq!(r.attr("from"), Some(D));
        let echo = r.get_child("echo", NS_ECHO).expect("echo payload");
        assert_eq!(echo.text(), i.to_string());
        *per.entry(echo.attr("from-instance").unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    println!("ejabberd instance pool, {n} requests per instance: {per:?}");
    assert!(per.get("one").copied().unwrap_or(0) > 30, "{per:?}");
    assert!(per.get("two").copied().unwrap_or(0) > 30, "{per:?}");
    drop(instances);
    assert!(proxy.shutdown(WAIT).await);
}

/// Waits until process `tag` has logged a line containing `what`.
async fn wait_log(
    rx: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
    seen: &mut Vec<(&'static str, String)>,
    tag: &str,
    what: &str,
) {
    if seen.iter().any(|(t, l)| *t == tag && l.contains(what)) {
        return;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((t, l))) => {
                let hit = t == tag && l.contains(what);
                seen.push((t, l));
                if hit {
                    return;
                }
            }
            _ => panic!("{tag} never logged {what:?}; log so far:\n{seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_serve_one_domain_and_one_can_stop() {
    // Two jatproxy processes register the same domain at one ejabberd,
    // which spreads stanzas over both connections; each fronts its own
    // component instance. The first is stopped (SIGTERM) mid-load. Each
    // process reaches ejabberd through its own recording relay, which
    // sees every connection the process opens (the short second session
    // a stopping process opens to answer late requests included).
    let e = ejabberd().await;
    let jid = format!("{ALICE}/phone");
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut seen = Vec::new();
    let mut procs = Vec::new();
    let mut instances = Vec::new();
    let mut relays = Vec::new();
    for tag in ["first", "second"] {
        let relay = Relay::start(e.component_addr(), &[ALICE]).await;
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let config = dir.path().join(format!("{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "{}\n[instances]\nlisten = \"{listen}\"\nsecret = \"{INSTANCE_SECRET}\"\n",
                base_toml(relay.addr)
            ),
        )
        .expect("config");
        procs.push(spawn_jatproxy(tag, &config, tx.clone()));
        relays.push(relay);
        wait_log(&mut rx, &mut seen, tag, "upstream session established").await;
        wait_log(&mut rx, &mut seen, tag, "listening for component instances").await;
        instances.push(
            EchoComponent::start(listen, D, INSTANCE_SECRET, tag, WAIT)
                .await
                .unwrap_or_else(|err| panic!("{err}")),
        );
    }
    let mut alice = client(&e, &jid).await;

    let n = 600;
    let pid = procs[0].id().expect("pid");
    let outcome = load_counting_lost(
        &mut alice,
        D,
        n,
        WINDOW,
        "two-",
        |done| {
            if done == n / 3 {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        },
        Some(Duration::from_secs(5)),
    )
    .await;
    let (answers, lost) = (&outcome.answers, &outcome.lost);
    let status = tokio::time::timeout(WAIT, procs[0].wait())
        .await
        .expect("first exits within the grace period")
        .expect("wait");
    assert!(status.success(), "first exited with {status}");
    // The first process has exited, so everything it wrote (over its
    // second session too) has crossed its relay.
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }

    let mut per: HashMap<String, usize> = HashMap::new();
    for v in answers.values() {
        assert_eq!(v.len(), 1, "exactly one answer: {v:?}");
        *per.entry(format!("{} {}", v[0].0, v[0].1)).or_default() += 1;
    }
    // Before the stop, ejabberd spread the load over both processes: each
    // one's instance (named after its process) answered some of the
    // first n/3 answers.
    let mut before: HashMap<&str, usize> = HashMap::new();
    for id in &outcome.order[..n / 3] {
        let (kind, by) = &answers[id][0];
        if kind == "result" {
            *before.entry(by.as_str()).or_default() += 1;
        }
    }

    {
        // The relays' records, held only for the checks.
        let s0 = relays[0].seen();
        let s1 = relays[1].seen();
        let both = [&*s0, &*s1];
        // The relays saw every request that was answered and the answer to
        // it, and jatproxy answered nothing twice: without that, attributing
        // the unanswered ones would mean nothing.
        let mut not_through_relays = Vec::new();
        let mut answered_twice = Vec::new();
        for i in 0..n {
            let id = format!("two-{i}");
            let through: usize = both
                .iter()
                .map(|s| s.answered.get(&id).map_or(0, Vec::len))
                .sum();
            let reached: usize = both
                .iter()
                .map(|s| s.accepted.get(&id).copied().unwrap_or(0))
                .sum();
            if through > 1 {
                answered_twice.push(id.clone());
            }
            if answers.contains_key(&id) && (through == 0 || reached == 0) {
                not_through_relays.push(id);
            }
        }
        let a = attribute(lost, &jid, &both);
        let late: Vec<usize> = both
            .iter()
            .map(|s| {
                s.accepted_on
                    .values()
                    .filter(|on| on.iter().any(|k| *k > 1))
                    .count()
            })
            .collect();
        println!(
            "two processes, first stopped after {} answers: {n} requests, answers {per:?} \
             (results before the stop by process: {before:?}); unanswered {}: \
             (a) dropped by ejabberd before jatproxy {}, (b) answer dropped by ejabberd {}, \
             (c) lost by jatproxy {}; sessions through the relays {:?}, requests reaching \
             jatproxy on a later session {late:?}",
            n / 3,
            lost.len(),
            a.in_ejabberd_before.len(),
            a.in_ejabberd_after.len(),
            a.in_jatproxy.len(),
            [s0.sessions, s1.sessions],
        );
        for line in a
            .in_ejabberd_before
            .iter()
            .chain(&a.in_ejabberd_after)
            .chain(&a.in_jatproxy)
        {
            println!("  unanswered {line}");
        }
        for tag in ["first", "second"] {
            assert!(
                before.get(tag).copied().unwrap_or(0) > 0,
                "process {tag} served nothing before the stop: {before:?}"
            );
        }
        assert_eq!(
            per.keys()
                .filter(|k| k.starts_with("result ")
                    && !k.ends_with(" first")
                    && !k.ends_with(" second"))
                .count(),
            0,
            "every result names the process that served it: {per:?}"
        );
        assert!(
            not_through_relays.is_empty(),
            "answered without both request and answer crossing a relay: {not_through_relays:?}"
        );
        assert!(
            answered_twice.is_empty(),
            "jatproxy answered twice: {answered_twice:?}"
        );
        // Everything that reached jatproxy was answered, even what arrived
        // after its stream end (answered over a second short session).
        assert!(
            a.in_jatproxy.is_empty(),
            "jatproxy lost requests: {:#?}\nlogs:\n{seen:#?}",
            a.in_jatproxy
        );
        // What ejabberd routes to the closing session while it processes our
        // `</stream:stream>` it drops without a bounce (ejabberd_service does
        // not bounce its queue on terminate); the README says so. Only
        // requests in flight at the stop can be caught that way.
        assert!(
            a.in_ejabberd_before.len() + a.in_ejabberd_after.len() <= WINDOW,
            "more lost inside ejabberd than were in flight at the stop: {a:#?}"
        );
        assert_eq!(answers.len() + lost.len(), n);
    }
    // After the stop, the second process serves everything.
    let after = load(&mut alice, D, 50, WINDOW, "after-").await;
    assert!(
        after
            .values()
            .all(|v| v.len() == 1 && v[0] == ("result".to_owned(), "second".to_owned())),
        "{after:?}"
    );
}

/// The attribution itself, on hand-made relay records.
#[test]
fn attribution_tells_ejabberd_losses_from_jatproxy_losses() {
    let jid = format!("{ALICE}/phone");
    let mut first = Seen::default();
    let mut second = Seen::default();
    // never-seen: reached neither process.
    // answer-dropped: reached the first, answered on its second session.
    first.accepted.insert("answer-dropped".into(), 1);
    first.accepted_on.insert("answer-dropped".into(), vec![1]);
    first
        .answered
        .insert("answer-dropped".into(), vec![jid.clone()]);
    // unanswered: reached the second, nothing came back.
    second.accepted.insert("unanswered".into(), 1);
    second.accepted_on.insert("unanswered".into(), vec![2]);
    // misaddressed: reached the first, answered to someone else.
    first.accepted.insert("misaddressed".into(), 1);
    first.accepted_on.insert("misaddressed".into(), vec![1]);
    first
        .answered
        .insert("misaddressed".into(), vec![ALICE.to_owned()]);
    // closed: ejabberd wrote it to a connection jatproxy had closed.
    first.unwritten.insert("closed".into(), 1);
    let lost: Vec<String> = [
        "never-seen",
        "answer-dropped",
        "unanswered",
        "misaddressed",
        "closed",
    ]
    .map(String::from)
    .to_vec();
    let a = attribute(&lost, &jid, &[&first, &second]);
    let ids = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|l| l.split(':').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(ids(&a.in_ejabberd_before), ["never-seen"]);
    assert_eq!(ids(&a.in_ejabberd_after), ["answer-dropped"]);
    assert_eq!(
        ids(&a.in_jatproxy),
        ["unanswered", "misaddressed", "closed"]
    );
}

/// Issue 11, the smaller differences from the module, through a real
/// ejabberd: see [`support::differences::module_differences`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_prepared_replies_and_directed_presence_through_ejabberd() {
    let e = ejabberd().await;
    let proxy = client_proxy(&e).await;
    let mut a = client(&e, &format!("{T}/a")).await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    let mut alice = client(&e, &format!("{ALICE}/phone")).await;
    support::differences::module_differences(&proxy, &mut a, &mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}
