//! Table tests for [`super`]: the name rule, the question and the
//! readers of its answer, caps, the cache, and the state machine.

use super::*;

const D: &str = "proxy.example.test";
const FEATURE: &str = "urn:example:conference";
const SE: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

#[test]
fn name_rules_match_the_whole_resource() {
    let rows: &[(&str, &str, bool)] = &[
        ("focus*", "focus", true),
        ("focus*", "focus-1a2b", true),
        ("focus*", "Focus", false),
        ("focus*", "jvb-focus", false),
        ("focus", "focus", true),
        ("focus", "focus2", false),
        ("f?cus", "fîcus", true),
        ("f?cus", "fcus", false),
        ("*", "", true),
        ("*", "anything at all", true),
        ("*-jicofo-*", "a-jicofo-b", true),
        ("*-jicofo-*", "a-jicofo", false),
        ("a*b*c", "aXbYbZc", true),
        ("a*b*c", "aXbYbZ", false),
        ("**x", "x", true),
        ("[abc]", "[abc]", true),
        ("[abc]", "a", false),
        ("re", "re", true),
        // Regexes, anchored at both ends.
        ("re:focus", "focus", true),
        ("re:focus", "focus2", false),
        ("re:focus", "notfocus", false),
        ("re:focus-[0-9]+", "focus-12", true),
        ("re:focus-[0-9]+", "focus-12a", false),
        // The alternation stays inside the anchors.
        ("re:a|b", "a", true),
        ("re:a|b", "ab", false),
        ("re:.*", "", true),
        ("re:(?i)FOCUS", "focus", true),
        // A line break does not end the match early.
        ("re:focus", "focus\nx", false),
    ];
    for (pattern, resource, want) in rows {
        let f = ResourceFilter::parse(pattern).expect("valid pattern");
        assert_eq!(f.matches(resource), *want, "{pattern:?} ~ {resource:?}");
    }
}

#[test]
fn bad_filters_say_why_in_one_line() {
    let rows: &[(&str, &str)] = &[
        ("", "\"\" matches no resource (empty pattern)"),
        ("re:", "\"re:\" matches no resource (empty pattern)"),
        ("re:focus(", "\"focus(\" is not a valid regex: "),
        ("re:[z-a]", "\"[z-a]\" is not a valid regex: "),
    ];
    for (value, start) in rows {
        let e = ResourceFilter::parse(value).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.starts_with(start), "{value:?}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
        if value.len() > 3 {
            assert!(msg.len() > start.len(), "says what is wrong: {msg}");
        }
    }
}

#[test]
fn filters_compare_and_print_as_written() {
    let a = ResourceFilter::parse("re:focus.*").expect("valid");
    assert_eq!(a, ResourceFilter::parse("re:focus.*").expect("valid"));
    assert_ne!(a, ResourceFilter::parse("re:focus.+").expect("valid"));
    assert_eq!(a.to_string(), "re:focus.*");
    assert_eq!(a.as_str(), "re:focus.*");
    assert_eq!(format!("{a:?}"), "ResourceFilter(\"re:focus.*\")");
}

