//! Messages and presence through JAT (issue 14): one byte-exact row per
//! rule of the issue's "Behaviour" section, and the rows proving that
//! with both settings off the module's answers stand.

use super::tests::{cfg, H};
use super::*;

const D: &str = "proxy.example.test";
const T: &str = "impl@example.test";
const ALICE: &str = "alice@example.test/phone";
const BOB: &str = "bob@example.test/laptop";
const HELP: &str = "helpdesk@proxy.example.test";

/// Only the client pool (no instance listener), both settings on.
fn on() -> RouterConfig {
    RouterConfig {
        instances: false,
        chat: Chat {
            messages: true,
            presence: true,
            token_idle_timeout: Duration::from_secs(60),
        },
        ..cfg()
    }
}

fn off() -> RouterConfig {
    RouterConfig {
        instances: false,
        ..cfg()
    }
}

fn err(name: &str, id: &str, from: &str, to: &str, typ: &str, cond: &str) -> String {
    format!(
        "UP <{name} type='error' id='{id}' from='{from}' to='{to}'><error type='{typ}'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></{name}>"
    )
}

fn online(h: &mut H, res: &str) -> Vec<String> {
    h.up(&format!("<presence from='{T}/{res}' to='{D}'/>"))
}

fn offline(h: &mut H, res: &str) -> Vec<String> {
    h.up(&format!(
        "<presence type='unavailable' from='{T}/{res}' to='{D}'/>"
    ))
}

// ----- both off: the module ------------------------------------------------

#[test]
fn with_both_off_messages_and_presence_get_the_modules_answers() {
    let mut h = H::new(off());
    assert!(online(&mut h, "a").is_empty());
    for to in [D.to_owned(), HELP.to_owned(), format!("{HELP}/x")] {
        assert_eq!(
            h.up(&format!(
                "<message type='chat' to='{to}' id='m' from='{ALICE}'><body>hi</body></message>"
            )),
            [err(
                "message",
                "m",
                &to,
                ALICE,
                "cancel",
                "feature-not-implemented"
            )],
            "{to}"
        );
        assert_eq!(
            h.up(&format!("<presence to='{to}' id='p' from='{ALICE}'/>")),
            [err("presence", "p", &to, ALICE, "cancel", "bad-request")],
            "{to}"
        );
    }
    for t in ["subscribe", "probe", "unsubscribe"] {
        assert_eq!(
            h.up(&format!(
                "<presence type='{t}' to='{D}' id='s' from='alice@example.test'/>"
            )),
            [err(
                "presence",
                "s",
                D,
                "alice@example.test",
                "cancel",
                "bad-request"
            )],
            "{t}"
        );
    }
    // The target's message to D/ENC: feature-not-implemented; to the
    // bare domain: bad-request; presence to D/ENC changes nothing.
    let enc = format!("{D}/{ALICE}");
    assert_eq!(
        h.up(&format!(
            "<message type='chat' to='{enc}' id='r' from='{T}/a'><body>hi</body></message>"
        )),
        [err(
            "message",
            "r",
            &enc,
            &format!("{T}/a"),
            "cancel",
            "feature-not-implemented"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<message type='chat' to='{D}' id='b' from='{T}/a'><body>hi</body></message>"
        )),
        [err(
            "message",
            "b",
            D,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
    );
    assert!(h
        .up(&format!("<presence to='{enc}' from='{T}/a'/>"))
        .is_empty());
    // Errors are never answered.
    assert!(h
        .up(&format!(
            "<message type='error' to='{D}' id='e' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().chat, ChatStats::default());
}

// ----- messages from users -------------------------------------------------

#[test]
fn a_message_goes_to_a_resource_from_the_address_written_to_with_jat() {
    let mut h = H::new(on());
    online(&mut h, "a");
    let cases = [
        (D.to_owned(), format!("{D}/{ALICE}")),
        (HELP.to_owned(), format!("{HELP}/{ALICE}")),
        // The resource written to is not kept.
        (format!("{HELP}/desk"), format!("{HELP}/{ALICE}")),
        (format!("{D}/desk"), format!("{D}/{ALICE}")),
    ];
    for (to, from) in cases {
        assert_eq!(
            h.up(&format!(
                "<message type='chat' to='{to}' id='m1' xml:lang='en' from='{ALICE}'><thread>t1</thread><body>hi</body></message>"
            )),
            [format!(
                "UP <message type='chat' to='{T}/a' id='m1' xml:lang='en' from='{from}'><thread>t1</thread><body>hi</body></message>"
            )],
            "{to}"
        );
    }
    assert_eq!(h.r.stats().chat.to_target, 4);
    assert_eq!(h.r.pending_len(), 0, "messages are not requests");
}

#[test]
fn a_resources_message_goes_to_the_user_from_the_node_byte_for_byte() {
    let mut h = H::new(on());
    online(&mut h, "a");
    // Every type, id, xml:lang, thread and every child (a carbon-like
    // wrapper) pass as they are: only the outer to/from change.
    for t in ["chat", "normal", "groupchat", "headline", "error"] {
        let body = "<thread>t1</thread><body>answer</body><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message from='x@y/z' to='q@r'/></forwarded></sent>";
        assert_eq!(
            h.up(&format!(
                "<message from='{T}/a' to='{HELP}/{ALICE}' type='{t}' id='r1' xml:lang='de'>{body}</message>"
            )),
            [format!(
                "UP <message from='{HELP}' to='{ALICE}' type='{t}' id='r1' xml:lang='de'>{body}</message>"
            )],
            "{t}"
        );
    }
    // To D/ENC: from the bare domain.
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{D}/{ALICE}' type='chat'><body>x</body></message>"
        )),
        [format!(
            "UP <message from='{D}' to='{ALICE}' type='chat'><body>x</body></message>"
        )]
    );
    // An ENC written in another case is the same user, prepared.
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{D}/ALICE@Example.Test/phone' type='chat'/>"
        )),
        [format!("UP <message from='{D}' to='{ALICE}' type='chat'/>")]
    );
    // The target to the bare domain or a node: the module's bad-request.
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{HELP}' type='chat' id='b'/>"
        )),
        [err(
            "message",
            "b",
            HELP,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
    );
    // An ENC at our own domain would loop: bad-request.
    let looped = format!("{D}/x@{D}/r");
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{looped}' type='chat' id='l'/>"
        )),
        [err(
            "message",
            "l",
            &looped,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
    );
    assert_eq!(h.r.stats().chat.from_target, 7);
}

