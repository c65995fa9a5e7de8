//! Which target resources join the pool (issue 13, qualification): one
//! test per path, byte-exact where the router writes something, with
//! the clock passed in.

use super::tests::{cfg, logged, H};
use super::*;
use crate::qualify::ResourceFilter;

const D: &str = "proxy.example.test";
const T: &str = "focus@example.test";
const ALICE: &str = "alice@example.test/phone";
const FEATURE: &str = "http://jitsi.org/protocol/focus";
const TIMEOUT: Duration = Duration::from_secs(5);

/// The router of the routing tests, with admission rules and the client
/// pool serving the domain (no instance listener).
fn rules(resources: Option<&str>, feature: Option<&str>) -> RouterConfig {
    RouterConfig {
        target: Some(T.into()),
        instances: false,
        admission: Admission {
            resources: resources.map(|r| ResourceFilter::parse(r).expect("test pattern")),
            require_feature: feature.map(str::to_owned),
            qualify_timeout: TIMEOUT,
        },
        ..cfg()
    }
}

impl H {
    fn in_pool(&self, res: &str) -> bool {
        self.r
            .pool()
            .contains(&Member::Resource(format!("{T}/{res}")))
    }

    fn refused(&self) -> u64 {
        self.r.stats().admission.refused
    }

    fn qualifying(&self) -> u64 {
        self.r.stats().admission.qualifying
    }

    /// A request from alice; returns what the router wrote.
    fn request(&mut self, id: &str) -> Vec<String> {
        self.up(&format!(
            "<iq type='get' id='{id}' to='{D}' from='{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
    }
}

fn presence(res: &str) -> String {
    format!("<presence from='{T}/{res}' to='{D}'/>")
}

fn presence_caps(res: &str, ver: &str) -> String {
    format!(
        "<presence from='{T}/{res}' to='{D}'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:x' ver='{ver}'/></presence>"
    )
}

fn unavailable(res: &str) -> String {
    format!("<presence type='unavailable' from='{T}/{res}' to='{D}'/>")
}

/// The disco#info jatproxy asks resource `res`, byte for byte.
fn question(res: &str, n: u64) -> String {
    format!(
        "UP <iq type='get' id='{QUESTION_ID_PREFIX}{n}' from='{D}' to='{T}/{res}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
}

/// A disco#info result from `res` for question `n`, listing `features`.
fn answer(res: &str, n: u64, features: &[&str]) -> String {
    let listed: String = features
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    format!(
        "<iq type='result' id='{QUESTION_ID_PREFIX}{n}' from='{T}/{res}' to='{D}'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/>{listed}</query></iq>"
    )
}

fn forwarded(id: &str, res: &str) -> String {
    format!(
        "UP <iq type='get' id='{id}' to='{T}/{res}' from='{D}/{ALICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
}

fn unavailable_reply(id: &str) -> String {
    format!(
        "UP <iq type='error' id='{id}' from='{D}' to='{ALICE}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
}

#[test]
fn without_rules_every_resource_joins_at_once() {
    let mut h = H::new(rules(None, None));
    assert!(h.up(&presence("jvb")).is_empty());
    assert!(h.in_pool("jvb"));
    assert_eq!((h.refused(), h.qualifying()), (0, 0));
}

#[test]
fn name_rule_refuses_once_and_admits_the_rest() {
    let mut h = H::new(rules(Some("focus*"), None));
    assert!(h.up(&presence("jvb")).is_empty());
    assert!(!h.in_pool("jvb"));
    assert_eq!(h.refused(), 1);
    // Its next presence changes nothing, and is not refused (logged) again.
    assert!(h.up(&presence_caps("jvb", "v1")).is_empty());
    assert_eq!(h.refused(), 1);
    assert!(h.up(&presence("focus-a")).is_empty());
    assert!(h.in_pool("focus-a"));
    for i in 0..4 {
        let id = format!("r{i}");
        assert_eq!(h.request(&id), [forwarded(&id, "focus-a")]);
    }
}

#[test]
fn name_rule_comes_before_the_question() {
    let mut h = H::new(rules(Some("focus*"), Some(FEATURE)));
    assert!(h.up(&presence("jvb")).is_empty(), "no disco#info for jvb");
    assert_eq!(h.refused(), 1);
    assert_eq!(h.up(&presence("focus-a")), [question("focus-a", 1)]);
}

#[test]
fn feature_present_admits_after_the_answer_only() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    assert!(!h.in_pool("a"));
    assert_eq!(h.qualifying(), 1);
    // Not in the pool while asked.
    assert_eq!(h.request("early"), [unavailable_reply("early")]);
    // Another presence while asked asks nothing more.
    assert!(h.up(&presence("a")).is_empty());
    assert!(h.up(&answer("a", 1, &["urn:other", FEATURE])).is_empty());
    assert!(h.in_pool("a"));
    assert_eq!((h.refused(), h.qualifying()), (0, 0));
    assert_eq!(h.request("r1"), [forwarded("r1", "a")]);
}

#[test]
fn feature_absent_refuses() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("jvb")), [question("jvb", 1)]);
    assert!(h
        .up(&answer("jvb", 1, &["urn:example:videobridge"]))
        .is_empty());
    assert!(!h.in_pool("jvb"));
    assert_eq!((h.refused(), h.qualifying()), (1, 0));
    // A presence without new caps asks nothing: the answer was definite.
    assert!(h.up(&presence("jvb")).is_empty());
    assert_eq!(h.refused(), 1);
    assert_eq!(h.request("r1"), [unavailable_reply("r1")]);
}

#[test]
fn error_answer_refuses_and_next_presence_asks_again() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    let error = format!(
        "<iq type='error' id='{QUESTION_ID_PREFIX}1' from='{T}/a' to='{D}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    assert!(h.up(&error).is_empty());
    assert!(!h.in_pool("a"));
    assert_eq!((h.refused(), h.qualifying()), (1, 0));
    assert_eq!(h.up(&presence("a")), [question("a", 2)]);
    assert!(h.up(&answer("a", 2, &[FEATURE])).is_empty());
    assert!(h.in_pool("a"));
}

#[test]
fn timeout_refuses_until_the_next_presence() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    let asked_at = h.now;
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    assert_eq!(h.r.next_deadline(), Some(asked_at + TIMEOUT));
    assert!(h.advance(TIMEOUT - Duration::from_millis(1)).is_empty());
    assert_eq!(h.qualifying(), 1);
    assert!(h.advance(Duration::from_millis(1)).is_empty());
    assert!(!h.in_pool("a"));
    assert_eq!((h.refused(), h.qualifying()), (1, 0));
    assert_eq!(h.r.next_deadline(), None);
    // The late answer to the question that timed out admits nothing.
    let unmatched = h.r.stats().replies_unmatched;
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    assert!(!h.in_pool("a"));
    assert_eq!(h.r.stats().replies_unmatched, unmatched + 1);
    // Asked again on its next presence, with a new id.
    assert_eq!(h.up(&presence("a")), [question("a", 2)]);
    assert!(h.up(&answer("a", 2, &[FEATURE])).is_empty());
    assert!(h.in_pool("a"));
}

