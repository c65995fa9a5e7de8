//! Request flows shared by the end-to-end suites: an implementing
//! resource that answers echo requests, and a requester that keeps a
//! window of requests in flight and records every answer it gets.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::xmpp::{Element, TestClient};
use super::{ALICE, D, NS_ECHO, NS_STANZAS, T, WAIT};

/// An implementing client resource that answers every echo request with
/// the text and its own resource, as the example implementing client does.
pub fn responder(mut c: TestClient) -> JoinHandle<()> {
    tokio::spawn(async move {
        let res = c.jid().resource().to_string();
        loop {
            let Ok(iq) = c
                .recv_matching(Duration::from_secs(3600), |e| {
                    e.name() == "iq" && matches!(e.attr("type"), Some("get") | Some("set"))
                })
                .await
            else {
                return;
            };
            let text = iq
                .get_child("echo", NS_ECHO)
                .map(|e| e.text())
                .unwrap_or_default();
            let reply = format!(
                "<iq type='result' id='{}' to='{}'><echo xmlns='{NS_ECHO}' from-resource='{res}'>{text}</echo></iq>",
                iq.attr("id").unwrap_or_default(),
                iq.attr("from").unwrap_or_default(),
            );
            if c.send_xml(&reply).await.is_err() {
                return;
            }
        }
    })
}

pub fn error_of(e: &Element) -> Option<(String, String)> {
    let err = e.children().find(|c| c.name() == "error")?;
    let cond = err
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")?;
    Some((
        err.attr("type").unwrap_or_default().to_owned(),
        cond.name().to_owned(),
    ))
}

/// Sends `n` requests from `alice`, keeping `window` in flight, and
/// returns each id's answers: (type, [`answered_by`] or error condition).
pub async fn load(
    alice: &mut TestClient,
    to: &str,
    n: usize,
    window: usize,
    prefix: &str,
) -> HashMap<String, Vec<(String, String)>> {
    load_with(alice, to, n, window, prefix, |_| {}).await
}

/// [`load`], calling `after(answers_so_far)` after each answer, so a test
/// can inject a fault at a chosen point of the load.
pub async fn load_with(
    alice: &mut TestClient,
    to: &str,
    n: usize,
    window: usize,
    prefix: &str,
    after: impl FnMut(usize),
) -> HashMap<String, Vec<(String, String)>> {
    load_counting_lost(alice, to, n, window, prefix, after, None)
        .await
        .answers
}

/// Who answered an echo result: the `from-resource` a client resource
/// writes ([`responder`]) or the `from-instance` a component instance
/// writes (`echo_component.py`); empty when neither is there.
pub fn answered_by(r: &Element) -> String {
    r.get_child("echo", NS_ECHO)
        .and_then(|e| e.attr("from-resource").or_else(|| e.attr("from-instance")))
        .unwrap_or_default()
        .to_owned()
}

/// What [`load_counting_lost`] saw.
pub struct Outcome {
    /// Each id's answers: (type, [`answered_by`] or error condition).
    pub answers: HashMap<String, Vec<(String, String)>>,
    /// Requests counted as lost (never answered within the patience).
    pub lost: Vec<String>,
    /// Ids in the order their answers arrived (a duplicate appears again).
    pub order: Vec<String>,
}

/// [`load_with`] that, given `patience`, does not fail on a request that
/// is never answered: when no answer arrives for `patience`, every
/// request still outstanding is counted as lost (returned by id) and the
/// load goes on. Without `patience` a missing answer fails the test.
pub async fn load_counting_lost(
    alice: &mut TestClient,
    to: &str,
    n: usize,
    window: usize,
    prefix: &str,
    mut after: impl FnMut(usize),
    patience: Option<Duration>,
) -> Outcome {
    let mut answers: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut lost = Vec::new();
    let mut order = Vec::new();
    let mut sent = 0;
    let mut done = 0;
    while done < n {
        while sent < n && sent.saturating_sub(done) < window {
            alice
                .send_xml(&format!("<iq id='{prefix}{sent}' to='{to}' type='get'><echo xmlns='{NS_ECHO}'>{sent}</echo></iq>"))
                .await
                .expect("send");
            sent += 1;
        }
        let got = alice
            .recv_matching(patience.unwrap_or(WAIT), |e| {
                e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with(prefix))
            })
            .await;
        let r = match got {
            Ok(r) => r,
            Err(e) => {
                let missing: Vec<String> = (0..sent)
                    .map(|i| format!("{prefix}{i}"))
                    .filter(|id| !answers.contains_key(id) && !lost.contains(id))
                    .collect();
                if patience.is_none() {
                    panic!("every request is answered: unanswered {missing:?}: {e}");
                }
                done += missing.len();
                lost.extend(missing);
                continue;
            }
        };
        let what = match r.attr("type") {
            Some("result") => answered_by(&r),
            _ => error_of(&r).map(|x| x.1).unwrap_or_default(),
        };
        let id = r.attr("id").unwrap_or_default().to_owned();
        order.push(id.clone());
        answers
            .entry(id)
            .or_default()
            .push((r.attr("type").unwrap_or_default().to_owned(), what));
        done += 1;
        after(done);
    }
    Outcome {
        answers,
        lost,
        order,
    }
}

/// The seed flow's first request, step by step, as the module does it:
/// alice (`ALICE/phone`) asks `D`; impl/a (`a`) gets it from the
/// translated address `D/ALICE/phone` and answers it there; alice gets the
/// result from the bare `D`, the payload untouched.
pub async fn seed_request(a: &mut TestClient, alice: &mut TestClient) {
    alice
        .send_xml(&format!(
            "<iq id='get-1' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>hello</echo></iq>"
        ))
        .await
        .expect("send");
    // Step 2: what the implementing client receives, exactly the module's.
    let req = a
        .recv_matching(WAIT, |e| e.name() == "iq")
        .await
        .expect("impl gets the iq");
    assert_eq!(req.attr("type"), Some("get"));
    assert_eq!(req.attr("id"), Some("get-1"));
    assert_eq!(req.attr("to"), Some(format!("{T}/a").as_str()));
    assert_eq!(
        req.attr("from"),
        Some(format!("{D}/{ALICE}/phone").as_str())
    );
    assert_eq!(
        req.get_child("echo", NS_ECHO).map(|e| e.text()),
        Some("hello".into())
    );
    // Step 3: the client answers the translated address.
    a.send_xml(&format!(
        "<iq type='result' to='{D}/{ALICE}/phone' id='get-1'><echo xmlns='{NS_ECHO}' from-resource='a'>hello</echo></iq>"
    ))
    .await
    .expect("reply");
    // Step 4: alice gets it from the bare proxy address.
    let res = alice
        .recv_iq_response("get-1", WAIT)
        .await
        .expect("alice gets the result");
    assert_eq!(res.attr("type"), Some("result"));
    assert_eq!(res.attr("from"), Some(D));
    assert_eq!(res.attr("to"), Some(format!("{ALICE}/phone").as_str()));
    let echo = res
        .get_child("echo", NS_ECHO)
        .expect("payload travels untouched");
    assert_eq!(
        (echo.attr("from-resource"), echo.text().as_str()),
        (Some("a"), "hello")
    );
}
