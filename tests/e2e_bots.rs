//! Issue 14's end-to-end acceptance: a bot written as an ordinary XMPP
//! client holds conversations through the proxy domain, against a real
//! Prosody 0.12 and a real ejabberd 23.01 (each test starts its own, on
//! loopback, s2s off). The bot account `bot@example.test` is served by
//! two resources: `examples/chat_bot.py` processes (the example users
//! copy) in the conversation tests, slixmpp test clients
//! ([`TestClient`]) where the test must see exactly what a resource
//! receives or decide when it comes and goes. alice and bob are users
//! with ordinary clients.
//!
//! Every test runs once per server. They need `prosody`, `ejabberd` and
//! slixmpp installed (`scripts/setup.sh`); they fail, never skip,
//! without them.

mod support;

use std::process::Stdio;
use std::time::Duration;

use jatproxy::proxy::Proxy;
use support::echo::python;
use support::flows::message_refused;
use support::server::Server;
use support::setup::{start_registered, upstream_toml};
use support::xmpp::{self, Element, TestClient};
use support::{ALICE, D, PW, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

/// The bot account: the target whose resources hold the conversations.
const BOT: &str = "bot@example.test";
const BOB: &str = "bob@example.test";
/// A service address at the proxy domain, with a local part.
fn helpdesk() -> String {
    format!("helpdesk@{D}")
}

/// The example bot, run as the users of the README would run it.
const CHAT_BOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat_bot.py");

// ---------------------------------------------------------------------------
// The servers (Server::prosody("bot"), Server::ejabberd("bot")) and jatproxy

/// The settings this issue adds, both on.
const BOTH_ON: &str = "messages = true\npresence = true\n";

/// jatproxy for bot's resources at `s`; `client_proxy` is added to the
/// `[client_proxy]` table, `routing` to `[routing]`.
async fn proxy(s: &Server, client_proxy: &str, routing: &str) -> Proxy {
    let toml = format!(
        "{}\n[client_proxy]\ntarget_address = \"{BOT}\"\n{client_proxy}\n\
         [routing]\niq_timeout = \"10s\"\n{routing}\n",
        upstream_toml(s.component_addr())
    );
    start_registered(&toml, || s.log_tail(30)).await
}

/// A logged-in client that sent its initial presence.
async fn online(s: &Server, jid: &str) -> TestClient {
    let c = xmpp::connect(jid, PW, s.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.log_tail(30)));
    c.send_presence().await.expect("presence");
    c
}

async fn wait_pool(proxy: &Proxy, s: &Server, n: usize, why: &str) {
    assert!(
        proxy.wait_for(WAIT, |st| st.pool.len() == n).await,
        "{why}: pool never had {n} members: {:?}\nserver log:\n{}",
        proxy.status(),
        s.log_tail(30)
    );
}

// ---------------------------------------------------------------------------
// The example bot as a child process

/// `examples/chat_bot.py` logged in as one resource of [`BOT`]. Its
/// stdout lines (`online as …`, `message from X to Y: BODY`) are the
/// test's view of what it received. Dropping it kills it (SIGKILL: the
/// server sees the connection cut, no goodbye).
struct ChatBot {
    resource: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line so far, stderr included, for failure messages.
    seen: Vec<String>,
}

