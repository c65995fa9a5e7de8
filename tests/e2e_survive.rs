//! Issue 13, "Requests that survive", end to end: a real Prosody (s2s
//! off, loopback) holds the component domain, jatproxy registers as it,
//! and real client code serves and sends requests — slixmpp c2s clients
//! (`tests/support/c2s_client.py`) as the target account's resources and
//! as the requester, slixmpp components (`tests/support/echo_component.py`)
//! as instances behind jatproxy's own listener.
//!
//! Each test is one situation the issue's acceptance names, for client
//! resources and for instances:
//!
//! * a member that answers `feature-not-implemented` shares the pool
//!   with two good ones (jitsi-meet#14049): kept out by `resources`, by
//!   `require_feature`, or retried around and quarantined by `retry_on`;
//! * the only member is killed and comes back 2 s later while gets arrive
//!   at 200/s, with `hold_when_empty` and `redispatch = "get"`;
//! * a member is lost with 50 gets and 50 sets in flight on it, with
//!   `redispatch = "get"`: the gets go to the other member, the sets get
//!   `recipient-unavailable`.
//!
//! "Answered exactly once" is counted per request id at the requester:
//! every id sent has one answer, none has two, and nothing for them
//! arrives after (a marker request is answered first).
//!
//! Needs `prosody` and python3 with slixmpp (`scripts/setup.sh`); fails,
//! never skips, without them.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jatproxy::config;
use jatproxy::pool::Member as PoolMember;
use jatproxy::proxy::Proxy;
use support::echo::EchoComponent;
use support::flows::{self, collect, late_answers, load, member, paced, Answer, Member, Pace};
use support::prosody::{Prosody, ProsodyConfig, Subscription};
use support::scrape::scrape;
use support::xmpp::{self, TestClient};
use support::{ALICE, D, NS_ECHO, PW, SECRET, WAIT, WINDOW};
use tokio::sync::watch;
use tokio::time::Instant;

/// The target account (as `focus@auth.<domain>` in a Jitsi deployment).
const T: &str = "focus@example.test";
const INSTANCE_SECRET: &str = "instance-secret";
/// The feature only the good resources list in `disco#info` (jicofo's).
const FOCUS_FEATURE: &str = "http://jitsi.org/protocol/focus";
/// What the wrong resource lists instead.
const OTHER_FEATURE: &str = "urn:example:videobridge";
/// The wrong member's answer to everything (jitsi-meet#14049).
const REFUSAL: &str = "feature-not-implemented";
/// Requests in the wrong-member tests.
const N_WRONG: usize = 500;
/// `routing.quarantine_after` in the retry tests.
const QUARANTINE_AFTER: usize = 3;
/// The paced load of the restart tests: 200 gets a second, 5 s.
const PACE_RATE: u32 = 200;
const PACE_N: usize = 1000;
/// Each paced request is answered this long after it arrives, so a
/// member always has some in flight.
const PACE_DELAY_MS: u32 = 200;
/// The member is killed once this many paced requests are answered.
const KILL_AFTER: usize = 200;
/// And comes back this long after.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// Gets, and as many sets, in flight on the member that is lost.
const N_IN_FLIGHT: usize = 50;

/// The metrics issue 13 adds, in one place: rename here if the features
/// land under other names. Only `QUARANTINED` and `REFUSED` are asserted
/// on; the others are printed with each test's figures.
mod metric {
    pub const HELD: &str = "jatproxy_requests_held_total";
    pub const REDISPATCHED: &str = "jatproxy_requests_redispatched_total";
    pub const RETRIED: &str = "jatproxy_requests_retried_total";
    pub const QUARANTINED: &str = "jatproxy_members_quarantined";
    pub const REFUSED: &str = "jatproxy_members_refused_total";
    pub const QUALIFYING: &str = "jatproxy_members_qualifying";
    pub const ALL: [&str; 6] = [
        HELD,
        REDISPATCHED,
        RETRIED,
        QUARANTINED,
        REFUSED,
        QUALIFYING,
    ];
}

// ---------------------------------------------------------------------------
// The setup
// ---------------------------------------------------------------------------

/// Which pool the test fills, and the issue-13 keys it sets.
struct Setup {
    /// Client resources of [`T`] (`[client_proxy]`), or instances behind
    /// the listener (`[instances]`).
    resources: bool,
    /// Lines for `[client_proxy]` (resources only).
    client_proxy: &'static str,
    /// Lines for `[routing]`.
    routing: &'static str,
}

