//! The component instance pool over loopback TCP: jatproxy between a fake
//! XMPP server (upstream) and fake component instances that connect to
//! its listener with jatproxy's own XEP-0114 handshake code. For the
//! faults real components do not produce on demand: an instance dying
//! with requests in flight, two instances reusing one iq id, an instance
//! that reads slower than the server sends, one that stops reading, bad
//! secrets and domains, a full listener, and a forged `from`. Every test checks that each request got exactly one
//! answer.

#[path = "support/fake.rs"]
mod fake;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fake::{
    attr_after, error_condition, start, text, FakeInstance, FakeServer, Reader, Session, Writer, D,
    WAIT,
};
use jatproxy::handshake::HandshakeError;
use jatproxy::pool::Member;
use jatproxy::proxy::Proxy;
use jatproxy::stanza::StanzaError;
use jatproxy::xml::{Stanza, StreamCondition};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const NS_ECHO: &str = "urn:example:echo";
/// Round-robin, with the module's answer to a lost member and an empty
/// pool (at once: `recipient-unavailable`, `service-unavailable`), which
/// these tests read; re-dispatch and the hold, the defaults since issue
/// 13, are tests/e2e_survive.rs's.
const ROUND_ROBIN: &str = "[routing]\nbalancing = \"round-robin\"\niq_timeout = \"60s\"\n\
                           redispatch = \"none\"\nhold_when_empty = \"0s\"\n";

/// What a fake instance does with the iq requests it reads.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Answer this many requests, then hold (never answer) the rest.
    answer_first: usize,
    /// Drop the connection (no goodbye) after reading this many requests.
    die_after: Option<usize>,
}

const ANSWER_ALL: Behaviour = Behaviour {
    answer_first: usize::MAX,
    die_after: None,
};

/// Runs an instance: every stanza it reads is reported on `seen` as
/// (name, stanza); iq requests are answered as an echo component would,
/// directly to the requester, with `from-instance` naming it. Aborting the
/// task drops the socket.
fn run_instance(
    mut inst: FakeInstance,
    name: &'static str,
    b: Behaviour,
    seen: mpsc::UnboundedSender<(&'static str, Stanza)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut requests = 0;
        loop {
            // Idle instances wait as long as the test runs.
            let st = match inst.r.try_next_frame(Duration::from_secs(3600)).await {
                Ok(Some(jatproxy::xml::Frame::Stanza(st))) => st,
                Ok(Some(jatproxy::xml::Frame::Whitespace(_))) => continue,
                _ => return,
            };
            let request = st.is_iq_request();
            let _ = seen.send((name, st.clone()));
            if !request {
                continue;
            }
            requests += 1;
            if requests <= b.answer_first {
                let reply = format!(
                    "<iq type='result' id='{}' from='{D}' to='{}'><echo xmlns='{NS_ECHO}' from-instance='{name}'/></iq>",
                    st.id().unwrap_or_default(),
                    st.from().unwrap_or_default()
                );
                if inst.w.try_send(&reply).await.is_err() {
                    return;
                }
            }
            if b.die_after == Some(requests) {
                return; // drops both halves: FIN, then RST for unread data
            }
        }
    })
}

/// The upstream session's reader as a task: every stanza jatproxy sends
/// upstream, in order. Reading in the background keeps jatproxy's
/// upstream writer from blocking while the test writes.
fn collect_upstream(mut r: Reader) -> mpsc::UnboundedReceiver<Stanza> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(f)) = r.try_next_frame(Duration::from_secs(3600)).await {
            if let jatproxy::xml::Frame::Stanza(s) = f {
                if tx.send(s).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn next_up(rx: &mut mpsc::UnboundedReceiver<Stanza>) -> Stanza {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing upstream within {WAIT:?}"))
        .expect("upstream reader ended")
}

fn request(id: &str, requester: &str, payload: &str) -> String {
    format!("<iq type='get' id='{id}' to='{D}' from='{requester}'><echo xmlns='{NS_ECHO}'>{payload}</echo></iq>")
}

/// How a request ended: `result:NAME` (the instance that answered) or
/// `error:CONDITION`.
fn outcome(s: &Stanza) -> String {
    match s.stanza_type() {
        Some("result") => format!(
            "result:{}",
            attr_after(&text(s), "<echo", "from-instance").unwrap_or_default()
        ),
        _ => format!("error:{}", error_condition(s).unwrap_or_default()),
    }
}

/// Collects answers to `ids` from upstream until each has one, and
/// checks none comes twice: a marker request sent afterwards must be the
/// next thing answered.
async fn answers_exactly_once(
    up: &mut mpsc::UnboundedReceiver<Stanza>,
    w: &mut Writer,
    ids: &HashSet<String>,
) -> HashMap<String, String> {
    let mut answers: HashMap<String, String> = HashMap::new();
    while answers.len() < ids.len() {
        let st = next_up(up).await;
        let id = st.id().unwrap_or_default().to_owned();
        assert!(ids.contains(&id), "unexpected upstream: {}", text(&st));
        assert!(st.is_iq_response(), "{}", text(&st));
        assert_eq!(st.from(), Some(D), "answers come from the domain");
        if let Some(first) = answers.insert(id.clone(), outcome(&st)) {
            panic!("{id} answered twice: {first} then {}", text(&st));
        }
    }
    let marker = format!("marker-{}", ids.len());
    w.send(&request(&marker, "marker@example.test/m", "m"))
        .await;
    let next = next_up(up).await;
    assert_eq!(
        next.id(),
        Some(marker.as_str()),
        "a late duplicate: {}",
        text(&next)
    );
    answers
}

fn instance_ids(p: &Proxy) -> Vec<u64> {
    p.status()
        .pool
        .iter()
        .filter_map(|m| match m {
            Member::Instance(i) => Some(*i),
            Member::Resource(_) => None,
        })
        .collect()
}

fn tally<'a>(it: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for o in it {
        *t.entry(o.clone()).or_default() += 1;
    }
    t
}