#[test]
fn the_question_is_a_plain_disco_info_get() {
    assert_eq!(
        &disco_info_request(D, "focus@auth.example.test/focus-1", "q1")[..],
        b"<iq type='get' id='q1' from='proxy.example.test' to='focus@auth.example.test/focus-1'>\
          <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    );
    let escaped = disco_info_request(D, "o'r@x/<y>", "a'b&");
    let s = std::str::from_utf8(&escaped).expect("utf8");
    assert!(s.contains("id='a&apos;b&amp;'"), "{s}");
    assert!(s.contains("to='o&apos;r@x/&lt;y&gt;'"), "{s}");
    // What jatproxy writes, its own framer reads back as an iq get.
    let frame = crate::xml::parse_one(&escaped).expect("well-formed");
    assert!(frame.is_iq_request());
    assert_eq!(frame.id(), Some("a'b&"));
    assert_eq!(frame.to(), Some("o'r@x/<y>"));
}

fn result(children: &str) -> String {
    format!("<iq type='result' id='q1' from='focus@auth.example.test/a' to='{D}'>{children}</iq>")
}

#[test]
fn reading_the_answer() {
    let q = |features: &str| {
        result(&format!(
            "<query xmlns='{NS_DISCO_INFO}'><identity category='client' type='bot'/>{features}</query>"
        ))
    };
    let f = |var: &str| format!("<feature var='{var}'/>");
    use Refusal::*;
    let rows: Vec<(String, Result<(), Refusal>)> = vec![
        (q(&(f(NS_DISCO_INFO) + &f(FEATURE))), Ok(())),
        (q(&f(NS_DISCO_INFO)), Err(FeatureMissing)),
        (q(""), Err(FeatureMissing)),
        // A prefix of the var is not the var.
        (q(&f("urn:example:conf")), Err(FeatureMissing)),
        // Double quotes, a prefixed query, whitespace between children.
        (
            result(&format!(
                "<d:query xmlns:d=\"{NS_DISCO_INFO}\">\n  <d:feature var=\"{FEATURE}\"/>\n</d:query>"
            )),
            Ok(()),
        ),
        // A feature element outside the disco#info namespace is not one.
        (
            result(&format!(
                "<query xmlns='{NS_DISCO_INFO}'><feature xmlns='urn:x' var='{FEATURE}'/></query>"
            )),
            Err(FeatureMissing),
        ),
        // The feature named in some other child is not listed.
        (
            result(&format!(
                "<query xmlns='{NS_DISCO_INFO}'/><x xmlns='urn:x'><feature var='{FEATURE}'/></x>"
            )),
            Err(FeatureMissing),
        ),
        // Nested deeper than the query's own children.
        (
            q(&format!("<x><feature var='{FEATURE}'/></x>")),
            Err(FeatureMissing),
        ),
        (result(""), Err(NotDiscoInfo)),
        (
            result("<query xmlns='http://jabber.org/protocol/disco#items'/>"),
            Err(NotDiscoInfo),
        ),
        (
            format!(
                "<iq type='error' id='q1'><query xmlns='{NS_DISCO_INFO}'/><error type='cancel'>\
                 <service-unavailable xmlns='{SE}'/></error></iq>"
            ),
            Err(DiscoError(Some(StanzaCondition::ServiceUnavailable))),
        ),
        (
            "<iq type='error' id='q1'><error type='cancel'/></iq>".to_owned(),
            Err(DiscoError(None)),
        ),
        (
            format!("<iq type='get' id='q1'><query xmlns='{NS_DISCO_INFO}'/></iq>"),
            Err(NotDiscoInfo),
        ),
        ("<iq id='q1'/>".to_owned(), Err(NotDiscoInfo)),
        // Not well-formed: what was read decides, nothing panics.
        ("<iq type='result'><query".to_owned(), Err(NotDiscoInfo)),
        (String::new(), Err(NotDiscoInfo)),
    ];
    for (reply, want) in rows {
        assert_eq!(read_disco_reply(reply.as_bytes(), FEATURE), want, "{reply}");
    }
}

#[test]
fn reading_an_error_condition() {
    use StanzaCondition::*;
    let e =
        |inner: &str| format!("<iq type='error' id='r1'><error type='cancel'>{inner}</error></iq>");
    let rows: Vec<(String, Option<StanzaCondition>)> = vec![
        (
            e(&format!("<feature-not-implemented xmlns='{SE}'/>")),
            Some(FeatureNotImplemented),
        ),
        // The text may come first.
        (
            e(&format!(
                "<text xmlns='{SE}'>busy</text><resource-constraint xmlns='{SE}'/>"
            )),
            Some(ResourceConstraint),
        ),
        // An application condition beside the defined one.
        (
            e(&format!(
                "<x xmlns='urn:app'/><not-allowed xmlns='{SE}'/><x xmlns='urn:app'/>"
            )),
            Some(NotAllowed),
        ),
        // Without the namespace it is no condition.
        (e("<conflict/>"), None),
        // An undefined name in the namespace is no condition either, and
        // the first condition element is the one that counts.
        (
            e(&format!("<made-up xmlns='{SE}'/><conflict xmlns='{SE}'/>")),
            None,
        ),
        // A condition-looking element outside <error>.
        (
            format!("<iq type='error' id='r1'><conflict xmlns='{SE}'/></iq>"),
            None,
        ),
        ("<iq type='error' id='r1'/>".to_owned(), None),
        (
            format!("<message type='error'><error type='wait'><remote-server-timeout xmlns='{SE}'/></error></message>"),
            Some(RemoteServerTimeout),
        ),
    ];
    for (stanza, want) in rows {
        assert_eq!(error_condition(stanza.as_bytes()), want, "{stanza}");
    }
}

#[test]
fn reading_caps_from_a_presence() {
    let c = |attrs: &str| {
        format!(
            "<presence from='focus@auth.example.test/a'><c xmlns='{NS_CAPS}' {attrs}/></presence>"
        )
    };
    let caps = |node: Option<&str>, hash: Option<&str>, ver: &str| Caps {
        node: node.map(str::to_owned),
        hash: hash.map(str::to_owned),
        ver: ver.to_owned(),
    };
    let long = "v".repeat(MAX_CAPS_BYTES + 1);
    let rows: Vec<(String, Option<Caps>)> = vec![
        (
            c("hash='sha-1' node='http://jitsi.org/jicofo' ver='QgayPKawpkPSDYmwT/WM94uAlu0='"),
            Some(caps(
                Some("http://jitsi.org/jicofo"),
                Some("sha-1"),
                "QgayPKawpkPSDYmwT/WM94uAlu0=",
            )),
        ),
        (c("node='n' ver='1.0'"), Some(caps(Some("n"), None, "1.0"))),
        (c("hash='sha-1' node='n'"), None),
        (c("hash='sha-1' node='n' ver=''"), None),
        (c(&format!("hash='sha-1' ver='{long}'")), None),
        (c(&format!("hash='sha-1' node='{long}' ver='x'")), None),
        ("<presence/>".to_owned(), None),
        (
            "<presence><c xmlns='urn:other' ver='x'/></presence>".to_owned(),
            None,
        ),
        // Only a direct child of the presence.
        (
            format!("<presence><x xmlns='urn:x'><c xmlns='{NS_CAPS}' hash='sha-1' ver='x'/></x></presence>"),
            None,
        ),
        // Among other children, prefixed, the first one counts.
        (
            format!(
                "<presence><show>away</show><k:c xmlns:k='{NS_CAPS}' hash='sha-1' ver='one'/>\
                 <c xmlns='{NS_CAPS}' hash='sha-1' ver='two'/></presence>"
            ),
            Some(caps(None, Some("sha-1"), "one")),
        ),
        ("<presence><c".to_owned(), None),
    ];
    for (presence, want) in rows {
        assert_eq!(Caps::of_presence(presence.as_bytes()), want, "{presence}");
    }
}

#[test]
fn caps_keys() {
    let caps = |node: &str, hash: Option<&str>, ver: &str| Caps {
        node: Some(node.to_owned()),
        hash: hash.map(str::to_owned),
        ver: ver.to_owned(),
    };
    // A hashed ver is the feature set whoever sends it.
    assert_eq!(
        caps("a", Some("sha-1"), "X").key(),
        caps("b", Some("sha-1"), "X").key()
    );
    assert_ne!(
        caps("a", Some("sha-1"), "X").key(),
        caps("a", Some("sha-256"), "X").key()
    );
    // A legacy ver is a version of one node's software.
    assert_ne!(caps("a", None, "1.0").key(), caps("b", None, "1.0").key());
    assert_ne!(caps("a", None, "X").key(), caps("a", Some("a"), "X").key());
    assert_eq!(caps("a", None, "1.0").key(), caps("a", None, "1.0").key());
}

fn key(ver: &str) -> CapsKey {
    Caps {
        node: None,
        hash: Some("sha-1".into()),
        ver: ver.into(),
    }
    .key()
}

#[test]
fn the_cache_is_bounded_and_about_one_feature() {
    let mut cache = CapsCache::new(NonZeroUsize::new(2).expect("nonzero"));
    cache.set_feature(Some(FEATURE));
    cache.insert(key("a"), true);
    cache.insert(key("b"), false);
    assert_eq!(cache.get(&key("b")), Some(false));
    assert_eq!(cache.get(&key("a")), Some(true));
    // "a" was used last: "b" goes.
    cache.insert(key("c"), true);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get(&key("b")), None);
    assert_eq!(cache.get(&key("a")), Some(true));
    cache.set_feature(Some(FEATURE));
    assert_eq!(cache.len(), 2, "the same feature keeps what is known");
    cache.set_feature(Some("urn:other"));
    assert!(cache.is_empty(), "another feature forgets it");
    cache.insert(key("a"), true);
    cache.set_feature(None);
    assert!(cache.is_empty());
}

