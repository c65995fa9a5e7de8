//! One test per row of the routing table (DESIGN.md) and per rule of the
//! client-proxy and instance issues, plus a randomised check of the
//! exactly-one-answer rule.

use super::*;
use crate::xml::parse_one;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: &str = "proxy.example.test";
const T: &str = "impl@example.test";
const ALICE: &str = "alice@example.test/phone";

pub(super) fn cfg() -> RouterConfig {
    RouterConfig {
        domain: D.into(),
        target: Some(T.into()),
        jat: JatMode::Inline,
        client_requests: true,
        subscribe: true,
        // Both pools: most tests mix resources and instances.
        instances: true,
        balancing: Balancing::RoundRobin,
        iq_timeout: Duration::from_secs(30),
        pending_capacity: NonZeroUsize::new(16).expect("nonzero"),
        max_write: 512 * 1024,
        admission: Admission::default(),
        continuity: Continuity::off(),
        chat: Chat::default(),
    }
}

pub(super) struct H {
    pub(super) r: Router,
    pub(super) rng: StdRng,
    pub(super) now: Instant,
}

impl H {
    /// A router whose server session is up: what it writes upstream is
    /// written, not held.
    pub(super) fn new(cfg: RouterConfig) -> Self {
        let mut r = Router::new(cfg, crate::backlog::Bound::items(64));
        r.upstream_online(&mut Vec::new());
        H {
            r,
            rng: StdRng::seed_from_u64(42),
            now: Instant::now(),
        }
    }

    pub(super) fn up(&mut self, xml: &str) -> Vec<String> {
        let st = parse_one(xml.as_bytes()).expect("test stanza frames");
        let mut out = Vec::new();
        self.r.from_upstream(&st, self.now, &mut self.rng, &mut out);
        render(out)
    }

    fn inst(&mut self, id: InstanceId, xml: &str) -> Vec<String> {
        let st = parse_one(xml.as_bytes()).expect("test stanza frames");
        let mut out = Vec::new();
        self.r
            .from_instance(id, &st, self.now, &mut self.rng, &mut out);
        render(out)
    }

    fn online(&mut self, res: &str) {
        let out = self.up(&format!("<presence from='{T}/{res}' to='{D}'/>"));
        assert!(out.is_empty(), "{out:?}");
    }

    pub(super) fn advance(&mut self, d: Duration) -> Vec<String> {
        self.now += d;
        let mut out = Vec::new();
        self.r.expire(self.now, &mut self.rng, &mut out);
        render(out)
    }
}

/// Actions as text: `UP <bytes>`, `I3 <bytes>`, `CLOSE3 <condition>`.
pub(super) fn render(actions: Vec<Action>) -> Vec<String> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Upstream(w) | Action::UpstreamAnswer(w) | Action::UpstreamRequest(w, _) => {
                format!("UP {}", String::from_utf8_lossy(&w.to_bytes()))
            }
            Action::Instance(i, w) => format!("I{i} {}", String::from_utf8_lossy(&w.to_bytes())),
            Action::CloseInstance(i, r) => format!("CLOSE{i} {}", r.condition()),
        })
        .collect()
}

fn err(name: &str, id: &str, from: &str, to: &str, typ: &str, cond: &str) -> String {
    format!(
        "UP <{name} type='error' id='{id}' from='{from}' to='{to}'><error type='{typ}'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></{name}>"
    )
}

// ----- the seed flow ---------------------------------------------------------

#[test]
fn seed_flow_is_the_modules_four_steps() {
    let mut h = H::new(cfg());
    h.online("a");
    let fwd = h.up(&format!(
        "<iq type='get' id='1234' to='{D}' from='{ALICE}'><echo xmlns='urn:example:echo'>hello</echo></iq>"
    ));
    assert_eq!(
        fwd,
        [format!("UP <iq type='get' id='1234' to='{T}/a' from='{D}/{ALICE}'><echo xmlns='urn:example:echo'>hello</echo></iq>")]
    );
    let back = h.up(&format!(
        "<iq type='result' id='1234' to='{D}/{ALICE}' from='{T}/a'><echo xmlns='urn:example:echo' from-resource='a'>hello</echo></iq>"
    ));
    assert_eq!(
        back,
        [format!("UP <iq type='result' id='1234' to='{ALICE}' from='{D}'><echo xmlns='urn:example:echo' from-resource='a'>hello</echo></iq>")]
    );
    assert_eq!(h.r.pending_len(), 0);
    assert_eq!(h.r.stats().replies_delivered, 1);
}

