//! Fault injection under load, end to end: a real Prosody upstream (s2s
//! off, loopback), jatproxy in front of two client resources
//! (`impl@example.test/a`, `/b`, real c2s clients) and two component
//! instances (slixmpp, `tests/support/echo_component.py`) in one pool, and
//! requesters (real c2s clients) keeping at most [`WINDOW`] requests in
//! flight each. Between jatproxy and Prosody's component port sits a TCP
//! relay ([`Relay`]) that can cut the link and that frames both directions
//! with jatproxy's framer, so the test knows, per request id, whether the
//! request reached jatproxy and whether jatproxy sent its answer.
//!
//! For each fault — a baseline, requests timing out, the pending table
//! overflowing, an instance killed, a client resource dropped without a
//! goodbye, the upstream TCP connection cut, Prosody restarted — it prints
//! a row: requests sent, accepted by jatproxy, answered with a result,
//! answered with an error, unanswered because the fault itself destroyed
//! the request or its answer outside jatproxy (a cut link or a server
//! restart drops what is in flight on it; XEP-0114 has no acknowledgements),
//! lost, duplicated. A request is **lost** when it reached jatproxy and
//! jatproxy never sent an answer addressed to the requester's full JID,
//! when the requester got an answer addressed elsewhere, or when the
//! requester got no answer and the relay saw nothing that explains it.
//! An answer jatproxy handed to the server that never arrived is explained
//! only when the server restarted and the requester's session died with
//! it; anywhere else it is lost. Lost and duplicated must be 0.
//!
//! Needs `prosody` and python3 with slixmpp (`scripts/setup.sh`); fails,
//! never skips, without them.

#[path = "support/fake.rs"]
mod fake;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::echo::EchoComponent;
use support::prosody::{Prosody, ProsodyConfig, Subscription};
use support::relay::{Relay, Seen};
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, Element, TestClient};
use support::{ALICE, D, NS_ECHO, NS_STANZAS, PW, SECRET, WAIT, WINDOW};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const T: &str = "impl@example.test";
const BOB: &str = "bob@example.test";
const INSTANCE_SECRET: &str = "instance-secret";
/// jatproxy's `iq_timeout` here: short, so the timeout fault is quick.
const IQ_TIMEOUT: Duration = Duration::from_secs(2);
/// jatproxy's `pending_capacity` here: one requester's window fits, two
/// overflow it.
const PENDING_CAPACITY: usize = WINDOW;
/// Requests per requester per fault.
const N: usize = 200;
/// Fewer where answers are slow on purpose.
const N_SLOW: usize = 120;
/// Each of these waits out the whole iq timeout.
const N_TIMEOUT: usize = 3 * WINDOW;
/// A requester gives up waiting for more answers after this long
/// without one (longer than `IQ_TIMEOUT`, so timeouts arrive first).
const IDLE: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------
// Members and requesters
// ---------------------------------------------------------------------------