#[test]
fn refusals_say_why_in_one_line() {
    use Refusal::*;
    let rows = [
        (
            Name,
            "its name does not match client_proxy.resources",
            false,
        ),
        (
            FeatureMissing,
            "its disco#info does not list client_proxy.require_feature",
            false,
        ),
        (
            CapsLacksFeature,
            "its caps ver is one whose disco#info did not list client_proxy.require_feature",
            false,
        ),
        (
            DiscoError(Some(StanzaCondition::ItemNotFound)),
            "it answered disco#info with error item-not-found",
            true,
        ),
        (
            DiscoError(None),
            "it answered disco#info with an error naming no defined condition",
            true,
        ),
        (
            NotDiscoInfo,
            "it answered disco#info with a result holding no disco#info query",
            true,
        ),
        (
            NoAnswer,
            "it did not answer disco#info within client_proxy.qualify_timeout",
            true,
        ),
    ];
    for (r, line, again) in rows {
        assert_eq!(r.to_string(), line);
        assert_eq!(r.asks_again_on_presence(), again, "{r:?}");
    }
}

// ----- the state machine ---------------------------------------------------

/// One thing that happens to a resource session, in a script.
#[derive(Clone, Copy)]
enum In<'a> {
    /// An available presence with this caps ver (hashed), or none.
    Presence(Option<&'a str>),
    /// The answer with this id: does it list the feature?
    Reply(&'a str, Answer),
    /// This many seconds after the start.
    Clock(u64),
}

#[derive(Clone, Copy)]
enum Answer {
    Lists,
    Lacks,
    Error,
}

impl Answer {
    fn bytes(self) -> String {
        match self {
            Answer::Lists => result(&format!(
                "<query xmlns='{NS_DISCO_INFO}'><feature var='{FEATURE}'/></query>"
            )),
            Answer::Lacks => result(&format!("<query xmlns='{NS_DISCO_INFO}'/>")),
            Answer::Error => format!(
                "<iq type='error' id='x'><error type='cancel'><item-not-found xmlns='{SE}'/></error></iq>"
            ),
        }
    }
}

/// Runs `script` for one resource named `name` through `q`, ids `q1`,
/// `q2`… in order, time starting at `t0`; returns each step and whether
/// the resource was in the pool after it.
fn run(q: &mut Qualifier, t0: Instant, name: &str, script: &[In<'_>]) -> Vec<(Step, bool)> {
    let mut state = Qualification::default();
    let mut asked = 0;
    let mut now = t0;
    let mut out = Vec::new();
    for ev in script {
        let step = match *ev {
            In::Presence(ver) => {
                let caps = ver.map(|v| Caps {
                    node: None,
                    hash: Some("sha-1".into()),
                    ver: v.into(),
                });
                q.presence(&mut state, name, caps.as_ref(), now, || {
                    asked += 1;
                    format!("q{asked}")
                })
            }
            In::Reply(id, a) => q.reply(&mut state, id, a.bytes().as_bytes()),
            In::Clock(s) => {
                now = t0 + Duration::from_secs(s);
                q.expire(&mut state, now)
            }
        };
        out.push((step, state.is_admitted()));
    }
    out
}

fn rules(resources: Option<&str>, feature: Option<&str>) -> Admission {
    Admission {
        resources: resources.map(|r| ResourceFilter::parse(r).expect("valid")),
        require_feature: feature.map(str::to_owned),
        qualify_timeout: Duration::from_secs(5),
    }
}

#[test]
fn state_machine_rows() {
    use Answer::*;
    use In::*;
    use Step::{Admit, Nothing, Refuse};
    let ask = |id: &str| Step::Ask(id.to_owned());
    type Row<'a> = (&'a str, Admission, &'a str, Vec<In<'a>>, Vec<(Step, bool)>);
    let rows: Vec<Row<'_>> = vec![
        (
            "no rules: admitted at once, as the module",
            Admission::default(),
            "jvb",
            vec![Presence(None), Presence(Some("v"))],
            vec![(Admit, true), (Nothing, true)],
        ),
        (
            "a name that matches",
            rules(Some("focus*"), None),
            "focus-1",
            vec![Presence(Some("v"))],
            vec![(Admit, true)],
        ),
        (
            "a name that does not: refused once, never asked, whatever follows",
            rules(Some("focus*"), Some(FEATURE)),
            "jvb",
            vec![
                Presence(None),
                Presence(Some("v")),
                Presence(None),
                Clock(60),
            ],
            vec![
                (Refuse(Refusal::Name), false),
                (Nothing, false),
                (Nothing, false),
                (Nothing, false),
            ],
        ),
        (
            "asked; out of the pool while asked; admitted on the answer",
            rules(Some("focus*"), Some(FEATURE)),
            "focus",
            vec![Presence(Some("v")), Presence(Some("v")), Reply("q1", Lists)],
            vec![(ask("q1"), false), (Nothing, false), (Admit, true)],
        ),
        (
            "a reply with another id is stale",
            rules(None, Some(FEATURE)),
            "a",
            vec![Presence(None), Reply("q0", Lists), Reply("q1", Lacks)],
            vec![
                (ask("q1"), false),
                (Nothing, false),
                (Refuse(Refusal::FeatureMissing), false),
            ],
        ),
        (
            "lacking the feature: asked again only when the ver changes",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v1")),
                Reply("q1", Lacks),
                Presence(Some("v1")),
                Presence(None),
                Presence(Some("v2")),
                Reply("q2", Lists),
            ],
            vec![
                (ask("q1"), false),
                (Refuse(Refusal::FeatureMissing), false),
                (Nothing, false),
                (Nothing, false),
                (ask("q2"), false),
                (Admit, true),
            ],
        ),
        (
            "no answer in time: refused, asked again on the next presence",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v")),
                Clock(4),
                Clock(5),
                Reply("q1", Lists),
                Presence(Some("v")),
                Reply("q2", Lists),
            ],
            vec![
                (ask("q1"), false),
                (Nothing, false),
                (Refuse(Refusal::NoAnswer), false),
                (Nothing, false),
                (ask("q2"), false),
                (Admit, true),
            ],
        ),
        (
            "an error answer: refused, asked again on the next presence",
            rules(None, Some(FEATURE)),
            "a",
            vec![Presence(None), Reply("q1", Error), Presence(None)],
            vec![
                (ask("q1"), false),
                (
                    Refuse(Refusal::DiscoError(Some(StanzaCondition::ItemNotFound))),
                    false,
                ),
                (ask("q2"), false),
            ],
        ),
        (
            "qualified: a presence without caps or with the same ver asks nothing",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v")),
                Reply("q1", Lists),
                Presence(Some("v")),
                Presence(None),
                Clock(60),
            ],
            vec![
                (ask("q1"), false),
                (Admit, true),
                (Nothing, true),
                (Nothing, true),
                (Nothing, true),
            ],
        ),
        (
            "qualified, new ver: asked again while staying in the pool",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v1")),
                Reply("q1", Lists),
                Presence(Some("v2")),
                Reply("q2", Lacks),
            ],
            vec![
                (ask("q1"), false),
                (Admit, true),
                (ask("q2"), true),
                (Refuse(Refusal::FeatureMissing), false),
            ],
        ),
        (
            "qualified, new ver that also qualifies: nothing to do for the pool",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v1")),
                Reply("q1", Lists),
                Presence(Some("v2")),
                Reply("q2", Lists),
            ],
            vec![
                (ask("q1"), false),
                (Admit, true),
                (ask("q2"), true),
                (Nothing, true),
            ],
        ),
        (
            "the ver changes while asked: the old question is given up",
            rules(None, Some(FEATURE)),
            "a",
            vec![
                Presence(Some("v1")),
                Presence(Some("v2")),
                Reply("q1", Lists),
                Reply("q2", Lists),
            ],
            vec![
                (ask("q1"), false),
                (ask("q2"), false),
                (Nothing, false),
                (Admit, true),
            ],
        ),
    ];
    let t0 = Instant::now();
    for (what, admission, name, script, want) in rows {
        let mut q = Qualifier::new(admission);
        assert_eq!(run(&mut q, t0, name, &script), want, "{what}");
    }
}