#[tokio::test]
async fn instance_killed_mid_load_loses_no_request() {
    let server = FakeServer::bind().await;
    let (proxy, s) = start(&server, "", ROUND_ROBIN).await;
    let addr = proxy.listen_addr().expect("listener");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // a and b answer everything; c answers 10, holds the next ones, and
    // drops its connection once it has read 30.
    let _a = run_instance(
        FakeInstance::connect(addr, "a").await,
        "a",
        ANSWER_ALL,
        seen_tx.clone(),
    );
    let _b = run_instance(
        FakeInstance::connect(addr, "b").await,
        "b",
        ANSWER_ALL,
        seen_tx.clone(),
    );
    let c = Behaviour {
        answer_first: 10,
        die_after: Some(30),
    };
    let _c = run_instance(FakeInstance::connect(addr, "c").await, "c", c, seen_tx);
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 3).await);

    let Session { r, mut w } = s;
    let mut up = collect_upstream(r);
    let n = 300;
    let ids: HashSet<String> = (0..n).map(|i| format!("k{i}")).collect();
    // First half in bursts while answers flow back; c dies during it.
    for chunk in 0..5 {
        let mut batch = String::new();
        for i in chunk * 30..(chunk + 1) * 30 {
            batch.push_str(&request(
                &format!("k{i}"),
                &format!("user{}@example.test/r", i % 7),
                &i.to_string(),
            ));
        }
        w.send(&batch).await;
    }
    assert!(
        proxy.wait_for(WAIT, |st| st.pool.len() == 2).await,
        "c left the pool when its connection dropped"
    );
    // Second half: only a and b are left to take it.
    let mut batch = String::new();
    for i in 150..n {
        batch.push_str(&request(
            &format!("k{i}"),
            &format!("user{}@example.test/r", i % 7),
            &i.to_string(),
        ));
    }
    w.send(&batch).await;

    let answers = answers_exactly_once(&mut up, &mut w, &ids).await;
    let per = tally(answers.values());
    let mut received: HashMap<&str, usize> = HashMap::new();
    let mut second_half_to_c = 0;
    while let Ok((name, st)) = seen.try_recv() {
        // The load's requests only (not the marker).
        let Some(i) = st.id().and_then(|id| id.strip_prefix('k')) else {
            continue;
        };
        *received.entry(name).or_default() += 1;
        if name == "c" && i.parse::<usize>().expect("k<number>") >= 150 {
            second_half_to_c += 1;
        }
    }
    println!("answers {per:?}; requests read per instance {received:?}");
    assert_eq!(answers.len(), n);
    // Everything a and b read, they answered; c's ten answers got through.
    assert_eq!(per.get("result:a"), received.get("a"));
    assert_eq!(per.get("result:b"), received.get("b"));
    assert_eq!(per.get("result:c").copied(), Some(10));
    assert_eq!(received.get("c").copied(), Some(30));
    assert_eq!(second_half_to_c, 0, "nothing is sent to a dead instance");
    // Everything else was pending on c: read and held, or still queued
    // for it. Each got recipient-unavailable, and nothing else failed.
    let errors = per.get("error:recipient-unavailable").copied().unwrap_or(0);
    assert!(errors >= 20, "the 20 c held at least: {per:?}");
    assert_eq!(
        errors + per["result:a"] + per["result:b"] + 10,
        n,
        "only results and recipient-unavailable: {per:?}"
    );
    let status = proxy.status();
    assert_eq!(
        status.stats.generated(StanzaError::RecipientUnavailable),
        errors as u64
    );
    assert_eq!(status.pending, 0);
    // Round-robin over the two left: the second half split evenly.
    assert!(per["result:a"] >= 75 && per["result:b"] >= 75, "{per:?}");
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn two_instances_same_id_same_peer_get_their_own_replies() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = start(&server, "", ROUND_ROBIN).await;
    let addr = proxy.listen_addr().expect("listener");
    let mut a = FakeInstance::connect(addr, "a").await;
    let mut b = FakeInstance::connect(addr, "b").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);
    let peer = "peer@example.test/x";
    // The same id to the same peer; b sends from a resource of the domain.
    a.w.send(&format!(
        "<iq type='get' id='same' from='{D}' to='{peer}'><q xmlns='urn:x'>from-a</q></iq>"
    ))
    .await;
    b.w.send(&format!(
        "<iq type='get' id='same' from='{D}/bot' to='{peer}'><q xmlns='urn:x'>from-b</q></iq>"
    ))
    .await;
    let mut tokens: HashMap<String, String> = HashMap::new();
    for _ in 0..2 {
        let st = s.r.recv().await;
        assert_eq!((st.id(), st.to()), (Some("same"), Some(peer)));
        let from = st.from().unwrap_or_default().to_owned();
        let (bare, token) = from.split_once('/').expect("from = domain/TOKEN");
        assert_eq!(bare, D);
        let payload = if text(&st).contains("from-a") {
            "a"
        } else {
            "b"
        };
        assert!(
            tokens
                .insert(payload.to_owned(), token.to_owned())
                .is_none(),
            "{}",
            text(&st)
        );
    }
    assert_ne!(tokens["a"], tokens["b"], "each request gets its own token");
    // The peer answers both (b's first), echoing the payload it got; a's
    // reply is sent twice: the duplicate must go nowhere.
    for who in ["b", "a", "a"] {
        s.w.send(&format!(
            "<iq type='result' id='same' from='{peer}' to='{D}/{}'><q xmlns='urn:x'>for-{who}</q></iq>",
            tokens[who]
        ))
        .await;
    }
    let ra = a.r.recv().await;
    assert_eq!(
        text(&ra),
        format!(
            "<iq type='result' id='same' from='{peer}' to='{D}'><q xmlns='urn:x'>for-a</q></iq>"
        ),
        "a's reply, with a's own address restored"
    );
    let rb = b.r.recv().await;
    assert_eq!(
        text(&rb),
        format!("<iq type='result' id='same' from='{peer}' to='{D}/bot'><q xmlns='urn:x'>for-b</q></iq>"),
    );
    assert!(
        proxy
            .wait_for(WAIT, |st| st.stats.replies_unmatched == 1
                && st.pending == 0)
            .await,
        "the duplicate was dropped and counted: {:?}",
        proxy.status().stats
    );
    // Neither instance gets anything more: the next stanza each sees is
    // the answer to a fresh request of its own.
    for (inst, from) in [(&mut a, D.to_owned()), (&mut b, format!("{D}/bot"))] {
        inst.w
            .send(&format!(
                "<iq type='get' id='next' from='{from}' to='{peer}'/>"
            ))
            .await;
        let fwd = s.r.recv().await;
        s.w.send(&format!(
            "<iq type='result' id='next' from='{peer}' to='{}'/>",
            fwd.from().unwrap_or_default()
        ))
        .await;
        let got = inst.r.recv().await;
        assert_eq!((got.id(), got.to()), (Some("next"), Some(from.as_str())));
    }
    assert_eq!(proxy.status().stats.requests_outbound, 4);
    assert!(proxy.shutdown(WAIT).await);
}

