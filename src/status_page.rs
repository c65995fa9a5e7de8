//! `GET /status`: what an operator looks at first when something is off,
//! rendered from one [`Status`] snapshot as JSON (for tools) or as a small
//! self-contained HTML page (for people: no external assets, no script).
//!
//! Pure rendering: no I/O, no clock. Member addresses and refusal reasons
//! come from the network (a resource's JID is whatever the server stamps),
//! so everything put in the page goes through [`escape_html`].

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::pool::Member;
use crate::status::{MemberNow, Status};

/// The `Content-Type` of [`json`].
pub const JSON_TYPE: &str = "application/json";
/// The `Content-Type` of [`html`].
pub const HTML_TYPE: &str = "text/html; charset=utf-8";

/// RFC 3339 in UTC to the second, or `null`.
fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

fn kind(m: &Member) -> &'static str {
    match m {
        Member::Resource(_) => "resource",
        Member::Instance(_) => "instance",
    }
}

/// A member's address: a resource's full JID, an instance's socket peer
/// (its id when the peer is not known).
fn address(m: &MemberNow) -> String {
    match (&m.member, m.peer) {
        (Member::Resource(jid), _) => jid.clone(),
        (Member::Instance(_), Some(peer)) => peer.to_string(),
        (Member::Instance(id), None) => format!("instance {id}"),
    }
}

/// One row per member and per resource kept out, each with its state.
fn members(s: &Status) -> Vec<Value> {
    let mut out: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            let counts = s.stats.members.get(&m.member).copied().unwrap_or_default();
            let (state, why) = if m.quarantined_until.is_some() {
                ("quarantined", Some("refused requests in a row (routing.retry_on)"))
            } else {
                ("qualified", None)
            };
            json!({
                "kind": kind(&m.member),
                "address": address(m),
                "id": match m.member { Member::Instance(id) => Some(id), Member::Resource(_) => None },
                "state": state,
                "why_not": why,
                "in_flight": m.in_flight,
                "routed": counts.routed,
                "answered": counts.answered,
                "errors": counts.errors,
                "quarantined_until": time(m.quarantined_until),
            })
        })
        .collect();
    out.extend(s.outside.iter().map(|o| {
        json!({
            "kind": "resource",
            "address": o.resource,
            "id": Value::Null,
            "state": "not in pool",
            "why_not": o.why,
            "in_flight": 0,
            "routed": 0,
            "answered": 0,
            "errors": 0,
            "quarantined_until": Value::Null,
        })
    }));
    out
}

/// The snapshot as one JSON object; `server` is `upstream.server`.
pub fn json(s: &Status, server: &str) -> Value {
    json!({
        "ready": s.readiness().is_ok(),
        "not_ready": s.readiness().err().map(|e| e.to_string()),
        "upstream": {
            "server": server,
            "online": s.upstream_online,
            "since": time(s.upstream_since),
            "sessions": s.upstream_sessions,
            "reconnects": s.upstream_sessions.saturating_sub(1),
        },
        "members": members(s),
        "requests": {
            "pending": s.pending,
            "held": s.held,
        },
    })
}

/// `text` with the five characters that matter in HTML text and
/// attribute values replaced by their entities.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text: strings without quotes, `null` as a dash.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::String(s) => escape_html(s),
        v => escape_html(&v.to_string()),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}\
