//! Scale-out on a real two-node ejabberd 23.01 cluster on loopback
//! ([`support::ejabberd::Cluster`]): each node has its own component
//! listener and its own jatproxy (in-process) registered for the same
//! domain `D`, each fronting one component instance named after it
//! (`first` behind node 1, `second` behind node 2); a requester is logged
//! in on each node.
//!
//! ejabberd picks one of the domain's connections per stanza in one of
//! two ways ([`Balancing`]): by default a connection on the node the
//! stanza entered, when there is one; with `domain_balancing: random`,
//! any of a fixed number of slots across the cluster, where an empty slot
//! swallows its share. The scenarios: requests entering either node,
//! under each mode; one jatproxy stopped under load; one whole ejabberd
//! node stopped under load (and started again); a process gone under
//! `random`; and over TLS (`tls: true` on both nodes' component ports),
//! both processes serving and one stopped.
//!
//! A recording relay between each jatproxy and its node attributes every
//! unanswered request as the two-process test in `e2e_ejabberd.rs` does
//! ([`support::attribution`]): jatproxy must lose none; what ejabberd
//! drops is counted, bounded and printed. Over TLS no relay can read the
//! links, so the unanswered are counted and bounded only. Each test
//! prints a table: sent, results by process, errors by condition,
//! unanswered by where they were lost.
//!
//! These tests need `ejabberd` installed (`scripts/setup.sh` does it);
//! they fail, never skip, without it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::attribution::{attribute, Attribution};
use support::certs::{self, Certs};
use support::echo::EchoComponent;
use support::ejabberd::{Cluster, Ejabberd, EjabberdConfig};
use support::flows::{late_elements, load, load_counting_lost, load_until_cut, Outcome};
use support::relay::{Relay, Seen};
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, TestClient};
use support::{ALICE, D, PW, SECRET, WAIT, WINDOW};
use tokio::sync::oneshot;

const INSTANCE_SECRET: &str = "instance-secret";
/// Requests per requester in each scenario.
const N: usize = 400;
/// How long a requester waits for any answer before it counts what is
/// outstanding as lost.
const PATIENCE: Duration = Duration::from_secs(5);
/// The process (and instance) behind each node.
const TAGS: [&str; 2] = ["first", "second"];

/// How ejabberd picks one of the domain's connections for a stanza.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Balancing {
    /// No `domain_balancing` (the default): a connection on the node the
    /// stanza entered when there is one, any other connection otherwise.
    Local,
    /// `domain_balancing: random` (with the `component_number: 2` ejabberd
    /// 23.01 requires): any of two slots across the cluster, at random.
    Random,
}

/// The cluster; with `certfile`, both nodes' component ports speak
/// direct TLS (`tls: true`) with it.
async fn cluster(balancing: Balancing, certfile: Option<&Path>) -> Cluster {
    let mut config = EjabberdConfig::new().user("alice", PW).component(D, SECRET);
    if balancing == Balancing::Random {
        config = config.domain_balancing(D, "random", 2);
    }
    if let Some(certfile) = certfile {
        config = config.component_tls(certfile);
    }
    Cluster::start(config)
        .await
        .unwrap_or_else(|e| panic!("the ejabberd cluster starts (run scripts/setup.sh): {e}"))
}

/// One node's jatproxy: its upstream goes through a recording relay to
/// the node's component port (over TLS: straight to it, as a relay cannot
/// read TLS), and it fronts one instance named `tag`.
struct Side {
    relay: Option<Relay>,
    proxy: Proxy,
    instance: EchoComponent,
}

impl Side {
    /// The relay's records; a side without a relay has none.
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.relay.as_ref().expect("a side with a relay").seen()
    }
}