/// A client resource of the target account that answers every echo
/// request with its text, after `delay-ms` if the request asks. Delayed
/// answers wait in a queue, so one slow request does not hold up the rest
/// (as a real service answering concurrently).
fn responder(mut c: TestClient) -> JoinHandle<()> {
    tokio::spawn(async move {
        let res = c.jid().resource().to_string();
        let mut due: Vec<(tokio::time::Instant, String)> = Vec::new();
        loop {
            let next_due = due.iter().map(|d| d.0).min();
            let wait = next_due.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(tokio::time::Instant::now())
            });
            let got = c
                .recv_matching(wait, |e| {
                    e.name() == "iq" && matches!(e.attr("type"), Some("get") | Some("set"))
                })
                .await;
            if let Ok(iq) = got {
                let echo = iq.get_child("echo", NS_ECHO);
                let text = echo.map(|e| e.text()).unwrap_or_default();
                let delay: u64 = echo
                    .and_then(|e| e.attr("delay-ms"))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                let reply = format!(
                    "<iq type='result' id='{}' to='{}'><echo xmlns='{NS_ECHO}' from-resource='{res}'>{text}</echo></iq>",
                    iq.attr("id").unwrap_or_default(),
                    iq.attr("from").unwrap_or_default(),
                );
                due.push((
                    tokio::time::Instant::now() + Duration::from_millis(delay),
                    reply,
                ));
            }
            let now = tokio::time::Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|d| d.0 <= now);
            due = later;
            for (_, reply) in ready {
                if c.send_xml(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
}

async fn client(p: &Prosody, jid: &str) -> TestClient {
    let c = xmpp::connect(jid, PW, p.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{jid} online: {e}"));
    c.send_presence().await.expect("presence");
    c
}

/// How each request ended at its requester, in arrival order.
type Answers = HashMap<String, Vec<String>>;

/// What one requester's load produced.
struct Load {
    sent: Vec<String>,
    answers: Answers,
    client: TestClient,
    /// The requester's sessions that had ended when the load started.
    disconnects_before: u64,
}

/// Sends `n` echo requests `prefix0..`, at most [`WINDOW`] in flight,
/// reporting the number answered on `progress`. Stops sending when a send
/// fails (the requester's own session died), and stops waiting after
/// [`IDLE`] without an answer.
fn load(
    mut c: TestClient,
    prefix: String,
    n: usize,
    delay_ms: u32,
    progress: watch::Sender<usize>,
) -> JoinHandle<Load> {
    tokio::spawn(async move {
        let disconnects_before = c.disconnects();
        let jid = c.jid().as_str().to_owned();
        let mut sent = Vec::new();
        let mut answers: Answers = HashMap::new();
        let mut can_send = true;
        let mut done = 0;
        loop {
            while can_send && sent.len() < n && sent.len() - done < WINDOW {
                let id = format!("{prefix}{}", sent.len());
                let xml = format!(
                    "<iq id='{id}' to='{D}' type='get'><echo xmlns='{NS_ECHO}' delay-ms='{delay_ms}'>t</echo></iq>"
                );
                if c.send_xml(&xml).await.is_err() {
                    can_send = false;
                    break;
                }
                sent.push(id);
            }
            if done >= sent.len() && (!can_send || sent.len() >= n) {
                break;
            }
            let r = c
                .recv_matching(IDLE, |e| {
                    e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with(prefix.as_str()))
                })
                .await;
            let Ok(r) = r else { break };
            let id = r.attr("id").unwrap_or_default().to_owned();
            let first = !answers.contains_key(&id);
            answers.entry(id).or_default().push(outcome(&r, &jid));
            if first {
                done += 1;
                let _ = progress.send(done);
            }
        }
        Load {
            sent,
            answers,
            client: c,
            disconnects_before,
        }
    })
}

/// How an answer ended a request: `result`, `error:CONDITION`, or
/// `misaddressed:TO` when its `to` is not the requester's full JID `jid`.
fn outcome(r: &Element, jid: &str) -> String {
    let to = r.attr("to").unwrap_or_default();
    if to != jid {
        return format!("misaddressed:{to}");
    }
    match r.attr("type") {
        Some("result") => "result".into(),
        _ => {
            let cond = r
                .children()
                .find(|c| c.name() == "error")
                .and_then(|e| {
                    e.children()
                        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
                })
                .map(|c| c.name().to_owned())
                .unwrap_or_else(|| xmpp::to_xml(r));
            format!("error:{cond}")
        }
    }
}

/// Late or duplicate answers still on their way after a load: one more
/// request must come back, and everything before it is taken.
async fn late_answers(c: &mut TestClient, prefix: &str, answers: &mut Answers) {
    let jid = c.jid().as_str().to_owned();
    let marker = format!("{prefix}marker");
    let sent = c
        .send_xml(&format!(
            "<iq id='{marker}' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>m</echo></iq>"
        ))
        .await;
    if sent.is_ok() {
        // Waits past the iq timeout, so an answer due from jatproxy has come.
        let _ = c.recv_iq_response(&marker, IQ_TIMEOUT + WAIT).await;
    }
    for e in c.drain() {
        if let Some(id) = e
            .attr("id")
            .filter(|i| i.starts_with(prefix) && *i != marker)
        {
            if e.name() == "iq" {
                answers
                    .entry(id.to_owned())
                    .or_default()
                    .push(outcome(&e, &jid));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Row {
    fault: String,
    sent: usize,
    accepted: usize,
    result: usize,
    error: usize,
    errors: BTreeMap<String, usize>,
    /// Unanswered because the fault dropped the request before jatproxy
    /// or jatproxy's answer after it (seen by the relay).
    dropped_outside: usize,
    /// Of those: requests that never reached jatproxy,
    never_reached: usize,
    /// answers jatproxy wrote to a link already cut or closed,
    answer_cut: usize,
    /// and answers the server took and did not deliver (allowed only
    /// when the server restarted and the requester's session died).
    answer_dropped_by_server: usize,
    lost: usize,
    duplicated: usize,
    lost_ids: Vec<String>,
    dup_ids: Vec<String>,
    /// From the first request to the last answer (late ones included).
    took: Duration,
}

/// One requester's share of a fault, as [`tally`] judges it.
struct Judged {
    sent: Vec<String>,
    answers: Answers,
    /// The requester's full JID: every answer must be addressed to it.
    jid: String,
    /// The server restarted during the load and this requester's session
    /// died with it: an answer jatproxy handed to the server may have been
    /// dropped by the server with the session.
    server_may_drop: bool,
}

fn tally(fault: &str, loads: &[Judged], seen: &Seen) -> Row {
    let mut row = Row {
        fault: fault.to_owned(),
        ..Row::default()
    };
    for l in loads {
        for id in &l.sent {
            row.sent += 1;
            let accepted = seen.accepted.get(id).copied().unwrap_or(0);
            let from_proxy = seen.answered.get(id).map(Vec::as_slice).unwrap_or(&[]);
            let to_requester = from_proxy.iter().filter(|to| **to == l.jid).count();
            let misaddressed: Vec<&String> = from_proxy.iter().filter(|to| **to != l.jid).collect();
            if accepted > 0 {
                row.accepted += 1;
            }
            let got = l.answers.get(id).map(Vec::as_slice).unwrap_or(&[]);
            if got.len() > 1 || from_proxy.len() > 1 {
                row.duplicated += 1;
                row.dup_ids.push(format!(
                    "{id}: {got:?}, jatproxy sent {} (to {from_proxy:?})",
                    from_proxy.len()
                ));
            }
            // Every request lands in exactly one bucket: lost, result,
            // error, or dropped outside jatproxy.
            let first = got.first();
            let lost = match first {
                Some(o) if o.starts_with("misaddressed:") => Some(format!(
                    "{id}: the requester {} got an answer addressed elsewhere: {got:?}",
                    l.jid
                )),
                _ if accepted > 0 && to_requester == 0 => Some(format!(
                    "{id}: accepted, jatproxy sent no answer to {} (misaddressed: {misaddressed:?}); got {got:?}",
                    l.jid
                )),
                None if accepted > 0
                    && !seen.undelivered.contains_key(id)
                    && !l.server_may_drop =>
                {
                    Some(format!(
                        "{id}: jatproxy's answer to {} went through the relay to the server and never arrived",
                        l.jid
                    ))
                }
                _ => None,
            };
            if let Some(why) = lost {
                row.lost += 1;
                row.lost_ids.push(why);
                continue;
            }
            match first {
                Some(o) if o == "result" => row.result += 1,
                Some(o) => {
                    row.error += 1;
                    *row.errors
                        .entry(o.trim_start_matches("error:").to_owned())
                        .or_default() += 1;
                }
                None => {
                    row.dropped_outside += 1;
                    if accepted == 0 {
                        row.never_reached += 1;
                    } else if seen.undelivered.contains_key(id) {
                        row.answer_cut += 1;
                    } else {
                        // Only with server_may_drop (else lost above).
                        row.answer_dropped_by_server += 1;
                    }
                }
            }
        }
    }
    row
}

fn print_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| fault | sent | accepted by jatproxy | result | error | dropped outside jatproxy | lost | duplicated | took |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |\n",
            r.fault,
            r.sent,
            r.accepted,
            r.result,
            r.error,
            r.dropped_outside,
            r.lost,
            r.duplicated,
            r.took.as_secs_f64()
        ));
    }
    t.push_str("\ndropped outside jatproxy:\n");
    for r in rows.iter().filter(|r| r.dropped_outside > 0) {
        t.push_str(&format!(
            "- {}: {} requests never reached jatproxy, {} answers jatproxy wrote to a link already cut or closed by the server, {} answers the server took and did not deliver\n",
            r.fault, r.never_reached, r.answer_cut, r.answer_dropped_by_server
        ));
    }
    t.push_str("\nerrors by condition:\n");
    for r in rows {
        if !r.errors.is_empty() {
            let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            t.push_str(&format!("- {}: {}\n", r.fault, e.join(", ")));
        }
    }
    t
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

struct World {
    p: Prosody,
    relay: Relay,
    proxy: Proxy,
    instances: Vec<EchoComponent>,
    resources: Vec<JoinHandle<()>>,
    next_member: usize,
    /// jatproxy's configuration, for a reload that changes one key.
    toml: String,
}

impl World {
    async fn start() -> World {
        let p = Prosody::start(
            ProsodyConfig::new()
                .user("alice", PW)
                .user("bob", PW)
                .user("impl", PW)
                .component(D, SECRET)
                .roster_item("impl", D, Subscription::From),
        )
        .await
        .expect("prosody starts (is it installed? run scripts/setup.sh)");
        let relay = Relay::start(p.component_addr(), &[ALICE, BOB]).await;
        let toml = format!(
            r#"{}
[client_proxy]
target_address = "{T}"

[instances]
listen = "127.0.0.1:0"
secret = "{INSTANCE_SECRET}"

[routing]
balancing = "round-robin"
iq_timeout = "{}ms"
pending_capacity = {PENDING_CAPACITY}
# The module's answers to a lost member and an empty pool, which this
# table is about; re-dispatch and the hold are tests/e2e_survive.rs's.
redispatch = "none"
hold_when_empty = "0s"
"#,
            upstream_toml(relay.addr),
            IQ_TIMEOUT.as_millis()
        );
        let proxy = start_registered(&toml, || p.log_tail(30)).await;
        let mut w = World {
            p,
            relay,
            proxy,
            instances: Vec::new(),
            resources: Vec::new(),
            next_member: 0,
            toml,
        };
        for _ in 0..2 {
            w.add_instance().await;
            w.add_resource().await;
        }
        w.wait_pool(4).await;
        w
    }

    /// Reloads the table's configuration with these continuity settings
    /// (a reload applies them at once); `("none", "0s")` is the module's
    /// behaviour the table starts with.
    async fn continuity(&self, redispatch: &str, hold: &str) {
        let toml = self
            .toml
            .replace(
                "redispatch = \"none\"",
                &format!("redispatch = \"{redispatch}\""),
            )
            .replace(
                "hold_when_empty = \"0s\"",
                &format!("hold_when_empty = \"{hold}\""),
            );
        let cfg = jatproxy::config::from_toml_str(&toml).expect("valid config");
        self.proxy.reload(cfg).await.expect("reload applies");
    }

    async fn add_instance(&mut self) {
        self.next_member += 1;
        let name = format!("i{}", self.next_member);
        let listener = self.proxy.listen_addr().expect("listener");
        let c = EchoComponent::start(listener, D, INSTANCE_SECRET, &name, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.instances.push(c);
    }

    async fn add_resource(&mut self) {
        self.next_member += 1;
        let c = client(&self.p, &format!("{T}/r{}", self.next_member)).await;
        self.resources.push(responder(c));
    }

    async fn wait_pool(&self, n: usize) {
        assert!(
            self.proxy.wait_for(WAIT, |s| s.pool.len() == n).await,
            "pool of {n} expected: {:?}",
            self.proxy.status().pool
        );
    }

    fn seen_snapshot(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.relay.seen()
    }
}

/// Loads running for one fault.
struct Running {
    prefix: String,
    started: tokio::time::Instant,
    tasks: Vec<JoinHandle<Load>>,
    /// Answers the first requester got so far.
    progress: watch::Receiver<usize>,
}

/// Starts `n` requests from each requester.
fn start_loads(prefix: &str, requesters: Vec<TestClient>, n: usize, delay_ms: u32) -> Running {
    let (first_tx, progress) = watch::channel(0usize);
    let mut first_tx = Some(first_tx);
    let tasks = requesters
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let tx = first_tx.take().unwrap_or_else(|| watch::channel(0).0);
            load(c, format!("{prefix}-{k}-"), n, delay_ms, tx)
        })
        .collect();
    Running {
        prefix: prefix.to_owned(),
        started: tokio::time::Instant::now(),
        tasks,
        progress,
    }
}

impl Running {
    /// Waits until the first requester has `n` answers.
    async fn answered(&mut self, n: usize) {
        let r = tokio::time::timeout(WAIT, self.progress.wait_for(|d| *d >= n)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "{}: load stalled before {n} answers",
            self.prefix
        );
    }

    /// Waits for the loads to end, collects late answers, and tallies.
    /// `server_restarted`: the fault restarts the server, which may drop
    /// answers it holds for a requester whose session dies with it.
    async fn finish(
        self,
        fault: &str,
        w: &World,
        server_restarted: bool,
    ) -> (Row, Vec<TestClient>) {
        let mut loads = Vec::new();
        let mut clients = Vec::new();
        for (k, t) in self.tasks.into_iter().enumerate() {
            let mut l = t.await.expect("load task");
            late_answers(
                &mut l.client,
                &format!("{}-{k}-", self.prefix),
                &mut l.answers,
            )
            .await;
            let died = l.client.disconnects() > l.disconnects_before;
            loads.push(Judged {
                sent: l.sent,
                answers: l.answers,
                jid: l.client.jid().as_str().to_owned(),
                server_may_drop: server_restarted && died,
            });
            clients.push(l.client);
        }
        let mut row = tally(fault, &loads, &w.seen_snapshot());
        row.took = self.started.elapsed();
        (row, clients)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_and_duplicate_nothing() {
    let mut w = World::start().await;
    let mut alice = client(&w.p, &format!("{ALICE}/load")).await;
    let mut bob = client(&w.p, &format!("{BOB}/load")).await;
    let mut rows = Vec::new();

    // Baseline: no fault.
    let run = start_loads("base", vec![alice], N, 0);
    let (row, mut c) = run.finish("none (baseline)", &w, false).await;
    rows.push(row);
    alice = c.remove(0);

    // Requests time out: answers delayed past iq_timeout. The instances
    // and resources answer late; the requester gets remote-server-timeout
    // once, and the late answer is dropped.
    let run = start_loads(
        "tmo",
        vec![alice],
        N_TIMEOUT,
        (IQ_TIMEOUT.as_millis() + 500) as u32,
    );
    let (row, mut c) = run.finish("requests time out", &w, false).await;
    rows.push(row);
    alice = c.remove(0);
    // Members still busy with late answers must be idle again.
    assert!(w.proxy.wait_for(WAIT, |s| s.pending == 0).await);

    // The pending table overflows: two requesters with a full window each
    // against a table of one window; the oldest requests are evicted.
    let run = start_loads("full", vec![alice, bob], N_SLOW, 300);
    let (row, mut c) = run.finish("pending table full", &w, false).await;
    rows.push(row);
    bob = c.remove(1);
    alice = c.remove(0);

    // An instance killed (SIGKILL) with requests in flight on it.
    let mut run = start_loads("kill", vec![alice], N_SLOW, 200);
    run.answered(40).await;
    let mut victim = w.instances.remove(0);
    victim.kill();
    run.answered(80).await;
    w.add_instance().await;
    let (row, mut c) = run.finish("instance killed", &w, false).await;
    rows.push(row);
    alice = c.remove(0);
    w.wait_pool(4).await;

    // The same under `redispatch = "get"` (the default): the gets in
    // flight on the killed instance go to another member, so nobody gets
    // an error. A reload applies it at once.
    w.continuity("get", "0s").await;
    let mut run = start_loads("kill-get", vec![alice], N_SLOW, 200);
    run.answered(40).await;
    let mut victim = w.instances.remove(0);
    victim.kill();
    run.answered(80).await;
    w.add_instance().await;
    let (row, mut c) = run
        .finish("instance killed, redispatch = get", &w, false)
        .await;
    assert_eq!(row.error, 0, "{row:?}");
    rows.push(row);
    alice = c.remove(0);
    w.wait_pool(4).await;
    w.continuity("none", "0s").await;

    // A client resource dropped without a goodbye.
    let mut run = start_loads("drop", vec![alice], N_SLOW, 200);
    run.answered(40).await;
    let gone = w.resources.remove(0);
    gone.abort();
    run.answered(80).await;
    w.add_resource().await;
    let (row, mut c) = run.finish("client resource dropped", &w, false).await;
    rows.push(row);
    alice = c.remove(0);
    w.wait_pool(4).await;

    // The same under `redispatch = "get"`: the gets in flight on the
    // dropped resource (whose answers will never come) go to another
    // member, so nobody gets an error.
    w.continuity("get", "0s").await;
    let mut run = start_loads("drop-get", vec![alice], N_SLOW, 200);
    run.answered(40).await;
    let gone = w.resources.remove(0);
    gone.abort();
    run.answered(80).await;
    w.add_resource().await;
    let (row, mut c) = run
        .finish("client resource dropped, redispatch = get", &w, false)
        .await;
    assert_eq!(row.error, 0, "{row:?}");
    rows.push(row);
    alice = c.remove(0);
    w.wait_pool(4).await;

    // Every member gone at once, then back, under `hold_when_empty`: the
    // gets in flight are re-dispatched into the hold, the new requests
    // wait there, and all are sent once members return.
    w.continuity("get", "10s").await;
    let mut run = start_loads("empty-hold", vec![alice], N_SLOW, 200);
    run.answered(40).await;
    for mut i in w.instances.drain(..) {
        i.kill();
    }
    for r in w.resources.drain(..) {
        r.abort();
    }
    assert!(w.proxy.wait_for(WAIT, |s| s.pool.is_empty()).await);
    w.add_instance().await;
    w.add_resource().await;
    let (row, mut c) = run
        .finish(
            "every member gone and back, hold_when_empty = 10s",
            &w,
            false,
        )
        .await;
    assert_eq!(row.error, 0, "{row:?}");
    rows.push(row);
    alice = c.remove(0);
    w.add_instance().await;
    w.add_resource().await;
    w.wait_pool(4).await;
    w.continuity("none", "0s").await;

    // The upstream TCP connection cut mid-load.
    let sessions = w.proxy.status().upstream_sessions;
    let mut run = start_loads("cut", vec![alice], N, 20);
    run.answered(40).await;
    w.relay.cut();
    assert!(
        w.proxy
            .wait_for(WAIT, |s| s.upstream_online
                && s.upstream_sessions > sessions)
            .await,
        "jatproxy did not reconnect after the cut"
    );
    let (row, mut c) = run.finish("upstream TCP cut", &w, false).await;
    rows.push(row);
    alice = c.remove(0);

    // Prosody restarted mid-load: every c2s session ends with it, so the
    // requester and the resources log in again afterwards.
    let sessions = w.proxy.status().upstream_sessions;
    let mut run = start_loads("restart", vec![alice], N, 20);
    run.answered(40).await;
    w.p.restart().await.expect("prosody restarts");
    assert!(
        w.proxy
            .wait_for(WAIT, |s| s.upstream_online
                && s.upstream_sessions > sessions)
            .await,
        "jatproxy did not reconnect after the restart; prosody log:\n{}",
        w.p.log_tail(30)
    );
    let (row, _old) = run.finish("Prosody restarted", &w, true).await;
    rows.push(row);
    for r in w.resources.drain(..) {
        r.abort();
    }
    w.add_resource().await;
    w.add_resource().await;
    w.wait_pool(4).await;
    let alice = client(&w.p, &format!("{ALICE}/again")).await;
    let run = start_loads("after", vec![alice], N_SLOW, 0);
    let (row, _) = run.finish("after all faults", &w, false).await;
    rows.push(row);
    drop(bob);

    let table = print_table(&rows);
    println!("{table}");
    let st = w.proxy.status();
    println!(
        "jatproxy status at the end: pending {}, stats {:?}",
        st.pending, st.stats
    );
    for r in &rows {
        assert_eq!(r.lost, 0, "{}: lost {:?}\n{table}", r.fault, r.lost_ids);
        assert_eq!(
            r.duplicated, 0,
            "{}: duplicated {:?}\n{table}",
            r.fault, r.dup_ids
        );
        assert_eq!(
            r.sent,
            r.result + r.error + r.dropped_outside + r.lost,
            "{}",
            r.fault
        );
    }
    // Faults that destroy nothing outside jatproxy leave nothing unanswered.
    for r in rows
        .iter()
        .filter(|r| !r.fault.contains("cut") && !r.fault.contains("restarted"))
    {
        assert_eq!(r.dropped_outside, 0, "{}\n{table}", r.fault);
        let per = match r.fault.as_str() {
            f if f.contains("baseline") => N,
            f if f.contains("time out") => N_TIMEOUT,
            f if f.contains("full") => 2 * N_SLOW,
            _ => N_SLOW,
        };
        assert_eq!(r.sent, per, "{}", r.fault);
    }
    assert!(
        rows.iter()
            .any(|r| r.errors.contains_key("remote-server-timeout")),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.errors.contains_key("resource-constraint")),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.errors.contains_key("recipient-unavailable")),
        "{table}"
    );
    assert!(w.proxy.wait_for(WAIT, |s| s.pending == 0).await);
    assert!(w.proxy.shutdown(WAIT).await);
}

/// The test process's peak and current resident memory (`VmHWM`,
/// `VmRSS`), in KiB: jatproxy runs in this process.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Bytes sent through jatproxy in the stall row.
const STALL_TOTAL: usize = 100 * 1024 * 1024;
/// Payload of each request there: a round-robin turn of two requests
/// puts 64 KiB in the stalled instance's queue.
const STALL_PAYLOAD: usize = 64 * 1024;

/// An instance that stops reading while 100 MB of requests are sent
/// through jatproxy (a fake server, round-robin over it and one that
/// answers): its queue fills to `instances.queue_bytes` (its stanza count,
/// 1024, is far away), it is cut after its stall timeout with
/// policy-violation, the gets queued for it go to the other instance,
/// every request gets exactly one answer, a result, and jatproxy's memory
/// (this process's) grows by far less than what went through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_reading_under_100_mb_is_cut_at_its_byte_bound() {
    use fake::{FakeInstance, FakeServer, Session};
    use jatproxy::xml::Frame;

    let (hwm_before, rss_before) = memory_kib();
    let server = FakeServer::bind().await;
    let (proxy, s) = fake::start(
        &server,
        "queue_bytes = 1048576\nstall_timeout = \"1s\"",
        "[routing]\nbalancing = \"round-robin\"\nredispatch = \"get\"\n\
         hold_when_empty = \"10s\"\niq_timeout = \"60s\"\npending_capacity = 4096",
    )
    .await;
    let addr = proxy.listen_addr().expect("listener");
    let mut stuck = FakeInstance::connect_small_rcvbuf(addr, "stuck").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 1).await);
    let stuck_member = proxy.status().pool[0].clone();
    let mut live = FakeInstance::connect(addr, "live").await;
    assert!(proxy.wait_for(WAIT, |st| st.pool.len() == 2).await);
    let answering = tokio::spawn(async move {
        let mut answered = 0usize;
        while let Ok(Some(f)) = live.r.try_next_frame(Duration::from_secs(3600)).await {
            let Frame::Stanza(st) = f else { continue };
            if !st.is_iq_request() {
                continue;
            }
            let reply = format!(
                "<iq type='result' id='{}' from='{D}' to='{}'/>",
                st.id().unwrap_or_default(),
                st.from().unwrap_or_default()
            );
            if live.w.try_send(&reply).await.is_err() {
                break;
            }
            answered += 1;
        }
        answered
    });
    let Session { mut r, mut w } = s;
    let n = STALL_TOTAL / STALL_PAYLOAD;
    // Answers as they come, by id: how many each got.
    let collecting = tokio::spawn(async move {
        let mut got: HashMap<String, Vec<String>> = HashMap::new();
        let mut count = 0;
        while count < n {
            match r.try_next_frame(Duration::from_secs(30)).await {
                Ok(Some(Frame::Stanza(st))) => {
                    let kind = match st.stanza_type() {
                        Some("result") => "result".to_owned(),
                        _ => format!("error:{}", fake::error_condition(&st).unwrap_or_default()),
                    };
                    got.entry(st.id().unwrap_or_default().to_owned())
                        .or_default()
                        .push(kind);
                    count += 1;
                }
                Ok(Some(_)) => {}
                other => panic!("upstream: {other:?} after {count} answers"),
            }
        }
        got
    });
    let started = tokio::time::Instant::now();
    let payload = "x".repeat(STALL_PAYLOAD);
    for i in 0..n {
        let req = format!(
            "<iq type='get' id='big{i}' to='{D}' from='user{}@example.test/r'><echo xmlns='{NS_ECHO}'>{payload}</echo></iq>",
            i % 7
        );
        w.send(&req).await;
    }
    let got = tokio::time::timeout(Duration::from_secs(120), collecting)
        .await
        .expect("every request answered within 2 minutes")
        .expect("collector");
    let took = started.elapsed();
    let (hwm_after, rss_after) = memory_kib();
    let st = proxy.status();
    assert!(
        !st.pool.contains(&stuck_member) && st.pool.len() == 1,
        "the stuck instance was cut, the live one stays: {:?}",
        st.pool
    );
    // It reads now: what it was sent, then the stream error, if the proxy
    // still waits for it; or the end of the connection.
    let mut stuck_saw = 0usize;
    let end = loop {
        match stuck.r.try_next_frame(WAIT).await {
            Ok(Some(Frame::Stanza(s))) if s.name == "error" => {
                break format!(
                    "{:?}",
                    jatproxy::xml::StreamError::parse(&s.bytes).condition
                )
            }
            Ok(Some(Frame::Stanza(_))) => stuck_saw += 1,
            Ok(Some(_)) => {}
            Ok(None) => break "end of connection".to_owned(),
            Err(e) => break e,
        }
    };
    let mut row = Row {
        fault: "instance stops reading, 100 MB sent".to_owned(),
        took,
        ..Row::default()
    };
    for i in 0..n {
        let id = format!("big{i}");
        row.sent += 1;
        row.accepted += 1;
        match got.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
            [] => {
                row.lost += 1;
                row.lost_ids.push(id);
            }
            [one] => {
                if one == "result" {
                    row.result += 1
                } else {
                    row.error += 1;
                    *row.errors.entry(one.clone()).or_default() += 1;
                }
            }
            more => {
                row.duplicated += 1;
                row.dup_ids.push(format!("{id}: {more:?}"));
            }
        }
    }
    let table = print_table(std::slice::from_ref(&row));
    println!("{table}");
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "stuck instance: {stuck_saw} requests reached it, then {end}; \
         VmHWM {:.1} -> {:.1} MiB (+{:.1}), VmRSS {:.1} -> {:.1} MiB, \
         for {} MiB sent through jatproxy",
        mib(hwm_before),
        mib(hwm_after),
        mib(hwm_after.saturating_sub(hwm_before)),
        mib(rss_before),
        mib(rss_after),
        STALL_TOTAL >> 20
    );
    assert_eq!(row.lost, 0, "lost {:?}\n{table}", row.lost_ids);
    assert_eq!(row.duplicated, 0, "duplicated {:?}\n{table}", row.dup_ids);
    assert_eq!(
        row.result, n,
        "every get answered by the live instance\n{table}"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 80 * 1024,
        "peak memory grew by {:.1} MiB for {} MiB sent",
        mib(hwm_after.saturating_sub(hwm_before)),
        STALL_TOTAL >> 20
    );
    answering.abort();
    assert!(proxy.shutdown(WAIT).await);
}