table{border-collapse:collapse}td,th{border:1px solid #999;padding:.2em .6em;text-align:left}\
.bad{color:#a00}.ok{color:#070}";

const COLUMNS: [&str; 9] = [
    "kind",
    "address",
    "state",
    "why_not",
    "in_flight",
    "routed",
    "answered",
    "errors",
    "quarantined_until",
];

/// The same snapshot as [`json`], as one HTML page.
pub fn html(s: &Status, server: &str) -> String {
    let j = json(s, server);
    let up = &j["upstream"];
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>jatproxy status</title>\
         <style>{STYLE}</style></head><body>\n<h1>jatproxy {}</h1>\n",
        escape_html(env!("CARGO_PKG_VERSION"))
    );
    let ready = match s.readiness() {
        Ok(()) => "<p class=\"ok\">ready</p>\n".to_owned(),
        Err(e) => format!(
            "<p class=\"bad\">not ready: {}</p>\n",
            escape_html(&e.to_string())
        ),
    };
    out.push_str(&ready);
    let _ = write!(
        out,
        "<h2>Upstream</h2>\n<table><tr><th>server</th><td>{}</td></tr>\
         <tr><th>session</th><td>{}</td></tr><tr><th>since</th><td>{}</td></tr>\
         <tr><th>sessions</th><td>{}</td></tr><tr><th>reconnects</th><td>{}</td></tr></table>\n",
        cell(&up["server"]),
        if s.upstream_online { "up" } else { "down" },
        cell(&up["since"]),
        cell(&up["sessions"]),
        cell(&up["reconnects"]),
    );
    let _ = write!(
        out,
        "<h2>Requests</h2>\n<table><tr><th>pending</th><td>{}</td></tr>\
         <tr><th>held</th><td>{}</td></tr></table>\n<h2>Members</h2>\n<table><tr>",
        s.pending, s.held
    );
    for c in COLUMNS {
        let _ = write!(out, "<th>{}</th>", c.replace('_', " "));
    }
    out.push_str("</tr>\n");
    for m in j["members"].as_array().into_iter().flatten() {
        out.push_str("<tr>");
        for c in COLUMNS {
            let _ = write!(out, "<td>{}</td>", cell(&m[c]));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{MemberStats, Outside};

    fn sample() -> Status {
        let evil = Member::Resource("impl@example.test/<script>\"&'".into());
        let mut s = Status {
            upstream_online: true,
            upstream_sessions: 3,
            upstream_since: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60)),
            pool: vec![evil.clone(), Member::Instance(4)],
            pending: 5,
            held: 2,
            members: vec![
                MemberNow {
                    member: evil.clone(),
                    peer: None,
                    in_flight: 1,
                    quarantined_until: None,
                },
                MemberNow {
                    member: Member::Instance(4),
                    peer: Some("127.0.0.1:4000".parse().expect("addr")),
                    in_flight: 0,
                    quarantined_until: Some(SystemTime::UNIX_EPOCH),
                },
            ],
            outside: vec![Outside {
                resource: "impl@example.test/<b>".into(),
                why: "refused: <name>".into(),
            }],
            ..Status::default()
        };
        s.stats.quarantined.insert(Member::Instance(4));
        s.stats.members.insert(
            evil,
            MemberStats {
                routed: 7,
                answered: 6,
                errors: 1,
            },
        );
        s
    }

    #[test]
    fn json_has_every_field() {
        let j = json(&sample(), "127.0.0.1:5347");
        assert_eq!(j["ready"], true);
        assert_eq!(j["not_ready"], Value::Null);
        assert_eq!(j["upstream"]["server"], "127.0.0.1:5347");
        assert_eq!(j["upstream"]["online"], true);
        assert_eq!(j["upstream"]["since"], "1970-01-01T00:01:00Z");
        assert_eq!(j["upstream"]["reconnects"], 2);
        assert_eq!(j["requests"]["pending"], 5);
        assert_eq!(j["requests"]["held"], 2);
        let m = &j["members"];
        assert_eq!(m[0]["kind"], "resource");
        assert_eq!(m[0]["address"], "impl@example.test/<script>\"&'");
        assert_eq!(m[0]["state"], "qualified");
        assert_eq!(m[0]["in_flight"], 1);
        assert_eq!(m[0]["routed"], 7);
        assert_eq!(m[0]["answered"], 6);
        assert_eq!(m[0]["errors"], 1);
        assert_eq!(m[1]["kind"], "instance");
        assert_eq!(m[1]["address"], "127.0.0.1:4000");
        assert_eq!(m[1]["id"], 4);
        assert_eq!(m[1]["state"], "quarantined");
        assert_eq!(m[1]["quarantined_until"], "1970-01-01T00:00:00Z");
        assert_eq!(m[2]["state"], "not in pool");
        assert_eq!(m[2]["why_not"], "refused: <name>");
        // Only one eligible member left: the resource; quarantine the
        // rest and the answer says why it is not ready.
        let mut s = sample();
        s.upstream_online = false;
        let j = json(&s, "x");
        assert_eq!(j["ready"], false);
        assert!(
            j["not_ready"]
                .as_str()
                .is_some_and(|r| r.starts_with("upstream session down")),
            "{j}"
        );
    }

    #[test]
    fn html_escapes_what_came_from_the_network() {
        let page = html(&sample(), "<server>");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("<server>"), "{page}");
        assert!(
            page.contains("impl@example.test/&lt;script&gt;&quot;&amp;&#39;"),
            "{page}"
        );
        assert!(page.contains("refused: &lt;name&gt;"), "{page}");
        assert!(page.contains("&lt;server&gt;"), "{page}");
        // Self-contained: no script, no external reference.
        for banned in ["<script", "src=", "href=", "<link"] {
            assert!(!page.contains(banned), "{banned} in {page}");
        }
        assert!(page.contains("127.0.0.1:4000"), "{page}");
    }

    #[test]
    fn escape_html_covers_the_five() {
        assert_eq!(escape_html("a<b>&\"'c"), "a&lt;b&gt;&amp;&quot;&#39;c");
        assert_eq!(escape_html("plain"), "plain");
    }
}