/// An instance that stops reading holds the others up for its stall
/// timeout at most: it is cut (not before the timeout), every request
/// pending on it is answered, and the other instance goes on serving,
/// bursts included.
#[tokio::test]
async fn an_instance_that_stops_reading_is_cut_after_the_stall_timeout_and_the_others_go_on() {
    let server = FakeServer::bind().await;
    let stall = Duration::from_secs(1);
    let (proxy, s) = start(&server, "queue = 4\nstall_timeout = \"1s\"", ROUND_ROBIN).await;
    let addr = proxy.listen_addr().expect("listener");
    let stuck = FakeInstance::connect_small_rcvbuf(addr, "stuck").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let stuck_id = instance_ids(&proxy)[0];
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let _live = run_instance(
        FakeInstance::connect(addr, "live").await,
        "live",
        ANSWER_ALL,
        seen_tx,
    );
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);

    let Session { r, mut w } = s;
    let mut up = collect_upstream(r);
    // 64 KiB of payload per request, two at a time (one each, round-robin):
    // the stuck instance's socket buffers and its queue of 4 fill after a
    // bounded number of them; then jatproxy waits for room (and the live
    // one's request of the pair with it) until the stall timeout.
    let big = "x".repeat(64 * 1024);
    let mut ids = HashSet::new();
    let mut sent = 0u64;
    let started = tokio::time::Instant::now();
    while proxy.status().pool.len() == 2 {
        assert!(
            sent < 4000,
            "the stuck instance is still in the pool after {sent} requests: {:?}",
            proxy.status()
        );
        let mut batch = String::new();
        for _ in 0..2 {
            let id = format!("big{sent}");
            batch.push_str(&request(
                &id,
                &format!("user{}@example.test/r", sent % 5),
                &big,
            ));
            ids.insert(id);
            sent += 1;
        }
        w.send(&batch).await;
        let pairs = sent / 2;
        assert!(
            proxy
                .wait_for(WAIT, |st| st.pool.len() < 2
                    || (st.stats.requests_routed == sent
                        && st.stats.replies_delivered == pairs))
                .await,
            "the live instance stalled: {:?}",
            proxy.status()
        );
    }
    let cut_after = started.elapsed();
    assert!(
        cut_after >= stall,
        "cut {cut_after:?} after its first request, before its stall timeout"
    );
    assert_eq!(instance_ids(&proxy).len(), 1);
    assert!(
        !instance_ids(&proxy).contains(&stuck_id),
        "the stuck one left, the live one stayed"
    );
    // Requests keep flowing through the live instance, in bursts of more
    // than its queue: jatproxy waits for it to read, it is not cut.
    let delivered = proxy.status().stats.replies_delivered;
    let mut burst = String::new();
    for i in 0..50 {
        let id = format!("after{i}");
        burst.push_str(&request(&id, "late@example.test/r", "small"));
        ids.insert(id);
    }
    w.send(&burst).await;
    assert!(
        proxy
            .wait_for(WAIT, |st| st.stats.replies_delivered == delivered + 50)
            .await,
        "the burst after the cut was not answered: {:?}",
        proxy.status()
    );
    let answers = answers_exactly_once(&mut up, &mut w, &ids).await;
    let per = tally(answers.values());
    let live_read = std::iter::from_fn(|| seen.try_recv().ok())
        .filter(|(_, st)| st.id().is_some_and(|id| ids.contains(id)))
        .count();
    println!(
        "{sent} large requests until the stuck instance was cut, {cut_after:?} after the first; \
         answers {per:?}"
    );
    assert_eq!(per.get("result:live").copied(), Some(live_read));
    let errors = per.get("error:recipient-unavailable").copied().unwrap_or(0);
    assert_eq!(errors + live_read, ids.len(), "{per:?}");
    assert!(errors >= 4, "at least the stuck queue's worth: {per:?}");
    for i in 0..50 {
        assert_eq!(answers[&format!("after{i}")], "result:live");
    }
    // Out of the pool is not enough: its connection is closed, so it
    // learns it was dropped (and reconnects) instead of lingering with a
    // connection slot, its later stanzas silently ignored.
    let mut stuck = stuck;
    let mut relayed = 0;
    let end = loop {
        match stuck.r.try_next_frame(WAIT).await {
            Ok(Some(jatproxy::xml::Frame::Stanza(st))) if st.is_iq_request() => relayed += 1,
            Ok(Some(f)) => break format!("{f:?}"),
            Ok(None) => break "EOF".to_owned(),
            Err(e) => break e,
        }
    };
    // EOF, or cut mid-stanza / reset: either way, closed.
    assert!(
        !end.starts_with("nothing within"),
        "the dropped instance's connection stays open: {end} after {relayed} requests"
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn messages_and_presence_stick_to_one_instance_until_it_leaves() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = start(&server, "", "").await;
    let addr = proxy.listen_addr().expect("listener");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut tasks = HashMap::new();
    for name in ["a", "b", "c"] {
        let inst = FakeInstance::connect(addr, name).await;
        tasks.insert(name, run_instance(inst, name, ANSWER_ALL, seen_tx.clone()));
    }
    drop(seen_tx);
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 3).await);
    let senders = ["alice", "bob", "carol", "dave", "erin", "frank"];

    // Each sender's messages (from several resources) and presence, in
    // one round; returns where each sender's stanzas landed.
    async fn round(
        s: &mut Session,
        seen: &mut mpsc::UnboundedReceiver<(&'static str, Stanza)>,
        senders: &[&str],
        tag: &str,
    ) -> HashMap<String, HashSet<&'static str>> {
        let mut sent = HashMap::new();
        for who in senders {
            for r in 0..4 {
                let m = format!(
                    "<message to='{D}' from='{who}@example.test/res{r}' id='{tag}-{who}-{r}'><body>hi</body></message>"
                );
                sent.insert(format!("{tag}-{who}-{r}"), m.clone());
                s.w.send(&m).await;
            }
            let p =
                format!("<presence to='{D}' from='{who}@example.test/res9' id='{tag}-{who}-p'/>");
            sent.insert(format!("{tag}-{who}-p"), p.clone());
            s.w.send(&p).await;
        }
        let mut landed: HashMap<String, HashSet<&'static str>> = HashMap::new();
        for _ in 0..sent.len() {
            let (name, st) = tokio::time::timeout(WAIT, seen.recv())
                .await
                .expect("every stanza reaches an instance")
                .expect("instances alive");
            let id = st.id().unwrap_or_default().to_owned();
            assert_eq!(text(&st), sent[&id], "forwarded unchanged");
            let who = id.split('-').nth(1).unwrap_or_default().to_owned();
            landed.entry(who).or_default().insert(name);
        }
        landed
    }

    let before = round(&mut s, &mut seen, &senders, "r1").await;
    for (who, on) in &before {
        assert_eq!(on.len(), 1, "{who} is spread over {on:?}");
    }
    // A second round lands exactly where the first did.
    assert_eq!(round(&mut s, &mut seen, &senders, "r2").await, before);

    // alice's instance leaves; alice moves, and only the senders that
    // were on it move.
    let gone = *before["alice"].iter().next().expect("one");
    tasks[gone].abort();
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);
    let after = round(&mut s, &mut seen, &senders, "r3").await;
    for who in senders {
        let (b, a) = (&before[who], &after[who]);
        assert_eq!(a.len(), 1, "{who} is spread over {a:?}");
        if b.contains(gone) {
            assert!(!a.contains(gone), "{who} moved off the instance that left");
        } else {
            assert_eq!(a, b, "{who} was not on the instance that left: it stays");
        }
    }
    assert_eq!(round(&mut s, &mut seen, &senders, "r4").await, after);
    // Nothing came back upstream: no error for any of them.
    s.w.send(&request("m", "marker@example.test/m", "m")).await;
    let next = s.r.recv().await;
    assert_eq!(next.id(), Some("m"), "{}", text(&next));
    assert!(proxy.shutdown(WAIT).await);
}