impl ChatBot {
    /// Starts the bot as `BOT/resource` and waits until it is online.
    async fn start(s: &Server, resource: &str) -> ChatBot {
        let mut child = Command::new(python())
            .arg(CHAT_BOT)
            .args(["--jid", &format!("{BOT}/{resource}"), "--password", PW])
            .args(["--server", &s.c2s_addr().to_string(), "--proxy", D])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} {CHAT_BOT}: {e}", python()));
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        let mut bot = ChatBot {
            resource: resource.to_owned(),
            child,
            lines,
            seen: Vec::new(),
        };
        bot.wait_line(|l| l.starts_with("online as ")).await;
        bot
    }

    /// The next stdout line for which `pred` holds; panics with all the
    /// output after [`WAIT`].
    async fn wait_line(&mut self, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if !l.starts_with("stderr: ") && pred(&l) {
                        return l;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "chat bot {} (is slixmpp installed? run scripts/setup.sh): no expected line; output:\n{}",
                    self.resource,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGKILL: the connection is cut without a goodbye.
    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Conversations

/// How ENC is written (`client_proxy.jat`).
#[derive(Clone, Copy)]
enum Jat {
    Inline,
    Opaque,
}

impl Jat {
    fn name(self) -> &'static str {
        match self {
            Jat::Inline => "inline",
            Jat::Opaque => "opaque",
        }
    }
}

/// A chat message with a thread, from a user to `to`.
fn chat(to: &str, id: &str, body: &str) -> String {
    format!(
        "<message type='chat' to='{to}' id='{id}'><body>{body}</body><thread>th-{id}</thread></message>"
    )
}

/// Sends `body` to `to` and returns the bot's answer and which resource
/// gave it (the example bot answers `RES: BODY`). The answer must come
/// from exactly `to`, as a chat in the same thread, and never show the
/// bot's own address.
async fn ask(user: &mut TestClient, to: &str, id: &str, body: &str) -> String {
    user.send_xml(&chat(to, id, body)).await.expect("send");
    let want = format!(": {body}");
    let reply = user
        .recv_matching(WAIT, |e| {
            e.name() == "message"
                && e.get_child("body", xmpp::NS_CLIENT)
                    .map(|b| b.text())
                    .is_some_and(|t| t.ends_with(&want))
        })
        .await
        .unwrap_or_else(|e| panic!("no answer to {id}: {e}"));
    let text = xmpp::to_xml(&reply);
    assert_eq!(
        reply.attr("from"),
        Some(to),
        "answered from the address written to: {text}"
    );
    assert_eq!(reply.attr("type"), Some("chat"), "{text}");
    assert!(!text.contains(BOT), "the bot's real address leaked: {text}");
    let thread = reply
        .get_child("thread", xmpp::NS_CLIENT)
        .map(Element::text);
    assert_eq!(
        thread.as_deref(),
        Some(format!("th-{id}").as_str()),
        "{text}"
    );
    let body = reply
        .get_child("body", xmpp::NS_CLIENT)
        .map(Element::text)
        .unwrap_or_default();
    body.split_once(": ")
        .map(|(res, _)| res.to_owned())
        .unwrap_or_default()
}

/// Two users chat with two resources of the example bot: each user's
/// conversation stays on its own resource, answers come from the address
/// the user wrote to (`D`, `helpdesk@D`), the bot sees `node@D/ENC`; the
/// resource holding alice's conversation is killed and her next message
/// goes to the other one, where bob's conversation stays.
async fn conversations_stick_and_move(s: Server, jat: Jat) {
    // Round-robin: the two users' first messages pick different
    // resources, and without stickiness each user's next ones would
    // alternate.
    let settings = format!("{BOTH_ON}jat = \"{}\"\n", jat.name());
    let proxy = proxy(&s, &settings, "balancing = \"round-robin\"").await;
    let mut bots = vec![ChatBot::start(&s, "a").await, ChatBot::start(&s, "b").await];
    wait_pool(&proxy, &s, 2, "both bot resources sent presence").await;
    let mut alice = online(&s, &format!("{ALICE}/phone")).await;
    let mut bob = online(&s, &format!("{BOB}/laptop")).await;
    let desk = helpdesk();

    let mut alice_on = Vec::new();
    let mut bob_on = Vec::new();
    for i in 0..4 {
        alice_on.push(ask(&mut alice, D, &format!("al-{i}"), &format!("hello {i}")).await);
        bob_on.push(ask(&mut bob, &desk, &format!("bo-{i}"), &format!("help {i}")).await);
    }
    println!("alice on {alice_on:?}, bob on {bob_on:?}");
    assert_ne!(alice_on[0], bob_on[0], "two conversations, two resources");
    for on in [&alice_on, &bob_on] {
        assert!(
            on.iter().all(|r| *r == on[0]),
            "conversation moved while its resource was online: {on:?}"
        );
        assert!(on[0] == "a" || on[0] == "b", "{on:?}");
    }
    // What the bot saw: the local part written to, and the user's
    // address or a token for it.
    for (on, service, user) in [
        (&alice_on[0], D.to_owned(), format!("{ALICE}/phone")),
        (&bob_on[0], desk.clone(), format!("{BOB}/laptop")),
    ] {
        let bot = bots
            .iter_mut()
            .find(|b| b.resource == *on)
            .expect("a resource answered");
        let line = bot
            .wait_line(|l| l.starts_with(&format!("message from {service}/")))
            .await;
        let from = line
            .strip_prefix("message from ")
            .and_then(|l| l.split_once(' '))
            .map(|(from, _)| from)
            .unwrap_or_default();
        let enc = &from[service.len() + 1..];
        match jat {
            Jat::Inline => assert_eq!(enc, user, "{line}"),
            Jat::Opaque => assert!(!enc.is_empty() && !enc.contains('@'), "a token: {line}"),
        }
        assert!(line.contains(&format!(" to {BOT}/{on}: ")), "{line}");
    }

    // The resource holding alice's conversation goes away mid-conversation.
    let gone = alice_on[0].clone();
    let i = bots
        .iter()
        .position(|b| b.resource == gone)
        .expect("alice's resource");
    bots.remove(i).kill().await;
    wait_pool(&proxy, &s, 1, "the killed resource left the pool").await;
    let survivor = bots[0].resource.clone();
    for i in 4..6 {
        let on = ask(
            &mut alice,
            D,
            &format!("al-{i}"),
            &format!("still there {i}"),
        )
        .await;
        assert_eq!(
            on, survivor,
            "alice's conversation moved to the other resource"
        );
        let on = ask(
            &mut bob,
            &desk,
            &format!("bo-{i}"),
            &format!("still there {i}"),
        )
        .await;
        assert_eq!(
            on, survivor,
            "bob's conversation is on the one resource left"
        );
    }
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_conversations_stick_and_move() {
    conversations_stick_and_move(Server::prosody("bot").await, Jat::Inline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_conversations_stick_and_move() {
    conversations_stick_and_move(Server::ejabberd("bot").await, Jat::Inline).await;
}

/// The same with `jat = "opaque"`: the bot sees a token instead of the
/// user's address, and answers to it reach the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_conversations_with_opaque_tokens() {
    conversations_stick_and_move(Server::prosody("bot").await, Jat::Opaque).await;
}

// ---------------------------------------------------------------------------
// Presence

/// The next presence alice gets from exactly `D` (roster pushes and
/// other stanzas are kept aside).
async fn presence_from_domain(alice: &mut TestClient, what: &str) -> Element {
    alice
        .recv_matching(WAIT, |e| {
            e.name() == "presence" && e.attr("from") == Some(D)
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The user subscribes to `D` while a resource is online: `subscribed`,
/// then available.
async fn subscribe_to_domain(user: &mut TestClient) {
    // Prosody hands `subscribed` only to resources that fetched the
    // roster (RFC 6121 §3.1.6 "interested resources"), as clients do.
    user.send_xml("<iq type='get' id='roster-1'><query xmlns='jabber:iq:roster'/></iq>")
        .await
        .expect("roster get");
    user.recv_iq_response("roster-1", WAIT)
        .await
        .expect("roster");
    user.send_xml(&format!("<presence type='subscribe' to='{D}'/>"))
        .await
        .expect("subscribe");
    let p = presence_from_domain(user, "subscribe answered").await;
    assert_eq!(p.attr("type"), Some("subscribed"), "{}", xmpp::to_xml(&p));
    let p = presence_from_domain(user, "the domain's presence follows").await;
    assert_eq!(p.attr("type"), None, "available: {}", xmpp::to_xml(&p));
}

/// A message to the domain while no resource is online waits for one
/// (`hold_when_empty`): it gets `service-unavailable` when the hold ends,
/// or goes to the resource that comes in time; a subscription to the
/// domain is granted and followed by its presence; the domain shows
/// unavailable when the last resource leaves and available when one is
/// back (and nothing when only one of two leaves). Presence a user
/// directs at `helpdesk@D/x` reaches the user's resource from
/// `helpdesk@D/ENC`; a presence a resource directs at `D/ENC` reaches the
/// user and is not pool presence. The bot resources are test clients, so
/// the test decides when they come and go.
async fn subscription_and_presence_follow_the_pool(s: Server) {
    // A message waits up to hold_when_empty for a resource, as iq
    // requests do.
    let proxy = proxy(&s, BOTH_ON, "hold_when_empty = \"2s\"").await;
    let mut alice = online(&s, &format!("{ALICE}/phone")).await;

    let empty = chat(D, "empty-1", "anyone?");
    let waited = message_refused(&mut alice, &empty, "empty-1", D, "service-unavailable").await;
    assert!(
        waited >= Duration::from_millis(1500),
        "answered after {waited:?}: not held"
    );

    let a = online(&s, &format!("{BOT}/a")).await;
    wait_pool(&proxy, &s, 1, "bot/a is online").await;
    subscribe_to_domain(&mut alice).await;

    // A second resource and the first leaving change nothing for alice.
    let mut b = online(&s, &format!("{BOT}/b")).await;
    wait_pool(&proxy, &s, 2, "bot/b is online").await;
    a.close().await;
    wait_pool(&proxy, &s, 1, "bot/a left").await;
    // Directed unavailable from b to alice's translated address: presence
    // for alice, not pool presence.
    b.send_xml(&format!(
        "<presence type='unavailable' to='{D}/{ALICE}/phone'/>"
    ))
    .await
    .expect("directed");
    let p = presence_from_domain(&mut alice, "directed presence from the resource").await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{}", xmpp::to_xml(&p));
    // ...which alice gets (from the domain), while b stays in the pool:
    // a message still reaches it.
    alice
        .send_xml(&chat(D, "still-b", "are you there?"))
        .await
        .expect("send");
    let m = b
        .recv_matching(WAIT, |e| e.attr("id") == Some("still-b"))
        .await
        .expect("b still serves the domain");
    assert_eq!(m.attr("from"), Some(format!("{D}/{ALICE}/phone").as_str()));
    assert_eq!(proxy.status().pool.len(), 1);
    // Presence alice directs at a service address goes to her resource,
    // from that service address and her; the resource she wrote is gone.
    let desk = helpdesk();
    alice
        .send_xml(&format!("<presence to='{desk}/desk-x' id='dp-1'/>"))
        .await
        .expect("directed");
    let p = b
        .recv_matching(WAIT, |e| {
            e.name() == "presence" && e.attr("id") == Some("dp-1")
        })
        .await
        .expect("b gets alice's directed presence");
    assert_eq!(
        p.attr("from"),
        Some(format!("{desk}/{ALICE}/phone").as_str())
    );
    assert_eq!(p.attr("type"), None);

    // The last resource leaves: alice sees the domain unavailable, and
    // available again when a resource is back.
    b.close().await;
    wait_pool(&proxy, &s, 0, "bot/b left").await;
    let p = presence_from_domain(&mut alice, "the domain goes unavailable").await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{}", xmpp::to_xml(&p));
    // A message sent now waits for the next resource and goes to it:
    // bot/a logs in, alice's message is held, then bot/a sends presence.
    let mut a = xmpp::connect(&format!("{BOT}/a"), PW, s.c2s_addr(), WAIT)
        .await
        .expect("bot/a logs in");
    alice
        .send_xml(&chat(D, "held-2", "wait for me"))
        .await
        .expect("send");
    assert!(
        proxy.wait_for(WAIT, |st| st.stats.chat.held == 2).await,
        "the message is held: {:?}",
        proxy.status().stats.chat
    );
    a.send_presence().await.expect("presence");
    wait_pool(&proxy, &s, 1, "bot/a is back").await;
    let m = a
        .recv_matching(WAIT, |e| e.attr("id") == Some("held-2"))
        .await
        .expect("the held message reaches bot/a");
    assert_eq!(m.attr("from"), Some(format!("{D}/{ALICE}/phone").as_str()));
    let p = presence_from_domain(&mut alice, "the domain is available again").await;
    assert_eq!(p.attr("type"), None, "available: {}", xmpp::to_xml(&p));
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_subscription_and_presence_follow_the_pool() {
    subscription_and_presence_follow_the_pool(Server::prosody("bot").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_subscription_and_presence_follow_the_pool() {
    subscription_and_presence_follow_the_pool(Server::ejabberd("bot").await).await;
}

/// Nothing is stored: a new jatproxy process knows no subscriber, and
/// learns alice again from the probe her server sends for her at her
/// next login; she then hears the domain go unavailable.
async fn subscribers_are_relearned_from_login_probes(s: Server) {
    let old = proxy(&s, BOTH_ON, "").await;
    let a = online(&s, &format!("{BOT}/a")).await;
    wait_pool(&old, &s, 1, "bot/a is online").await;
    let mut alice = online(&s, &format!("{ALICE}/phone")).await;
    subscribe_to_domain(&mut alice).await;
    alice.close().await;
    assert!(old.shutdown(WAIT).await);

    let proxy = proxy(&s, BOTH_ON, "").await;
    wait_pool(&proxy, &s, 1, "the new process sees bot/a").await;
    let mut alice = online(&s, &format!("{ALICE}/phone")).await;
    let p = presence_from_domain(&mut alice, "the login probe answered").await;
    assert_eq!(p.attr("type"), None, "available: {}", xmpp::to_xml(&p));
    a.close().await;
    wait_pool(&proxy, &s, 0, "bot/a left").await;
    let p = presence_from_domain(&mut alice, "the domain goes unavailable").await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{}", xmpp::to_xml(&p));
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_subscribers_are_relearned_from_login_probes() {
    subscribers_are_relearned_from_login_probes(Server::prosody("bot").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_subscribers_are_relearned_from_login_probes() {
    subscribers_are_relearned_from_login_probes(Server::ejabberd("bot").await).await;
}

// ---------------------------------------------------------------------------
// Both settings off: the module's answer

/// With `messages` and `presence` off (the default), a chat message to
/// the domain gets the module's `feature-not-implemented`, from `D`, and
/// the resource online gets nothing.
async fn settings_off_keep_the_module(s: Server) {
    let proxy = proxy(&s, "", "").await;
    let mut a = online(&s, &format!("{BOT}/a")).await;
    wait_pool(&proxy, &s, 1, "bot/a is online").await;
    let mut alice = online(&s, &format!("{ALICE}/phone")).await;
    let off = chat(D, "off-1", "hello");
    message_refused(&mut alice, &off, "off-1", D, "feature-not-implemented").await;
    // An iq after it, answered by a: the message was not passed on before.
    alice
        .send_xml(&format!(
            "<iq type='get' id='off-iq' to='{D}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await
        .expect("send");
    a.recv_matching(WAIT, |e| e.attr("id") == Some("off-iq"))
        .await
        .expect("a gets the iq");
    let early: Vec<String> = a
        .drain()
        .iter()
        .filter(|e| e.name() == "message")
        .map(xmpp::to_xml)
        .collect();
    assert!(
        early.is_empty(),
        "the message reached the resource: {early:?}"
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_settings_off_keep_the_module() {
    settings_off_keep_the_module(Server::prosody("bot").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_settings_off_keep_the_module() {
    settings_off_keep_the_module(Server::ejabberd("bot").await).await;
}