/// A session that comes back (a new [`Qualification`]) with a ver the
/// cache knows is decided without a question, either way; a different
/// feature forgets what was learnt.
#[test]
fn a_new_session_with_a_known_ver_is_not_asked() {
    use Answer::*;
    use In::*;
    let t0 = Instant::now();
    let mut q = Qualifier::new(rules(None, Some(FEATURE)));
    run(
        &mut q,
        t0,
        "a",
        &[Presence(Some("good")), Reply("q1", Lists)],
    );
    run(
        &mut q,
        t0,
        "b",
        &[Presence(Some("bad")), Reply("q1", Lacks)],
    );
    // Errors and silences are not remembered.
    run(
        &mut q,
        t0,
        "c",
        &[Presence(Some("err")), Reply("q1", Error)],
    );
    run(&mut q, t0, "d", &[Presence(Some("slow")), Clock(5)]);
    assert_eq!(q.cache().len(), 2);

    let again = |q: &mut Qualifier, ver| run(q, t0, "x", &[Presence(Some(ver))]);
    assert_eq!(again(&mut q, "good"), [(Step::Admit, true)]);
    assert_eq!(
        again(&mut q, "bad"),
        [(Step::Refuse(Refusal::CapsLacksFeature), false)]
    );
    assert_eq!(again(&mut q, "err"), [(Step::Ask("q1".into()), false)]);
    assert_eq!(again(&mut q, "slow"), [(Step::Ask("q1".into()), false)]);
    // Without caps there is nothing to look up.
    assert_eq!(
        run(&mut q, t0, "x", &[Presence(None)]),
        [(Step::Ask("q1".into()), false)]
    );

    // The same feature keeps the cache; another one empties it.
    q.set_rules(rules(Some("*"), Some(FEATURE)));
    assert_eq!(again(&mut q, "good"), [(Step::Admit, true)]);
    q.set_rules(rules(None, Some("urn:other")));
    assert!(q.cache().is_empty());
    assert_eq!(again(&mut q, "good"), [(Step::Ask("q1".into()), false)]);
}