fn refused(r: Result<FakeInstance, HandshakeError>) -> StreamCondition {
    match r {
        Err(HandshakeError::Refused { condition, .. }) => condition,
        Err(e) => panic!("expected a stream error, got {e:?}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

#[tokio::test]
async fn listener_refuses_bad_secrets_other_domains_and_extra_connections() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = start(&server, "max_connections = 1", "").await;
    let addr = proxy.listen_addr().expect("listener");

    let wrong = FakeInstance::connect_as(addr, D, "not-the-secret", "wrong").await;
    assert_eq!(refused(wrong), StreamCondition::NotAuthorized);
    let other =
        FakeInstance::connect_as(addr, "other.example.test", fake::INSTANCE_SECRET, "other").await;
    assert_eq!(refused(other), StreamCondition::HostUnknown);
    // The upstream secret is not the instance secret.
    let up = FakeInstance::connect_as(addr, D, fake::UPSTREAM_SECRET, "up").await;
    assert_eq!(refused(up), StreamCondition::NotAuthorized);
    assert!(proxy.status().pool.is_empty());

    // The one connection allowed; a second gets a stream error, as a
    // well-formed stream a component library can read.
    let mut first = FakeInstance::connect(addr, "first").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let second = FakeInstance::connect_as(addr, D, fake::INSTANCE_SECRET, "second").await;
    assert_eq!(refused(second), StreamCondition::PolicyViolation);
    // The first one still serves.
    s.w.send(&request("q1", "alice@example.test/r", "x")).await;
    let got = first.r.recv().await;
    assert_eq!(got.id(), Some("q1"));
    first
        .w
        .send(&format!(
            "<iq type='result' id='q1' from='{D}' to='alice@example.test/r'/>"
        ))
        .await;
    let back = s.r.recv().await;
    assert_eq!(
        (back.id(), back.stanza_type()),
        (Some("q1"), Some("result"))
    );
    // Its slot is free again once it leaves.
    drop(first);
    assert!(proxy.wait_for(WAIT, |st| st.pool.is_empty()).await);
    // The listener frees the slot when the connection's task ends, just
    // after the pool update the test waited on: a refusal in between is
    // retried, up to WAIT.
    let deadline = tokio::time::Instant::now() + WAIT;
    let _again = loop {
        match FakeInstance::connect_as(addr, D, fake::INSTANCE_SECRET, "again").await {
            Ok(i) => break i,
            Err(HandshakeError::Refused { condition, .. })
                if condition == StreamCondition::PolicyViolation
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the slot was not released: {e:?}"),
        }
    };
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test]
async fn instance_sending_from_outside_the_domain_is_closed_alone() {
    let server = FakeServer::bind().await;
    let (proxy, mut s) = start(&server, "", ROUND_ROBIN).await;
    let addr = proxy.listen_addr().expect("listener");
    let mut bad = FakeInstance::connect(addr, "bad").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let _good = run_instance(
        FakeInstance::connect(addr, "good").await,
        "good",
        ANSWER_ALL,
        seen_tx,
    );
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);

    // Round-robin: one of q0, q1 to bad (which holds it), one to good.
    s.w.send(&request("q0", "alice@example.test/r", "0")).await;
    s.w.send(&request("q1", "alice@example.test/r", "1")).await;
    let held = bad.r.recv().await.id().unwrap_or_default().to_owned();
    let other = if held == "q0" { "q1" } else { "q0" };
    let r = s.r.recv().await;
    assert_eq!((r.id(), outcome(&r).as_str()), (Some(other), "result:good"));

    // Addresses inside the domain are the instance's own: a node or a
    // resource of it (a MUC room, a gateway contact) goes upstream as is.
    let inside = [
        format!("<message from='room@{D}/nick' to='alice@example.test/r' id='in1'><body>ok</body></message>"),
        format!("<presence from='{D}/x' to='alice@example.test/r' id='in2'/>"),
    ];
    for m in &inside {
        bad.w.send(m).await;
        assert_eq!(&text(&s.r.recv().await), m);
    }
    // A from in another domain (here one that merely ends like ours) closes
    // bad's stream; it is not relayed.
    bad.w
        .send(&format!(
            "<message from='evil.{D}' to='alice@example.test/r' id='spoof'><body>spoof</body></message>"
        ))
        .await;
    let (cond, before) = bad.r.expect_stream_error().await;
    assert_eq!(cond, StreamCondition::InvalidFrom);
    assert!(before.is_empty(), "{before:?}");
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    // The request it held: answered once, with recipient-unavailable.
    let e = s.r.recv().await;
    assert_eq!(
        (e.id(), outcome(&e).as_str()),
        (Some(held.as_str()), "error:recipient-unavailable")
    );
    // Good is unaffected and now takes everything.
    for i in 2..6 {
        s.w.send(&request(&format!("q{i}"), "alice@example.test/r", "x"))
            .await;
        let r = s.r.recv().await;
        assert_eq!(
            (r.id(), outcome(&r)),
            (Some(format!("q{i}").as_str()), "result:good".to_owned())
        );
    }
    assert_eq!(
        std::iter::from_fn(|| seen.try_recv().ok()).count(),
        5,
        "good read q1..q5"
    );
    assert!(proxy.shutdown(WAIT).await);
}

/// After a stream error: `</stream:stream>` at most, then the end of
/// the connection (EOF, or a reset when the peer has unread data).
async fn expect_stream_end(r: &mut Reader) {
    let mut ended = false;
    loop {
        match r.try_next_frame(WAIT).await {
            Ok(Some(jatproxy::xml::Frame::End(_))) if !ended => ended = true,
            Ok(None) => return,
            Err(e) if !e.starts_with("nothing within") => return,
            other => panic!("nothing may follow the stream error: {other:?}"),
        }
    }
}

/// Polls `write` until it fails (the peer closed the connection: a write
/// after that draws a reset), for at most [`WAIT`]; panics if it never
/// does.
async fn write_until_refused(w: &mut Writer, what: &str) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut writes = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if w.try_send(what).await.is_err() {
            return writes;
        }
        writes += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection still takes writes {WAIT:?} after its stream was closed ({writes} writes)"
        );
    }
}