/// `tls_ca`: jatproxy speaks direct TLS to the node, trusting this CA.
async fn side(node: &Ejabberd, tag: &str, tls_ca: Option<&Path>) -> Side {
    let (relay, upstream) = match tls_ca {
        None => {
            let relay = Relay::start(node.component_addr(), &[ALICE]).await;
            let upstream = upstream_toml(relay.addr);
            (Some(relay), upstream)
        }
        Some(ca) => (
            None,
            format!(
                "{}tls = \"direct\"\ntls_ca_file = \"{}\"\n",
                upstream_toml(node.component_addr()),
                ca.display()
            ),
        ),
    };
    let toml = format!(
        "{upstream}\n[routing]\niq_timeout = \"10s\"\n\
         [instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n"
    );
    let proxy = start_registered(&toml, || node.log_tail(30)).await;
    let listener = proxy.listen_addr().expect("listener");
    let instance = EchoComponent::start(listener, D, INSTANCE_SECRET, tag, WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    Side {
        relay,
        proxy,
        instance,
    }
}

/// A requester `ALICE/resource` logged in on `node`.
async fn requester(node: &Ejabberd, resource: &str) -> TestClient {
    let jid = format!("{ALICE}/{resource}");
    let c = xmpp::connect(&jid, PW, node.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}\nejabberd log:\n{}", node.log_tail(30)));
    c.send_presence().await.expect("presence");
    c
}

/// Both nodes, a jatproxy and instance behind each, a requester on each.
async fn setup(balancing: Balancing) -> (Cluster, Vec<Side>, Vec<TestClient>) {
    setup_with(balancing, None).await
}

/// [`setup`]; with `certs`, every component link is direct TLS.
async fn setup_with(
    balancing: Balancing,
    certs: Option<&Certs>,
) -> (Cluster, Vec<Side>, Vec<TestClient>) {
    let c = cluster(balancing, certs.map(|c| c.combined.as_path())).await;
    let mut sides = Vec::new();
    let mut requesters = Vec::new();
    for (k, tag) in TAGS.iter().enumerate() {
        sides.push(side(&c.nodes[k], tag, certs.map(|c| c.ca.as_path())).await);
        requesters.push(requester(&c.nodes[k], &format!("on-node{}", k + 1)).await);
    }
    (c, sides, requesters)
}

/// One line of a scenario's table: what one requester sent and got.
struct Row {
    scenario: &'static str,
    requester: String,
    sent: usize,
    /// Results by the process that served them, errors by condition.
    answers: BTreeMap<String, usize>,
    /// Answered only after the node came back (node scenario).
    late: usize,
    lost: Attribution,
    /// Unanswered where no relay could see (over TLS): not attributed.
    unattributed: usize,
}

impl Row {
    fn new(scenario: &'static str, jid: &str, sent: usize, outcome: &Outcome) -> Row {
        let mut answers = BTreeMap::new();
        for v in outcome.answers.values() {
            assert_eq!(v.len(), 1, "exactly one answer: {v:?}");
            let (kind, what) = &v[0];
            let key = if kind == "result" {
                format!("result {what}")
            } else {
                format!("error {what}")
            };
            *answers.entry(key).or_default() += 1;
        }
        Row {
            scenario,
            requester: jid.to_owned(),
            sent,
            answers,
            late: 0,
            lost: Attribution::default(),
            unattributed: 0,
        }
    }

    fn results_by(&self, tag: &str) -> usize {
        self.answers
            .get(&format!("result {tag}"))
            .copied()
            .unwrap_or(0)
    }

    fn lost(&self) -> usize {
        self.lost.in_ejabberd_before.len()
            + self.lost.in_ejabberd_after.len()
            + self.lost.in_jatproxy.len()
            + self.unattributed
    }
}

/// Prints the rows as a table, then one line per unanswered request.
fn print_table(rows: &[Row]) {
    println!(
        "| scenario | requester | sent | result first | result second | errors | answered late | \
         dropped by ejabberd before jatproxy | answer dropped by ejabberd | lost by jatproxy | \
         unanswered, not attributed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let errors: Vec<String> = r
            .answers
            .iter()
            .filter(|(k, _)| k.starts_with("error "))
            .map(|(k, v)| format!("{} {v}", &k["error ".len()..]))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.requester,
            r.sent,
            r.results_by(TAGS[0]),
            r.results_by(TAGS[1]),
            if errors.is_empty() {
                "0".to_owned()
            } else {
                errors.join(", ")
            },
            r.late,
            r.lost.in_ejabberd_before.len(),
            r.lost.in_ejabberd_after.len(),
            r.lost.in_jatproxy.len(),
            r.unattributed,
        );
    }
    for r in rows {
        // The first few say what the relays saw; the counts are above.
        for line in r
            .lost
            .in_ejabberd_before
            .iter()
            .chain(&r.lost.in_ejabberd_after)
            .chain(&r.lost.in_jatproxy)
            .take(8)
        {
            println!("  {} unanswered {line}", r.requester);
        }
    }
}