#[test]
fn conversations_stick_per_sender_and_move_when_the_resource_leaves() {
    let mut h = H::new(on());
    online(&mut h, "a");
    online(&mut h, "b");
    let msg = |from: &str| {
        format!("<message type='chat' to='{D}' from='{from}'><body>x</body></message>")
    };
    let to_of = |out: Vec<String>| -> String {
        assert_eq!(out.len(), 1, "{out:?}");
        let i = out[0].find(" to='").expect("to") + 5;
        out[0][i..].split('\'').next().expect("value").to_owned()
    };
    let alice = to_of(h.up(&msg(ALICE)));
    let bob = to_of(h.up(&msg(BOB)));
    assert_ne!(alice, bob, "round-robin spreads new conversations");
    // Each sender keeps its resource, whatever its other resources do
    // and however many messages and presence there are.
    for _ in 0..3 {
        assert_eq!(to_of(h.up(&msg(ALICE))), alice);
        assert_eq!(to_of(h.up(&msg("alice@example.test/other"))), alice);
        assert_eq!(to_of(h.up(&msg(BOB))), bob);
        assert_eq!(
            to_of(h.up(&format!("<presence to='{HELP}' from='{ALICE}'/>"))),
            alice
        );
    }
    // Alice's resource leaves: her next message picks the other; Bob
    // stays where he is.
    let res = alice.rsplit('/').next().expect("resource").to_owned();
    assert!(offline(&mut h, &res).is_empty());
    assert_eq!(to_of(h.up(&msg(ALICE))), bob);
    assert_eq!(to_of(h.up(&msg(BOB))), bob);
    // It comes back: a new session, and Alice stays where she moved.
    online(&mut h, &res);
    assert_eq!(to_of(h.up(&msg(ALICE))), bob);
}