/// Prosody with alice and the target account (its roster holding the
/// component, as a deployment provisions it), and jatproxy registered at
/// it with the metrics endpoint on.
async fn start(s: &Setup) -> (Prosody, Proxy) {
    let p = Prosody::start(
        ProsodyConfig::new()
            .user("alice", PW)
            .user("focus", PW)
            .component(D, SECRET)
            .roster_item("focus", D, Subscription::From),
    )
    .await
    .expect("prosody starts (is it installed? run scripts/setup.sh)");
    let pool = if s.resources {
        format!(
            "[client_proxy]\ntarget_address = \"{T}\"\n{}",
            s.client_proxy
        )
    } else {
        format!("[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"")
    };
    let toml = format!(
        r#"
[upstream]
server = "{}"
domain = "{D}"
secret = "{SECRET}"
reconnect_min = "50ms"
reconnect_max = "500ms"

[metrics]
listen = "127.0.0.1:0"

{pool}

[routing]
iq_timeout = "30s"
{}
"#,
        p.component_addr(),
        s.routing
    );
    let cfg = config::from_toml_str(&toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    let proxy = Proxy::start(cfg).await.expect("start");
    assert!(
        proxy.wait_for(WAIT, |s| s.upstream_online).await,
        "jatproxy did not register as {D}; prosody log:\n{}",
        p.log_tail(30)
    );
    (p, proxy)
}

/// A resource of [`T`] online with presence; `features` for its disco.
async fn resource(p: &Prosody, name: &str, features: &[&str]) -> TestClient {
    let args: Vec<&str> = features
        .iter()
        .flat_map(|f| ["--disco-feature", f])
        .collect();
    let c = xmpp::connect_args(&format!("{T}/{name}"), PW, p.c2s_addr(), WAIT, &args)
        .await
        .unwrap_or_else(|e| panic!("{T}/{name} online: {e}"));
    c.send_presence().await.expect("presence");
    c
}

/// A resource serving as `answer` says.
async fn resource_member(p: &Prosody, name: &str, features: &[&str], answer: Answer) -> Member {
    member(resource(p, name, features).await, answer)
}

async fn instance(proxy: &Proxy, name: &str, extra: &[&str]) -> EchoComponent {
    let listener = proxy.listen_addr().expect("listener");
    EchoComponent::start_with(listener, D, INSTANCE_SECRET, name, extra, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn requester(p: &Prosody) -> TestClient {
    let c = xmpp::connect(&format!("{ALICE}/phone"), PW, p.c2s_addr(), WAIT)
        .await
        .expect("alice online");
    c.send_presence().await.expect("presence");
    c
}

/// Waits until the pool holds the resources named (and maybe others).
async fn wait_resources(proxy: &Proxy, names: &[&str]) {
    let want: Vec<PoolMember> = names
        .iter()
        .map(|n| PoolMember::Resource(format!("{T}/{n}")))
        .collect();
    assert!(
        proxy
            .wait_for(WAIT, |s| want.iter().all(|m| s.pool.contains(m)))
            .await,
        "pool should hold {names:?}: {:?}",
        proxy.status().pool
    );
}

async fn wait_pool_len(proxy: &Proxy, n: usize) {
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == n).await,
        "pool of {n} expected: {:?}",
        proxy.status().pool
    );
}

/// The issue-13 metrics, for the figures printed with each test.
async fn metrics(proxy: &Proxy) -> BTreeMap<&'static str, f64> {
    let text = scrape(proxy.metrics_addr().expect("metrics endpoint")).await;
    metric::ALL
        .iter()
        .filter_map(|m| metric_sum(&text, m).map(|v| (*m, v)))
        .collect()
}

/// The sum of every series of metric `name` (any labels), or `None` when
/// the endpoint has no such metric.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

// ---------------------------------------------------------------------------
// Counting answers
// ---------------------------------------------------------------------------

/// Each id's answers: (type, who answered or error condition).
type Answers = HashMap<String, Vec<(String, String)>>;

/// How the requests `ids` ended, counted at the requester.
#[derive(Debug, Default)]
struct Tally {
    /// Results by who answered.
    results: BTreeMap<String, usize>,
    /// Errors by condition (first answers only).
    errors: BTreeMap<String, usize>,
    /// Ids never answered.
    missing: Vec<String>,
    /// Ids answered more than once, with all their answers.
    duplicated: Vec<String>,
}

impl Tally {
    fn of(ids: &[String], answers: &Answers) -> Tally {
        let mut t = Tally::default();
        for id in ids {
            match answers.get(id).map(Vec::as_slice) {
                None | Some([]) => t.missing.push(id.clone()),
                Some(a) => {
                    if a.len() > 1 {
                        t.duplicated.push(format!("{id}: {a:?}"));
                    }
                    let (kind, what) = &a[0];
                    let bucket = if kind == "result" {
                        &mut t.results
                    } else {
                        &mut t.errors
                    };
                    *bucket.entry(what.clone()).or_default() += 1;
                }
            }
        }
        t
    }

    fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// Every id answered exactly once, and never with an error.
    fn assert_clean(&self, what: &str, n: usize) {
        assert_eq!(
            self.error_count(),
            0,
            "{what}: errors {} of {n}: {:?} (results {:?})",
            self.error_count(),
            self.errors,
            self.results
        );
        self.assert_once(what, n);
    }

    /// Every id answered exactly once.
    fn assert_once(&self, what: &str, n: usize) {
        assert!(
            self.missing.is_empty(),
            "{what}: {} of {n} never answered: {:?}",
            self.missing.len(),
            self.missing
        );
        assert!(
            self.duplicated.is_empty(),
            "{what}: answered twice: {:?}",
            self.duplicated
        );
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// No iq arrives after the answers counted (a late or duplicate answer
/// would arrive before the answer to one more request).
async fn assert_nothing_late(alice: &mut TestClient) {
    let late = late_answers(alice, D, "").await;
    assert!(late.is_empty(), "late or duplicate answers: {late:#?}");
}

// ---------------------------------------------------------------------------
// 1. A wrong member shares the pool (jitsi-meet#14049)
// ---------------------------------------------------------------------------

/// Two good resources (`focus-a`, `focus-b`, listing [`FOCUS_FEATURE`])
/// and a wrong one (`jvb`, listing another feature, answering everything
/// with [`REFUSAL`]) on the target account; [`N_WRONG`] requests.
/// Returns the tally, how many requests `jvb` was given, and the server
/// and members, which the caller keeps until it is done with the proxy:
/// a member that goes offline (or whose server is gone) leaves the pool,
/// and its quarantine with it (a member is a session), so the quarantine
/// gauge must be read while they are on.
async fn wrong_resource_in_the_pool(s: Setup, what: &str) -> (Tally, usize, Proxy, Online) {
    let (p, proxy) = start(&s).await;
    // The wrong one logs in first, as the videobridge did.
    let jvb = resource_member(&p, "jvb", &[OTHER_FEATURE], Answer::Refuse(REFUSAL)).await;
    let _good = [
        resource_member(
            &p,
            "focus-a",
            &[FOCUS_FEATURE],
            Answer::Echo("focus-a".into()),
        )
        .await,
        resource_member(
            &p,
            "focus-b",
            &[FOCUS_FEATURE],
            Answer::Echo("focus-b".into()),
        )
        .await,
    ];
    wait_resources(&proxy, &["focus-a", "focus-b"]).await;
    let mut alice = requester(&p).await;
    let answers = load(&mut alice, D, N_WRONG, WINDOW, "w-").await;
    let tally = Tally::of(&ids("w-", N_WRONG), &answers);
    let asked_jvb = jvb.log.borrow().asked.len();
    println!(
        "{what}: {N_WRONG} requests: results {:?}, errors {:?}; jvb was given {asked_jvb}; metrics {:?}",
        tally.results,
        tally.errors,
        metrics(&proxy).await
    );
    assert_nothing_late(&mut alice).await;
    (tally, asked_jvb, proxy, (p, jvb, _good))
}

/// Checks `jvb` was refused admission (counted; a presence with new caps
/// may refuse it again) and the pool held the two good resources only.
async fn assert_kept_out(proxy: &Proxy, pool: &[PoolMember], what: &str) {
    assert_eq!(pool.len(), 2, "{what}: {pool:?}");
    assert!(
        pool.iter().all(|m| !format!("{m:?}").contains("/jvb")),
        "{what}: {pool:?}"
    );
    let text = scrape(proxy.metrics_addr().expect("metrics endpoint")).await;
    let refused = metric_sum(&text, metric::REFUSED);
    assert!(
        refused.is_some_and(|v| v >= 1.0),
        "{what}: {} = {refused:?}, expected >= 1",
        metric::REFUSED
    );
}

/// The server and the members of [`wrong_resource_in_the_pool`], kept.
type Online = (Prosody, Member, [Member; 2]);

/// Purpose: `client_proxy.resources = "focus*"` keeps a resource with
/// another name out of the pool, so a videobridge logged into jicofo's
/// account never gets a request: 500 requests, zero errors, `jvb` asked
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_resource_is_kept_out_by_name() {
    let s = Setup {
        resources: true,
        client_proxy: r#"resources = "focus*""#,
        routing: "",
    };
    let (tally, asked_jvb, proxy, _members) =
        wrong_resource_in_the_pool(s, "resources = focus*").await;
    tally.assert_clean("resources = focus*", N_WRONG);
    assert_eq!(asked_jvb, 0, "jvb is not a member");
    assert_kept_out(&proxy, &proxy.status().pool, "resources = focus*").await;
    assert!(proxy.shutdown(WAIT).await);
}

/// Purpose: `client_proxy.require_feature` admits only resources whose
/// `disco#info` lists the feature (asked by jatproxy, answered by
/// slixmpp's disco plugin): `jvb` answers its disco#info without it and
/// stays out; 500 requests, zero errors, `jvb` asked nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_resource_is_kept_out_by_feature() {
    let s = Setup {
        resources: true,
        client_proxy: concat!(
            r#"require_feature = "http://jitsi.org/protocol/focus""#,
            "\n",
            r#"qualify_timeout = "5s""#
        ),
        routing: "",
    };
    let (tally, asked_jvb, proxy, _members) =
        wrong_resource_in_the_pool(s, "require_feature").await;
    tally.assert_clean("require_feature", N_WRONG);
    assert_eq!(asked_jvb, 0, "jvb is not a member");
    assert_kept_out(&proxy, &proxy.status().pool, "require_feature").await;
    assert!(proxy.shutdown(WAIT).await);
}

/// Routing keys of the retry tests: retry on the refusal, quarantine
/// after [`QUARANTINE_AFTER`] refusals in a row, for longer than the test.
const RETRY_ROUTING: &str = r#"retry_on = ["feature-not-implemented"]
retry_limit = 2
quarantine_after = 3
quarantine_for = "60s""#;

/// Checks the refusing member was quarantined: it was given at least
/// [`QUARANTINE_AFTER`] requests (it refused them in a row) and then at
/// most what was already on its way to it (a window), and the quarantine
/// gauge counts it.
async fn assert_quarantined(proxy: &Proxy, asked: usize, what: &str) {
    assert!(
        (QUARANTINE_AFTER..=QUARANTINE_AFTER + WINDOW).contains(&asked),
        "{what}: the refusing member was given {asked} of {N_WRONG} requests; quarantined after \
         {QUARANTINE_AFTER} refusals it gets at most {} (those already on their way)",
        QUARANTINE_AFTER + WINDOW
    );
    let text = scrape(proxy.metrics_addr().expect("metrics endpoint")).await;
    let q = metric_sum(&text, metric::QUARANTINED);
    assert!(
        q.is_some_and(|v| v >= 1.0),
        "{what}: {} = {q:?}, expected >= 1",
        metric::QUARANTINED
    );
}

/// Purpose: `routing.retry_on = ["feature-not-implemented"]` alone (no
/// qualification): a request `jvb` refuses goes to a good resource, so
/// 500 requests get zero errors, and `jvb`, refusing
/// [`QUARANTINE_AFTER`] times in a row, leaves the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_resource_is_retried_around_and_quarantined() {
    let s = Setup {
        resources: true,
        client_proxy: "",
        routing: RETRY_ROUTING,
    };
    let (tally, asked_jvb, proxy, _members) = wrong_resource_in_the_pool(s, "retry_on").await;
    tally.assert_clean("retry_on", N_WRONG);
    assert_quarantined(&proxy, asked_jvb, "retry_on, resources").await;
    assert!(proxy.shutdown(WAIT).await);
}

/// Purpose: the same for instances, which are not qualified by name or
/// feature: two good instances and one answering every request with
/// [`REFUSAL`]; with `retry_on` alone, 500 requests get zero errors and
/// the refusing instance is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_instance_is_retried_around_and_quarantined() {
    let s = Setup {
        resources: false,
        client_proxy: "",
        routing: RETRY_ROUTING,
    };
    let (p, proxy) = start(&s).await;
    let mut bad = instance(&proxy, "bad", &["--refuse", REFUSAL]).await;
    let _good = [
        instance(&proxy, "one", &[]).await,
        instance(&proxy, "two", &[]).await,
    ];
    wait_pool_len(&proxy, 3).await;
    let mut alice = requester(&p).await;
    let answers = load(&mut alice, D, N_WRONG, WINDOW, "w-").await;
    let tally = Tally::of(&ids("w-", N_WRONG), &answers);
    let asked_bad = bad
        .lines_so_far()
        .iter()
        .filter(|l| l.starts_with("REQ w-"))
        .count();
    println!(
        "retry_on, instances: {N_WRONG} requests: results {:?}, errors {:?}; the refusing instance was given {asked_bad}; metrics {:?}",
        tally.results,
        tally.errors,
        metrics(&proxy).await
    );
    tally.assert_clean("retry_on, instances", N_WRONG);
    assert_quarantined(&proxy, asked_bad, "retry_on, instances").await;
    assert_nothing_late(&mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------
// 2. The only member is killed and comes back while requests keep coming
// ---------------------------------------------------------------------------

/// Routing keys of the restart tests.
const HOLD_ROUTING: &str = r#"hold_when_empty = "10s"
redispatch = "get""#;

/// The paced load of the restart tests, started now.
fn start_paced(
    alice: TestClient,
) -> (
    tokio::task::JoinHandle<flows::Paced>,
    watch::Receiver<usize>,
) {
    let (tx, progress) = watch::channel(0);
    let pace = Pace {
        to: D.to_owned(),
        n: PACE_N,
        rate: PACE_RATE,
        prefix: "p-".to_owned(),
        delay_ms: PACE_DELAY_MS,
    };
    (paced(alice, pace, tx), progress)
}

async fn wait_answered(progress: &mut watch::Receiver<usize>, n: usize) {
    let ok = matches!(
        tokio::time::timeout(WAIT, progress.wait_for(|d| *d >= n)).await,
        Ok(Ok(_))
    );
    let so_far = *progress.borrow();
    assert!(
        ok,
        "paced load stalled before {n} answers ({so_far} so far)"
    );
}

/// What a restart test checks once its load is over: every request
/// answered once without an error; the requests in flight on the killed
/// member (`held_at_kill`) and those sent while the pool was empty
/// (between `killed` and `back`) answered by the new member `new_name`.
fn assert_restart_survived(
    what: &str,
    run: &flows::Paced,
    held_at_kill: &[String],
    (killed, back): (Instant, Instant),
    new_name: &str,
) {
    let tally = Tally::of(&run.sent, &run.answers);
    let during: Vec<&String> = run
        .sent
        .iter()
        .filter(|id| {
            run.sent_at
                .get(*id)
                .is_some_and(|t| *t > killed && *t < back)
        })
        .collect();
    println!(
        "{what}: {} requests at {PACE_RATE}/s: results {:?}, errors {:?}; {} in flight at the kill, {} sent while the pool was empty",
        run.sent.len(),
        tally.results,
        tally.errors,
        held_at_kill.len(),
        during.len()
    );
    assert_eq!(run.sent.len(), PACE_N, "{what}: every request was sent");
    assert!(
        !held_at_kill.is_empty(),
        "{what}: the member held requests at the kill"
    );
    tally.assert_clean(what, PACE_N);
    assert!(
        !during.is_empty(),
        "{what}: requests arrived while the pool was empty"
    );
    let by_new = |id: &String| {
        run.answers
            .get(id)
            .is_some_and(|a| a[0] == ("result".to_owned(), new_name.to_owned()))
    };
    let not_redispatched: Vec<&String> = held_at_kill.iter().filter(|id| !by_new(id)).collect();
    assert!(
        not_redispatched.is_empty(),
        "{what}: in flight at the kill, not answered by {new_name}: {:?}",
        not_redispatched
            .iter()
            .map(|id| (id, run.answers.get(*id)))
            .collect::<Vec<_>>()
    );
    let not_held: Vec<&&String> = during.iter().filter(|id| !by_new(id)).collect();
    assert!(
        not_held.is_empty(),
        "{what}: sent while the pool was empty, not answered by {new_name}: {not_held:?}"
    );
}

/// Purpose: a jicofo restart. The only implementing client (resource
/// `focus`) is killed (process killed, no goodbye) after 200 answers and
/// logs in again 2 s later, while gets arrive at 200/s, each answered
/// 200 ms after it arrives: with `hold_when_empty = "10s"` and
/// `redispatch = "get"`, zero errors, every request answered once, the
/// gets in flight at the kill and those sent while nobody served
/// answered by the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_resource_killed_and_back_loses_no_request() {
    let s = Setup {
        resources: true,
        client_proxy: "",
        routing: HOLD_ROUTING,
    };
    let (p, proxy) = start(&s).await;
    let first = resource_member(&p, "focus", &[], Answer::Echo("focus#1".into())).await;
    wait_pool_len(&proxy, 1).await;
    let (load, mut progress) = start_paced(requester(&p).await);
    wait_answered(&mut progress, KILL_AFTER).await;
    let held_at_kill = first.kill().await.unanswered();
    let killed = Instant::now();
    // Pacing the fault: the restart comes DOWN_FOR after the kill.
    tokio::time::sleep(DOWN_FOR).await;
    let _second = resource_member(&p, "focus", &[], Answer::Echo("focus#2".into())).await;
    let back = Instant::now();
    let run = load.await.expect("paced load");
    println!("metrics: {:?}", metrics(&proxy).await);
    assert_restart_survived(
        "resource killed and back",
        &run,
        &held_at_kill,
        (killed, back),
        "focus#2",
    );
    let mut alice = run.client;
    assert_nothing_late(&mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}

/// Purpose: the same for the only instance (SIGKILL, no stream end),
/// started again 2 s later under another name: zero errors, every
/// request answered once, the gets it held and those sent while the pool
/// was empty answered by the new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_instance_killed_and_back_loses_no_request() {
    let s = Setup {
        resources: false,
        client_proxy: "",
        routing: HOLD_ROUTING,
    };
    let (p, proxy) = start(&s).await;
    let mut first = instance(&proxy, "one", &[]).await;
    wait_pool_len(&proxy, 1).await;
    let (load, mut progress) = start_paced(requester(&p).await);
    wait_answered(&mut progress, KILL_AFTER).await;
    // Announced less than half the answer delay ago: certainly not
    // answered yet (see EchoComponent::holding).
    let held_at_kill = first.holding(Duration::from_millis(u64::from(PACE_DELAY_MS) / 2));
    first.kill();
    let killed = Instant::now();
    tokio::time::sleep(DOWN_FOR).await;
    let _second = instance(&proxy, "one-again", &[]).await;
    let back = Instant::now();
    let run = load.await.expect("paced load");
    println!("metrics: {:?}", metrics(&proxy).await);
    assert_restart_survived(
        "instance killed and back",
        &run,
        &held_at_kill,
        (killed, back),
        "one-again",
    );
    let mut alice = run.client;
    assert_nothing_late(&mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------
// 3. A member is lost with gets and sets in flight
// ---------------------------------------------------------------------------

/// Sends [`N_IN_FLIGHT`] gets (`g-`) and as many sets (`s-`), interleaved,
/// and returns their ids.
async fn send_gets_and_sets(alice: &TestClient) -> (Vec<String>, Vec<String>) {
    let (gets, sets) = (ids("g-", N_IN_FLIGHT), ids("s-", N_IN_FLIGHT));
    for (g, s) in gets.iter().zip(&sets) {
        for (id, kind) in [(g, "get"), (s, "set")] {
            alice
                .send_xml(&format!(
                    "<iq id='{id}' to='{D}' type='{kind}'><echo xmlns='{NS_ECHO}'>{id}</echo></iq>"
                ))
                .await
                .expect("send");
        }
    }
    (gets, sets)
}

/// The gets answered by `other`, the sets with `recipient-unavailable`,
/// each once.
fn assert_gets_moved_sets_failed(
    what: &str,
    answers: &Answers,
    gets: &[String],
    sets: &[String],
    other: &str,
) {
    let (g, s) = (Tally::of(gets, answers), Tally::of(sets, answers));
    println!(
        "{what}: gets: results {:?}, errors {:?}; sets: results {:?}, errors {:?}",
        g.results, g.errors, s.results, s.errors
    );
    g.assert_once(&format!("{what}, gets"), N_IN_FLIGHT);
    s.assert_once(&format!("{what}, sets"), N_IN_FLIGHT);
    assert_eq!(
        g.results.get(other).copied().unwrap_or(0),
        N_IN_FLIGHT,
        "{what}: gets answered by {other}: {} of {N_IN_FLIGHT} (results {:?}, errors {:?})",
        g.results.get(other).copied().unwrap_or(0),
        g.results,
        g.errors
    );
    assert_eq!(
        s.errors.get("recipient-unavailable").copied().unwrap_or(0),
        N_IN_FLIGHT,
        "{what}: sets answered recipient-unavailable: results {:?}, errors {:?}",
        s.results,
        s.errors
    );
}

/// Purpose: with `redispatch = "get"`, a resource that vanishes (process
/// killed) holding 50 gets and 50 sets: the gets are answered by the
/// other resource, the sets with `recipient-unavailable` (a set may have
/// been applied), nothing twice, no set sent to the other resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_lost_with_gets_and_sets_in_flight() {
    let s = Setup {
        resources: true,
        client_proxy: "",
        routing: r#"redispatch = "get""#,
    };
    let (p, proxy) = start(&s).await;
    let mut a = resource_member(&p, "a", &[], Answer::Hold).await;
    wait_pool_len(&proxy, 1).await;
    let mut alice = requester(&p).await;
    // All of them go to a, the only member, which holds them.
    let (gets, sets) = send_gets_and_sets(&alice).await;
    a.wait_asked(2 * N_IN_FLIGHT, WAIT)
        .await
        .expect("a holds every request");
    let b = resource_member(&p, "b", &[], Answer::Echo("b".into())).await;
    wait_pool_len(&proxy, 2).await;
    a.kill().await;
    let all: Vec<String> = gets.iter().chain(&sets).cloned().collect();
    let answers = collect(&mut alice, &all, WAIT).await;
    println!("metrics: {:?}", metrics(&proxy).await);
    assert_gets_moved_sets_failed("resource lost", &answers, &gets, &sets, "b");
    let asked_b = b.log.borrow().asked.clone();
    assert!(
        asked_b.iter().all(|id| !id.starts_with("s-")),
        "a set was sent again: {asked_b:?}"
    );
    assert_nothing_late(&mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}

/// Purpose: the same for an instance (SIGKILL) holding 50 gets and 50
/// sets, with a second instance connected: the gets answered by the
/// second, the sets with `recipient-unavailable`, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_lost_with_gets_and_sets_in_flight() {
    let s = Setup {
        resources: false,
        client_proxy: "",
        routing: r#"redispatch = "get""#,
    };
    let (p, proxy) = start(&s).await;
    let mut one = instance(&proxy, "one", &["--silent"]).await;
    wait_pool_len(&proxy, 1).await;
    let mut alice = requester(&p).await;
    let (gets, sets) = send_gets_and_sets(&alice).await;
    let mut held = 0;
    one.wait_line(WAIT, |l| {
        held += usize::from(l.starts_with("REQ "));
        held == 2 * N_IN_FLIGHT
    })
    .await
    .expect("one holds every request");
    let mut two = instance(&proxy, "two", &[]).await;
    wait_pool_len(&proxy, 2).await;
    one.kill();
    let all: Vec<String> = gets.iter().chain(&sets).cloned().collect();
    let answers = collect(&mut alice, &all, WAIT).await;
    println!("metrics: {:?}", metrics(&proxy).await);
    assert_gets_moved_sets_failed("instance lost", &answers, &gets, &sets, "two");
    let sets_again: Vec<String> = two
        .lines_so_far()
        .iter()
        .filter(|l| l.starts_with("REQ s-"))
        .cloned()
        .collect();
    assert!(
        sets_again.is_empty(),
        "a set was sent again: {sets_again:?}"
    );
    assert_nothing_late(&mut alice).await;
    assert!(proxy.shutdown(WAIT).await);
}