#[test]
fn error_replies_from_the_client_pass_back_with_payload() {
    let mut h = H::new(cfg());
    h.online("b");
    h.up(&format!(
        "<iq type='set' id='e1' to='{D}' from='{ALICE}'><echo xmlns='urn:example:echo'/></iq>"
    ));
    let back = h.up(&format!(
        "<iq type='error' id='e1' to='{D}/{ALICE}' from='{T}/b'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ));
    assert_eq!(back.len(), 1);
    assert!(
        back[0].contains(&format!("to='{ALICE}' from='{D}'")),
        "{back:?}"
    );
    assert!(back[0].contains("<item-not-found"));
}

#[test]
fn reply_comes_from_the_address_the_requester_used() {
    let mut h = H::new(cfg());
    h.online("a");
    h.up(&format!(
        "<iq type='get' id='x' to='{D}/svc' from='{ALICE}'/>"
    ));
    let back = h.up(&format!(
        "<iq type='result' id='x' to='{D}/{ALICE}' from='{T}/a'/>"
    ));
    assert_eq!(
        back,
        [format!(
            "UP <iq type='result' id='x' to='{ALICE}' from='{D}/svc'/>"
        )]
    );
}

// ----- the module's generated errors ---------------------------------------

#[test]
fn no_resource_is_service_unavailable() {
    let mut h = H::new(cfg());
    let out = h.up(&format!("<iq id='none-1' to='{D}' type='get' from='{ALICE}'><echo xmlns='urn:example:echo'>anyone?</echo></iq>"));
    assert_eq!(
        out,
        [err(
            "iq",
            "none-1",
            D,
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
}

#[test]
fn message_is_feature_not_implemented() {
    let mut h = H::new(cfg());
    h.online("a");
    let out = h.up(&format!(
        "<message type='chat' to='{D}' id='m1' from='{ALICE}'><body>hi proxy</body></message>"
    ));
    assert_eq!(
        out,
        [err(
            "message",
            "m1",
            D,
            ALICE,
            "cancel",
            "feature-not-implemented"
        )]
    );
}

#[test]
fn presence_from_others_is_bad_request() {
    let mut h = H::new(cfg());
    let out = h.up(&format!("<presence to='{D}' id='p1' from='{ALICE}'/>"));
    assert_eq!(
        out,
        [err("presence", "p1", D, ALICE, "cancel", "bad-request")]
    );
    let out = h.up(&format!(
        "<presence type='unavailable' to='{D}' id='p2' from='{ALICE}'/>"
    ));
    assert_eq!(
        out,
        [err("presence", "p2", D, ALICE, "cancel", "bad-request")]
    );
}

#[test]
fn errors_are_never_answered_with_errors() {
    let mut h = H::new(cfg());
    assert!(h
        .up(&format!("<presence type='error' to='{D}' from='{ALICE}'/>"))
        .is_empty());
    assert!(h
        .up(&format!("<message type='error' to='{D}' from='{ALICE}'/>"))
        .is_empty());
    assert!(h
        .up(&format!(
            "<iq type='error' id='z' to='{D}' from='{ALICE}'/>"
        ))
        .is_empty());
}

#[test]
fn stanza_from_target_to_bare_domain_is_bad_request() {
    let mut h = H::new(cfg());
    h.online("a");
    let out = h.up(&format!(
        "<iq id='implreq-2' to='{D}' type='get' from='{T}/a'/>"
    ));
    assert_eq!(
        out,
        [err(
            "iq",
            "implreq-2",
            D,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
    );
    let out = h.up(&format!("<message id='m' to='{D}' from='{T}/a'/>"));
    assert_eq!(
        out,
        [err(
            "message",
            "m",
            D,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
    );
}

#[test]
fn unaddressed_and_foreign_stanzas_are_dropped_and_counted() {
    let mut h = H::new(cfg());
    assert!(h
        .up("<iq type='get' id='1' to='proxy.example.test'/>")
        .is_empty());
    assert!(h
        .up(&format!("<iq type='get' id='1' from='{ALICE}'/>"))
        .is_empty());
    assert!(h
        .up(&format!(
            "<iq type='get' id='1' to='other.example.test' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().dropped_unaddressed, 3);
    assert!(h
        .up(&format!(
            "<iq xmlns='jabber:client' type='get' id='1' to='{D}' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().dropped_other, 1);
}

#[test]
fn iq_without_id_or_type_is_bad_request() {
    let mut h = H::new(cfg());
    h.online("a");
    let out = h.up(&format!("<iq type='get' to='{D}' from='{ALICE}'/>"));
    assert_eq!(out.len(), 1);
    assert!(out[0].contains("<bad-request"));
    let out = h.up(&format!(
        "<iq type='bogus' id='q' to='{D}' from='{ALICE}'/>"
    ));
    assert_eq!(out, [err("iq", "q", D, ALICE, "cancel", "bad-request")]);
}

// ----- presence tracking ------------------------------------------------------

#[test]
fn presence_tracks_resources_as_a_set() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("a");
    h.online("b");
    assert_eq!(h.r.pool().len(), 2);
    assert!(h
        .up(&format!(
            "<presence type='unavailable' from='{T}/a' to='{D}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.pool().members(), &[Member::Resource(format!("{T}/b"))]);
    // Every request now lands on b: no hole.
    for i in 0..5 {
        let out = h.up(&format!(
            "<iq type='get' id='h{i}' to='{D}' from='{ALICE}'/>"
        ));
        assert!(out[0].contains(&format!("to='{T}/b'")), "{out:?}");
    }
}

#[test]
fn bare_presence_from_target_adds_nothing() {
    let mut h = H::new(cfg());
    h.up(&format!("<presence from='{T}' to='{D}'/>"));
    assert!(h.r.pool().is_empty());
}

#[test]
fn presence_error_from_target_clears_all() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("b");
    h.up(&format!("<iq type='get' id='1' to='{D}' from='{ALICE}'/>"));
    let out = h.up(&format!("<presence type='error' from='{T}' to='{D}'/>"));
    assert!(h.r.pool().is_empty());
    assert_eq!(
        out,
        [err("iq", "1", D, ALICE, "wait", "recipient-unavailable")]
    );
}

#[test]
fn subscription_handshake() {
    let mut h = H::new(cfg());
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(
        render(out),
        [format!(
            "UP <presence type='subscribe' from='{D}' to='{T}'/>"
        )]
    );
    // Probe only once subscribed (a probe before makes Prosody cancel the
    // stored subscription request).
    assert_eq!(
        h.up(&format!(
            "<presence type='subscribed' from='{T}' to='{D}'/>"
        )),
        [format!("UP <presence type='probe' from='{D}' to='{T}'/>")]
    );
    assert_eq!(
        h.up(&format!("<presence type='subscribe' from='{T}' to='{D}'/>")),
        [format!(
            "UP <presence type='subscribed' from='{D}' to='{T}'/>"
        )]
    );
    assert_eq!(
        h.up(&format!("<presence type='probe' from='{T}/a' to='{D}'/>")),
        [format!("UP <presence from='{D}' to='{T}/a'/>")]
    );
    assert!(h
        .up(&format!(
            "<presence type='unsubscribed' from='{T}' to='{D}'/>"
        ))
        .is_empty());
}

#[test]
fn subscribe_off_probes_instead_and_no_target_sends_nothing() {
    // Off: the subscription is provisioned, so no request is sent, and
    // the probe goes out at once: nothing stored can be lost by it, and
    // without it resources already online would stay unknown.
    let mut c = cfg();
    c.subscribe = false;
    let mut h = H::new(c.clone());
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(
        render(out),
        [format!("UP <presence type='probe' from='{D}' to='{T}'/>")]
    );
    c.target = None;
    let mut h = H::new(c);
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn targets_subscribe_is_answered_whatever_the_setting() {
    // `subscribe` is about asking, never about answering: the target may
    // always put the component in its roster.
    for subscribe in [true, false] {
        let mut h = H::new(RouterConfig { subscribe, ..cfg() });
        assert_eq!(
            h.up(&format!("<presence type='subscribe' from='{T}' to='{D}'/>")),
            [format!(
                "UP <presence type='subscribed' from='{D}' to='{T}'/>"
            )],
            "subscribe = {subscribe}"
        );
    }
}

#[test]
fn unsubscribed_takes_the_targets_resources_out_and_answers_their_requests() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("b");
    h.r.instance_up(7, h.now, &mut Vec::new());
    // Round robin: one request each on b, the instance, a.
    for i in 0..3 {
        assert_eq!(
            h.up(&format!(
                "<iq type='get' id='u{i}' to='{D}' from='{ALICE}'/>"
            ))
            .len(),
            1
        );
    }
    let mut out = h.up(&format!(
        "<presence type='unsubscribed' from='{T}' to='{D}'/>"
    ));
    out.sort();
    let mut failed = vec![
        err("iq", "u0", D, ALICE, "wait", "recipient-unavailable"),
        err("iq", "u2", D, ALICE, "wait", "recipient-unavailable"),
    ];
    failed.sort();
    assert_eq!(out, failed);
    assert_eq!(h.r.pool().members(), &[Member::Instance(7)]);
    assert_eq!(h.r.pending_len(), 1, "the instance's request stays");
    // The pool stays without resources: new requests go to the instance.
    let out = h.up(&format!("<iq type='get' id='u3' to='{D}' from='{ALICE}'/>"));
    assert!(out[0].starts_with("I7 "), "{out:?}");
}

// ----- exactly one answer ----------------------------------------------------

#[test]
fn reply_from_another_resource_or_account_is_dropped() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("b");
    h.up(&format!("<iq type='get' id='s' to='{D}' from='{ALICE}'/>"));
    // Round robin sent it to b (the second pick).
    let asked = if h.r.pool().load(&Member::Resource(format!("{T}/a"))) == 1 {
        "a"
    } else {
        "b"
    };
    let other = if asked == "a" { "b" } else { "a" };
    assert!(h
        .up(&format!(
            "<iq type='result' id='s' to='{D}/{ALICE}' from='{T}/{other}'/>"
        ))
        .is_empty());
    assert!(h
        .up(&format!(
            "<iq type='result' id='s' to='{D}/{ALICE}' from='mallory@example.test/x'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_spoofed, 2);
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='s' to='{D}/{ALICE}' from='{T}/{asked}'/>"
        ))
        .len(),
        1
    );
    // A duplicate is late.
    assert!(h
        .up(&format!(
            "<iq type='result' id='s' to='{D}/{ALICE}' from='{T}/{asked}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_unmatched, 1);
}

#[test]
fn timeout_answers_once_and_late_reply_is_dropped() {
    let mut h = H::new(cfg());
    h.online("a");
    h.up(&format!("<iq type='get' id='t' to='{D}' from='{ALICE}'/>"));
    assert!(h.advance(Duration::from_secs(29)).is_empty());
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        [err("iq", "t", D, ALICE, "wait", "remote-server-timeout")]
    );
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    assert!(h
        .up(&format!(
            "<iq type='result' id='t' to='{D}/{ALICE}' from='{T}/a'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().generated(StanzaError::RemoteServerTimeout), 1);
}

#[test]
fn resource_leaving_fails_its_requests_only() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("b");
    for i in 0..4 {
        h.up(&format!(
            "<iq type='get' id='r{i}' to='{D}' from='{ALICE}'/>"
        ));
    }
    let out = h.up(&format!(
        "<presence type='unavailable' from='{T}/a' to='{D}'/>"
    ));
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|o| o.contains("recipient-unavailable")));
    assert_eq!(h.r.pending_len(), 2);
}

#[test]
fn full_table_answers_the_oldest() {
    let mut c = cfg();
    c.pending_capacity = NonZeroUsize::new(2).expect("nonzero");
    let mut h = H::new(c);
    h.online("a");
    h.up(&format!("<iq type='get' id='1' to='{D}' from='{ALICE}'/>"));
    h.up(&format!("<iq type='get' id='2' to='{D}' from='{ALICE}'/>"));
    let out = h.up(&format!("<iq type='get' id='3' to='{D}' from='{ALICE}'/>"));
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0],
        err("iq", "1", D, ALICE, "wait", "resource-constraint")
    );
    assert!(out[1].contains("id='3'"));
    assert!(h
        .up(&format!(
            "<iq type='result' id='1' to='{D}/{ALICE}' from='{T}/a'/>"
        ))
        .is_empty());
}

#[test]
fn duplicate_id_in_flight_is_conflict() {
    let mut h = H::new(cfg());
    h.online("a");
    h.up(&format!(
        "<iq type='get' id='dup' to='{D}' from='{ALICE}'/>"
    ));
    let out = h.up(&format!(
        "<iq type='get' id='dup' to='{D}' from='{ALICE}'/>"
    ));
    assert_eq!(out, [err("iq", "dup", D, ALICE, "cancel", "conflict")]);
    assert_eq!(h.r.pending_len(), 1);
}

#[test]
fn upstream_loss_fails_resource_requests() {
    let mut h = H::new(cfg());
    h.online("a");
    h.up(&format!("<iq type='get' id='u' to='{D}' from='{ALICE}'/>"));
    let mut out = Vec::new();
    h.r.upstream_lost(h.now, &mut h.rng, &mut out);
    assert!(out.is_empty(), "held while the server is away: {out:?}");
    assert!(h.r.pool().is_empty());
    assert_eq!(h.r.backlog().len(), 1);
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(
        render(out),
        [
            format!("UP <presence type='subscribe' from='{D}' to='{T}'/>"),
            err("iq", "u", D, ALICE, "wait", "recipient-unavailable")
        ]
    );
}

#[test]
fn drain_answers_everything() {
    let mut h = H::new(cfg());
    h.online("a");
    h.r.instance_up(7, h.now, &mut Vec::new());
    for i in 0..3 {
        h.up(&format!(
            "<iq type='get' id='d{i}' to='{D}' from='{ALICE}'/>"
        ));
    }
    let mut out = Vec::new();
    h.r.drain(&mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(h.r.pending_len(), 0);
}

#[test]
fn after_shutdown_requests_are_refused_with_an_answer_and_the_rest_dropped() {
    let mut h = H::new(cfg());
    h.online("a");
    let refuse = |h: &mut H, xml: &str| {
        let st = parse_one(xml.as_bytes()).expect("test stanza frames");
        let mut out = Vec::new();
        let answered = h.r.refuse_closing(&st, &mut out);
        (answered, render(out))
    };
    let (answered, out) = refuse(
        &mut h,
        &format!("<iq type='get' id='late' to='{D}' from='{ALICE}'><q xmlns='x'/></iq>"),
    );
    assert!(answered);
    assert_eq!(
        out,
        [err("iq", "late", D, ALICE, "wait", "recipient-unavailable")]
    );
    // Nothing was routed: no resource saw it, nothing is pending.
    assert_eq!(h.r.pending_len(), 0);
    for xml in [
        format!("<iq type='result' id='r' to='{D}/x' from='{T}/a'/>"),
        format!("<message to='{D}' from='{ALICE}'><body>hi</body></message>"),
        format!("<presence to='{D}' from='{T}/a'/>"),
        format!("<iq type='get' id='nofrom' to='{D}'/>"),
    ] {
        let (answered, out) = refuse(&mut h, &xml);
        assert!(!answered && out.is_empty(), "{xml}: {out:?}");
    }
}

// ----- JAT modes -------------------------------------------------------------

#[test]
fn opaque_mode_hides_the_requester() {
    let mut c = cfg();
    c.jat = JatMode::Opaque;
    let mut h = H::new(c);
    h.online("a");
    let fwd = h.up(&format!("<iq type='get' id='o' to='{D}' from='{ALICE}'/>"));
    assert!(!fwd[0].contains("alice"), "{fwd:?}");
    let enc = fwd[0]
        .split(&format!("from='{D}/"))
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("from attribute")
        .to_owned();
    assert!(enc.starts_with(jat::TOKEN_PREFIX));
    let back = h.up(&format!(
        "<iq type='result' id='o' to='{D}/{enc}' from='{T}/a'/>"
    ));
    assert_eq!(
        back,
        [format!(
            "UP <iq type='result' id='o' to='{ALICE}' from='{D}'/>"
        )]
    );
}

#[test]
fn escaped_requester_round_trips() {
    let mut h = H::new(cfg());
    h.online("a");
    let req = "o'brien@example.test/r&d";
    let fwd = h.up(&format!(
        "<iq type='get' id='q' to='{D}' from=\"o'brien@example.test/r&amp;d\"/>"
    ));
    // The new from keeps the attribute's own quote style and escapes.
    assert!(
        fwd[0].contains(&format!("from=\"{D}/o'brien@example.test/r&amp;d\"")),
        "{fwd:?}"
    );
    let back = h.up(&format!(
        "<iq type='result' id='q' to=\"{D}/o'brien@example.test/r&amp;d\" from='{T}/a'/>"
    ));
    assert!(
        back[0].contains("to=\"o'brien@example.test/r&amp;d\""),
        "{back:?}"
    );
    let st = parse_one(&back[0].as_bytes()[3..]).expect("parses");
    assert_eq!(st.to(), Some(req));
}

// ----- requests from the implementing client ----------------------------------

#[test]
fn target_request_goes_to_the_decoded_address_and_back() {
    let mut h = H::new(cfg());
    h.online("a");
    let fwd = h.up(&format!("<iq id='implreq-1' to='{D}/{ALICE}' type='get' from='{T}/a'><ping xmlns='urn:xmpp:ping'/></iq>"));
    assert_eq!(fwd, [format!("UP <iq id='implreq-1' to='{ALICE}' type='get' from='{D}'><ping xmlns='urn:xmpp:ping'/></iq>")]);
    let back = h.up(&format!(
        "<iq type='result' id='implreq-1' from='{ALICE}' to='{D}'/>"
    ));
    assert_eq!(
        back,
        [format!(
            "UP <iq type='result' id='implreq-1' from='{D}/{ALICE}' to='{T}/a'/>"
        )]
    );
}

#[test]
fn target_request_clashing_id_is_refused() {
    let mut h = H::new(cfg());
    h.online("a");
    h.online("b");
    h.up(&format!(
        "<iq id='same' to='{D}/{ALICE}' type='get' from='{T}/a'/>"
    ));
    let out = h.up(&format!(
        "<iq id='same' to='{D}/{ALICE}' type='get' from='{T}/b'/>"
    ));
    assert_eq!(
        out,
        [err(
            "iq",
            "same",
            &format!("{D}/{ALICE}"),
            &format!("{T}/b"),
            "cancel",
            "conflict"
        )]
    );
}

#[test]
fn target_requests_can_be_turned_off() {
    let mut c = cfg();
    c.client_requests = false;
    let mut h = H::new(c);
    let out = h.up(&format!(
        "<iq id='implreq-1' to='{D}/{ALICE}' type='get' from='{T}/a'/>"
    ));
    assert_eq!(
        out,
        [err(
            "iq",
            "implreq-1",
            &format!("{D}/{ALICE}"),
            &format!("{T}/a"),
            "cancel",
            "feature-not-implemented"
        )]
    );
}

#[test]
fn target_request_to_unknown_token_or_loop_is_refused() {
    let mut h = H::new(cfg());
    let out = h.up(&format!(
        "<iq id='k' to='{D}/#jat.00' type='get' from='{T}/a'/>"
    ));
    assert!(out[0].contains("item-not-found"), "{out:?}");
    let out = h.up(&format!(
        "<iq id='l' to='{D}/{D}/x' type='get' from='{T}/a'/>"
    ));
    assert!(out[0].contains("bad-request"), "{out:?}");
}

#[test]
fn target_request_times_out_to_the_resource() {
    let mut h = H::new(cfg());
    h.up(&format!(
        "<iq id='w' to='{D}/{ALICE}' type='set' from='{T}/a'/>"
    ));
    let out = h.advance(Duration::from_secs(30));
    assert_eq!(
        out,
        [err(
            "iq",
            "w",
            &format!("{D}/{ALICE}"),
            &format!("{T}/a"),
            "wait",
            "remote-server-timeout"
        )]
    );
}

// ----- instances ---------------------------------------------------------------

#[test]
fn request_to_instance_is_forwarded_unchanged_and_answer_matched() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let req = format!("<iq type='get' id='i1' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>");
    assert_eq!(h.up(&req), [format!("I1 {req}")]);
    let reply = format!("<iq type='result' id='i1' from='{D}' to='{ALICE}'/>");
    assert_eq!(h.inst(1, &reply), [format!("UP {reply}")]);
    assert_eq!(h.r.pending_len(), 0);
    // A second answer is late: dropped.
    assert!(h.inst(1, &reply).is_empty());
}

#[test]
fn another_instances_answer_is_dropped() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.r.instance_up(2, h.now, &mut Vec::new());
    let out = h.up(&format!("<iq type='get' id='x' to='{D}' from='{ALICE}'/>"));
    let asked: InstanceId = if out[0].starts_with("I1") { 1 } else { 2 };
    let other = 3 - asked;
    let reply = format!("<iq type='result' id='x' from='{D}' to='{ALICE}'/>");
    assert!(h.inst(other, &reply).is_empty());
    assert_eq!(h.inst(asked, &reply).len(), 1);
}

#[test]
fn instance_loss_fails_its_requests_and_others_take_over() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.r.instance_up(2, h.now, &mut Vec::new());
    for i in 0..4 {
        h.up(&format!(
            "<iq type='get' id='f{i}' to='{D}' from='{ALICE}'/>"
        ));
    }
    let mut out = Vec::new();
    h.r.instance_down(1, h.now, &mut h.rng, &mut out);
    let out = render(out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.contains("recipient-unavailable")));
    for i in 4..8 {
        let o = h.up(&format!(
            "<iq type='get' id='f{i}' to='{D}' from='{ALICE}'/>"
        ));
        assert!(o[0].starts_with("I2 "), "{o:?}");
    }
    let mut out = Vec::new();
    h.r.instance_down(2, h.now, &mut h.rng, &mut out);
    let o = h.up(&format!(
        "<iq type='get' id='none' to='{D}' from='{ALICE}'/>"
    ));
    assert_eq!(
        o,
        [err("iq", "none", D, ALICE, "cancel", "service-unavailable")]
    );
}

#[test]
fn instance_requests_get_a_token_and_the_reply_comes_back_to_them() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.r.instance_up(2, h.now, &mut Vec::new());
    let a = h.inst(
        1,
        &format!(
            "<iq type='get' id='ping1' from='{D}' to='{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ),
    );
    let b = h.inst(2, &format!("<iq type='get' id='ping1' from='{D}/bot' to='{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"));
    let tok = |s: &str| {
        s.split(&format!("from='{D}/"))
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .expect("token")
            .to_owned()
    };
    let (ta, tb) = (tok(&a[0]), tok(&b[0]));
    assert_ne!(ta, tb);
    // Replies in the other order: each to its own instance, `to` restored.
    let rb = h.up(&format!(
        "<iq type='result' id='ping1' from='{ALICE}' to='{D}/{tb}'/>"
    ));
    assert_eq!(
        rb,
        [format!(
            "I2 <iq type='result' id='ping1' from='{ALICE}' to='{D}/bot'/>"
        )]
    );
    let ra = h.up(&format!(
        "<iq type='result' id='ping1' from='{ALICE}' to='{D}/{ta}'/>"
    ));
    assert_eq!(
        ra,
        [format!(
            "I1 <iq type='result' id='ping1' from='{ALICE}' to='{D}'/>"
        )]
    );
    // From someone else than the peer asked: dropped.
    h.inst(
        1,
        &format!("<iq type='get' id='p2' from='{D}' to='{ALICE}'/>"),
    );
    assert_eq!(h.r.pending_len(), 1);
}

#[test]
fn instance_request_times_out_to_the_instance() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.inst(
        1,
        &format!("<iq type='get' id='slow' from='{D}' to='{ALICE}'/>"),
    );
    let out = h.advance(Duration::from_secs(31));
    assert_eq!(
        out,
        [format!("I1 <iq type='error' id='slow' from='{ALICE}' to='{D}'><error type='wait'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
}

#[test]
fn instance_traffic_goes_upstream_verbatim() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    for s in [
        format!("<message from='{D}' to='{ALICE}'><body>hi</body></message>"),
        format!("<presence from='{D}/x' to='{ALICE}'/>"),
    ] {
        assert_eq!(h.inst(1, &s), [format!("UP {s}")]);
    }
}

#[test]
fn instance_from_outside_domain_is_closed() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    assert_eq!(
        h.inst(
            1,
            &format!("<message from='evil.example.test' to='{ALICE}'/>")
        ),
        ["CLOSE1 invalid-from"]
    );
    // A node of another domain, or a domain that only ends like ours.
    for from in [
        "room@evil.example.test/nick".to_owned(),
        format!("evil.{D}"),
        format!("{D}@evil.example.test"),
    ] {
        h.r.instance_up(2, h.now, &mut Vec::new());
        assert_eq!(
            h.inst(2, &format!("<message from='{from}' to='{ALICE}'/>")),
            ["CLOSE2 invalid-from"],
            "{from}"
        );
    }
}

#[test]
fn instance_from_that_is_no_address_is_closed() {
    let mut h = H::new(cfg());
    // Fail nodeprep (a space, a quote), a node over 1023 bytes, a
    // resource over 1023 bytes, an empty node, two `@`.
    for (n, from) in [
        format!("a b@{D}"),
        format!("{}@{D}", "n".repeat(1024)),
        format!("{D}/{}", "r".repeat(1024)),
        format!("@{D}"),
        format!("a@b@{D}"),
        format!("room\"@{D}"),
    ]
    .iter()
    .enumerate()
    {
        let id = n as u64 + 1;
        h.r.instance_up(id, h.now, &mut Vec::new());
        assert_eq!(
            h.inst(id, &format!("<message from='{from}' to='{ALICE}'/>")),
            [format!("CLOSE{id} invalid-from")],
            "{from}"
        );
    }
}

#[test]
fn instance_from_with_a_trailing_dot_is_its_domain() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    for s in [
        format!("<message from='{D}.' to='{ALICE}'/>"),
        format!("<message from='room@{D}./nick' to='{ALICE}'/>"),
    ] {
        // Forwarded as it came: the server preps the address itself.
        assert_eq!(h.inst(1, &s), [format!("UP {s}")]);
    }
}

#[test]
fn instance_may_send_from_nodes_of_its_domain() {
    // A MUC or a gateway behind the proxy speaks for node@D; Prosody's
    // component port allows it, so the proxy must too.
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    for s in [
        format!("<message from='room@{D}/nick' to='{ALICE}'><body>hi</body></message>"),
        format!("<presence from='Room@{D}' to='{ALICE}'/>"),
        format!("<iq type='result' id='x' from='gw-user@{D}' to='{ALICE}'/>"),
    ] {
        let out = h.inst(1, &s);
        if s.starts_with("<iq") {
            // An answer to nothing pending: dropped, not a stream error.
            assert!(out.is_empty(), "{out:?}");
        } else {
            assert_eq!(out, [format!("UP {s}")]);
        }
    }
    // A request from a node gets a token; the reply is delivered with the
    // node's address restored.
    let out = h.inst(
        1,
        &format!("<iq type='get' id='r1' from='room@{D}/nick' to='{ALICE}'/>"),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let st = parse_one(out[0].trim_start_matches("UP ").as_bytes()).expect("frames");
    let token = st
        .from()
        .and_then(|f| f.strip_prefix(&format!("{D}/")))
        .expect("D/TOKEN")
        .to_owned();
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='r1' from='{ALICE}' to='{D}/{token}'/>"
        )),
        [format!(
            "I1 <iq type='result' id='r1' from='{ALICE}' to='room@{D}/nick'/>"
        )]
    );
}

#[test]
fn messages_and_presence_stick_to_one_instance() {
    let mut h = H::new(cfg());
    for i in 1..=3 {
        h.r.instance_up(i, h.now, &mut Vec::new());
    }
    let first = h.up(&format!(
        "<message to='{D}' from='{ALICE}'><body>1</body></message>"
    ));
    let who = first[0].split(' ').next().expect("tag").to_owned();
    for n in 0..5 {
        let o = h.up(&format!(
            "<message to='{D}' from='alice@example.test/other{n}'/>"
        ));
        assert!(
            o[0].starts_with(&who),
            "same bare JID, same instance: {o:?}"
        );
        let o = h.up(&format!("<presence to='{D}' from='{ALICE}'/>"));
        assert!(o[0].starts_with(&who));
    }
}

// ----- the rule, at random -------------------------------------------------------

/// Random traffic with random member losses, timeouts, late and spoofed
/// replies and a small table: every accepted request is answered exactly
/// once, by a reply or an error.
#[test]
fn every_request_gets_exactly_one_answer() {
    let mut folded_delivered = 0u32;
    for seed in 0..20u64 {
        let mut c = cfg();
        c.pending_capacity = NonZeroUsize::new(8).expect("nonzero");
        c.balancing = [
            Balancing::Random,
            Balancing::RoundRobin,
            Balancing::LeastPending,
            Balancing::Sticky,
        ][seed as usize % 4];
        // Each balancing with both pools and with the client pool only
        // (which then also serves `room@D`).
        c.instances = (seed / 4) % 2 == 0;
        let instances = c.instances;
        let mut h = H::new(c);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut answers: std::collections::HashMap<String, u32> = Default::default();
        let mut sent = 0u32;
        // Outstanding forwarded requests: (id, requester, member tag).
        let mut outstanding: Vec<(String, String, String)> = Vec::new();
        let count = |out: &[String],
                     answers: &mut std::collections::HashMap<String, u32>,
                     outstanding: &mut Vec<(String, String, String)>| {
            for o in out {
                let st = match parse_one(o.split_once(' ').map(|x| x.1).unwrap_or("").as_bytes()) {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let id = st.id().unwrap_or_default().to_owned();
                if !id.starts_with("q") {
                    continue;
                }
                if o.starts_with("UP")
                    && st.is_iq_response()
                    && st.to().is_some_and(|t| t.starts_with("user"))
                {
                    *answers.entry(id).or_default() += 1;
                } else if st.is_iq_request() {
                    let tag = if o.starts_with("UP") {
                        st.to().unwrap_or_default().to_owned()
                    } else {
                        o.split(' ').next().unwrap_or_default().to_owned()
                    };
                    outstanding.push((id, st.from().unwrap_or_default().to_owned(), tag));
                }
            }
        };
        for step in 0..400 {
            let out = match rng.random_range(0..10) {
                0 => {
                    let r = ["a", "b", "c"][rng.random_range(0..3)];
                    h.up(&format!("<presence from='{T}/{r}' to='{D}'/>"))
                }
                1 => {
                    // Pool presence, or directed presence that must not
                    // change the pool.
                    let r = ["a", "b", "c"][rng.random_range(0..3)];
                    let to = [D, "proxy.example.test/x", "room@proxy.example.test"]
                        [rng.random_range(0..3)];
                    h.up(&format!(
                        "<presence type='unavailable' from='{T}/{r}' to='{to}'/>"
                    ))
                }
                2 if !instances => {
                    let r = ["a", "b", "c"][rng.random_range(0..3)];
                    h.up(&format!(
                        "<presence type='unavailable' from='{T}/{r}' to='{D}/{r}'/>"
                    ))
                }
                2 => {
                    let i = rng.random_range(1..3);
                    if rng.random_bool(0.5) {
                        h.r.instance_up(i, h.now, &mut Vec::new());
                        vec![]
                    } else {
                        let mut o = Vec::new();
                        h.r.instance_down(i, h.now, &mut h.rng, &mut o);
                        render(o)
                    }
                }
                3 => h.advance(Duration::from_secs(rng.random_range(0..20))),
                4..=6 => {
                    sent += 1;
                    let u = rng.random_range(0..4);
                    let to = [D, D, "room@proxy.example.test", "room@proxy.example.test/n"]
                        [rng.random_range(0..4)];
                    h.up(&format!(
                        "<iq type='get' id='q{step}' to='{to}' from='user{u}@example.test/r'/>"
                    ))
                }
                _ => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let k = rng.random_range(0..outstanding.len());
                    let (id, from, tag) = outstanding[k].clone();
                    if rng.random_bool(0.8) {
                        outstanding.swap_remove(k);
                    }
                    if let Some(inst) = tag.strip_prefix('I') {
                        let i: InstanceId = inst.parse().unwrap_or(0);
                        h.inst(
                            i,
                            &format!("<iq type='result' id='{id}' from='{D}' to='{from}'/>"),
                        )
                    } else {
                        let res = if rng.random_bool(0.1) {
                            format!("{T}/c")
                        } else {
                            tag
                        };
                        // ENC written back as the module accepts it too.
                        let folded = rng.random_bool(0.3);
                        let from = if folded {
                            from.replace("@example.test/", "@Example.TEST./")
                        } else {
                            from
                        };
                        let out = h.up(&format!(
                            "<iq type='result' id='{id}' from='{res}' to='{from}'/>"
                        ));
                        if folded && out.iter().any(|o| o.contains("type='result'")) {
                            folded_delivered += 1;
                        }
                        out
                    }
                }
            };
            count(&out, &mut answers, &mut outstanding);
        }
        let mut out = Vec::new();
        h.r.drain(&mut out);
        count(&render(out), &mut answers, &mut outstanding);
        assert_eq!(
            answers.len() as u32,
            sent,
            "seed {seed}: every request answered"
        );
        assert!(
            answers.values().all(|&n| n == 1),
            "seed {seed}: none answered twice: {answers:?}"
        );
    }
    assert!(folded_delivered > 0, "case-folded ENCs were exercised");
}

#[test]
fn instance_request_that_cannot_be_sent_is_answered() {
    // The server away and its buffer full: the request can be neither
    // sent nor held.
    let mut h = H::new(cfg());
    h.r.set_upstream_buffer(crate::backlog::Bound::items(0));
    h.r.upstream_lost(h.now, &mut h.rng, &mut Vec::new());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let out = h.inst(
        1,
        &format!("<iq type='get' id='lost' from='{D}' to='{ALICE}'/>"),
    );
    assert_eq!(
        out,
        [format!("I1 <iq type='error' id='lost' from='{ALICE}' to='{D}'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    assert_eq!((h.r.backlog().len(), h.r.backlog().dropped()), (0, 1));
    // Once answered, never again: not by timeout, and nothing is sent
    // when the server is back.
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(classes(&out), ["other"], "the subscription request only");
}

/// Answers made while the server is away (a member's reply, a timeout)
/// are written once it is back, and counted: the server drops those whose
/// requester's session ended meanwhile, so the count is what an operator
/// has to go on.
#[test]
fn answers_made_while_the_server_is_away_are_sent_and_counted_on_its_return() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    for id in ["r", "t"] {
        let out = h.up(&format!(
            "<iq type='get' id='{id}' to='{D}' from='{ALICE}'/>"
        ));
        assert_eq!(out.len(), 1, "{out:?}");
    }
    h.r.upstream_lost(h.now, &mut h.rng, &mut Vec::new());
    let reply = format!("<iq type='result' id='r' from='{D}' to='{ALICE}'/>");
    assert!(h.inst(1, &reply).is_empty(), "held for the server");
    assert!(
        h.advance(Duration::from_secs(31)).is_empty(),
        "the timeout too"
    );
    assert_eq!(h.r.stats().answers_after_reconnect, 0);
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(classes(&out), ["other", "answer", "answer"]);
    assert_eq!(h.r.stats().answers_after_reconnect, 2);
}

/// An instance's request answered before it was carried out is taken
/// back, whether it was held for the server (timed out meanwhile) or is
/// still in the batch (its instance went down): the instance was told it
/// failed, so it must not run.
#[test]
fn an_instance_request_answered_before_it_runs_is_withdrawn() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.r.instance_up(2, h.now, &mut Vec::new());
    let req = |id: &str| format!("<iq type='get' id='{id}' from='{D}' to='{ALICE}'/>");
    // Held, then timed out.
    h.r.upstream_lost(h.now, &mut h.rng, &mut Vec::new());
    assert!(h.inst(1, &req("held")).is_empty());
    let answer = h.advance(Duration::from_secs(31));
    assert_eq!(answer.len(), 1);
    assert!(answer[0].starts_with("I1 ") && answer[0].contains("<remote-server-timeout "));
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(classes(&out), ["other"], "the subscription request only");
    // In the batch, then its instance down; the other's request stays.
    let mut out = h.inst_actions(1, &req("gone"));
    out.extend(h.inst_actions(2, &req("kept")));
    h.r.instance_down(1, h.now, &mut h.rng, &mut out);
    let out = render(out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("UP ") && out[0].contains("id='kept'"),
        "{out:?}"
    );
    assert_eq!(h.r.requests_withdrawn(), 2);
}

/// The upstream writer ended before its end was reported: the action it
/// could not write is held first, then everything for the server still
/// in the batch, in order; the rest of the batch is untouched.
#[test]
fn unsent_output_is_held_in_order_with_the_rest_of_the_batch() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let msg = |id: &str| format!("<message id='{id}' from='{D}' to='bob@example.test'/>");
    let mut unsent = h.inst_actions(1, &msg("m1"));
    let mut out = h.inst_actions(1, &msg("m2"));
    out.push(Action::Instance(
        1,
        Wire::One(bytes::Bytes::from_static(b"<x/>")),
    ));
    out.extend(h.inst_actions(1, &msg("m3")));
    h.r.upstream_unsent(unsent.remove(0), &mut out);
    assert_eq!(render(out), ["I1 <x/>"]);
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    let out = render(out);
    let ids: Vec<_> = out
        .iter()
        .skip(1)
        .map(|o| o.split("id='").nth(1).and_then(|r| r.split('\'').next()))
        .collect();
    assert_eq!(ids, [Some("m1"), Some("m2"), Some("m3")], "{out:?}");
}

#[test]
fn stanzas_for_nodes_of_the_domain_go_to_instances_only() {
    let mut h = H::new(cfg());
    h.online("a");
    // No instance: only a component could serve room@D.
    let out = h.up(&format!(
        "<iq type='get' id='n1' to='room@{D}' from='{ALICE}'/>"
    ));
    assert_eq!(
        out,
        [err(
            "iq",
            "n1",
            &format!("room@{D}"),
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    let out = h.up(&format!("<message id='n2' to='room@{D}' from='{ALICE}'/>"));
    assert_eq!(
        out,
        [err(
            "message",
            "n2",
            &format!("room@{D}"),
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    assert!(h
        .up(&format!("<presence to='room@{D}/nick' from='{ALICE}'/>"))
        .is_empty());

    h.r.instance_up(4, h.now, &mut Vec::new());
    // A request to a node goes to the instance unchanged, never to the
    // client resource, and its answer is matched.
    for i in 0..5 {
        let req = format!(
            "<iq type='get' id='q{i}' to='room@{D}' from='{ALICE}'><query xmlns='disco'/></iq>"
        );
        assert_eq!(h.up(&req), [format!("I4 {req}")]);
        let reply = format!("<iq type='result' id='q{i}' from='room@{D}' to='{ALICE}'/>");
        assert_eq!(h.inst(4, &reply), [format!("UP {reply}")]);
    }
    assert_eq!(h.r.pending_len(), 0);
    // Joining a room: presence and messages stick to the instance.
    let join = format!("<presence to='room@{D}/nick' from='{ALICE}'/>");
    assert_eq!(h.up(&join), [format!("I4 {join}")]);
    let msg =
        format!("<message type='groupchat' to='room@{D}' from='{ALICE}'><body>hi</body></message>");
    assert_eq!(h.up(&msg), [format!("I4 {msg}")]);
    // Other domains stay dropped.
    assert!(h
        .up(&format!(
            "<iq type='get' id='x' to='room@other.test' from='{ALICE}'/>"
        ))
        .is_empty());
}

// ----- per-member counters and reload ----------------------------------------

#[test]
fn per_member_counters_follow_the_pool() {
    let mut h = H::new(cfg());
    h.online("a");
    h.r.instance_up(7, h.now, &mut Vec::new());
    let mut to_resource = Vec::new();
    let mut to_instance = Vec::new();
    for i in 0..4 {
        let out = h.up(&format!(
            "<iq type='get' id='m{i}' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>"
        ));
        if out[0].starts_with("UP ") {
            to_resource.push(i);
        } else {
            to_instance.push(i);
        }
    }
    // Round-robin: two each. The resource answers one, the instance one.
    assert_eq!((to_resource.len(), to_instance.len()), (2, 2));
    h.up(&format!(
        "<iq type='result' id='m{}' to='{D}/{ALICE}' from='{T}/a'/>",
        to_resource[0]
    ));
    h.inst(
        7,
        &format!(
            "<iq type='result' id='m{}' to='{ALICE}' from='{D}'/>",
            to_instance[0]
        ),
    );
    let res = Member::Resource(format!("{T}/a"));
    let inst = Member::Instance(7);
    let s = h.r.stats().clone();
    assert_eq!(
        s.members[&res],
        MemberStats {
            routed: 2,
            answered: 1
        }
    );
    assert_eq!(
        s.members[&inst],
        MemberStats {
            routed: 2,
            answered: 1
        }
    );
    // A member that leaves takes its series with it.
    h.up(&format!(
        "<presence type='unavailable' from='{T}/a' to='{D}'/>"
    ));
    let mut out = Vec::new();
    h.r.instance_down(7, h.now, &mut h.rng, &mut out);
    assert!(h.r.stats().members.is_empty(), "{:?}", h.r.stats().members);
}

#[test]
fn member_series_are_capped() {
    let mut h = H::new(RouterConfig {
        pending_capacity: NonZeroUsize::new(1024).expect("nonzero"),
        ..cfg()
    });
    for i in 0..(MAX_MEMBER_SERIES as u64 + 10) {
        h.r.instance_up(i, h.now, &mut Vec::new());
    }
    for i in 0..(MAX_MEMBER_SERIES + 10) {
        h.up(&format!(
            "<iq type='get' id='c{i}' to='{D}' from='{ALICE}'/>"
        ));
    }
    let s = h.r.stats();
    assert_eq!(s.members.len(), MAX_MEMBER_SERIES);
    assert_eq!(s.members_other.routed, 10);
}

#[test]
fn reload_changes_balancing_and_timeout_for_new_requests() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    h.r.instance_up(2, h.now, &mut Vec::new());
    h.up(&format!(
        "<iq type='get' id='old' to='{D}' from='{ALICE}'/>"
    ));
    let mut out = Vec::new();
    h.r.reload(
        RouterConfig {
            balancing: Balancing::Sticky,
            iq_timeout: Duration::from_secs(1),
            ..cfg()
        },
        h.now,
        &mut h.rng,
        &mut out,
    );
    assert!(out.is_empty(), "nothing to say: {out:?}");
    assert_eq!(h.r.config().balancing, Balancing::Sticky);
    // Sticky: every request of one requester lands on one instance.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..6 {
        let out = h.up(&format!(
            "<iq type='get' id='n{i}' to='{D}' from='{ALICE}'/>"
        ));
        seen.insert(out[0].split(' ').next().map(str::to_owned));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // A shorter timeout holds for every request, the one in flight
    // included (counted from the reload): all seven time out within 1 s.
    assert!(h.advance(Duration::from_millis(900)).is_empty());
    let expired = h.advance(Duration::from_millis(200));
    assert_eq!(expired.len(), 7, "{expired:?}");
    assert_eq!(h.r.pending_len(), 0);
    // A longer one applies to new requests only.
    let mut out = Vec::new();
    h.r.reload(cfg(), h.now, &mut h.rng, &mut out);
    h.up(&format!(
        "<iq type='get' id='late' to='{D}' from='{ALICE}'/>"
    ));
    assert!(h.advance(Duration::from_secs(29)).is_empty());
    assert_eq!(h.advance(Duration::from_secs(2)).len(), 1);
}

#[test]
fn reload_with_a_new_target_swaps_the_pool_and_subscribes() {
    let mut h = H::new(cfg());
    h.online("a");
    h.up(&format!("<iq type='get' id='p1' to='{D}' from='{ALICE}'/>"));
    let mut out = Vec::new();
    h.r.reload(
        RouterConfig {
            target: Some("other@example.test".into()),
            ..cfg()
        },
        h.now,
        &mut h.rng,
        &mut out,
    );
    let out = render(out);
    assert_eq!(
        out,
        [
            err("iq", "p1", D, ALICE, "wait", "recipient-unavailable"),
            format!("UP <presence type='subscribe' from='{D}' to='other@example.test'/>"),
        ]
    );
    assert!(h.r.pool().is_empty());
    // The old account is now a stranger; the new one's resources join.
    assert_eq!(
        h.up(&format!("<presence from='{T}/a' to='{D}'/>")),
        [err(
            "presence",
            "",
            D,
            &format!("{T}/a"),
            "cancel",
            "bad-request"
        )]
        .map(|e| e.replace(" id=''", ""))
    );
    h.up(&format!("<presence from='other@example.test/x' to='{D}'/>"));
    assert_eq!(h.r.pool().len(), 1);
}

// ----- instance addressing (Prosody's component port) ------------------------

/// The token a rewritten instance request went upstream with.
fn token_of(out: &str) -> String {
    let st = parse_one(out.trim_start_matches("UP ").as_bytes()).expect("frames");
    st.from()
        .and_then(|f| f.strip_prefix(&format!("{D}/")))
        .expect("from = D/TOKEN")
        .to_owned()
}

#[test]
fn instance_request_reply_is_matched_on_the_prepared_to() {
    // The server stamps the reply's `from` prepared; the instance may
    // have written the address any way that prepares to it.
    for to in [
        "Alice@Example.test/phone",
        "alice@example.test./phone",
        "ALICE@EXAMPLE.TEST./phone",
    ] {
        let mut h = H::new(cfg());
        h.r.instance_up(1, h.now, &mut Vec::new());
        let out = h.inst(
            1,
            &format!("<iq type='get' id='q' from='{D}/bot' to='{to}'/>"),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        // Forwarded with the instance's `to` as written: the server prepares it.
        assert!(out[0].contains(&format!("to='{to}'")), "{out:?}");
        let token = token_of(&out[0]);
        // Someone else answering is still refused.
        assert!(h
            .up(&format!(
                "<iq type='result' id='q' from='bob@example.test/phone' to='{D}/{token}'/>"
            ))
            .is_empty());
        assert_eq!(h.r.stats().replies_spoofed, 1, "{to}");
        assert_eq!(
            h.up(&format!(
                "<iq type='result' id='q' from='{ALICE}' to='{D}/{token}'/>"
            )),
            [format!(
                "I1 <iq type='result' id='q' from='{ALICE}' to='{D}/bot'/>"
            )],
            "{to}"
        );
        assert_eq!(h.r.pending_len(), 0);
    }
}

#[test]
fn instance_request_to_no_jid_gets_jid_malformed() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    for (n, to) in [
        "a b@example.test".to_owned(),
        format!("{}@example.test", "n".repeat(1024)),
        "example.test..".to_owned(),
        "@example.test".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let out = h.inst(
            1,
            &format!("<iq type='get' id='m{n}' from='{D}/bot' to='{to}'/>"),
        );
        assert_eq!(
            out,
            [format!(
                "I1 <iq type='error' id='m{n}' from='{to}' to='{D}/bot'><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>The destination address is invalid: {to}</text></error></iq>"
            )],
            "{to}"
        );
    }
    assert_eq!(h.r.pending_len(), 0, "nothing waits for a reply");
    assert_eq!(h.r.stats().generated(StanzaError::JidMalformed), 4);
    assert_eq!(h.r.stats().requests_outbound, 0);
}

#[test]
fn instance_message_or_presence_to_no_jid_gets_jid_malformed_errors_are_dropped() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let out = h.inst(
        1,
        &format!(
            "<message id='m' from='room@{D}/nick' to='a b@example.test'><body>x</body></message>"
        ),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with(&format!(
            "I1 <message type='error' id='m' from='a b@example.test' to='room@{D}/nick'><error type='modify'><jid-malformed "
        )),
        "{out:?}"
    );
    let out = h.inst(1, &format!("<presence from='{D}' to='a b@example.test'/>"));
    assert!(out[0].contains("<jid-malformed "), "{out:?}");
    // Errors are never answered with errors; a result to no one matches nothing.
    assert!(h
        .inst(
            1,
            &format!("<message type='error' from='{D}' to='a b@example.test'/>")
        )
        .is_empty());
    assert!(h
        .inst(
            1,
            &format!("<iq type='result' id='r' from='{D}' to='a b@example.test'/>")
        )
        .is_empty());
    assert_eq!(h.r.stats().dropped_unaddressed, 1);
    assert_eq!(h.r.stats().replies_unmatched, 1);
    // A valid address is forwarded exactly as written.
    let s = format!("<message from='{D}' to='Alice@Example.test./phone'/>");
    assert_eq!(h.inst(1, &s), [format!("UP {s}")]);
}

#[test]
fn instance_reply_to_the_requester_written_differently_is_delivered() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let req = format!("<iq type='get' id='w' to='{D}' from='{ALICE}'/>");
    assert_eq!(h.up(&req), [format!("I1 {req}")]);
    let reply = format!("<iq type='result' id='w' from='{D}' to='Alice@EXAMPLE.test/phone'/>");
    assert_eq!(h.inst(1, &reply), [format!("UP {reply}")]);
    assert_eq!(h.r.pending_len(), 0);
    assert!(
        h.advance(Duration::from_secs(60)).is_empty(),
        "answered once"
    );
}

#[test]
fn target_request_reply_from_an_unprepared_peer_is_matched() {
    let mut h = H::new(cfg());
    h.online("a");
    let out = h.up(&format!(
        "<iq type='get' id='tq' to='{D}/Alice@Example.test/phone' from='{T}/a'/>"
    ));
    assert_eq!(
        out,
        [format!(
            "UP <iq type='get' id='tq' to='{ALICE}' from='{D}'/>"
        )]
    );
    // Keyed by the prepared address, whatever form the reply's `from` has.
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='tq' to='{D}' from='ALICE@example.test/phone'/>"
        )),
        [format!(
            "UP <iq type='result' id='tq' to='{T}/a' from='{D}/Alice@Example.test/phone'/>"
        )]
    );
}

#[test]
fn instance_stanza_without_to_gets_bad_request_like_prosody() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    assert_eq!(
        h.inst(1, &format!("<iq type='get' id='nt' from='{D}/bot'><ping xmlns='urn:xmpp:ping'/></iq>")),
        [format!(
            "I1 <iq type='error' id='nt' to='{D}/bot'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Components MUST specify a 'to' address on stanzas</text></error></iq>"
        )]
    );
    let out = h.inst(
        1,
        &format!("<message from='room@{D}'><body>x</body></message>"),
    );
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with(&format!(
            "I1 <message type='error' to='room@{D}'><error type='modify'><bad-request "
        )),
        "{out:?}"
    );
    // Results and errors are not answered.
    assert!(h
        .inst(1, &format!("<iq type='result' id='r' from='{D}'/>"))
        .is_empty());
    assert!(h
        .inst(1, &format!("<presence type='error' from='{D}'/>"))
        .is_empty());
    assert_eq!(h.r.stats().generated(StanzaError::BadRequest), 2);
    assert_eq!(h.r.stats().dropped_unaddressed, 2);
    assert_eq!(h.r.pending_len(), 0);
}

#[test]
fn instance_stanza_without_from_is_from_the_domain() {
    // Prosody 0.12 stamps the component's domain on a stanza without
    // `from` ("COMPAT"); the proxy writes it in before going upstream.
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    assert_eq!(
        h.inst(
            1,
            &format!("<message to='{ALICE}'><body>hi</body></message>")
        ),
        [format!(
            "UP <message to='{ALICE}' from='{D}'><body>hi</body></message>"
        )]
    );
    // A request: from D/TOKEN upstream, and the reply comes back to D.
    let out = h.inst(1, &format!("<iq type='get' id='nf' to='{ALICE}'/>"));
    let token = token_of(&out[0]);
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='nf' from='{ALICE}' to='{D}/{token}'/>"
        )),
        [format!(
            "I1 <iq type='result' id='nf' from='{ALICE}' to='{D}'/>"
        )]
    );
    // A reply without `from` to a request the instance was given.
    let req = format!("<iq type='get' id='g' to='{D}' from='{ALICE}'/>");
    assert_eq!(h.up(&req), [format!("I1 {req}")]);
    assert_eq!(
        h.inst(1, &format!("<iq type='result' id='g' to='{ALICE}'/>")),
        [format!(
            "UP <iq type='result' id='g' to='{ALICE}' from='{D}'/>"
        )]
    );
    // Neither `from` nor `to`: bad-request, to the domain.
    let out = h.inst(1, "<iq type='set' id='nn'/>");
    assert!(
        out[0].starts_with(&format!("I1 <iq type='error' id='nn' to='{D}'>")),
        "{out:?}"
    );
    assert_eq!(h.r.pending_len(), 0);
}

// ----- issue 11: smaller differences from the module ------------------------

/// Only the client pool: no instance listener configured.
fn client_only() -> RouterConfig {
    RouterConfig {
        instances: false,
        ..cfg()
    }
}

#[test]
fn nodes_of_the_domain_are_served_by_the_client_pool_without_instances() {
    let mut h = H::new(client_only());
    let room = format!("room@{D}");
    // Nobody online: the module's answer, from the address written to.
    assert_eq!(
        h.up(&format!(
            "<iq type='get' id='n0' to='{room}' from='{ALICE}'/>"
        )),
        [err(
            "iq",
            "n0",
            &room,
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    h.online("a");
    for to in [room.clone(), format!("{room}/nick"), format!("ROOM@{D}")] {
        let fwd = h.up(&format!(
            "<iq type='get' id='n1' to='{to}' from='{ALICE}'><q xmlns='urn:example:echo'/></iq>"
        ));
        // The member sees the module's `D/ENC`, whichever node was asked.
        assert_eq!(
            fwd,
            [format!("UP <iq type='get' id='n1' to='{T}/a' from='{D}/{ALICE}'><q xmlns='urn:example:echo'/></iq>")],
            "{to}"
        );
        // The answer comes from the address the requester wrote to (the
        // module answers from `D`, which a client matching replies on
        // the address it asked drops).
        assert_eq!(
            h.up(&format!(
                "<iq type='result' id='n1' to='{D}/{ALICE}' from='{T}/a'/>"
            )),
            [format!(
                "UP <iq type='result' id='n1' to='{ALICE}' from='{to}'/>"
            )],
            "{to}"
        );
    }
    // A member replying to `node@D/ENC` is de-translated too, as by the module.
    h.up(&format!(
        "<iq type='get' id='n2' to='{room}' from='{ALICE}'/>"
    ));
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='n2' to='{room}/{ALICE}' from='{T}/a'/>"
        )),
        [format!(
            "UP <iq type='result' id='n2' to='{ALICE}' from='{room}'/>"
        )]
    );
    // Messages and presence: the module's answers, from the node.
    assert_eq!(
        h.up(&format!(
            "<message type='chat' id='m1' to='{room}' from='{ALICE}'><body>hi</body></message>"
        )),
        [err(
            "message",
            "m1",
            &room,
            ALICE,
            "cancel",
            "feature-not-implemented"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<presence id='p1' to='{room}/nick' from='{ALICE}'/>"
        )),
        [err(
            "presence",
            "p1",
            &format!("{room}/nick"),
            ALICE,
            "cancel",
            "bad-request"
        )]
    );
    assert!(h
        .up(&format!(
            "<presence type='error' to='{room}' from='{ALICE}'/>"
        ))
        .is_empty());
    // From the target, a bare node is the bare domain: bad-request.
    let ta = format!("{T}/a");
    assert_eq!(
        h.up(&format!("<iq type='get' id='t1' to='{room}' from='{ta}'/>")),
        [err("iq", "t1", &room, &ta, "cancel", "bad-request")]
    );
    assert_eq!(
        h.up(&format!("<message id='t2' to='{room}' from='{ta}'/>")),
        [err("message", "t2", &room, &ta, "cancel", "bad-request")]
    );
    // The target's request to `node@D/ENC` goes out as one to `D/ENC`
    // does, and its answer comes back from where it was sent.
    assert_eq!(
        h.up(&format!(
            "<iq type='get' id='t3' to='{room}/{ALICE}' from='{ta}'/>"
        )),
        [format!(
            "UP <iq type='get' id='t3' to='{ALICE}' from='{D}'/>"
        )]
    );
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='t3' to='{D}' from='{ALICE}'/>"
        )),
        [format!(
            "UP <iq type='result' id='t3' to='{ta}' from='{room}/{ALICE}'/>"
        )]
    );
    // Nothing waits for a reply to a bare node.
    assert!(h
        .up(&format!(
            "<iq type='result' id='t3' to='{room}' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_unmatched, 1);
    assert_eq!(h.r.pending_len(), 0);
    // Other domains stay dropped.
    assert!(h
        .up(&format!(
            "<iq type='get' id='x' to='room@other.test' from='{ALICE}'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().dropped_unaddressed, 1);
}

#[test]
fn with_both_pools_nodes_stay_with_the_instances() {
    // With a listener configured the nodes are the instances' even while
    // none is connected, and the client resources never see them.
    let mut h = H::new(cfg());
    h.online("a");
    let room = format!("room@{D}");
    assert_eq!(
        h.up(&format!(
            "<iq type='get' id='b1' to='{room}' from='{ALICE}'/>"
        )),
        [err(
            "iq",
            "b1",
            &room,
            ALICE,
            "cancel",
            "service-unavailable"
        )]
    );
    // The bare domain is served by both.
    h.r.instance_up(1, h.now, &mut Vec::new());
    let req = format!("<iq type='get' id='b2' to='{D}' from='{ALICE}'/>");
    let first = h.up(&req);
    let second = h.up(&req.replace("b2", "b3"));
    let mut both = [first[0].as_str(), second[0].as_str()].map(|s| &s[..3]);
    both.sort_unstable();
    assert_eq!(both, ["I1 ", "UP "]);
}

#[test]
fn replies_to_an_enc_written_differently_are_matched_prepared() {
    let mut h = H::new(cfg());
    h.online("a");
    for (n, enc) in [
        "ALICE@EXAMPLE.TEST/phone",
        "alice@example.test./phone",
        "Alice@Example.Test./phone",
    ]
    .iter()
    .enumerate()
    {
        h.up(&format!(
            "<iq type='get' id='p{n}' to='{D}' from='{ALICE}'/>"
        ));
        // Only the resource asked may answer, however it writes ENC.
        assert!(h
            .up(&format!(
                "<iq type='result' id='p{n}' to='{D}/{enc}' from='{T}/b'/>"
            ))
            .is_empty());
        assert_eq!(
            h.up(&format!(
                "<iq type='result' id='p{n}' to='{D}/{enc}' from='{T}/a'><x xmlns='y'/></iq>"
            )),
            [format!(
                "UP <iq type='result' id='p{n}' to='{ALICE}' from='{D}'><x xmlns='y'/></iq>"
            )],
            "{enc}"
        );
    }
    assert_eq!(h.r.stats().replies_spoofed, 3);
    // The resourcepart keeps its case (resourceprep): another requester.
    h.up(&format!("<iq type='get' id='p9' to='{D}' from='{ALICE}'/>"));
    assert!(h
        .up(&format!(
            "<iq type='result' id='p9' to='{D}/alice@example.test/PHONE' from='{T}/a'/>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_unmatched, 1);
    assert_eq!(h.r.pending_len(), 1);
}

#[test]
fn opaque_tokens_are_matched_exactly() {
    let mut c = cfg();
    c.jat = JatMode::Opaque;
    let mut h = H::new(c);
    h.online("a");
    let fwd = h.up(&format!("<iq type='get' id='o' to='{D}' from='{ALICE}'/>"));
    let st = parse_one(&fwd[0].as_bytes()[3..]).expect("frames");
    let enc = st
        .from()
        .and_then(|f| f.strip_prefix(&format!("{D}/")))
        .expect("from = D/TOKEN")
        .to_owned();
    assert!(h
        .up(&format!(
            "<iq type='result' id='o' to='{D}/{}' from='{T}/a'/>",
            enc.to_uppercase()
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_unmatched, 1);
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='o' to='{D}/{enc}' from='{T}/a'/>"
        )),
        [format!(
            "UP <iq type='result' id='o' to='{ALICE}' from='{D}'/>"
        )]
    );
}

#[test]
fn directed_presence_from_the_target_leaves_the_pool_alone() {
    for instances in [false, true] {
        let mut h = H::new(RouterConfig { instances, ..cfg() });
        h.online("a");
        h.online("b");
        // Round-robin: the first request goes to b.
        let fwd = h.up(&format!("<iq type='get' id='1' to='{D}' from='{ALICE}'/>"));
        assert!(fwd[0].contains(&format!("to='{T}/b'")), "{fwd:?}");
        let mut directed = vec![
            format!("<presence type='unavailable' from='{T}/b' to='{D}/x'/>"),
            format!("<presence type='unavailable' from='{T}/a' to='{D}/{ALICE}'/>"),
            format!("<presence from='{T}/c' to='{D}/x'/>"),
            format!("<presence type='error' from='{T}' to='{D}/x'/>"),
        ];
        if !instances {
            // Without instances `room@D` is ours; to a node, not to `D`.
            directed.extend([
                format!("<presence type='unavailable' from='{T}/b' to='room@{D}'/>"),
                format!("<presence from='{T}/c' to='room@{D}/nick'/>"),
                format!("<presence type='error' from='{T}' to='room@{D}'/>"),
                format!("<presence type='unsubscribed' from='{T}' to='room@{D}'/>"),
                format!("<presence type='subscribe' from='{T}' to='room@{D}'/>"),
            ]);
        }
        for p in &directed {
            assert!(h.up(p).is_empty(), "{p}");
        }
        assert_eq!(h.r.stats().dropped_other, directed.len() as u64);
        assert_eq!(
            h.r.pool().members(),
            &[
                Member::Resource(format!("{T}/a")),
                Member::Resource(format!("{T}/b"))
            ]
        );
        // The request on b is still b's to answer.
        assert_eq!(
            h.up(&format!(
                "<iq type='result' id='1' to='{D}/{ALICE}' from='{T}/b'/>"
            )),
            [format!(
                "UP <iq type='result' id='1' to='{ALICE}' from='{D}'/>"
            )]
        );
        // Presence to the bare domain is pool presence.
        h.up(&format!("<iq type='get' id='2' to='{D}' from='{ALICE}'/>"));
        assert_eq!(
            h.up(&format!(
                "<presence type='unavailable' from='{T}/a' to='{D}'/>"
            )),
            [err("iq", "2", D, ALICE, "wait", "recipient-unavailable")]
        );
        assert_eq!(h.r.pool().members(), &[Member::Resource(format!("{T}/b"))]);
        if instances {
            // A node is an instance's: the target's presence to it goes
            // there like anyone's.
            h.r.instance_up(1, h.now, &mut Vec::new());
            let p = format!("<presence type='unavailable' from='{T}/b' to='room@{D}'/>");
            assert_eq!(h.up(&p), [format!("I1 {p}")]);
            assert!(h.r.pool().contains(&Member::Resource(format!("{T}/b"))));
        }
    }
}

#[test]
fn target_request_to_no_jid_is_jid_malformed() {
    let mut h = H::new(cfg());
    let ta = format!("{T}/a");
    for (n, enc) in [
        "a b@example.test".to_owned(),
        "@example.test".to_owned(),
        "example.test..".to_owned(),
        format!("{}@example.test", "n".repeat(1024)),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            h.up(&format!(
                "<iq id='j{n}' to='{D}/{enc}' type='get' from='{ta}'/>"
            )),
            [format!(
                "UP <iq type='error' id='j{n}' from='{D}/{enc}' to='{ta}'><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>The address after {D}/ is not a JID</text></error></iq>"
            )],
            "{enc}"
        );
    }
    assert_eq!(h.r.stats().generated(StanzaError::JidMalformed), 4);
    assert_eq!(h.r.stats().requests_outbound, 0);
    // An unknown token names no one: item-not-found, as does anything
    // but a token with opaque JAT.
    assert_eq!(
        h.up(&format!(
            "<iq id='k' to='{D}/#jat.00' type='get' from='{ta}'/>"
        )),
        [err(
            "iq",
            "k",
            &format!("{D}/#jat.00"),
            &ta,
            "cancel",
            "item-not-found"
        )]
    );
    let mut h = H::new(RouterConfig {
        jat: JatMode::Opaque,
        ..cfg()
    });
    assert_eq!(
        h.up(&format!(
            "<iq id='k' to='{D}/{ALICE}' type='get' from='{ta}'/>"
        )),
        [err(
            "iq",
            "k",
            &format!("{D}/{ALICE}"),
            &ta,
            "cancel",
            "item-not-found"
        )]
    );
}

// ----- durations beyond reason -------------------------------------------------

#[test]
fn absurd_timeouts_do_not_panic() {
    // Config caps durations; the router must survive one that is not.
    let mut h = H::new(RouterConfig {
        iq_timeout: Duration::MAX,
        ..cfg()
    });
    h.online("a");
    h.r.instance_up(1, h.now, &mut Vec::new());
    assert_eq!(
        h.up(&format!("<iq type='get' id='x' to='{D}' from='{ALICE}'/>"))
            .len(),
        1
    );
    assert_eq!(
        h.inst(
            1,
            &format!("<iq type='get' id='y' from='{D}' to='{ALICE}'/>")
        )
        .len(),
        1
    );
    assert!(h.r.next_deadline().is_some_and(|d| d > h.now));
    assert!(h.advance(Duration::from_secs(365 * 24 * 3600)).is_empty());
    assert_eq!(h.r.pending_len(), 2);
    // Down to a sane timeout: both are answered within it.
    let mut out = Vec::new();
    h.r.reload(
        RouterConfig {
            iq_timeout: Duration::from_secs(1),
            ..cfg()
        },
        h.now,
        &mut h.rng,
        &mut out,
    );
    assert_eq!(h.advance(Duration::from_secs(1)).len(), 2);
    // And up again to the absurd one, for requests in flight.
    h.up(&format!("<iq type='get' id='z' to='{D}' from='{ALICE}'/>"));
    let mut out = Vec::new();
    h.r.reload(
        RouterConfig {
            iq_timeout: Duration::MAX,
            ..cfg()
        },
        h.now,
        &mut h.rng,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(h.advance(Duration::from_secs(1)).len(), 1);
}

// ----- how each upstream write is held while the server is away ------------

/// How an action's output is held while upstream is away:
/// `answer` (held past the bound), `request` (an instance's request),
/// `other` (bounded), or `instance`/`close` for the rest. Every upstream
/// write is also checked against the bytes: it is an answer exactly when
/// it is an iq result or error, the rule the core used to re-derive by
/// parsing them.
fn classes(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| {
            let (class, wire) = match a {
                Action::UpstreamAnswer(w) => ("answer", w),
                Action::Upstream(w) => ("other", w),
                Action::UpstreamRequest(_, _) => return "request",
                Action::Instance(..) => return "instance",
                Action::CloseInstance(..) => return "close",
            };
            let bytes = wire.to_bytes();
            let st = parse_one(&bytes).expect("the router writes whole stanzas");
            assert_eq!(
                class == "answer",
                st.is_iq_response(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            class
        })
        .collect()
}

impl H {
    fn up_actions(&mut self, xml: &str) -> Vec<Action> {
        let st = parse_one(xml.as_bytes()).expect("test stanza frames");
        let mut out = Vec::new();
        self.r.from_upstream(&st, self.now, &mut self.rng, &mut out);
        out
    }

    fn inst_actions(&mut self, id: InstanceId, xml: &str) -> Vec<Action> {
        let st = parse_one(xml.as_bytes()).expect("test stanza frames");
        let mut out = Vec::new();
        self.r
            .from_instance(id, &st, self.now, &mut self.rng, &mut out);
        out
    }
}

#[test]
fn every_answer_to_a_request_upstream_is_marked_as_one() {
    let mut h = H::new(cfg());
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(classes(&out), ["other"], "the subscription request");
    h.online("a");
    // Forwarding a request upstream (to a resource) is no answer: it is
    // a request, which is not sent if it is answered or moved to another
    // member before the server is back.
    let to_resource = h.up_actions(&format!("<iq type='get' id='r' to='{D}' from='{ALICE}'/>"));
    assert_eq!(classes(&to_resource), ["request"]);
    // A message with no instance to take it: an error that answers no
    // request.
    let msg = h.up_actions(&format!("<message id='m' to='{D}' from='{ALICE}'/>"));
    assert_eq!(classes(&msg), ["other"]);
    h.r.instance_up(1, h.now, &mut Vec::new());
    // Round-robin: one of the next two goes to the instance.
    let mut to_instance = None;
    for id in ["i", "j"] {
        let out = h.up_actions(&format!(
            "<iq type='get' id='{id}' to='{D}' from='{ALICE}'/>"
        ));
        match classes(&out)[..] {
            ["instance"] => to_instance = Some(id),
            ["request"] => {}
            ref c => panic!("{c:?}"),
        }
    }
    let to_instance = to_instance.expect("one request went to the instance");
    // Member replies delivered: the resource's, the instance's.
    let back = h.up_actions(&format!(
        "<iq type='result' id='r' to='{D}/{ALICE}' from='{T}/a'/>"
    ));
    assert_eq!(classes(&back), ["answer"]);
    let back = h.inst_actions(
        1,
        &format!("<iq type='error' id='{to_instance}' from='{D}' to='{ALICE}'/>"),
    );
    assert_eq!(classes(&back), ["answer"]);
    // Errors the router makes for requests: malformed, no member able,
    // timed out.
    let bogus = h.up_actions(&format!(
        "<iq type='bogus' id='b' to='{D}' from='{ALICE}'/>"
    ));
    assert_eq!(classes(&bogus), ["answer"]);
    h.up_actions(&format!("<iq type='get' id='t' to='{D}' from='{ALICE}'/>"));
    let mut timed_out = Vec::new();
    h.now += Duration::from_secs(31);
    h.r.expire(h.now, &mut h.rng, &mut timed_out);
    // `t`, and the one of `i`/`j` that went to the resource.
    assert_eq!(classes(&timed_out), ["answer", "answer"]);
    // The instance's own traffic: a request (held by key), the rest.
    let own = h.inst_actions(
        1,
        &format!("<iq type='get' id='o' from='{D}' to='peer@example.test'/>"),
    );
    assert_eq!(classes(&own), ["request"]);
    let own = h.inst_actions(1, &format!("<message from='{D}' to='peer@example.test'/>"));
    assert_eq!(classes(&own), ["other"]);
    // Shutdown: a request refused with its answer.
    let mut refused = Vec::new();
    let late = parse_one(format!("<iq type='set' id='z' to='{D}' from='{ALICE}'/>").as_bytes())
        .expect("frames");
    h.r.refuse_closing(&late, &mut refused);
    assert_eq!(classes(&refused), ["answer"]);
}

#[test]
fn policy_violation_answers_are_marked_as_answers_only_for_requests() {
    // A reply the server would refuse as too large: policy-violation in
    // its place, still the request's answer.
    let mut h = H::new(RouterConfig {
        max_write: 300,
        ..cfg()
    });
    h.online("a");
    h.up_actions(&format!("<iq type='get' id='r' to='{D}' from='{ALICE}'/>"));
    let big = "x".repeat(400);
    let back = h.up_actions(&format!(
        "<iq type='result' id='r' to='{D}/{ALICE}' from='{T}/a'><q>{big}</q></iq>"
    ));
    assert_eq!(classes(&back), ["answer"]);
    assert!(render(back)[0].contains("<policy-violation "));
    // Skipped over a limit: a request's answer, a message's plain error.
    let skipped = |r: &mut Router, xml: &str| {
        let head = parse_one(xml.as_bytes()).expect("frames");
        let mut out = Vec::new();
        r.skipped_from_upstream(Limit::Size, Some(&head), "too large", &mut out);
        out
    };
    let iq = skipped(
        &mut h.r,
        &format!("<iq type='get' id='s' to='{D}' from='{ALICE}'/>"),
    );
    assert_eq!(classes(&iq), ["answer"]);
    let msg = skipped(
        &mut h.r,
        &format!("<message id='s' to='{D}' from='{ALICE}'/>"),
    );
    assert_eq!(classes(&msg), ["other"]);
}

#[test]
fn a_from_outside_the_domain_closes_the_instance_as_invalid_from() {
    let mut h = H::new(cfg());
    h.r.instance_up(1, h.now, &mut Vec::new());
    let out = h.inst_actions(
        1,
        "<message from='someone@elsewhere.test' to='peer@example.test'/>",
    );
    assert_eq!(out, [Action::CloseInstance(1, CloseReason::InvalidFrom)]);
    assert_eq!(
        CloseReason::InvalidFrom.condition().as_str(),
        "invalid-from"
    );
}

// ----- issue 13: requests that survive ----------------------------------------

/// Every continuity rule on: hold 10 s, gets re-dispatched, refusals
/// retried on two more members, quarantine after 3 for 60 s.
fn cont() -> RouterConfig {
    RouterConfig {
        continuity: Continuity {
            hold_when_empty: Duration::from_secs(10),
            redispatch: Redispatch::Get,
            retry_on: vec![
                crate::stanza::StanzaCondition::FeatureNotImplemented,
                crate::stanza::StanzaCondition::ServiceUnavailable,
            ],
            retry_limit: 2,
            quarantine_after: 3,
            quarantine_for: Duration::from_secs(60),
        },
        ..cfg()
    }
}

const REFUSE: &str = "<error type='cancel'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";

impl H {
    fn join(&mut self, id: InstanceId) -> Vec<String> {
        let mut out = Vec::new();
        self.r.instance_up(id, self.now, &mut out);
        render(out)
    }

    fn lose(&mut self, id: InstanceId) -> Vec<String> {
        let mut out = Vec::new();
        self.r.instance_down(id, self.now, &mut self.rng, &mut out);
        render(out)
    }

    fn offline(&mut self, res: &str) -> Vec<String> {
        self.up(&format!(
            "<presence type='unavailable' from='{T}/{res}' to='{D}'/>"
        ))
    }

    fn get(&mut self, id: &str) -> Vec<String> {
        self.up(&get_xml(id))
    }

    /// An instance refuses request `id` of ALICE.
    fn refuse(&mut self, inst: InstanceId, id: &str) -> Vec<String> {
        self.inst(inst, &refusal_xml(id))
    }
}

fn get_xml(id: &str) -> String {
    format!("<iq type='get' id='{id}' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>")
}

fn refusal_xml(id: &str) -> String {
    format!("<iq type='error' id='{id}' from='{D}' to='{ALICE}'>{REFUSE}</iq>")
}

/// The request as a client resource gets it.
fn to_resource(res: &str, id: &str) -> String {
    format!("UP <iq type='get' id='{id}' to='{T}/{res}' from='{D}/{ALICE}'><q xmlns='urn:x'/></iq>")
}

#[test]
fn without_a_member_a_request_is_held_and_sent_when_one_joins() {
    let mut h = H::new(cont());
    assert!(h.get("h1").is_empty(), "held, not answered");
    assert!(h.get("h2").is_empty());
    assert_eq!(h.r.held_len(), 2);
    assert_eq!(h.r.stats().requests_held, 2);
    // A second request with the same id while the first waits: conflict.
    assert_eq!(
        h.get("h1"),
        [err("iq", "h1", D, ALICE, "cancel", "conflict")]
    );
    h.advance(Duration::from_secs(9));
    // Released in arrival order, as they came.
    assert_eq!(
        h.join(1),
        [
            format!("I1 {}", get_xml("h1")),
            format!("I1 {}", get_xml("h2"))
        ]
    );
    assert_eq!(h.r.held_len(), 0);
    assert_eq!(h.r.stats().requests_released, 2);
    assert_eq!(
        h.inst(
            1,
            &format!("<iq type='result' id='h1' from='{D}' to='{ALICE}'/>")
        ),
        [format!(
            "UP <iq type='result' id='h1' from='{D}' to='{ALICE}'/>"
        )]
    );
    // The member gets the time iq_timeout gives from when it was sent.
    assert!(h.advance(Duration::from_secs(29)).is_empty());
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        [err("iq", "h2", D, ALICE, "wait", "remote-server-timeout")]
    );
}

#[test]
fn a_resource_that_joins_takes_the_held_requests() {
    let mut h = H::new(cont());
    assert!(h.get("h1").is_empty());
    assert!(h.up(&format!("<presence from='{T}/a' to='{D}'/>")) == [to_resource("a", "h1")]);
}

#[test]
fn a_hold_that_ends_is_answered_service_unavailable() {
    let mut h = H::new(cont());
    assert!(h.get("h1").is_empty());
    assert!(h.advance(Duration::from_millis(9999)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        [err("iq", "h1", D, ALICE, "cancel", "service-unavailable")]
    );
    assert_eq!(h.r.stats().hold_expired, 1);
    assert!(h.join(1).is_empty(), "nothing left to send");
}

#[test]
fn without_a_hold_an_empty_pool_answers_at_once() {
    let mut h = H::new(cfg());
    assert_eq!(
        h.get("h1"),
        [err("iq", "h1", D, ALICE, "cancel", "service-unavailable")]
    );
}

#[test]
fn held_requests_count_against_the_pending_capacity() {
    let mut c = cont();
    c.pending_capacity = NonZeroUsize::new(2).expect("nonzero");
    let mut h = H::new(c);
    assert!(h.get("h1").is_empty());
    assert!(h.get("h2").is_empty());
    assert_eq!(
        h.get("h3"),
        [err("iq", "h1", D, ALICE, "wait", "resource-constraint")]
    );
    h.join(1);
    // One in flight, one held: full again.
    h.lose(1);
    assert_eq!(h.r.held_len() + h.r.pending_len(), 2);
}

#[test]
fn a_get_in_flight_to_a_lost_resource_goes_to_another() {
    let mut h = H::new(cont());
    h.online("a");
    h.online("b");
    let first = h.get("g1");
    let (went, other) = if first == [to_resource("a", "g1")] {
        ("a", "b")
    } else {
        assert_eq!(first, [to_resource("b", "g1")]);
        ("b", "a")
    };
    assert_eq!(h.offline(went), [to_resource(other, "g1")]);
    assert_eq!(h.r.stats().requests_redispatched, 1);
    // The lost one's late answer, or the server's bounce from its
    // address, is dropped: not delivered, not a refusal.
    assert!(h
        .up(&format!(
            "<iq type='error' id='g1' to='{D}/{ALICE}' from='{T}/{went}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ))
        .is_empty());
    assert_eq!(h.r.stats().replies_late, 1);
    assert_eq!(h.r.stats().requests_retried, 0);
    assert_eq!(
        h.up(&format!(
            "<iq type='result' id='g1' to='{D}/{ALICE}' from='{T}/{other}'/>"
        )),
        [format!(
            "UP <iq type='result' id='g1' to='{ALICE}' from='{D}'/>"
        )]
    );
}

#[test]
fn a_set_in_flight_to_a_lost_member_is_answered_unless_redispatch_is_all() {
    for (redispatch, moved) in [(Redispatch::Get, false), (Redispatch::All, true)] {
        let mut c = cont();
        c.continuity.redispatch = redispatch;
        let mut h = H::new(c);
        h.join(1);
        h.join(2);
        let set = format!("<iq type='set' id='s1' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>");
        let first = h.up(&set);
        let went: InstanceId = if first[0].starts_with("I1") { 1 } else { 2 };
        let other = 3 - went;
        let out = h.lose(went);
        if moved {
            assert_eq!(out, [format!("I{other} {set}")], "{redispatch:?}");
        } else {
            assert_eq!(
                out,
                [err("iq", "s1", D, ALICE, "wait", "recipient-unavailable")],
                "{redispatch:?}"
            );
        }
    }
}

#[test]
fn a_lost_request_with_no_member_left_waits_and_is_answered_recipient_unavailable() {
    let mut h = H::new(cont());
    h.join(1);
    assert_eq!(h.get("g1"), [format!("I1 {}", get_xml("g1"))]);
    h.advance(Duration::from_secs(25));
    assert!(h.lose(1).is_empty(), "held");
    // Its hold ends with the time it had left (5 s), not 10 s.
    assert!(h.advance(Duration::from_millis(4999)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        [err("iq", "g1", D, ALICE, "wait", "recipient-unavailable")]
    );
}

#[test]
fn a_request_is_never_sent_twice_to_one_session_but_may_go_to_a_new_one() {
    let mut h = H::new(cont());
    h.online("a");
    assert_eq!(h.get("g1"), [to_resource("a", "g1")]);
    assert!(h.offline("a").is_empty(), "held");
    // a comes back: a new session, which may take it.
    assert_eq!(
        h.up(&format!("<presence from='{T}/a' to='{D}'/>")),
        [to_resource("a", "g1")]
    );
    // An available presence of a session in the pool is no new session.
    assert!(h
        .up(&format!("<presence from='{T}/a' to='{D}'/>"))
        .is_empty());
}

#[test]
fn the_hold_survives_the_upstream_link() {
    let mut h = H::new(cont());
    h.online("a");
    assert_eq!(h.get("g1"), [to_resource("a", "g1")]);
    let mut out = Vec::new();
    h.r.upstream_lost(h.now, &mut h.rng, &mut out);
    assert!(out.is_empty(), "{:?}", render(out));
    assert_eq!(h.r.held_len(), 1);
    h.advance(Duration::from_secs(3));
    let mut out = Vec::new();
    h.r.upstream_online(&mut out);
    assert_eq!(render(out).len(), 1, "the subscription request only");
    assert_eq!(
        h.up(&format!("<presence from='{T}/a' to='{D}'/>")),
        [to_resource("a", "g1")]
    );
}

#[test]
fn a_refused_request_goes_to_another_member_and_the_last_refusal_is_the_answer() {
    let mut h = H::new(cont());
    for i in 1..=3 {
        h.join(i);
    }
    let mut had = Vec::new();
    let mut out = h.get("r1");
    for round in 0..3 {
        assert_eq!(out.len(), 1, "round {round}: {out:?}");
        let inst: InstanceId = out[0][1..2].parse().expect("I<n>");
        assert_eq!(out[0], format!("I{inst} {}", get_xml("r1")));
        assert!(!had.contains(&inst), "never twice to one member");
        had.push(inst);
        out = h.refuse(inst, "r1");
    }
    // Three members, two retries: the third refusal is the answer.
    assert_eq!(out, [format!("UP {}", refusal_xml("r1"))]);
    assert_eq!(h.r.stats().requests_retried, 2);
    assert_eq!(h.r.pending_len(), 0);
}

#[test]
fn an_error_not_in_retry_on_is_the_answer() {
    let mut h = H::new(cont());
    h.join(1);
    h.join(2);
    let out = h.get("r1");
    let inst: InstanceId = out[0][1..2].parse().expect("I<n>");
    let e = format!("<iq type='error' id='r1' from='{D}' to='{ALICE}'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
    assert_eq!(h.inst(inst, &e), [format!("UP {e}")]);
}

#[test]
fn a_refused_request_with_no_member_left_waits_then_gets_the_refusal() {
    let mut h = H::new(cont());
    h.join(1);
    h.get("r1");
    assert!(h.refuse(1, "r1").is_empty(), "held for another member");
    assert_eq!(h.r.held_len(), 1);
    assert_eq!(
        h.advance(Duration::from_secs(10)),
        [format!("UP {}", refusal_xml("r1"))]
    );
}

#[test]
fn a_member_that_refuses_in_a_row_is_quarantined_then_back() {
    let mut c = cont();
    c.continuity.hold_when_empty = Duration::ZERO;
    let mut h = H::new(c);
    h.join(1);
    h.join(2);
    // Requests to 1 are refused; 2 answers.
    let mut n = 0;
    while h.r.stats().quarantines == 0 {
        n += 1;
        assert!(n < 20, "quarantined after 3 refusals");
        let id = format!("q{n}");
        let out = h.get(&id);
        if out[0].starts_with("I1") {
            assert_eq!(h.refuse(1, &id), [format!("I2 {}", get_xml(&id))]);
        }
        h.inst(
            2,
            &format!("<iq type='result' id='{id}' from='{D}' to='{ALICE}'/>"),
        );
    }
    assert_eq!(
        h.r.stats().quarantined,
        BTreeSet::from([Member::Instance(1)])
    );
    for k in 0..10 {
        assert!(
            h.get(&format!("z{k}"))[0].starts_with("I2"),
            "out of rotation"
        );
    }
    h.advance(Duration::from_secs(60));
    assert!(h.r.stats().quarantined.is_empty());
    let back = (0..10).any(|k| h.get(&format!("y{k}"))[0].starts_with("I1"));
    assert!(back, "back in the rotation");
}

/// Lines logged at INFO and above while `f` runs, without colours.
pub(super) fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().expect("log buffer")).into_owned();
    (r, text.lines().map(str::to_owned).collect())
}

/// The instance `I<n> ...` an action went to.
fn inst_of(out: &[String]) -> InstanceId {
    assert_eq!(out.len(), 1, "{out:?}");
    out[0][1..2].parse().expect("I<n>")
}

/// A loss is one log line with what became of the member's requests,
/// whatever their number: here one re-dispatched, one held (the only
/// other member refused it already) and one answered (a set).
#[test]
fn a_loss_is_one_log_line_with_its_three_counts() {
    let mut h = H::new(cont());
    h.join(1);
    h.join(2);
    // Refused by one, so it ends on the other (l), which k has tried.
    let k = inst_of(&h.get("gh"));
    let l = inst_of(&h.refuse(k, "gh"));
    assert_ne!(k, l);
    // A get and a set on l as well (round robin: l within two tries).
    let set = |id: &str| {
        format!("<iq type='set' id='{id}' to='{D}' from='{ALICE}'><q xmlns='urn:x'/></iq>")
    };
    for (kind, xml) in [("g", get_xml as fn(&str) -> String), ("s", set)] {
        let on_l = (0..2).any(|n| {
            let out = h.up(&xml(&format!("{kind}{n}")));
            inst_of(&out) == l
        });
        assert!(on_l, "a {kind} went to {l}");
    }
    let pending_on_k = h.r.pending_len() - 3;
    let (out, lines) = logged(|| h.lose(l));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    assert!(
        lines[0].contains("redispatched=1 held=1 answered=1"),
        "{}",
        lines[0]
    );
    // The get went to k, the set was answered; gh waits.
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out
        .iter()
        .any(|a| a.starts_with(&format!("I{k} <iq type='get'"))));
    assert!(out.iter().any(|a| a.contains("recipient-unavailable")));
    assert_eq!(h.r.held_len(), 1);
    assert_eq!(h.r.pending_len(), pending_on_k + 1);
}

/// Losing every resource at once (the upstream link) is one line too,
/// not one per resource or per request.
#[test]
fn losing_the_upstream_link_is_one_log_line_for_all_resources() {
    let mut h = H::new(cont());
    for res in ["a", "b", "c"] {
        h.online(res);
    }
    for n in 0..6 {
        h.get(&format!("g{n}"));
    }
    let mut out = Vec::new();
    let ((), lines) = logged(|| h.r.upstream_lost(h.now, &mut h.rng, &mut out));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("resources=3 redispatched=0 held=6 answered=0"),
        "{}",
        lines[0]
    );
}

#[test]
fn an_answer_between_refusals_resets_the_count() {
    let mut c = cont();
    c.continuity.quarantine_after = 2;
    c.continuity.retry_on = vec![crate::stanza::StanzaCondition::FeatureNotImplemented];
    let mut h = H::new(c);
    h.join(1);
    for k in 0..4 {
        let id = format!("a{k}");
        h.get(&id);
        if k % 2 == 0 {
            h.refuse(1, &id);
        } else {
            h.inst(
                1,
                &format!("<iq type='result' id='{id}' from='{D}' to='{ALICE}'/>"),
            );
        }
    }
    assert_eq!(h.r.stats().quarantines, 0);
}

#[test]
fn an_instance_request_without_an_id_is_bad_request() {
    let mut h = H::new(cfg());
    h.join(1);
    assert_eq!(
        h.inst(1, &format!("<iq type='get' from='{D}' to='{ALICE}'/>")),
        [format!("I1 <iq type='error' from='{ALICE}' to='{D}'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>an iq request needs an id</text></error></iq>")]
    );
    assert_eq!(h.r.pending_len(), 0);
    assert_eq!(
        h.up(&format!("<iq type='get' to='{D}' from='{ALICE}'/>")),
        [format!("UP <iq type='error' from='{D}' to='{ALICE}'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
}

/// What the randomised continuity test knows of the members, to check
/// that no request goes twice to one session.
#[derive(Default)]
struct Sessions {
    /// Member tag (`I1`, `impl@example.test/a`) → its current session,
    /// counted by the test each time it joins anew.
    current: std::collections::HashMap<String, u32>,
    /// (request id, member tag, session) already sent.
    sent: std::collections::HashSet<(String, String, u32)>,
    /// Answers per request id.
    answers: std::collections::HashMap<String, u32>,
    /// Requests a member has now: (id, member tag).
    outstanding: Vec<(String, String)>,
}

impl Sessions {
    fn joined(&mut self, tag: String) {
        *self.current.entry(tag).or_default() += 1;
    }

    fn count(&mut self, out: &[String], seed: u64) {
        for o in out {
            let Some((tag, xml)) = o.split_once(' ') else {
                continue;
            };
            let Ok(st) = parse_one(xml.as_bytes()) else {
                continue;
            };
            let id = st.id().unwrap_or_default().to_owned();
            if !id.starts_with('q') {
                continue;
            }
            if tag == "UP" && st.is_iq_response() {
                *self.answers.entry(id).or_default() += 1;
            } else if st.is_iq_request() {
                let member = if tag == "UP" {
                    st.to().unwrap_or_default().to_owned()
                } else {
                    tag.to_owned()
                };
                let session = self.current.get(&member).copied().unwrap_or(0);
                assert!(
                    self.sent.insert((id.clone(), member.clone(), session)),
                    "seed {seed}: {id} sent twice to {member} session {session}"
                );
                self.outstanding.push((id, member));
            }
        }
    }
}

/// Joins, losses, refusals, late answers, timeouts, hold ends, table
/// eviction, quarantine and upstream loss, at random, with every
/// continuity rule on: every accepted request is answered exactly once
/// and never sent twice to one member session.
#[test]
fn with_continuity_every_request_gets_exactly_one_answer() {
    let mut exercised = Stats::default();
    for seed in 0..200u64 {
        let mut c = cont();
        c.pending_capacity = NonZeroUsize::new(6).expect("nonzero");
        c.continuity.redispatch =
            [Redispatch::Get, Redispatch::All, Redispatch::Off][seed as usize % 3];
        c.continuity.quarantine_after = 2;
        c.continuity.quarantine_for = Duration::from_secs(15);
        c.balancing = [
            Balancing::Random,
            Balancing::RoundRobin,
            Balancing::LeastPending,
            Balancing::Sticky,
        ][(seed / 3) as usize % 4];
        let mut h = H::new(c);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Sessions::default();
        let mut online = true;
        let mut sent = 0u32;
        for step in 0..300 {
            let out = match rng.random_range(0..12) {
                0 | 1 if online => {
                    let r = ["a", "b"][rng.random_range(0..2)];
                    let tag = format!("{T}/{r}");
                    if rng.random_bool(0.5) {
                        if !h.r.pool().contains(&Member::Resource(tag.clone())) {
                            s.joined(tag);
                        }
                        h.up(&format!("<presence from='{T}/{r}' to='{D}'/>"))
                    } else {
                        h.offline(r)
                    }
                }
                2 => {
                    let i: InstanceId = rng.random_range(1..3);
                    if rng.random_bool(0.5) {
                        if !h.r.pool().contains(&Member::Instance(i)) {
                            s.joined(format!("I{i}"));
                        }
                        h.join(i)
                    } else {
                        h.lose(i)
                    }
                }
                3 => h.advance(Duration::from_secs(rng.random_range(0..12))),
                4 => {
                    let mut out = Vec::new();
                    if online {
                        h.r.upstream_lost(h.now, &mut h.rng, &mut out);
                    } else {
                        h.r.upstream_online(&mut out);
                    }
                    online = !online;
                    render(out)
                }
                5..=7 if online => {
                    sent += 1;
                    let typ = ["get", "set"][rng.random_range(0..2)];
                    let to = [D, D, "room@proxy.example.test"][rng.random_range(0..3)];
                    let u = rng.random_range(0..3);
                    h.up(&format!(
                        "<iq type='{typ}' id='q{step}' to='{to}' from='user{u}@example.test/r'/>"
                    ))
                }
                _ if s.outstanding.is_empty() || !online => continue,
                _ => {
                    let k = rng.random_range(0..s.outstanding.len());
                    let (id, member) = s.outstanding.swap_remove(k);
                    let body = match rng.random_range(0..3) {
                        0 => REFUSE,
                        _ => "",
                    };
                    let typ = if body.is_empty() { "result" } else { "error" };
                    if let Some(i) = member.strip_prefix('I') {
                        let i: InstanceId = i.parse().unwrap_or(0);
                        // The instance answers the requester it was given.
                        let who = (0..3)
                            .map(|u| format!("user{u}@example.test/r"))
                            .collect::<Vec<_>>();
                        let mut out = Vec::new();
                        for w in who {
                            out.extend(h.inst(
                                i,
                                &format!(
                                    "<iq type='{typ}' id='{id}' from='{D}' to='{w}'>{body}</iq>"
                                ),
                            ));
                        }
                        out
                    } else {
                        let mut out = Vec::new();
                        for u in 0..3 {
                            out.extend(h.up(&format!(
                                "<iq type='{typ}' id='{id}' from='{member}' to='{D}/user{u}@example.test/r'>{body}</iq>"
                            )));
                        }
                        out
                    }
                }
            };
            s.count(&out, seed);
        }
        let mut out = Vec::new();
        if !online {
            h.r.upstream_online(&mut out);
        }
        h.r.drain(&mut out);
        s.count(&render(out), seed);
        assert_eq!(
            s.answers.len() as u32,
            sent,
            "seed {seed}: every request answered"
        );
        assert!(
            s.answers.values().all(|&n| n == 1),
            "seed {seed}: none answered twice: {:?}",
            s.answers
        );
        let st = h.r.stats();
        exercised.requests_held += st.requests_held;
        exercised.requests_released += st.requests_released;
        exercised.hold_expired += st.hold_expired;
        exercised.requests_redispatched += st.requests_redispatched;
        exercised.requests_retried += st.requests_retried;
        exercised.replies_late += st.replies_late;
        exercised.quarantines += st.quarantines;
        exercised.errors_generated[StanzaError::ALL
            .iter()
            .position(|e| *e == StanzaError::ResourceConstraint)
            .unwrap_or(0)] += st.generated(StanzaError::ResourceConstraint);
    }
    let e = &exercised;
    for (what, n) in [
        ("held", e.requests_held),
        ("released", e.requests_released),
        ("hold expired", e.hold_expired),
        ("redispatched", e.requests_redispatched),
        ("retried", e.requests_retried),
        ("quarantines", e.quarantines),
        ("evicted", e.generated(StanzaError::ResourceConstraint)),
    ] {
        assert!(n > 0, "{what} was exercised: {e:?}");
    }
}