#[tokio::test]
async fn an_instance_closed_by_the_proxy_is_disconnected_and_frees_its_slot() {
    let server = FakeServer::bind().await;
    let (proxy, _s) = start(&server, "max_connections = 1", "").await;
    let addr = proxy.listen_addr().expect("listener");
    let mut bad = FakeInstance::connect(addr, "bad").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    bad.w
        .send("<message from='evil.example.test' to='alice@example.test/r' id='x'/>")
        .await;
    let (cond, _) = bad.r.expect_stream_error().await;
    assert_eq!(cond, StreamCondition::InvalidFrom);
    // A hostile instance keeps talking (whitespace would restart an idle
    // timer, stanzas would be read and ignored): the proxy no longer
    // reads, and the connection goes, not half of it.
    let writes = write_until_refused(&mut bad.w, " <presence/>").await;
    println!("{writes} writes after the stream error were accepted before the reset");
    expect_stream_end(&mut bad.r).await;
    // Its slot is free: with max_connections = 1 another instance gets in.
    // (The slot is freed as the connection task ends, right around the
    // reset: a refusal before that is retried, up to WAIT.)
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut next = loop {
        match FakeInstance::connect_as(addr, D, fake::INSTANCE_SECRET, "next").await {
            Ok(i) => break i,
            Err(HandshakeError::Refused { condition, .. })
                if condition == StreamCondition::PolicyViolation
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("the closed instance's slot was not released: {e:?}"),
        }
    };
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    next.w
        .send(&format!("<presence from='{D}' to='alice@example.test'/>"))
        .await;
    assert!(proxy.shutdown(WAIT).await);
}