/// The accounting itself: a misaddressed answer, or an answer the server
/// took and never delivered outside a restart, counts as lost.
#[test]
fn tally_counts_misaddressed_and_undelivered_answers_as_lost() {
    let jid = format!("{ALICE}/load");
    let mut seen = Seen::default();
    for id in ["ok", "to-bare", "to-other", "vanished"] {
        seen.accepted.insert(id.to_owned(), 1);
    }
    let to = |t: &str| vec![t.to_owned()];
    seen.answered.insert("ok".into(), to(&jid));
    seen.answered.insert("to-bare".into(), to(ALICE));
    seen.answered
        .insert("to-other".into(), to(&format!("{ALICE}/other")));
    seen.answered.insert("vanished".into(), to(&jid));
    let answers: Answers = HashMap::from([("ok".to_owned(), vec!["result".to_owned()])]);
    let load = |server_may_drop| Judged {
        sent: ["ok", "to-bare", "to-other", "vanished"]
            .map(String::from)
            .to_vec(),
        answers: answers.clone(),
        jid: jid.clone(),
        server_may_drop,
    };
    let row = tally("t", &[load(false)], &seen);
    assert_eq!((row.result, row.lost, row.dropped_outside), (1, 3, 0));
    // In a restart that killed the requester's session, the answer the
    // server took is explained; the misaddressed ones are still lost.
    let row = tally("t", &[load(true)], &seen);
    assert_eq!((row.result, row.lost, row.dropped_outside), (1, 2, 1));
    assert_eq!(row.answer_dropped_by_server, 1);
}