#[test]
fn known_caps_admit_or_refuse_without_asking() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence_caps("a", "good")), [question("a", 1)]);
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    assert_eq!(h.up(&presence_caps("jvb", "bad")), [question("jvb", 2)]);
    assert!(h.up(&answer("jvb", 2, &[])).is_empty());
    assert_eq!(h.refused(), 1);
    // Both come back as new sessions, and a new resource shares a ver.
    assert!(h.up(&unavailable("a")).is_empty());
    assert!(h.up(&unavailable("jvb")).is_empty());
    assert!(h.up(&presence_caps("a", "good")).is_empty());
    assert!(h.up(&presence_caps("b", "good")).is_empty());
    assert!(h.up(&presence_caps("jvb", "bad")).is_empty());
    assert!(h.in_pool("a") && h.in_pool("b") && !h.in_pool("jvb"));
    assert_eq!((h.refused(), h.qualifying()), (2, 0));
}

#[test]
fn new_ver_asks_again_while_staying_in_the_pool() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence_caps("a", "v1")), [question("a", 1)]);
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    // Same ver: nothing asked.
    assert!(h.up(&presence_caps("a", "v1")).is_empty());
    assert_eq!(h.up(&presence_caps("a", "v2")), [question("a", 2)]);
    assert!(h.in_pool("a"), "qualified before: serves while asked");
    assert_eq!(h.qualifying(), 0, "in the pool, so not counted qualifying");
    assert_eq!(h.request("r1"), [forwarded("r1", "a")]);
    // v2 lacks the feature: out, its request answered.
    let out = h.up(&answer("a", 2, &["urn:other"]));
    assert_eq!(
        out,
        [format!(
            "UP <iq type='error' id='r1' from='{D}' to='{ALICE}'><error type='wait'><recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )]
    );
    assert!(!h.in_pool("a"));
    assert_eq!(h.refused(), 1);
}

#[test]
fn unavailable_while_asked_is_forgotten() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    assert!(h.up(&unavailable("a")).is_empty());
    assert_eq!((h.refused(), h.qualifying()), (0, 0));
    assert_eq!(h.r.next_deadline(), None);
    // Its answer, or the server's bounce, finds nothing and admits nothing.
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    assert!(!h.in_pool("a"));
    assert!(h.advance(TIMEOUT * 2).is_empty());
    assert_eq!(h.refused(), 0, "a session that left is not refused");
    // Back: a new session, asked anew.
    assert_eq!(h.up(&presence("a")), [question("a", 2)]);
}