/// An instance cut for not reading (its queue full, nothing taken for its
/// stall timeout) is told why: the stream error comes after the stanzas
/// already on their way, once it reads again (within the close wait), and
/// every request queued for it got `recipient-unavailable`.
#[tokio::test]
async fn an_instance_cut_for_not_reading_gets_policy_violation() {
    let server = FakeServer::bind().await;
    let (proxy, s) = start(&server, "queue = 4\nstall_timeout = \"300ms\"", ROUND_ROBIN).await;
    let addr = proxy.listen_addr().expect("listener");
    let mut stuck = FakeInstance::connect_small_rcvbuf(addr, "stuck").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let Session { r, mut w } = s;
    let mut up = collect_upstream(r);
    let big = "x".repeat(64 * 1024);
    let mut ids = HashSet::new();
    while !proxy.status().pool.is_empty() {
        assert!(
            ids.len() < 4000,
            "still in the pool after {} requests",
            ids.len()
        );
        let id = format!("big{}", ids.len());
        w.send(&request(&id, "alice@example.test/r", &big)).await;
        ids.insert(id);
        let sent = ids.len() as u64;
        assert!(
            proxy
                .wait_for(WAIT, |st| st.pool.is_empty()
                    || st.stats.requests_routed == sent)
                .await
        );
    }
    // It reads again: what was written before the close, then the error.
    let (cond, before) = stuck.r.expect_stream_error().await;
    assert_eq!(cond, StreamCondition::PolicyViolation);
    assert!(before.iter().all(|st| st.is_iq_request()), "{before:?}");
    expect_stream_end(&mut stuck.r).await;
    let answers = answers_exactly_once(&mut up, &mut w, &ids).await;
    assert!(
        answers.values().all(|o| o == "error:recipient-unavailable"),
        "{:?}",
        tally(answers.values())
    );
    println!(
        "{} requests until it was dropped; it had read {} of them",
        ids.len(),
        before.len()
    );
    assert!(proxy.shutdown(WAIT).await);
}

/// An instance's request held while upstream is away and answered by
/// timeout meanwhile is not sent when upstream is back: the instance was
/// told it failed, so it must not run after all.
#[tokio::test]
async fn a_held_request_that_timed_out_is_not_sent_after_reconnecting() {
    let server = FakeServer::bind().await;
    let (proxy, s) = start(&server, "", "[routing]\niq_timeout = \"300ms\"\n").await;
    let addr = proxy.listen_addr().expect("listener");
    let mut inst = FakeInstance::connect(addr, "a").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    // Upstream goes away. The proxy reconnects at once, but the server
    // does not answer its stream header yet.
    drop(s);
    assert!(proxy.wait_for(WAIT, |st| !st.upstream_online).await);
    inst.w
        .send(&format!(
            "<iq type='get' id='held' from='{D}' to='peer@example.test'><q xmlns='urn:x'/></iq>"
        ))
        .await;
    assert!(proxy.wait_for(WAIT, |st| st.upstream_buffer == 1).await);
    let answer = inst.r.recv().await;
    assert_eq!(
        (answer.id(), error_condition(&answer).as_deref()),
        (Some("held"), Some("remote-server-timeout"))
    );
    let mut s = server.accept().await;
    assert!(proxy.wait_for(WAIT, |st| st.upstream_online).await);
    inst.w
        .send(&format!(
            "<message from='{D}' to='bob@example.test' id='marker'/>"
        ))
        .await;
    let first = s.r.recv().await;
    assert_eq!(
        first.id(),
        Some("marker"),
        "sent after all: {}",
        text(&first)
    );
    let st = proxy.status();
    assert_eq!(
        (st.requests_withdrawn, st.upstream_buffer, st.pending),
        (1, 0, 0)
    );
    assert!(proxy.shutdown(WAIT).await);
}