#[test]
fn deadlines_and_ids() {
    let t0 = Instant::now();
    let mut q = Qualifier::new(rules(None, Some(FEATURE)));
    let mut state = Qualification::default();
    assert_eq!(state.deadline(), None);
    let mut calls = 0;
    let step = q.presence(&mut state, "a", None, t0, || {
        calls += 1;
        "mine".to_owned()
    });
    assert_eq!(step, Step::Ask("mine".into()));
    assert_eq!(calls, 1);
    assert_eq!(state.deadline(), Some(t0 + Duration::from_secs(5)));
    // No new question, no new id.
    q.presence(&mut state, "a", None, t0, || unreachable!("not asked"));
    // An overflowing timeout is a far deadline, not a panic.
    let mut q = Qualifier::new(Admission {
        qualify_timeout: Duration::MAX,
        ..rules(None, Some(FEATURE))
    });
    let mut state = Qualification::default();
    q.presence(&mut state, "a", None, t0, || "q".to_owned());
    assert!(state.deadline().is_some_and(|d| d > t0));
}

/// The rule lifted while a question was out: the answer admits.
#[test]
fn a_lifted_rule_admits_on_the_answer() {
    let t0 = Instant::now();
    let mut q = Qualifier::new(rules(None, Some(FEATURE)));
    let mut state = Qualification::default();
    q.presence(&mut state, "a", None, t0, || "q1".to_owned());
    q.set_rules(Admission::default());
    assert_eq!(
        q.reply(&mut state, "q1", Answer::Lacks.bytes().as_bytes()),
        Step::Admit
    );
    assert!(state.is_admitted());
}
