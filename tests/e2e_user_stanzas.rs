//! Issue 11, acceptance: no stanza a user can send cuts the component link.
//!
//! Against a real Prosody 0.12 and a real ejabberd 23.01 (private, on
//! loopback, s2s off, the servers' default c2s stanza limits) with real
//! client code (slixmpp through `tests/support/c2s_client.py`): jatproxy
//! (in process, metrics endpoint on) fronts `impl@example.test/a`, which
//! answers every request. While bob keeps [`WINDOW`] requests in flight
//! the whole time, alice sends, one row at a time, stanzas that the real
//! `mod_client_proxy` handles without complaint and that used to end
//! jatproxy's upstream session. For every row:
//!
//! * the upstream session stays up: `jatproxy_upstream_reconnects_total`
//!   on the metrics endpoint is unchanged and no new session was made;
//! * the offending stanza gets exactly one answer: the member's result
//!   (forwarded), the module's error for a message or presence, or, with
//!   lowered upstream limits, `policy-violation` (type `modify`) from the
//!   address alice wrote to;
//! * bob's requests are all answered by the member (checked at the end of
//!   each test: one answer each, every one a result from `a`).
//!
//! The same table's iq rows go to a component instance too
//! (`echo_component.py` on jatproxy's listener): there every row must be
//! forwarded and answered, the ~900 KB one included. With a client
//! resource on Prosody that one cannot be: forwarding it means writing it
//! back into Prosody's component port, whose limit is 512 KiB (see
//! [`prosody_table_rows_keep_the_session`]). With ejabberd, which has no
//! c2s limit by default, 1 MB of `'` arrives as ~6 MB and must be skipped
//! and answered with the default limits.
//!
//! Also the differences from the module found in the same run (Prosody
//! only): `node@P` and `node@P/res` served by the client pool, replies to
//! the case-folded or trailing-dot form of ENC, and a directed
//! `unavailable` to `P/x` that must leave the pool alone.
//!
//! What the servers deliver to a component for what a user typed is
//! measured by the probe tests at the end (a raw XEP-0114 socket); the
//! results are in [`PROSODY_DELIVERS`] and [`EJABBERD_DELIVERS`].
//!
//! Needs `prosody` and `ejabberd` installed (`scripts/setup.sh`); fails,
//! never skips, without them.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::echo::EchoComponent;
use support::ejabberd::{Ejabberd, EjabberdConfig};
use support::flows::{answered_by, error_of};
use support::prosody::{Prosody, ProsodyConfig};
use support::scrape::scrape;
use support::server::Server;
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, Element, RawComponent, TestClient};
use support::{ALICE, D, NS_ECHO, PW, SECRET, WAIT, WINDOW};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The target account whose resource `a` serves requests.
const T: &str = "impl@example.test";
/// The other user, whose requests are in flight while alice sends a row.
const BOB: &str = "bob@example.test";
/// The component domain of the probes (a raw socket, no jatproxy).
const PROBE: &str = "probe.example.test";
/// Where alice is logged in; ENC in `jat = "inline"` mode.
fn alice_full() -> String {
    format!("{ALICE}/phone")
}

// ---------------------------------------------------------------------------
// jatproxy and its metrics

/// The upstream limits lowered so that each offending row is over one of
/// them (and ordinary traffic is not): size 64 KiB, depth 32, token 16 KiB.
const LOWERED_LIMITS: &str = "upstream_max_stanza_bytes = 65536\n\
                              upstream_max_depth = 32\n\
                              upstream_max_token_bytes = 16384\n";

/// Who serves the requests to `D`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Members {
    /// `impl@example.test/a`, a client resource (the module's way).
    Client,
    /// One component instance (`echo_component.py`, named `i1`) on
    /// jatproxy's listener; no client pool.
    Instance,
}

impl Members {
    /// What the member writes in its answers (see `answered_by`).
    fn name(self) -> &'static str {
        match self {
            Members::Client => "a",
            Members::Instance => "i1",
        }
    }
}

const INSTANCE_SECRET: &str = "instance-secret";

