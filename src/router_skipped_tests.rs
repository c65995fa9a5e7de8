//! Stanzas from upstream that broke a per-stanza limit (the framer
//! skipped them): who gets `policy-violation`, byte for byte, and what is
//! only counted.

use super::*;
use crate::xml::parse_one;

const D: &str = "proxy.example.test";
const ALICE: &str = "alice@example.test/phone";
const TEXT: &str =
    "stanza larger than 4096 bytes (limits.upstream_max_stanza_bytes): not delivered";

/// A router whose server session is up.
fn router() -> Router {
    online(RouterConfig {
        domain: D.into(),
        target: Some("impl@example.test".into()),
        jat: JatMode::Inline,
        client_requests: true,
        subscribe: true,
        balancing: Balancing::RoundRobin,
        iq_timeout: Duration::from_secs(30),
        pending_capacity: NonZeroUsize::new(16).expect("nonzero"),
        max_write: 512 * 1024,
        instances: false,
        admission: Admission::default(),
        continuity: Continuity::off(),
        chat: Chat::default(),
    })
}

fn online(cfg: RouterConfig) -> Router {
    let mut r = Router::new(cfg, crate::backlog::Bound::items(64));
    r.upstream_online(&mut Vec::new());
    r
}

/// What the router writes for a skipped stanza whose head is `xml`.
fn skipped(r: &mut Router, limit: Limit, xml: Option<&str>) -> Vec<String> {
    let head = xml.map(|x| parse_one(x.as_bytes()).expect("test head frames"));
    let mut out = Vec::new();
    r.skipped_from_upstream(limit, head.as_ref(), TEXT, &mut out);
    out.into_iter()
        .map(|a| match a {
            Action::Upstream(w) | Action::UpstreamAnswer(w) | Action::UpstreamRequest(w, _) => {
                format!("UP {}", String::from_utf8_lossy(&w.to_bytes()))
            }
            other => format!("{other:?}"),
        })
        .collect()
}

fn policy(name: &str, id: &str, from: &str, to: &str) -> String {
    format!(
        "UP <{name} type='error' id='{id}' from='{from}' to='{to}'><error type='modify'>\
         <policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{TEXT}</text></error></{name}>"
    )
}

#[test]
fn a_skipped_request_is_answered_from_the_address_written_to() {
    let mut r = router();
    let out = skipped(
        &mut r,
        Limit::Size,
        Some(&format!("<iq type='get' id='q1' to='{D}' from='{ALICE}'/>")),
    );
    assert_eq!(out, [policy("iq", "q1", D, ALICE)]);
    // Any address at the domain: the answer comes from that address.
    let out = skipped(
        &mut r,
        Limit::Depth,
        Some(&format!(
            "<iq type='set' id='q2' to='room@{D}/nick' from='{ALICE}'/>"
        )),
    );
    assert_eq!(out, [policy("iq", "q2", &format!("room@{D}/nick"), ALICE)]);
    assert_eq!(r.stats().generated(StanzaError::PolicyViolation), 2);
    assert_eq!(r.stats().skipped, [1, 1, 0]);
    // Nothing was recorded: the error is the request's one answer.
    assert_eq!(r.pending_len(), 0);
}

#[test]
fn skipped_messages_and_presence_are_answered_errors_are_not() {
    let mut r = router();
    let msg = skipped(
        &mut r,
        Limit::Token,
        Some(&format!(
            "<message type='chat' id='m1' to='{D}' from='{ALICE}'/>"
        )),
    );
    assert_eq!(msg, [policy("message", "m1", D, ALICE)]);
    let pres = skipped(
        &mut r,
        Limit::Token,
        Some(&format!("<presence id='p1' to='{D}' from='{ALICE}'/>")),
    );
    assert_eq!(pres, [policy("presence", "p1", D, ALICE)]);
    for quiet in [
        format!("<message type='error' id='m2' to='{D}' from='{ALICE}'/>"),
        format!("<presence type='error' id='p2' to='{D}' from='{ALICE}'/>"),
        format!("<iq type='result' id='r1' to='{D}/{ALICE}' from='impl@example.test/a'/>"),
        format!("<iq type='error' id='r2' to='{D}' from='{ALICE}'/>"),
        format!("<iq type='get' id='r3' to='{D}'/>"),
        format!("<other id='o1' to='{D}' from='{ALICE}'/>"),
    ] {
        assert_eq!(
            skipped(&mut r, Limit::Size, Some(&quiet)),
            Vec::<String>::new(),
            "{quiet}"
        );
    }
    assert_eq!(skipped(&mut r, Limit::Size, None), Vec::<String>::new());
    assert_eq!(r.stats().skipped, [7, 0, 2]);
    assert_eq!(r.stats().generated(StanzaError::PolicyViolation), 2);
}