#[test]
fn with_no_resource_chat_normal_groupchat_are_refused_headline_and_error_dropped() {
    let mut h = H::new(on());
    for t in ["chat", "normal", "groupchat"] {
        assert_eq!(
            h.up(&format!(
                "<message type='{t}' to='{HELP}' id='n' from='{ALICE}'><body>x</body></message>"
            )),
            [err(
                "message",
                "n",
                HELP,
                ALICE,
                "cancel",
                "service-unavailable"
            )],
            "{t}"
        );
    }
    // No type is normal.
    assert_eq!(
        h.up(&format!("<message to='{D}' id='n' from='{ALICE}'/>")),
        [err(
            "message",
            "n",
            D,
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    for t in ["headline", "error"] {
        assert!(h
            .up(&format!(
                "<message type='{t}' to='{HELP}' id='h' from='{ALICE}'><body>x</body></message>"
            ))
            .is_empty());
    }
    assert_eq!(h.r.stats().chat.dropped_no_resource, 2);
    // Directed presence with nobody online: dropped.
    assert!(h
        .up(&format!("<presence to='{HELP}/x' from='{ALICE}'/>"))
        .is_empty());
    // An error message from a user with a resource online is delivered.
    online(&mut h, "a");
    assert_eq!(
        h.up(&format!(
            "<message type='error' to='{D}/{T}/a' id='e' from='{ALICE}'><error type='cancel'/></message>"
        )),
        [format!(
            "UP <message type='error' to='{T}/a' id='e' from='{D}/{ALICE}'><error type='cancel'/></message>"
        )]
    );
}

// ----- opaque tokens --------------------------------------------------------

#[test]
fn opaque_tokens_carry_conversations_and_expired_ones_bounce() {
    let mut h = H::new(RouterConfig {
        jat: JatMode::Opaque,
        ..on()
    });
    online(&mut h, "a");
    let out = h.up(&format!(
        "<message type='chat' to='{HELP}' from='{ALICE}'><body>x</body></message>"
    ));
    assert_eq!(out.len(), 1, "{out:?}");
    let prefix = format!(
        "UP <message type='chat' to='{T}/a' from='{HELP}/{}",
        jat::TOKEN_PREFIX
    );
    assert!(out[0].starts_with(&prefix), "{out:?}");
    let enc = out[0][prefix.len() - jat::TOKEN_PREFIX.len()..]
        .split('\'')
        .next()
        .expect("token")
        .to_owned();
    assert!(!out[0].contains(ALICE), "the user is hidden: {out:?}");
    // The same token for the next message, and the reply reaches Alice.
    let again = h.up(&format!("<message type='chat' to='{D}' from='{ALICE}'/>"));
    assert_eq!(
        again,
        [format!(
            "UP <message type='chat' to='{T}/a' from='{D}/{enc}'/>"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{HELP}/{enc}' type='chat'><body>y</body></message>"
        )),
        [format!(
            "UP <message from='{HELP}' to='{ALICE}' type='chat'><body>y</body></message>"
        )]
    );
    // Used within the timeout, it lives on.
    h.advance(Duration::from_secs(50));
    assert_eq!(
        h.up(&format!("<message from='{T}/a' to='{HELP}/{enc}'/>")),
        [format!("UP <message from='{HELP}' to='{ALICE}'/>")]
    );
    // Idle past it: a reply bounces to the resource, never goes on.
    h.advance(Duration::from_secs(61));
    let bounced = format!("{HELP}/{enc}");
    assert_eq!(
        h.up(&format!(
            "<message from='{T}/a' to='{bounced}' type='chat' id='late'><body>z</body></message>"
        )),
        [err(
            "message",
            "late",
            &bounced,
            &format!("{T}/a"),
            "cancel",
            "item-not-found"
        )]
    );
    // An error about that user is dropped and counted, never answered.
    assert!(h
        .up(&format!(
            "<message from='{T}/a' to='{bounced}' type='error' id='e'/>"
        ))
        .is_empty());
    assert!(h
        .up(&format!(
            "<presence from='{T}/a' to='{bounced}' type='error'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().chat.undecodable, 2);
    // Alice writes again: a fresh token, which works.
    let out = h.up(&format!("<message type='chat' to='{D}' from='{ALICE}'/>"));
    assert_eq!(out.len(), 1);
    assert!(!out[0].contains(&enc), "{out:?}");
    // An inline-looking ENC names no one with opaque JAT.
    let inline = format!("{D}/{ALICE}");
    assert_eq!(
        h.up(&format!("<message from='{T}/a' to='{inline}' id='i'/>")),
        [err(
            "message",
            "i",
            &inline,
            &format!("{T}/a"),
            "cancel",
            "item-not-found"
        )]
    );
}

// ----- presence -------------------------------------------------------------

#[test]
fn subscription_and_probes_to_the_domain_are_answered_by_the_proxy() {
    let mut h = H::new(on());
    let a = "alice@example.test";
    // Nobody online: subscribed, then unavailable.
    assert_eq!(
        h.up(&format!("<presence type='subscribe' to='{D}' from='{a}'/>")),
        [
            format!("UP <presence type='subscribed' from='{D}' to='{a}'/>"),
            format!("UP <presence type='unavailable' from='{D}' to='{a}'/>"),
        ]
    );
    // A probe (the server's, on a user's login) is answered with the
    // current presence, to who probed.
    assert_eq!(
        h.up(&format!(
            "<presence type='probe' to='{D}' from='bob@example.test'/>"
        )),
        [format!(
            "UP <presence type='unavailable' from='{D}' to='bob@example.test'/>"
        )]
    );
    // The pool goes non-empty: both hear it, once.
    let mut told = online(&mut h, "a");
    told.sort();
    assert_eq!(
        told,
        [
            format!("UP <presence from='{D}' to='{a}'/>"),
            format!("UP <presence from='{D}' to='bob@example.test'/>"),
        ]
    );
    assert!(online(&mut h, "b").is_empty(), "not news");
    // Available or unavailable to the domain: answered like a probe,
    // never with an error.
    assert_eq!(
        h.up(&format!("<presence to='{D}' from='{ALICE}'/>")),
        [format!("UP <presence from='{D}' to='{ALICE}'/>")]
    );
    assert_eq!(
        h.up(&format!(
            "<presence type='unavailable' to='{D}' from='{ALICE}'/>"
        )),
        [format!("UP <presence from='{D}' to='{ALICE}'/>")]
    );
    // A node's subscription is answered from the node.
    assert_eq!(
        h.up(&format!(
            "<presence type='subscribe' to='{HELP}' from='{a}'/>"
        )),
        [
            format!("UP <presence type='subscribed' from='{HELP}' to='{a}'/>"),
            format!("UP <presence from='{HELP}' to='{a}'/>"),
        ]
    );
    // Bob unsubscribes.
    assert_eq!(
        h.up(&format!(
            "<presence type='unsubscribe' to='{D}' from='bob@example.test'/>"
        )),
        [format!(
            "UP <presence type='unsubscribed' from='{D}' to='bob@example.test'/>"
        )]
    );
    // The user's own subscription answers and errors: dropped.
    for t in ["subscribed", "unsubscribed", "error"] {
        assert!(h
            .up(&format!("<presence type='{t}' to='{D}' from='{a}'/>"))
            .is_empty());
    }
    // The pool empties: who is left subscribed hears it, from where.
    assert!(offline(&mut h, "a").is_empty(), "b is still there");
    let mut told = offline(&mut h, "b");
    told.sort();
    assert_eq!(
        told,
        [
            format!("UP <presence type='unavailable' from='{HELP}' to='{a}'/>"),
            format!("UP <presence type='unavailable' from='{D}' to='{a}'/>"),
        ]
    );
}

#[test]
fn pool_presence_is_announced_at_every_way_the_pool_empties() {
    let mut h = H::new(on());
    let a = "alice@example.test";
    h.up(&format!("<presence type='probe' to='{D}' from='{a}'/>"));
    online(&mut h, "a");
    // A presence error from the target drops every resource.
    assert_eq!(
        h.up(&format!("<presence type='error' to='{D}' from='{T}'/>")),
        [format!(
            "UP <presence type='unavailable' from='{D}' to='{a}'/>"
        )]
    );
    assert_eq!(
        online(&mut h, "a"),
        [format!("UP <presence from='{D}' to='{a}'/>")]
    );
    // The server goes away and comes back with the resource: a blip
    // no one is told about (nothing is held for it either).
    let mut out = Vec::new();
    h.r.upstream_lost(h.now, &mut h.rng, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.r.backlog().len(), 0);
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(
        super::tests::render(out),
        [format!(
            "UP <presence type='subscribe' from='{D}' to='{T}'/>"
        )]
    );
    assert!(online(&mut h, "a").is_empty(), "not news");
    assert_eq!(
        offline(&mut h, "a"),
        [format!(
            "UP <presence type='unavailable' from='{D}' to='{a}'/>"
        )]
    );
    // An instance is a member too.
    let mut out = Vec::new();
    h.r.instance_up(7, h.now, &mut out);
    assert_eq!(
        super::tests::render(out),
        [format!("UP <presence from='{D}' to='{a}'/>")]
    );
    let mut out = Vec::new();
    h.r.instance_down(7, h.now, &mut h.rng, &mut out);
    assert_eq!(
        super::tests::render(out),
        [format!(
            "UP <presence type='unavailable' from='{D}' to='{a}'/>"
        )]
    );
}

#[test]
fn presence_off_tells_no_one_and_a_reload_forgets_subscribers() {
    let mut h = H::new(on());
    let a = "alice@example.test";
    h.up(&format!("<presence type='probe' to='{D}' from='{a}'/>"));
    let mut out = Vec::new();
    let mut cfg = on();
    cfg.chat.presence = false;
    h.r.reload(cfg, h.now, &mut h.rng, &mut out);
    assert!(out.is_empty());
    assert!(online(&mut h, "a").is_empty(), "presence off: no one told");
    let mut out = Vec::new();
    h.r.reload(on(), h.now, &mut h.rng, &mut out);
    assert!(
        offline(&mut h, "a").is_empty(),
        "the subscriber was forgotten"
    );
}

#[test]
fn directed_presence_goes_to_the_sticky_resource_and_back() {
    let mut h = H::new(on());
    online(&mut h, "a");
    for to in [HELP.to_owned(), format!("{HELP}/desk")] {
        assert_eq!(
            h.up(&format!(
                "<presence to='{to}' from='{ALICE}'><show>away</show><c xmlns='http://jabber.org/protocol/caps' ver='v'/></presence>"
            )),
            [format!(
                "UP <presence to='{T}/a' from='{HELP}/{ALICE}'><show>away</show><c xmlns='http://jabber.org/protocol/caps' ver='v'/></presence>"
            )],
            "{to}"
        );
    }
    assert_eq!(
        h.up(&format!(
            "<presence type='unavailable' to='{HELP}/desk' from='{ALICE}'/>"
        )),
        [format!(
            "UP <presence type='unavailable' to='{T}/a' from='{HELP}/{ALICE}'/>"
        )]
    );
    // Subscription presence to a full address: dropped.
    assert!(h
        .up(&format!(
            "<presence type='subscribe' to='{HELP}/desk' from='{ALICE}'/>"
        ))
        .is_empty());
    // The resource's directed presence goes to Alice from the node, and
    // an unavailable one leaves the resource in the pool.
    assert_eq!(
        h.up(&format!(
            "<presence from='{T}/a' to='{HELP}/{ALICE}'><status>here</status></presence>"
        )),
        [format!(
            "UP <presence from='{HELP}' to='{ALICE}'><status>here</status></presence>"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<presence type='unavailable' from='{T}/a' to='{D}/{ALICE}'/>"
        )),
        [format!(
            "UP <presence type='unavailable' from='{D}' to='{ALICE}'/>"
        )]
    );
    assert_eq!(
        h.r.pool().len(),
        1,
        "directed presence is not pool presence"
    );
    // A presence error from the resource to a user is translated too.
    assert_eq!(
        h.up(&format!(
            "<presence type='error' from='{T}/a' to='{D}/{ALICE}'><error type='cancel'/></presence>"
        )),
        [format!(
            "UP <presence type='error' from='{D}' to='{ALICE}'><error type='cancel'/></presence>"
        )]
    );
    assert_eq!(h.r.pool().len(), 1);
}

#[test]
fn instances_keep_the_conversations_they_have() {
    // Instances in the pool: messages and presence from users stick to
    // an instance as before; the resource's replies still go to users.
    let mut h = H::new(RouterConfig {
        instances: true,
        ..on()
    });
    online(&mut h, "a");
    let mut out = Vec::new();
    h.r.instance_up(3, h.now, &mut out);
    let m = format!("<message type='chat' to='{D}' from='{ALICE}'><body>x</body></message>");
    assert_eq!(h.up(&m), [format!("I3 {m}")]);
    let p = format!("<presence type='probe' to='{D}' from='{ALICE}'/>");
    assert_eq!(h.up(&p), [format!("I3 {p}")]);
    assert_eq!(
        h.up(&format!("<message from='{T}/a' to='{D}/{ALICE}'/>")),
        [format!("UP <message from='{D}' to='{ALICE}'/>")]
    );
}

#[test]
fn a_message_too_large_for_the_server_is_refused_not_forwarded() {
    let mut h = H::new(RouterConfig {
        max_write: 120,
        ..on()
    });
    online(&mut h, "a");
    let body = "x".repeat(100);
    let out = h.up(&format!(
        "<message type='chat' to='{D}' id='big' from='{ALICE}'><body>{body}</body></message>"
    ));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with(&format!("UP <message type='error' id='big' from='{D}' to='{ALICE}'><error type='modify'><policy-violation")),
        "{out:?}"
    );
    let out = h.up(&format!(
        "<message from='{T}/a' to='{D}/{ALICE}' id='big2'><body>{body}</body></message>"
    ));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].contains("policy-violation") && out[0].contains(&format!("to='{T}/a'")),
        "{out:?}"
    );
}

#[test]
fn with_a_hold_messages_wait_for_a_resource_then_stick_to_it() {
    let mut h = H::new(RouterConfig {
        continuity: Continuity {
            hold_when_empty: Duration::from_secs(10),
            ..Continuity::off()
        },
        ..on()
    });
    let m1 =
        format!("<message type='chat' to='{HELP}' id='h1' from='{ALICE}'><body>1</body></message>");
    let m2 = format!("<message to='{D}/x' id='h2' from='{BOB}'><body>2</body></message>");
    assert!(h.up(&m1).is_empty());
    assert!(h.up(&m2).is_empty());
    // Headline and error are never held.
    assert!(h
        .up(&format!(
            "<message type='headline' to='{D}' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().chat.held, 2);
    assert_eq!(h.r.stats().chat.dropped_no_resource, 1);
    assert_eq!(h.r.next_deadline(), Some(h.now + Duration::from_secs(10)));
    h.advance(Duration::from_secs(9));
    // A resource joins: both go to it, in order, and stick there.
    assert_eq!(
        online(&mut h, "b"),
        [
            format!("UP <message type='chat' to='{T}/b' id='h1' from='{HELP}/{ALICE}'><body>1</body></message>"),
            format!("UP <message to='{T}/b' id='h2' from='{D}/{BOB}'><body>2</body></message>"),
        ]
    );
    online(&mut h, "a");
    let out = h.up(&format!("<message to='{D}' from='{ALICE}'/>"));
    assert_eq!(
        out,
        [format!("UP <message to='{T}/b' from='{D}/{ALICE}'/>")]
    );
    // Nobody again: a message whose hold ends gets service-unavailable
    // from the address it was written to.
    offline(&mut h, "a");
    offline(&mut h, "b");
    assert!(h.up(&m1).is_empty());
    assert!(h.advance(Duration::from_millis(9999)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        [err(
            "message",
            "h1",
            HELP,
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    // At shutdown a held message gets recipient-unavailable.
    assert!(h.up(&m2).is_empty());
    let mut out = Vec::new();
    h.r.drain(&mut out);
    assert_eq!(
        super::tests::render(out),
        [err(
            "message",
            "h2",
            &format!("{D}/x"),
            BOB,
            "wait",
            "recipient-unavailable"
        )]
    );
}

#[test]
fn iq_requests_keep_the_modules_domain_enc_with_conversations_on() {
    // Implementing clients such as jicofo depend on `from='D/ENC'`: an
    // iq to a node keeps it, while a message to the node names it.
    let mut h = H::new(on());
    online(&mut h, "a");
    assert_eq!(
        h.up(&format!(
            "<iq type='get' id='q' to='{HELP}' from='{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )),
        [format!(
            "UP <iq type='get' id='q' to='{T}/a' from='{D}/{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='q' to='{D}/{ALICE}' from='{T}/a'/>"
        )),
        [format!(
            "UP <iq type='result' id='q' to='{ALICE}' from='{HELP}'/>"
        )]
    );
    assert_eq!(
        h.up(&format!("<message to='{HELP}' from='{ALICE}'/>")),
        [format!("UP <message to='{T}/a' from='{HELP}/{ALICE}'/>")]
    );
}