/// Checks that hold in every scenario: every request has exactly one
/// answer or is lost, nothing crossed the relays twice, every result names
/// a process, and jatproxy lost nothing.
fn check_accounting(row: &Row, outcome: &Outcome, seen: &[&Seen], prefix: &str) {
    assert_eq!(
        outcome.answers.len() + row.late + row.lost(),
        row.sent,
        "{}: every request answered once or attributed",
        row.requester
    );
    for i in 0..row.sent {
        let id = format!("{prefix}{i}");
        let through: usize = seen
            .iter()
            .map(|s| s.answered.get(&id).map_or(0, Vec::len))
            .sum();
        assert!(through <= 1, "jatproxy answered {id} {through} times");
    }
    let named: usize = TAGS.iter().map(|t| row.results_by(t)).sum();
    let results: usize = row
        .answers
        .iter()
        .filter(|(k, _)| k.starts_with("result "))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        named, results,
        "every result names its process: {:?}",
        row.answers
    );
    assert!(
        row.lost.in_jatproxy.is_empty(),
        "{}: jatproxy lost requests: {:#?}",
        row.requester,
        row.lost.in_jatproxy
    );
}

fn prefix(k: usize, scenario: &str) -> String {
    format!("{scenario}-n{}-", k + 1)
}

/// Both requesters load at once with both processes up; returns a row
/// per requester, checked for accounting.
async fn both_up(balancing: Balancing, scenario: &'static str, certs: Option<&Certs>) -> Vec<Row> {
    let (_c, sides, mut reqs) = setup_with(balancing, certs).await;
    let (one, two) = reqs.split_at_mut(1);
    let (p1, p2) = (prefix(0, "both"), prefix(1, "both"));
    let (a1, a2) = tokio::join!(
        load(&mut one[0], D, N, WINDOW, &p1),
        load(&mut two[0], D, N, WINDOW, &p2),
    );
    let mut rows = Vec::new();
    for (k, (answers, p)) in [(a1, p1), (a2, p2)].into_iter().enumerate() {
        let outcome = Outcome {
            answers,
            lost: Vec::new(),
            order: Vec::new(),
            unsent: 0,
        };
        let row = Row::new(scenario, &reqs[k].jid().to_string(), N, &outcome);
        let guards: Vec<_> = sides
            .iter()
            .filter_map(|s| s.relay.as_ref().map(Relay::seen))
            .collect();
        let seen: Vec<&Seen> = guards.iter().map(|g| &**g).collect();
        check_accounting(&row, &outcome, &seen, &p);
        rows.push(row);
    }
    print_table(&rows);
    for s in sides {
        drop(s.instance);
        assert!(s.proxy.shutdown(WAIT).await);
    }
    rows
}