/// One instance writing without pause (messages for upstream, and
/// results that match nothing) does not stall the others: requests to
/// another instance keep being answered, every one exactly once, while
/// the flood goes on.
#[tokio::test]
async fn a_flooding_instance_does_not_stall_the_others() {
    let server = FakeServer::bind().await;
    let (proxy, s) = start(&server, "", "[routing]\nbalancing = \"sticky\"\n").await;
    let addr = proxy.listen_addr().expect("listener");
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let _calm = run_instance(
        FakeInstance::connect(addr, "calm").await,
        "calm",
        ANSWER_ALL,
        seen_tx,
    );
    let FakeInstance {
        r: mut flood_r,
        w: mut flood_w,
    } = FakeInstance::connect(addr, "flood").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);
    // The flooder answers what it is asked (until it starts flooding:
    // after that it is asked nothing), then writes without pause.
    let (asked_tx, mut asked) = mpsc::unbounded_channel::<Stanza>();
    tokio::spawn(async move {
        while let Ok(Some(f)) = flood_r.try_next_frame(Duration::from_secs(3600)).await {
            if let jatproxy::xml::Frame::Stanza(st) = f {
                if st.is_iq_request() && asked_tx.send(st).is_err() {
                    return;
                }
            }
        }
    });
    let go = tokio_util::sync::CancellationToken::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let (going, flooding) = (go.clone(), stop.clone());
    let flooder = tokio::spawn(async move {
        loop {
            let st = tokio::select! {
                st = asked.recv() => st,
                _ = going.cancelled() => break,
            };
            let Some(st) = st else { return 0 };
            let reply = format!(
                "<iq type='result' id='{}' from='{D}' to='{}'><echo xmlns='{NS_ECHO}' from-instance='flood'/></iq>",
                st.id().unwrap_or_default(),
                st.from().unwrap_or_default()
            );
            if flood_w.try_send(&reply).await.is_err() {
                return 0;
            }
        }
        let mut n = 0u64;
        let mut batch = String::new();
        while !flooding.is_cancelled() {
            batch.clear();
            for _ in 0..50 {
                n += 1;
                batch.push_str(&format!(
                    "<message from='{D}' to='sink@example.test' id='f{n}'><body>flood</body></message>\
                     <iq type='result' id='junk{n}' from='{D}' to='nobody@example.test/x'/>"
                ));
            }
            if flood_w.try_send(&batch).await.is_err() {
                break;
            }
        }
        n
    });
    // Upstream: the flood's messages are counted and dropped here; the
    // rest goes to the test.
    let Session { r: mut up_r, mut w } = s;
    let flood_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = flood_seen.clone();
    let (up_tx, mut up) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(f)) = up_r.try_next_frame(Duration::from_secs(3600)).await {
            if let jatproxy::xml::Frame::Stanza(st) = f {
                if st.name == "message" {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if up_tx.send(st).is_err() {
                    return;
                }
            }
        }
    });
    // Which requesters stick to the calm instance.
    let mut calm_requesters = Vec::new();
    for i in 0..24 {
        let requester = format!("user{i}@example.test/r");
        w.send(&request(&format!("probe{i}"), &requester, "x"))
            .await;
        let st = next_up(&mut up).await;
        assert_eq!(st.id(), Some(format!("probe{i}").as_str()));
        if outcome(&st) == "result:calm" {
            calm_requesters.push(requester);
        }
    }
    assert!(
        calm_requesters.len() >= 2,
        "sticky hashing put {} of 24 requesters on calm",
        calm_requesters.len()
    );
    go.cancel();
    let deadline = tokio::time::Instant::now() + WAIT;
    while flood_seen.load(std::sync::atomic::Ordering::Relaxed) < 1000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never started"
        );
        tokio::task::yield_now().await;
    }
    // 200 requests to the calm instance, 10 in flight at a time, all
    // within one generous bound.
    let started = tokio::time::Instant::now();
    let n = 200;
    let ids: HashSet<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut answers: HashMap<String, String> = HashMap::new();
    let mut sent = 0;
    while answers.len() < n {
        while sent < n && sent - answers.len() < 10 {
            let requester = &calm_requesters[sent % calm_requesters.len()];
            w.send(&request(&format!("c{sent}"), requester, "x")).await;
            sent += 1;
        }
        let st = tokio::time::timeout_at(started + 2 * WAIT, up.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stalled: {} of {n} answered in {:?}; {:?}",
                    answers.len(),
                    2 * WAIT,
                    proxy.status().stats
                )
            })
            .expect("upstream reader ended");
        let id = st.id().unwrap_or_default().to_owned();
        assert!(ids.contains(&id), "unexpected upstream: {}", text(&st));
        if let Some(first) = answers.insert(id.clone(), outcome(&st)) {
            panic!("{id} answered twice: {first} then {}", text(&st));
        }
    }
    let took = started.elapsed();
    let during = flood_seen.load(std::sync::atomic::Ordering::Relaxed);
    stop.cancel();
    let flooded = flooder.await.expect("flooder");
    let per = tally(answers.values());
    println!(
        "{n} requests answered in {took:?} while the flood went on \
         ({during} flood messages relayed, {flooded} written): {per:?}"
    );
    assert_eq!(per.get("result:calm").copied(), Some(n), "{per:?}");
    assert!(
        proxy.status().stats.replies_unmatched > 0,
        "junk results were read"
    );
    assert!(proxy.shutdown(WAIT).await);
}

/// Shutdown does not wait for connections still in the handshake (up to
/// `limits.header_timeout`, 10 s by default): they have nothing to drain.
#[tokio::test]
async fn shutdown_does_not_wait_for_instances_in_the_handshake() {
    let server = FakeServer::bind().await;
    let (proxy, _s) = start(&server, "", "").await;
    let addr = proxy.listen_addr().expect("listener");
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = sock.into_split();
    let mut frames = tokio_util::codec::FramedRead::new(
        r,
        jatproxy::xml::Framer::new(jatproxy::xml::FramerLimits::default()),
    );
    tokio::io::AsyncWriteExt::write_all(&mut w, &jatproxy::handshake::client_header(D))
        .await
        .expect("write header");
    // The proxy's header: its connection task now waits for <handshake>.
    let header = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut frames)).await;
    assert!(
        matches!(header, Ok(Some(Ok(jatproxy::xml::Frame::Header(_))))),
        "{header:?}"
    );
    let started = tokio::time::Instant::now();
    assert!(
        proxy.shutdown(Duration::from_secs(3)).await,
        "shutdown waited for the handshake"
    );
    println!("shut down in {:?}", started.elapsed());
}

