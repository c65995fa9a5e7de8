//! Stanzas from upstream that broke a per-stanza limit (the framer
//! skipped them): who gets `policy-violation`, byte for byte, and what is
//! only counted.

use super::*;
use crate::xml::parse_one;

const D: &str = "proxy.example.test";
const ALICE: &str = "alice@example.test/phone";
const TEXT: &str =
    "stanza larger than 4096 bytes (limits.upstream_max_stanza_bytes): not delivered";

fn router() -> Router {
    Router::new(RouterConfig {
        domain: D.into(),
        target: Some("impl@example.test".into()),
        jat: JatMode::Inline,
        client_requests: true,
        subscribe: true,
        balancing: Balancing::RoundRobin,
        iq_timeout: Duration::from_secs(30),
        pending_capacity: NonZeroUsize::new(16).expect("nonzero"),
        instances: false,
    })
}

/// What the router writes for a skipped stanza whose head is `xml`.
fn skipped(r: &mut Router, limit: Limit, xml: Option<&str>) -> Vec<String> {
    let head = xml.map(|x| parse_one(x.as_bytes()).expect("test head frames"));
    let mut out = Vec::new();
    r.skipped_from_upstream(limit, head.as_ref(), TEXT, &mut out);
    out.into_iter()
        .map(|a| match a {
            Action::Upstream(w) | Action::UpstreamRequest(w, _) => {
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