async fn start_proxy(s: &Server, limits: &str, members: Members) -> Proxy {
    let pool = match members {
        Members::Client => format!("[client_proxy]\ntarget_address = \"{T}\"\n"),
        Members::Instance => {
            format!("[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n")
        }
    };
    let toml = format!(
        r#"{}
{pool}
[routing]
iq_timeout = "10s"

[limits]
{limits}

[metrics]
listen = "127.0.0.1:0"
"#,
        upstream_toml(s.component_addr())
    );
    start_registered(&toml, || s.log_tail(30)).await
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when it
/// is not exposed (yet).
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const RECONNECTS: &str = "jatproxy_upstream_reconnects_total";

fn skipped(limit: &str) -> String {
    format!("jatproxy_stanzas_skipped_total{{limit=\"{limit}\"}}")
}

// ---------------------------------------------------------------------------
// The implementing resource

/// `impl@example.test/a`: answers every iq get/set it receives with a
/// result to the address it came from, `<echo from-resource='a'>` holding
/// the request's echo text (at most 64 characters). The echo text picks
/// a variant of the reply:
///
/// * `reply-cr`: the reply's `<echo>` has `note='x&#13;y'`;
/// * `reply-upper`: sent to ENC with its bare JID upper-cased
///   (`P/ALICE@EXAMPLE.TEST/phone`);
/// * `reply-dot`: sent to ENC with a trailing dot on its domain
///   (`P/alice@example.test./phone`).
///
/// Stanzas on `send` are written as they are, in order with the replies.
fn member(mut c: TestClient, mut send: mpsc::UnboundedReceiver<String>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                raw = send.recv() => {
                    let Some(raw) = raw else { return };
                    if c.send_raw(&raw).await.is_err() {
                        return;
                    }
                }
                iq = c.recv_matching(Duration::from_secs(3600), |e| {
                    e.name() == "iq" && matches!(e.attr("type"), Some("get") | Some("set"))
                }) => {
                    let Ok(iq) = iq else { return };
                    if c.send_raw(&reply_to(&iq)).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

fn reply_to(iq: &Element) -> String {
    let text: String = iq
        .get_child("echo", NS_ECHO)
        .map(|e| e.text())
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    let from = iq.attr("from").unwrap_or_default();
    let mut to = from.to_owned();
    let mut note = "";
    // ENC is everything after the first '/' of `from`: node@host/res.
    if let Some((dom, enc)) = from.split_once('/') {
        let (bare, res) = enc.split_once('/').unwrap_or((enc, ""));
        match text.as_str() {
            "reply-upper" => to = format!("{dom}/{}/{res}", bare.to_uppercase()),
            "reply-dot" => to = format!("{dom}/{bare}./{res}"),
            _ => {}
        }
    }
    if text == "reply-cr" {
        note = " note='x&#13;y'";
    }
    format!(
        "<iq type='result' id='{}' to='{}'><echo xmlns='{NS_ECHO}' from-resource='a'{note}>{}</echo></iq>",
        esc(iq.attr("id").unwrap_or_default()),
        esc(&to),
        esc(&text),
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

// ---------------------------------------------------------------------------
// Bob's requests in flight

/// What bob's load saw.
struct Background {
    /// Each id's answers: (type, answered_by or error condition).
    answers: HashMap<String, Vec<(String, String)>>,
    sent: usize,
    /// Why the load stopped early (an answer that never came).
    failure: Option<String>,
}

/// Keeps [`WINDOW`] echo requests from bob to `D` in flight until `stop`,
/// then waits for the outstanding answers.
fn background(mut bob: TestClient, stop: Arc<AtomicBool>) -> JoinHandle<(Background, TestClient)> {
    tokio::spawn(async move {
        let mut b = Background {
            answers: HashMap::new(),
            sent: 0,
            failure: None,
        };
        let mut done = 0usize;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            while !stopping && b.sent - done < WINDOW {
                let xml = format!(
                    "<iq id='bg-{n}' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>bg {n}</echo></iq>",
                    n = b.sent
                );
                if let Err(e) = bob.send_raw(&xml).await {
                    b.failure = Some(e);
                    return (b, bob);
                }
                b.sent += 1;
            }
            if done == b.sent {
                return (b, bob);
            }
            let got = bob
                .recv_matching(WAIT, |e| {
                    e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with("bg-"))
                })
                .await;
            let r = match got {
                Ok(r) => r,
                Err(e) => {
                    let missing: Vec<String> = (0..b.sent)
                        .map(|i| format!("bg-{i}"))
                        .filter(|id| !b.answers.contains_key(id))
                        .collect();
                    b.failure = Some(format!("bob's requests {missing:?} unanswered: {e}"));
                    return (b, bob);
                }
            };
            let what = match r.attr("type") {
                Some("result") => answered_by(&r),
                _ => error_of(&r).map(|x| x.1).unwrap_or_default(),
            };
            let id = r.attr("id").unwrap_or_default().to_owned();
            if !b.answers.contains_key(&id) {
                done += 1;
            }
            b.answers
                .entry(id)
                .or_default()
                .push((r.attr("type").unwrap_or_default().to_owned(), what));
        }
    })
}

// ---------------------------------------------------------------------------
// One test run: server, jatproxy, impl/a, bob's load, alice

struct Run {
    server: Server,
    proxy: Proxy,
    metrics: SocketAddr,
    alice: TestClient,
    members: Members,
    /// Raw stanzas for impl/a to send (client members).
    to_member: Option<mpsc::UnboundedSender<String>>,
    member: Option<JoinHandle<()>>,
    /// The instance (instance members); killed on drop.
    instance: Option<EchoComponent>,
    stop: Arc<AtomicBool>,
    load: JoinHandle<(Background, TestClient)>,
    /// Rows done, for the final report.
    rows: Vec<String>,
    syncs: usize,
}

async fn online(s: &Server, jid: &str) -> TestClient {
    let c = xmpp::connect(jid, PW, s.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.log_tail(30)));
    c.send_presence().await.expect("presence");
    c
}

impl Run {
    async fn start(server: Server, limits: &str, members: Members) -> Run {
        let proxy = start_proxy(&server, limits, members).await;
        let metrics = proxy.metrics_addr().expect("metrics endpoint is on");
        let (mut to_member, mut member_task, mut instance) = (None, None, None);
        match members {
            Members::Client => {
                let a = online(&server, &format!("{T}/a")).await;
                let (tx, rx) = mpsc::unbounded_channel();
                to_member = Some(tx);
                member_task = Some(member(a, rx));
            }
            Members::Instance => {
                let listen = proxy.listen_addr().expect("instance listener");
                instance = Some(
                    EchoComponent::start(listen, D, INSTANCE_SECRET, members.name(), WAIT)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
        assert!(
            proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
            "the member joined the pool; server log:\n{}",
            server.log_tail(30)
        );
        let alice = online(&server, &alice_full()).await;
        let bob = online(&server, &format!("{BOB}/desk")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = background(bob, stop.clone());
        // Bob's requests are in flight before the first row.
        assert!(
            proxy.wait_for(WAIT, |s| s.pending > 0).await,
            "bob's requests reach jatproxy"
        );
        let run = Run {
            server,
            proxy,
            metrics,
            alice,
            members,
            to_member,
            member: member_task,
            instance,
            stop,
            load,
            rows: Vec::new(),
            syncs: 0,
        };
        let text = scrape(run.metrics).await;
        assert_eq!(value(&text, RECONNECTS), 0, "{text}");
        run
    }

    /// Upstream sessions so far and the reconnect metric.
    async fn sessions(&self) -> (u64, u64) {
        let text = scrape(self.metrics).await;
        (
            self.proxy.status().upstream_sessions,
            value(&text, RECONNECTS),
        )
    }

    /// Sends `xml` (raw, as typed) from alice, waits for the one stanza
    /// answering `id` (a `kind` with that id), checks it with `expect`,
    /// then checks that the upstream session stayed up and that no second
    /// answer came (after a request sent behind it was answered).
    async fn row(&mut self, what: &str, kind: &str, id: &str, xml: &str, expect: Expect<'_>) {
        let before = self.sessions().await;
        self.alice.send_raw(xml).await.expect("alice sends");
        // Until the answer comes, or at once when a new upstream session
        // is made (the old one was lost: the failure itself).
        let mut status = self.proxy.watch();
        let got = tokio::select! {
            got = self
                .alice
                .recv_matching(WAIT, |e| e.name() == kind && e.attr("id") == Some(id)) => got,
            _ = status.wait_for(|s| s.upstream_sessions > before.0) => {
                Err("a new upstream session was made while alice waited".to_owned())
            }
        };
        let after = self.sessions().await;
        let answer = match got {
            Ok(a) => a,
            Err(e) => panic!(
                "{what}: no answer to {id} (upstream sessions, reconnects \
                 before {before:?}, now {after:?}{}): {e}\nserver log:\n{}",
                if after.0 > before.0 {
                    ": the upstream session was lost"
                } else {
                    ""
                },
                self.server.log_tail(20)
            ),
        };
        expect.check(what, &answer, self.members.name());
        assert_eq!(
            after,
            before,
            "{what}: the upstream session stays up (sessions, reconnect metric); \
             answer was {}",
            xmpp::to_xml(&answer)
        );
        assert!(self.proxy.status().upstream_online, "{what}: upstream up");
        self.sync(what).await;
        let extra: Vec<String> = self
            .alice
            .drain()
            .iter()
            .filter(|e| e.attr("id") == Some(id))
            .map(xmpp::to_xml)
            .collect();
        assert!(extra.is_empty(), "{what}: more than one answer: {extra:?}");
        self.rows.push(what.to_owned());
    }

    /// [`Run::row`] for `payload` in an iq, a message and a presence to
    /// `D`, in that order (ids `{tag}-iq`, `{tag}-msg`, `{tag}-pres`,
    /// described as "iq {what}"…), each checked with its `expect`.
    async fn each_kind(&mut self, what: &str, tag: &str, payload: &str, expect: [Expect<'_>; 3]) {
        let kinds: [(&str, &str, Build); 3] = [
            ("iq", "iq", iq),
            ("message", "msg", message),
            ("presence", "pres", presence),
        ];
        for ((kind, suffix, stanza), expect) in kinds.into_iter().zip(expect) {
            let id = format!("{tag}-{suffix}");
            let xml = stanza(&id, payload);
            self.row(&format!("{kind} {what}"), kind, &id, &xml, expect)
                .await;
        }
    }

    /// An ordinary request from alice, answered by impl/a; what alice
    /// received before its answer stays available to `drain`.
    async fn sync(&mut self, what: &str) {
        let id = format!("sync-{}", self.syncs);
        self.syncs += 1;
        let r = self.request(&id, D, "sync").await;
        assert_eq!(
            (r.attr("type"), answered_by(&r).as_str()),
            (Some("result"), self.members.name()),
            "{what}: an ordinary request afterwards: {}",
            xmpp::to_xml(&r)
        );
    }

    /// Sends an echo request from alice to `to` and returns its answer.
    async fn request(&mut self, id: &str, to: &str, text: &str) -> Element {
        self.alice
            .send_raw(&echo_iq(id, to, text))
            .await
            .expect("alice sends");
        self.alice
            .recv_iq_response(id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    /// Stops bob's load and checks every one of his requests got exactly
    /// one answer, a result from impl/a; shuts jatproxy down.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (b, _bob) = tokio::time::timeout(WAIT + WAIT, self.load)
            .await
            .expect("bob's load ends")
            .expect("bob's load task");
        let normal = vec![("result".to_owned(), self.members.name().to_owned())];
        let mut not_results: Vec<(&String, &Vec<(String, String)>)> =
            b.answers.iter().filter(|(_, v)| **v != normal).collect();
        not_results.sort();
        println!(
            "rows {:?}: bob's {} requests in flight meanwhile, {} answered",
            self.rows,
            b.sent,
            b.answers.len()
        );
        assert!(b.failure.is_none(), "{}", b.failure.unwrap_or_default());
        assert_eq!(b.answers.len(), b.sent, "every request of bob's answered");
        assert!(
            not_results.is_empty(),
            "bob's requests are answered normally, exactly once, by the member: {not_results:?}"
        );
        let text = scrape(self.metrics).await;
        assert_eq!(value(&text, RECONNECTS), 0, "{text}");
        if let Some(m) = self.member {
            m.abort();
        }
        drop(self.instance);
        assert!(self.proxy.shutdown(WAIT).await);
        drop(self.server);
    }
}

/// What alice must get back for a row.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// An iq result from `from`, answered by impl/a.
    Result { from: &'a str },
    /// An error of `kind` (the stanza's own name) from `from`.
    Error {
        from: &'a str,
        etype: &'a str,
        condition: &'a str,
    },
}

impl Expect<'_> {
    fn check(&self, what: &str, e: &Element, member: &str) {
        let xml = xmpp::to_xml(e);
        match self {
            Expect::Result { from } => {
                assert_eq!(
                    (e.attr("type"), e.attr("from"), answered_by(e).as_str()),
                    (Some("result"), Some(*from), member),
                    "{what}: forwarded and answered by the member: {xml}"
                );
            }
            Expect::Error {
                from,
                etype,
                condition,
            } => {
                assert_eq!(
                    (e.attr("type"), e.attr("from")),
                    (Some("error"), Some(*from)),
                    "{what}: an error from the address written to: {xml}"
                );
                assert_eq!(
                    error_of(e),
                    Some(((*etype).to_owned(), (*condition).to_owned())),
                    "{what}: {xml}"
                );
            }
        }
        assert_eq!(
            e.attr("to"),
            Some(alice_full().as_str()),
            "{what}: to alice: {xml}"
        );
    }
}

/// A policy-violation (modify) from `D`, the answer to a skipped stanza.
const POLICY: Expect<'static> = Expect::Error {
    from: D,
    etype: "modify",
    condition: "policy-violation",
};
/// The module's answer to a message.
const MESSAGE: Expect<'static> = Expect::Error {
    from: D,
    etype: "cancel",
    condition: "feature-not-implemented",
};
/// The module's answer to presence from anyone but the target.
const PRESENCE: Expect<'static> = Expect::Error {
    from: D,
    etype: "cancel",
    condition: "bad-request",
};
const RESULT: Expect<'static> = Expect::Result { from: D };
/// What alice gets for an iq, a message and a presence to `D` that are
/// within every limit: the iq answered by the member, the others refused
/// as the module refuses them.
const ANSWERED: [Expect<'static>; 3] = [RESULT, MESSAGE, PRESENCE];

// ---------------------------------------------------------------------------
// The rows

/// Writes a stanza of one kind from its id and payload ([`iq`],
/// [`message`], [`presence`]).
type Build = fn(&str, &str) -> String;

/// An iq get to `D`: `<echo>` saying `id`, with `payload` inside (an iq
/// request has exactly one child).
fn iq(id: &str, payload: &str) -> String {
    format!("<iq type='get' id='{id}' to='{D}'><echo xmlns='{NS_ECHO}'>{id}{payload}</echo></iq>")
}
/// An iq get to `to` whose `<echo>` says `text` (which picks the member's
/// reply, see [`member`]).
fn echo_iq(id: &str, to: &str, text: &str) -> String {
    format!("<iq type='get' id='{id}' to='{to}'><echo xmlns='{NS_ECHO}'>{text}</echo></iq>")
}
fn message(id: &str, payload: &str) -> String {
    format!("<message type='chat' id='{id}' to='{D}'><body>{id}</body>{payload}</message>")
}
fn presence(id: &str, payload: &str) -> String {
    format!("<presence id='{id}' to='{D}'>{payload}</presence>")
}

/// An attribute value holding a character reference to CR.
const CR_ATTR: &str = "<x xmlns='urn:example:x' a='x&#13;y'/>";

/// `n` nested elements.
fn deep(n: usize) -> String {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str("<d xmlns='urn:example:deep'>");
    }
    for _ in 0..n {
        s.push_str("</d>");
    }
    s
}

/// An attribute value of `n` bytes.
fn long_attr(n: usize) -> String {
    format!("<x xmlns='urn:example:x' a='{}'/>", "v".repeat(n))
}

/// `n` apostrophes as text, in elements of at most 1000 each (so no
/// single text run is long: the row is about the stanza's size). Prosody
/// and ejabberd write each `'` as `&apos;` (6×).
fn apostrophes(n: usize) -> String {
    let mut s = String::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        s.push_str("<x xmlns='urn:example:x'>");
        s.push_str(&"'".repeat(k));
        s.push_str("</x>");
        left -= k;
    }
    s
}

/// 150 KB of `'`: within Prosody's 256 KiB c2s limit, ~900 KB on the
/// component link.
const APOS: usize = 150_000;

/// The four rows of issue 11's table, each as an iq, a message and a
/// presence, with what alice gets back with jatproxy's default limits;
/// `apos_iq` is what the iq of 150 KB of `'` must get.
async fn table_rows_with_defaults(run: &mut Run, apos_iq: Expect<'_>) {
    run.each_kind("with CR in an attribute", "cr", CR_ATTR, ANSWERED)
        .await;
    // The member's reply holds `note='x&#13;y'`.
    run.row(
        "CR in a reply attribute",
        "iq",
        "cr-reply",
        &echo_iq("cr-reply", D, "reply-cr"),
        RESULT,
    )
    .await;
    run.each_kind("65 deep", "deep", &deep(65), ANSWERED).await;
    run.each_kind(
        "with an attribute of 32769 bytes",
        "attr",
        &long_attr(32_769),
        ANSWERED,
    )
    .await;
    run.each_kind(
        "of 150 KB of '",
        "apos",
        &apostrophes(APOS),
        [apos_iq, MESSAGE, PRESENCE],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_table_rows_keep_the_session() {
    let mut run = Run::start(Server::prosody("impl").await, "", Members::Client).await;
    // The iq of 150 KB of `'` reaches jatproxy as ~900 KB, which cannot be
    // forwarded to a client resource: it would go back into Prosody over
    // the component link, whose limit is 512 KiB
    // (`component_stanza_size_limit`). Measured with today's code and
    // `limits.max_stanza_bytes = 2097152`: Prosody closes jatproxy's
    // stream with `not-well-formed` ("Disconnecting component") and alice
    // gets `recipient-unavailable`. So jatproxy does not write it
    // (`limits.upstream_max_write_bytes`, Prosody's 512 KiB) and answers
    // `policy-violation`: the session stays.
    table_rows_with_defaults(&mut run, POLICY).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_table_rows_keep_the_session() {
    // ejabberd's component listener takes the ~900 KB forwarded request
    // (its max_stanza_size is infinity by default), so the operator tells
    // jatproxy so: limits.upstream_max_write_bytes is the server's limit
    // for components (Prosody's 512 KiB by default).
    let mut run = Run::start(
        Server::ejabberd("impl").await,
        "upstream_max_write_bytes = 8388608",
        Members::Client,
    )
    .await;
    table_rows_with_defaults(&mut run, RESULT).await;
    // ejabberd 23.01 has no c2s stanza limit by default, so no upstream
    // default can forward everything it delivers: 1 MB of `'` from alice
    // arrives as ~6 MB, over the 2 MiB default, and is skipped while
    // streaming and answered.
    run.row(
        "iq of 1 MB of ' (~6 MB delivered)",
        "iq",
        "apos-6mb",
        &iq("apos-6mb", &apostrophes(1_000_000)),
        POLICY,
    )
    .await;
    run.finish().await;
}

/// The table's rows as iq requests to a component instance: the instance
/// gets each stanza from jatproxy directly (not back through Prosody's
/// component port), so with the default limits all four are forwarded
/// and answered, the ~900 KB one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_table_rows_to_an_instance() {
    let mut run = Run::start(Server::prosody("impl").await, "", Members::Instance).await;
    let rows = [
        ("CR in an iq attribute", "cr-iq", CR_ATTR.to_owned()),
        ("iq 65 deep", "deep-iq", deep(65)),
        ("iq attribute of 32769 bytes", "attr-iq", long_attr(32_769)),
        ("iq of 150 KB of '", "apos-iq", apostrophes(APOS)),
    ];
    for (what, id, payload) in &rows {
        run.row(what, "iq", id, &iq(id, payload), RESULT).await;
    }
    run.finish().await;
}

/// With the upstream limits lowered ([`LOWERED_LIMITS`]), rows 2–4 are
/// over a limit: skipped while streaming, answered `policy-violation`,
/// counted per limit; the CR row is still forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_rows_over_lowered_limits_are_skipped_and_answered() {
    let mut run = Run::start(
        Server::prosody("impl").await,
        LOWERED_LIMITS,
        Members::Client,
    )
    .await;
    run.row(
        "CR in an iq attribute",
        "iq",
        "cr-iq",
        &iq("cr-iq", CR_ATTR),
        RESULT,
    )
    .await;
    let cases: [(&str, &str, String); 3] = [
        ("depth", "deep", deep(65)),
        ("token", "attr", long_attr(32_769)),
        ("size", "apos", apostrophes(APOS)),
    ];
    for (limit, tag, payload) in &cases {
        let before = value(&scrape(run.metrics).await, &skipped(limit));
        run.each_kind(
            &format!("over the {limit} limit"),
            tag,
            payload,
            [POLICY; 3],
        )
        .await;
        let after = value(&scrape(run.metrics).await, &skipped(limit));
        assert_eq!(
            after - before,
            3,
            "{} counts the three skipped stanzas",
            skipped(limit)
        );
    }
    run.finish().await;
}

/// The smaller differences from the module (issue 11, item 5), with no
/// instance pool configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_module_differences() {
    let mut run = Run::start(Server::prosody("impl").await, "", Members::Client).await;
    let node = format!("echo@{D}");
    let node_res = format!("echo@{D}/res");

    // node@P and node@P/res are served by the client pool, answered from
    // the address written to.
    run.row(
        "iq to node@P",
        "iq",
        "node-iq",
        &format!(
            "<iq type='get' id='node-iq' to='{node}'><echo xmlns='{NS_ECHO}'>node</echo></iq>"
        ),
        Expect::Result { from: &node },
    )
    .await;
    run.row(
        "iq to node@P/res",
        "iq",
        "node-res-iq",
        &echo_iq("node-res-iq", &node_res, "node"),
        Expect::Result { from: &node_res },
    )
    .await;
    run.row(
        "message to node@P",
        "message",
        "node-msg",
        &format!("<message type='chat' id='node-msg' to='{node}'><body>hi</body></message>"),
        Expect::Error {
            from: &node,
            etype: "cancel",
            condition: "feature-not-implemented",
        },
    )
    .await;
    run.row(
        "presence to node@P",
        "presence",
        "node-pres",
        &format!("<presence id='node-pres' to='{node}'/>"),
        Expect::Error {
            from: &node,
            etype: "cancel",
            condition: "bad-request",
        },
    )
    .await;

    // Replies to the prepared forms of ENC reach alice.
    for variant in ["reply-upper", "reply-dot"] {
        run.row(
            &format!("a {variant} reply"),
            "iq",
            variant,
            &echo_iq(variant, D, variant),
            RESULT,
        )
        .await;
    }

    // A directed unavailable from impl/a to P/x is not pool presence.
    let to_member = run.to_member.clone().expect("a client member");
    to_member
        .send(format!("<presence type='unavailable' to='{D}/x'/>"))
        .expect("member task alive");
    // Behind it, on the same c2s session and component stream, a request
    // from impl/a to alice: once alice has it, jatproxy has seen the
    // presence.
    to_member
        .send(format!(
            "<iq type='get' id='after-directed' to='{D}/{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            alice_full()
        ))
        .expect("member task alive");
    let ping = run
        .alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("after-directed"))
        .await
        .expect("impl/a's request reaches alice");
    run.alice
        .send_raw(&format!(
            "<iq type='result' id='after-directed' to='{}'/>",
            ping.attr("from").unwrap_or(D)
        ))
        .await
        .expect("alice answers");
    assert_eq!(
        run.proxy.status().pool.len(),
        1,
        "impl/a is still in the pool after a directed unavailable to {D}/x"
    );
    run.row(
        "request after a directed unavailable",
        "iq",
        "after-directed-2",
        &iq("after-directed-2", ""),
        RESULT,
    )
    .await;
    run.finish().await;
}

// ---------------------------------------------------------------------------
// Probes: what the servers deliver to a component for what a user typed

/// (name, what alice types as an attribute value and as text).
const PROBES: &[(&str, &str)] = &[
    ("cr-ref", "a&#13;b"),
    ("nel-ref", "a&#x85;b"),
    ("fdd0-ref", "a&#xFDD0;b"),
    ("emoji", "a\u{1F600}b"),
    ("cdata-end", "a]]&gt;b"),
    ("apos", "a'b"),
    ("quot", "a\"b"),
    ("tab-ref", "a&#9;b"),
    ("lf-ref", "a&#10;b"),
];

/// What alice sends for one probe: the value in an attribute (quoted with
/// the quote it does not contain) and as text.
fn probe_stanza(name: &str, v: &str) -> String {
    let q = if v.contains('\'') { '"' } else { '\'' };
    format!(
        "<message type='chat' id='probe-{name}' to='{PROBE}'><x xmlns='urn:example:probe' a={q}{v}{q}>{v}</x></message>"
    )
}

/// Sends every probe from alice and returns, per probe, the raw value of
/// attribute `a` and the raw text of `<x>`, exactly as the server wrote
/// them to the component socket.
async fn probe(s: &Server) -> Vec<(String, String, String)> {
    let mut comp = RawComponent::connect(s.component_addr(), PROBE, SECRET, WAIT)
        .await
        .expect("probe component connects");
    let alice = online(s, &alice_full()).await;
    let mut out = Vec::new();
    for (name, v) in PROBES {
        alice
            .send_raw(&probe_stanza(name, v))
            .await
            .expect("alice sends");
        let id = format!("probe-{name}");
        let got = comp
            .read_stanzas_until(WAIT, |st| {
                xmpp::attr_value(st, "id").as_deref() == Some(id.as_str())
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\nserver log:\n{}", s.log_tail(20)));
        let st = got.last().cloned().unwrap_or_default();
        let (attr, text) =
            attr_and_text(&st).unwrap_or_else(|| panic!("{name}: no <x a=…>…</x> in {st:?}"));
        println!("{name:10} typed {v:?} -> attribute {attr:?}, text {text:?}");
        out.push(((*name).to_owned(), attr, text));
    }
    out
}

/// The raw value of `a` on `<x …>` and its raw text, from a stanza as
/// written (attribute order varies: Prosody's comes from a Lua table).
fn attr_and_text(stanza: &str) -> Option<(String, String)> {
    let start = stanza.find("<x ")?;
    let rest = &stanza[start..];
    let mut quote = None;
    let mut head_end = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'') | (None, '"') => quote = Some(c),
            (None, '>') => {
                head_end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let head = &rest[..head_end?];
    let attr = xmpp::attr_value(head, "a")?;
    let body = &rest[head_end? + 1..];
    let text = &body[..body.find("</x>")?];
    Some((attr, text.to_owned()))
}

/// Measured with `probe_what_prosody_delivers` (Prosody 0.12, Debian):
/// (probe, raw attribute value, raw text) the component receives for what
/// alice typed ([`PROBES`]). Prosody (expat, then util.stanza's
/// serialiser) decodes every reference and escapes only `' " & < >`: CR,
/// TAB and LF arrive as raw bytes in attribute values and text alike
/// (so a raw CR in an attribute is what jatproxy must accept), U+0085,
/// U+FDD0 and astral characters as UTF-8, `>` as `&gt;`, `'` as `&apos;`
/// and `"` as `&quot;` everywhere (hence the 6× growth of a payload of
/// apostrophes).
const PROSODY_DELIVERS: &[(&str, &str, &str)] = &[
    ("cr-ref", "a\rb", "a\rb"),
    ("nel-ref", "a\u{85}b", "a\u{85}b"),
    ("fdd0-ref", "a\u{fdd0}b", "a\u{fdd0}b"),
    ("emoji", "a\u{1F600}b", "a\u{1F600}b"),
    ("cdata-end", "a]]&gt;b", "a]]&gt;b"),
    ("apos", "a&apos;b", "a&apos;b"),
    ("quot", "a&quot;b", "a&quot;b"),
    ("tab-ref", "a\tb", "a\tb"),
    ("lf-ref", "a\nb", "a\nb"),
];

/// Measured with `probe_what_ejabberd_delivers` (ejabberd 23.01, Debian,
/// fast_xml): in attribute values CR, TAB and LF are written as `&#xD;`,
/// `&#x9;`, `&#xA;` (so normalisation keeps them), in text as raw bytes;
/// `>` stays raw in an attribute (`a]]>b`) and is `&gt;` in text; `'` and
/// `"` are `&apos;` and `&quot;` in both (6× growth too); U+0085, U+FDD0
/// and astral characters arrive as UTF-8.
const EJABBERD_DELIVERS: &[(&str, &str, &str)] = &[
    ("cr-ref", "a&#xD;b", "a\rb"),
    ("nel-ref", "a\u{85}b", "a\u{85}b"),
    ("fdd0-ref", "a\u{fdd0}b", "a\u{fdd0}b"),
    ("emoji", "a\u{1F600}b", "a\u{1F600}b"),
    ("cdata-end", "a]]>b", "a]]&gt;b"),
    ("apos", "a&apos;b", "a&apos;b"),
    ("quot", "a&quot;b", "a&quot;b"),
    ("tab-ref", "a&#x9;b", "a\tb"),
    ("lf-ref", "a&#xA;b", "a\nb"),
];

fn check_probe(server: &str, got: &[(String, String, String)], expected: &[(&str, &str, &str)]) {
    let got: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(n, a, t)| (n.as_str(), a.as_str(), t.as_str()))
        .collect();
    assert_eq!(got, expected, "what {server} delivers changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_what_prosody_delivers() {
    let s = Server::Prosody(Box::new(
        Prosody::start(
            ProsodyConfig::new()
                .user("alice", PW)
                .component(PROBE, SECRET)
                .log_level("info"),
        )
        .await
        .expect("prosody starts"),
    ));
    let got = probe(&s).await;
    check_probe("Prosody", &got, PROSODY_DELIVERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_what_ejabberd_delivers() {
    let s = Server::Ejabberd(Box::new(
        Ejabberd::start(
            EjabberdConfig::new()
                .user("alice", PW)
                .component(PROBE, SECRET),
        )
        .await
        .unwrap_or_else(|e| panic!("ejabberd starts: {e}")),
    ));
    let got = probe(&s).await;
    check_probe("ejabberd", &got, EJABBERD_DELIVERS);
}