// ----- what the server would not take back --------------------------------

/// A router whose server takes at most `max` bytes from the component.
fn small_writes(max: usize) -> Router {
    let mut r = router();
    let mut cfg = r.config().clone();
    cfg.max_write = max;
    r = online(cfg);
    let mut out = Vec::new();
    let st = parse_one(format!("<presence from='impl@example.test/a' to='{D}'/>").as_bytes())
        .expect("presence frames");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    r.from_upstream(&st, Instant::now(), &mut rng, &mut out);
    r
}

fn up_text(r: &mut Router, xml: &str) -> Vec<String> {
    let st = parse_one(xml.as_bytes()).expect("test stanza frames");
    let mut out = Vec::new();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    r.from_upstream(&st, Instant::now(), &mut rng, &mut out);
    out.into_iter()
        .map(|a| match a {
            Action::Upstream(w) | Action::UpstreamAnswer(w) | Action::UpstreamRequest(w, _) => {
                String::from_utf8_lossy(&w.to_bytes()).into_owned()
            }
            other => format!("{other:?}"),
        })
        .collect()
}

/// Prosody closes the component stream on a stanza over its
/// `component_stanza_size_limit`: a request that would be over it once
/// forwarded is answered instead, and never recorded.
#[test]
fn a_request_too_large_to_write_back_is_answered_policy_violation() {
    let mut r = small_writes(300);
    let pad = "p".repeat(200);
    let out = up_text(
        &mut r,
        &format!("<iq type='get' id='w1' to='{D}' from='{ALICE}'><q xmlns='urn:x'>{pad}</q></iq>"),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with(&format!(
        "<iq type='error' id='w1' from='{D}' to='{ALICE}'><error type='modify'><policy-violation "
    )),
        "{out:?}"
    );
    assert!(
        out[0].contains("(limits.upstream_max_write_bytes)"),
        "{out:?}"
    );
    assert_eq!(r.pending_len(), 0);
    // A small one still goes through.
    let out = up_text(
        &mut r,
        &format!("<iq type='get' id='w2' to='{D}' from='{ALICE}'/>"),
    );
    assert_eq!(
        out,
        [format!(
            "<iq type='get' id='w2' to='impl@example.test/a' from='{D}/{ALICE}'/>"
        )]
    );
}

/// A member's reply too large for the server: the requester gets
/// `policy-violation` in its place, its one answer.
#[test]
fn a_reply_too_large_to_write_is_replaced_by_policy_violation() {
    let mut r = small_writes(300);
    let fwd = up_text(
        &mut r,
        &format!("<iq type='get' id='w3' to='{D}' from='{ALICE}'/>"),
    );
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    let pad = "r".repeat(300);
    let back = up_text(
        &mut r,
        &format!(
            "<iq type='result' id='w3' to='{D}/{ALICE}' from='impl@example.test/a'><q xmlns='urn:x'>{pad}</q></iq>"
        ),
    );
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(
        back[0].starts_with(&format!(
        "<iq type='error' id='w3' from='{D}' to='{ALICE}'><error type='modify'><policy-violation "
    )),
        "{back:?}"
    );
    assert_eq!(r.pending_len(), 0);
    assert_eq!(r.stats().generated(StanzaError::PolicyViolation), 1);
}