/// Each requester's requests reached both processes.
fn assert_both_serve(rows: &[Row]) {
    for row in rows {
        for tag in TAGS {
            assert!(
                row.results_by(tag) > N / 10,
                "{}: requests entering at {} reach process {tag}: {:?}",
                row.scenario,
                row.requester,
                row.answers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_random_balancing_requests_entering_either_node_reach_both_processes() {
    let rows = both_up(Balancing::Random, "both up, random", None).await;
    assert_both_serve(&rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_requests_entering_either_node_reach_both_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "", "cluster test CA");
    let rows = both_up(Balancing::Random, "both up, random, TLS", Some(&certs)).await;
    assert_both_serve(&rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_each_node_sends_to_its_own_process() {
    let rows = both_up(Balancing::Local, "both up, default", None).await;
    for (row, tag) in rows.iter().zip(TAGS) {
        assert_eq!(
            row.results_by(tag),
            N,
            "requests entering at {} all go to the process on that node: {:?}",
            row.requester,
            row.answers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jatproxy_stops_under_load() {
    jatproxy_stops(None, "first jatproxy stopped, default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_one_jatproxy_stops_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "", "cluster test CA");
    jatproxy_stops(Some(&certs), "first jatproxy stopped, default, TLS").await;
}

/// Both requesters load; the first process is shut down (as on SIGTERM)
/// a third of the way into the first requester's load, from a task of
/// its own. Over TLS (`certs`) no relay sees the links, so what is
/// unanswered is bounded, not attributed.
async fn jatproxy_stops(certs: Option<&Certs>, scenario: &'static str) {
    let (_c, mut sides, mut reqs) = setup_with(Balancing::Local, certs).await;
    let first = sides.remove(0);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stopper = tokio::spawn(async move {
        let _ = stop_rx.await;
        let clean = first.proxy.shutdown(WAIT).await;
        (clean, first.relay, first.instance)
    });
    let mut stop_tx = Some(stop_tx);
    let (one, two) = reqs.split_at_mut(1);
    let (p1, p2) = (prefix(0, "proc"), prefix(1, "proc"));
    let (o1, o2) = tokio::join!(
        load_counting_lost(
            &mut one[0],
            D,
            N,
            WINDOW,
            &p1,
            |done| {
                if done == N / 3 {
                    if let Some(tx) = stop_tx.take() {
                        let _ = tx.send(());
                    }
                }
            },
            Some(PATIENCE),
        ),
        load_counting_lost(&mut two[0], D, N, WINDOW, &p2, |_| {}, Some(PATIENCE)),
    );
    let (clean, first_relay, _first_instance) = stopper.await.expect("stopper");
    assert!(clean, "the first jatproxy shut down within its grace");
    let mut rows = Vec::new();
    {
        let guards: Vec<_> = first_relay
            .iter()
            .chain(sides[0].relay.as_ref())
            .map(Relay::seen)
            .collect();
        let seen: Vec<&Seen> = guards.iter().map(|g| &**g).collect();
        for (k, (outcome, p)) in [(&o1, &p1), (&o2, &p2)].into_iter().enumerate() {
            let jid = reqs[k].jid().to_string();
            let mut row = Row::new(scenario, &jid, N, outcome);
            if seen.is_empty() {
                row.unattributed = outcome.lost.len();
            } else {
                row.lost = attribute(&outcome.lost, &jid, &seen);
            }
            check_accounting(&row, outcome, &seen, p);
            // Only what was in flight to the stopping process's session
            // while ejabberd processed its stream end can be dropped there.
            assert!(
                row.lost() <= WINDOW,
                "more unanswered than one requester has in flight: {:#?}",
                row.lost
            );
            rows.push(row);
        }
    }
    print_table(&rows);
    // Node 1's requests went to the first process until it stopped, then
    // across the cluster to the second; node 2's never left node 2.
    assert!(
        rows[0].results_by(TAGS[0]) > 0 && rows[0].results_by(TAGS[1]) > 0,
        "node 1's requests fail over to the second process: {:?}",
        rows[0].answers
    );
    assert_eq!(rows[1].results_by(TAGS[1]), N, "{:?}", rows[1].answers);
    // After the stop the second process serves both nodes' requesters.
    for (k, c) in reqs.iter_mut().enumerate() {
        let after = load(c, D, 50, WINDOW, &format!("after-{k}-")).await;
        assert!(
            after
                .values()
                .all(|v| v.len() == 1 && v[0] == ("result".to_owned(), TAGS[1].to_owned())),
            "{after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ejabberd_node_stops_under_load() {
    let (mut c, sides, mut reqs) = setup(Balancing::Local).await;
    // Both requesters load; node 1 is asked to stop a third of the way
    // into node 2's load. Node 1's requester loses its session (its load
    // ends at the first failed send), the first jatproxy its link; what
    // the first jatproxy still answers it holds until node 1 is back.
    let (p1, p2) = (prefix(0, "node"), prefix(1, "node"));
    let node1 = &c.nodes[0];
    let (one, two) = reqs.split_at_mut(1);
    let (o1, o2) = tokio::join!(
        load_until_cut(&mut one[0], D, N, WINDOW, &p1, |_| {}, PATIENCE),
        load_counting_lost(
            &mut two[0],
            D,
            N,
            WINDOW,
            &p2,
            |done| {
                if done == N / 3 {
                    node1.begin_stop();
                }
            },
            Some(PATIENCE),
        ),
    );
    c.nodes[0].stop();
    // Node 1 comes back and rejoins; the first jatproxy registers again,
    // writing anything it held.
    let sessions = sides[0].proxy.status().upstream_sessions;
    c.nodes[0].restart().await.expect("node 1 starts again");
    assert!(
        sides[0]
            .proxy
            .wait_for(WAIT, |s| s.upstream_online
                && s.upstream_sessions > sessions)
            .await,
        "the first jatproxy registers again at node 1: {}",
        c.nodes[0].log_tail(30)
    );
    // The requester on node 1 logs in again once the node is back (it may
    // have logged in once more while the node was stopping; what counts
    // is a session after the last end).
    let ended = reqs[0].disconnects();
    assert!(ended >= 1, "the requester on node 1 lost its session");
    reqs[0]
        .wait_online_count(ended + 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("the requester on node 1 logs in again: {e}"));
    let mut rows = Vec::new();
    for (k, (mut outcome, p)) in [(o1, p1), (o2, p2)].into_iter().enumerate() {
        let jid = reqs[k].jid().to_string();
        let late = late_ids(&mut reqs[k], &p).await;
        outcome.lost.retain(|id| !late.contains(id));
        let mut row = Row::new(
            "node 1 stopped, default",
            &jid,
            N - outcome.unsent,
            &outcome,
        );
        row.late = late.len();
        let seen = [&*sides[0].seen(), &*sides[1].seen()];
        row.lost = attribute(&outcome.lost, &jid, &seen);
        check_accounting(&row, &outcome, &seen, &p);
        rows.push(row);
    }
    print_table(&rows);
    // Node 1's requester: at most what it had in flight is lost with its
    // session, inside ejabberd.
    assert!(rows[0].lost() <= WINDOW, "{:#?}", rows[0].lost);
    assert!(
        rows[0].sent < N,
        "node 1's requester could send until the end"
    );
    // Node 2's requests never needed node 1: none lost, none late.
    assert_eq!(rows[1].lost(), 0, "{:#?}", rows[1].lost);
    assert_eq!(rows[1].results_by(TAGS[1]), N, "{:?}", rows[1].answers);
    // The requester on the restarted node is served by its process again.
    let after = load(&mut reqs[0], D, 50, WINDOW, "back-").await;
    assert!(
        after
            .values()
            .all(|v| v.len() == 1 && v[0] == ("result".to_owned(), TAGS[0].to_owned())),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_random_balancing_a_stopped_process_leaves_its_share_unrouted() {
    // ejabberd 23.01 with `domain_balancing` keeps `component_number`
    // slots per domain; a component that leaves empties its slot, and a
    // stanza hashed to an empty slot is dropped without a bounce
    // (`ejabberd_router:do_route/2` on a route with no pid). This test
    // measures that share, and that none of it is jatproxy's.
    let (_c, mut sides, mut reqs) = setup(Balancing::Random).await;
    let first = sides.remove(0);
    assert!(first.proxy.shutdown(WAIT).await);
    let n = 100;
    let p = prefix(1, "slot");
    let jid = reqs[1].jid().to_string();
    let outcome = load_counting_lost(
        &mut reqs[1],
        D,
        n,
        WINDOW,
        &p,
        |_| {},
        Some(Duration::from_secs(2)),
    )
    .await;
    let mut row = Row::new("first jatproxy gone, random", &jid, n, &outcome);
    {
        let seen = [
            &*first.relay.as_ref().expect("relay").seen(),
            &*sides[0].seen(),
        ];
        row.lost = attribute(&outcome.lost, &jid, &seen);
        check_accounting(&row, &outcome, &seen, &p);
    }
    print_table(std::slice::from_ref(&row));
    assert_eq!(
        row.lost.in_ejabberd_before.len(),
        row.lost(),
        "every loss is a request ejabberd never handed to jatproxy"
    );
    assert!(
        row.lost() > n / 5,
        "ejabberd drops the empty slot's share: {:?}",
        row.answers
    );
    assert_eq!(row.results_by(TAGS[1]), n - row.lost());
}

/// Ids starting with `prefix` answered after the load gave up on them:
/// sends a marker request and takes every answer that came before it.
async fn late_ids(c: &mut TestClient, prefix: &str) -> Vec<String> {
    late_elements(c, D, prefix)
        .await
        .iter()
        .filter_map(|e| e.attr("id").map(str::to_owned))
        .collect()
}