#[test]
fn answers_never_reach_a_requester() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    // The same answer again, and a made-up one, are dropped.
    assert!(h.up(&answer("a", 1, &[FEATURE])).is_empty());
    assert!(h.up(&answer("a", 99, &[FEATURE])).is_empty());
    assert_eq!(h.r.stats().replies_delivered, 0);
    assert_eq!(h.r.stats().replies_unmatched, 2);
    // Resource b asks a, through jatproxy, with an id of the questions'
    // form: refused, so a's reply could never be taken for an answer.
    let enc = format!("{T}/a");
    let out = h.up(&format!(
        "<iq type='get' id='{QUESTION_ID_PREFIX}7' to='{D}/{enc}' from='{T}/b'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    assert_eq!(
        out,
        [format!(
            "UP <iq type='error' id='{QUESTION_ID_PREFIX}7' from='{D}/{enc}' to='{T}/b'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )]
    );
    // An ordinary id goes through, and its reply is delivered, not taken.
    let out = h.up(&format!(
        "<iq type='get' id='x1' to='{D}/{enc}' from='{T}/b'/>"
    ));
    assert_eq!(
        out,
        [format!("UP <iq type='get' id='x1' to='{T}/a' from='{D}'/>")]
    );
    let out = h.up(&format!(
        "<iq type='result' id='x1' from='{T}/a' to='{D}'/>"
    ));
    assert_eq!(
        out,
        [format!(
            "UP <iq type='result' id='x1' from='{D}/{enc}' to='{T}/b'/>"
        )]
    );
}

#[test]
fn upstream_loss_forgets_every_session() {
    let mut h = H::new(rules(None, Some(FEATURE)));
    assert_eq!(h.up(&presence("a")), [question("a", 1)]);
    let now = h.now;
    h.r.upstream_lost(now, &mut h.rng, &mut Vec::new());
    assert_eq!((h.qualifying(), h.r.next_deadline()), (0, None));
    h.r.upstream_online(&mut Vec::new());
    assert_eq!(h.up(&presence("a")), [question("a", 2)]);
    // The presence subscription revoked: forgotten too.
    assert!(h
        .up(&format!(
            "<presence type='unsubscribed' from='{T}' to='{D}'/>"
        ))
        .is_empty());
    assert_eq!(h.qualifying(), 0);
}

#[test]
fn instances_are_not_qualified() {
    let mut cfg = rules(Some("focus*"), Some(FEATURE));
    cfg.instances = true;
    let mut h = H::new(cfg);
    let now = h.now;
    h.r.instance_up(3, now, &mut Vec::new());
    assert!(h.r.pool().contains(&Member::Instance(3)));
    assert_eq!((h.refused(), h.qualifying()), (0, 0));
}

#[test]
fn reloaded_rules_apply_to_new_sessions() {
    let mut h = H::new(rules(None, None));
    assert!(h.up(&presence("jvb")).is_empty());
    let mut out = Vec::new();
    h.r.reload(rules(Some("focus*"), None), h.now, &mut h.rng, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // Already admitted: stays.
    assert!(h.up(&presence("jvb")).is_empty());
    assert!(h.in_pool("jvb"));
    // A new session is held to the new rule.
    assert!(h.up(&presence("jvb2")).is_empty());
    assert!(!h.in_pool("jvb2"));
    assert_eq!(h.refused(), 1);
}

/// The value of attribute `name` in the first tag of `stanza` (the test
/// stanzas quote with `'`).
fn attr<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    let head = &stanza[..stanza.find('>')?];
    let start = head.find(&format!(" {name}='"))? + name.len() + 3;
    let len = head[start..].find('\'')?;
    Some(&head[start..start + len])
}

/// What the randomised test saw the router write.
#[derive(Default)]
struct Seen {
    /// Questions out, by id: the resource asked.
    questions: BTreeMap<String, String>,
    /// Requests forwarded and not answered by their member yet: (id, member).
    forwarded: Vec<(String, String)>,
    /// Answers alice got, by request id.
    answers: BTreeMap<String, u32>,
}

impl Seen {
    fn take(&mut self, out: Vec<String>) {
        for s in out {
            let (id, to) = (attr(&s, "id").unwrap_or(""), attr(&s, "to").unwrap_or(""));
            if to == ALICE {
                assert!(!id.starts_with(QUESTION_ID_PREFIX), "answer leaked: {s}");
                *self.answers.entry(id.to_owned()).or_default() += 1;
            } else if id.starts_with(QUESTION_ID_PREFIX) {
                self.questions.insert(id.to_owned(), to.to_owned());
            } else if s.starts_with("UP <iq type='get' id='r") {
                assert!(
                    to.starts_with(&format!("{T}/good")),
                    "a wrong one served: {s}"
                );
                self.forwarded.push((id.to_owned(), to.to_owned()));
            }
        }
    }
}

/// Purpose: whatever the interleaving of presences (with and without
/// caps), answers (with the feature, without it, errors, late ones),
/// timeouts, unavailability, upstream loss and requests, a resource
/// without the feature is never given a request, no answer to a question
/// reaches alice, and every request gets exactly one answer.
#[test]
fn interleavings_admit_only_the_qualified_and_answer_every_request_once() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    const RESOURCES: [&str; 4] = ["good-a", "good-b", "bad-a", "bad-b"];
    // Over all seeds: requests served by a member, resources refused.
    let (mut served, mut refused) = (0u64, 0u64);
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = H::new(rules(None, Some(FEATURE)));
        let mut seen = Seen::default();
        let mut sent = 0u32;
        for _ in 0..300 {
            let res = RESOURCES[rng.random_range(0..RESOURCES.len())];
            let good = res.starts_with("good");
            let out = match rng.random_range(0..9) {
                0 => h.up(&presence(res)),
                1 => {
                    let ver = if good { ["g1", "g2"] } else { ["b1", "b2"] };
                    h.up(&presence_caps(res, ver[rng.random_range(0..2)]))
                }
                2 => h.up(&unavailable(res)),
                3 | 4 => {
                    // Answer some question out (maybe stale, maybe twice).
                    let Some((id, to)) = seen
                        .questions
                        .iter()
                        .nth(rng.random_range(0..seen.questions.len().max(1)))
                    else {
                        continue;
                    };
                    let (id, to) = (id.clone(), to.clone());
                    let listed: &[&str] = if to.contains("/good") {
                        &[FEATURE]
                    } else {
                        &[]
                    };
                    let stanza = if rng.random_bool(0.2) {
                        format!(
                            "<iq type='error' id='{id}' from='{to}' to='{D}'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                        )
                    } else {
                        let n = id.trim_start_matches(QUESTION_ID_PREFIX);
                        let res = to.rsplit('/').next().unwrap_or_default();
                        answer(res, n.parse().unwrap_or(0), listed)
                    };
                    h.up(&stanza)
                }
                5 => h.advance(Duration::from_millis(rng.random_range(0..3000))),
                6 => {
                    sent += 1;
                    h.request(&format!("r{sent}"))
                }
                7 if !seen.forwarded.is_empty() => {
                    let (id, member) = seen
                        .forwarded
                        .swap_remove(rng.random_range(0..seen.forwarded.len()));
                    h.up(&format!(
                        "<iq type='result' id='{id}' to='{D}/{ALICE}' from='{member}'/>"
                    ))
                }
                8 if rng.random_bool(0.1) => {
                    let mut out = Vec::new();
                    h.r.upstream_lost(h.now, &mut h.rng, &mut out);
                    h.r.upstream_online(&mut out);
                    super::tests::render(out)
                }
                _ => continue,
            };
            seen.take(out);
        }
        served += h.r.stats().requests_routed;
        refused += h.r.stats().admission.refused;
        let mut out = Vec::new();
        h.r.drain(&mut out);
        seen.take(super::tests::render(out));
        for i in 1..=sent {
            let n = seen.answers.get(&format!("r{i}")).copied().unwrap_or(0);
            assert_eq!(n, 1, "seed {seed}: request r{i} answered {n} times");
        }
        assert!(
            h.r.pool()
                .members()
                .iter()
                .all(|m| format!("{m:?}").contains("/good")),
            "seed {seed}: {:?}",
            h.r.pool().members()
        );
    }
    assert!(
        served > 100 && refused > 100,
        "served {served}, refused {refused}"
    );
}

/// A refusal is one line naming the resource and the reason, as the
/// README's Jitsi section quotes it; the next presence of the same
/// session logs nothing more.
#[test]
fn a_refusal_is_one_log_line_with_the_member_and_the_reason() {
    let mut h = H::new(rules(Some("focus*"), None));
    let (out, lines) = logged(|| h.up(&presence("jvb")));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!(
            "resource refused: it does not join the pool member=\"{T}/jvb\" \
             reason=its name does not match client_proxy.resources"
        )),
        "{}",
        lines[0]
    );
    let (_, lines) = logged(|| h.up(&presence("jvb")));
    assert!(lines.is_empty(), "{lines:#?}");
    let (_, lines) = logged(|| h.up(&presence("focus-1")));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!("resource joined the pool member=\"{T}/focus-1\"")),
        "{}",
        lines[0]
    );
}
