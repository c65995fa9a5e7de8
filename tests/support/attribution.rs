//! Where each request a requester never got an answer to was lost, told
//! from the records of the recording relays ([`super::relay::Relay`])
//! between each jatproxy process and the server: inside the server, or
//! inside jatproxy. Shared by the two-process and the cluster tests.
#![allow(dead_code)]

use super::relay::Seen;

/// Where each request the requester never got an answer to was lost, as
/// the relays between jatproxy and ejabberd saw it. Each list holds one
/// line per request, with what the relays saw.
#[derive(Debug, Default)]
pub struct Attribution {
    /// (a) Never written to either jatproxy: ejabberd dropped the request
    /// before it reached jatproxy.
    pub in_ejabberd_before: Vec<String>,
    /// (b) Reached a jatproxy, which wrote its answer to the requester
    /// towards ejabberd: ejabberd dropped the answer.
    pub in_ejabberd_after: Vec<String>,
    /// (c) jatproxy's: the request reached a jatproxy (or ejabberd wrote
    /// it to a connection jatproxy had already closed) and no answer to
    /// the requester came out of jatproxy.
    pub in_jatproxy: Vec<String>,
}

/// Attributes each of `lost` (requests from `jid` never answered) with
/// the relays' records `seen`, one per jatproxy process.
pub fn attribute(lost: &[String], jid: &str, seen: &[&Seen]) -> Attribution {
    let mut a = Attribution::default();
    for id in lost {
        let mut accepted = Vec::new();
        let mut unwritten = 0;
        let mut to_requester = 0;
        let mut misaddressed = Vec::new();
        for (k, s) in seen.iter().enumerate() {
            if let Some(on) = s.accepted_on.get(id) {
                accepted.extend(
                    on.iter()
                        .map(|session| format!("process {k} session {session}")),
                );
            }
            unwritten += s.unwritten.get(id).copied().unwrap_or(0);
            for to in s.answered.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                if to == jid {
                    to_requester += 1;
                } else {
                    misaddressed.push(to.clone());
                }
            }
        }
        let line = format!(
            "{id}: reached jatproxy on {accepted:?}, unwritten {unwritten}, \
             answers to the requester {to_requester}, misaddressed {misaddressed:?}"
        );
        if accepted.is_empty() && unwritten == 0 {
            a.in_ejabberd_before.push(line);
        } else if to_requester > 0 {
            a.in_ejabberd_after.push(line);
        } else {
            a.in_jatproxy.push(line);
        }
    }
    a
}