/// A burst of a hundred queues' worth (1 600 stanzas, `queue = 16`) to an
/// instance that reads steadily but slower than the server sends:
/// jatproxy waits for room instead of cutting it, for far longer in all
/// than the stall timeout, since the instance keeps taking bytes. Every
/// stanza arrives exactly once, in order, and the instance stays in
/// rotation.
#[tokio::test]
async fn a_burst_of_a_hundred_queues_reaches_a_slow_reader_whole_and_in_order() {
    let server = FakeServer::bind().await;
    let stall = Duration::from_millis(300);
    let (proxy, s) = start(&server, "queue = 16\nstall_timeout = \"300ms\"", "").await;
    let addr = proxy.listen_addr().expect("listener");
    let mut slow = FakeInstance::connect_small_rcvbuf(addr, "slow").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let Session { r, mut w } = s;
    let _up = collect_upstream(r);
    let n = 1600;
    let body = "b".repeat(200);
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<message to='{D}' from='bob@example.test/r' id='m{i}'><body>{body}</body></message>"
        ));
    }
    // The server writes it all at once, and then a marker.
    let server_writes = tokio::spawn(async move {
        w.send(&burst).await;
        w.send(&format!(
            "<message to='{D}' from='bob@example.test/r' id='marker'/>"
        ))
        .await;
        w
    });
    let started = tokio::time::Instant::now();
    for i in 0..n {
        let st = slow.r.recv().await;
        assert_eq!(
            st.id(),
            Some(format!("m{i}").as_str()),
            "stanza {i} out of order, lost or repeated: {}",
            text(&st)
        );
        // Slower than the server: a millisecond (at least) per stanza.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    let marker = slow.r.recv().await;
    assert_eq!(marker.id(), Some("marker"), "{}", text(&marker));
    let _w = server_writes.await.expect("server writer");
    assert!(
        took > 3 * stall,
        "the reader was not slow enough to test anything: {took:?}"
    );
    let st = proxy.status();
    assert_eq!(instance_ids(&proxy).len(), 1, "still in rotation: {st:?}");
    assert_eq!(
        st.counters
            .stanzas(jatproxy::metrics::Direction::InstancesOut),
        n + 1
    );
    println!("{n} stanzas through a queue of 16 to a slow reader in {took:?}, none cut");
    assert!(proxy.shutdown(WAIT).await);
}

/// Shutdown while jatproxy waits for room in a stalled instance's queue
/// (a stall timeout far longer than the grace): the wait ends, every
/// request gets its one answer, the server's stream is closed, and the
/// stalled connection is cut within the grace (after half of it without
/// progress). The core's own part, ending the wait at once, is
/// `core::tests::shutdown_ends_a_wait_for_a_stalled_instance`.
#[tokio::test]
async fn shutdown_completes_while_waiting_for_a_stalled_instance() {
    let server = FakeServer::bind().await;
    let (proxy, s) = start(&server, "queue = 4\nstall_timeout = \"60s\"", "").await;
    let addr = proxy.listen_addr().expect("listener");
    let _stuck = FakeInstance::connect_small_rcvbuf(addr, "stuck").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let Session { r, mut w } = s;
    let mut up = collect_upstream(r);
    // Large requests until the core stops taking them: it is waiting for
    // room (its status is published after the wait). Twice in a row, so
    // that a busy machine is not taken for a wait.
    let big = "x".repeat(64 * 1024);
    let mut ids = HashSet::new();
    let mut quiet = 0;
    while quiet < 2 {
        assert!(ids.len() < 4000, "never waited: {:?}", proxy.status());
        let id = format!("big{}", ids.len());
        w.send(&request(&id, "alice@example.test/r", &big)).await;
        ids.insert(id);
        let sent = ids.len() as u64;
        let routed = proxy
            .wait_for(Duration::from_millis(500), |st| {
                st.stats.requests_routed == sent
            })
            .await;
        quiet = if routed { 0 } else { quiet + 1 };
    }
    let started = tokio::time::Instant::now();
    let grace = Duration::from_secs(3);
    assert!(
        proxy.shutdown(grace).await,
        "shutdown did not complete within {grace:?}"
    );
    let took = started.elapsed();
    let mut answers: HashMap<String, String> = HashMap::new();
    while let Some(st) = tokio::time::timeout(WAIT, up.recv())
        .await
        .expect("the server's stream ends")
    {
        let id = st.id().unwrap_or_default().to_owned();
        assert!(ids.contains(&id), "unexpected upstream: {}", text(&st));
        if let Some(first) = answers.insert(id.clone(), outcome(&st)) {
            panic!("{id} answered twice: {first} then {}", text(&st));
        }
    }
    assert_eq!(answers.len(), ids.len(), "every request answered");
    assert!(
        answers.values().all(|o| o == "error:recipient-unavailable"),
        "{:?}",
        tally(answers.values())
    );
    println!(
        "shut down in {took:?} while waiting on a stalled instance; {} requests answered",
        ids.len()
    );
}
