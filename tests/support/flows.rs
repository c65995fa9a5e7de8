//! Request flows shared by the end-to-end suites: an implementing
//! resource that answers echo requests, and a requester that keeps a
//! window of requests in flight and records every answer it gets. For
//! issue 13's suite also: a [`member`] that echoes, refuses or holds and
//! logs what it was asked, a [`paced`] requester sending at a fixed rate,
//! and [`collect`] / [`late_answers`] for counting answers per id.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

/// Sends `xml` (a message with `id`) from `user` and checks the answer:
/// a message error from `from` with type `cancel` and `condition`.
/// Returns how long the answer took.
pub async fn message_refused(
    user: &mut TestClient,
    xml: &str,
    id: &str,
    from: &str,
    condition: &str,
) -> Duration {
    let sent = Instant::now();
    user.send_xml(xml).await.expect("send");
    let e = user
        .recv_matching(WAIT, |e| e.attr("id") == Some(id))
        .await
        .unwrap_or_else(|err| panic!("{id} answered: {err}"));
    let took = sent.elapsed();
    assert_eq!(
        (e.name(), e.attr("type"), e.attr("from")),
        ("message", Some("error"), Some(from)),
        "{}",
        String::from(&e)
    );
    assert_eq!(
        error_of(&e),
        Some(("cancel".into(), condition.into())),
        "{}",
        String::from(&e)
    );
    took
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
    /// Requests never sent: [`load_until_cut`] stops sending at the first
    /// failed send (the requester's session is gone).
    pub unsent: usize,
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
    after: impl FnMut(usize),
    patience: Option<Duration>,
) -> Outcome {
    let plan = Plan {
        to,
        n,
        window,
        prefix,
        patience,
        cut_on_send_failure: false,
    };
    run_load(alice, &plan, after).await
}

/// [`load_counting_lost`] for a requester whose session may end under
/// it (its server node stops): the first failed send ends the sending,
/// that request and the rest are [`Outcome::unsent`], and what was in
/// flight is answered or counted as lost after `patience`.
pub async fn load_until_cut(
    alice: &mut TestClient,
    to: &str,
    n: usize,
    window: usize,
    prefix: &str,
    after: impl FnMut(usize),
    patience: Duration,
) -> Outcome {
    let plan = Plan {
        to,
        n,
        window,
        prefix,
        patience: Some(patience),
        cut_on_send_failure: true,
    };
    run_load(alice, &plan, after).await
}

/// What a load sends and how it treats silence and failed sends.
struct Plan<'a> {
    to: &'a str,
    n: usize,
    window: usize,
    prefix: &'a str,
    patience: Option<Duration>,
    cut_on_send_failure: bool,
}

async fn run_load(
    alice: &mut TestClient,
    plan: &Plan<'_>,
    mut after: impl FnMut(usize),
) -> Outcome {
    let (to, window, prefix, patience) = (plan.to, plan.window, plan.prefix, plan.patience);
    let mut n = plan.n;
    let mut answers: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut lost = Vec::new();
    let mut order = Vec::new();
    let mut sent = 0;
    let mut done = 0;
    while done < n {
        while sent < n && sent.saturating_sub(done) < window {
            let sending = alice
                .send_xml(&format!("<iq id='{prefix}{sent}' to='{to}' type='get'><echo xmlns='{NS_ECHO}'>{sent}</echo></iq>"))
                .await;
            match sending {
                Ok(()) => sent += 1,
                Err(e) if plan.cut_on_send_failure => {
                    eprintln!("{prefix}: sending ends after {sent}: {e}");
                    n = sent;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        if done >= n {
            break;
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
        unsent: plan.n - sent,
    }
}

// ---------------------------------------------------------------------------
// Members that answer, refuse or hold, and requesters that pace or collect
// (issue 13, tests/e2e_survive.rs)
// ---------------------------------------------------------------------------

/// How a [`member`] answers each iq get/set it is given.
#[derive(Clone, Debug)]
pub enum Answer {
    /// An echo result naming `label` as `from-resource` (so two sessions
    /// of one resource can be told apart), after the request's `delay-ms`
    /// if it has one; delayed answers do not hold up the others.
    Echo(String),
    /// A stanza error (type cancel) with this condition, at once.
    Refuse(&'static str),
    /// Never: the request stays in flight on this member.
    Hold,
}

/// What a [`member`] was asked and what it sent back, by request id.
/// An id is put in `answered` *before* the answer is handed to the
/// client, so an id asked and not answered was certainly never answered
/// by this member, even if it is killed in the middle of a send.
#[derive(Clone, Debug, Default)]
pub struct MemberLog {
    pub asked: Vec<String>,
    pub answered: Vec<String>,
}

impl MemberLog {
    /// Ids asked and not answered (held, or in flight when it was killed).
    pub fn unanswered(&self) -> Vec<String> {
        self.asked
            .iter()
            .filter(|id| !self.answered.contains(id))
            .cloned()
            .collect()
    }
}

/// A client resource serving requests as `answer` says, and what it did.
pub struct Member {
    task: JoinHandle<()>,
    pub log: watch::Receiver<MemberLog>,
}

impl Member {
    /// Waits until it has been asked `n` requests.
    pub async fn wait_asked(&mut self, n: usize, wait: Duration) -> Result<(), String> {
        let ok = matches!(
            tokio::time::timeout(wait, self.log.wait_for(|l| l.asked.len() >= n)).await,
            Ok(Ok(_))
        );
        if ok {
            return Ok(());
        }
        let asked = self.log.borrow().asked.len();
        Err(format!("member asked {asked} < {n} within {wait:?}"))
    }

    /// Kills the client process (SIGKILL: no unavailable presence, no
    /// stream end; the server notices the closed connection) and returns
    /// what it did.
    pub async fn kill(self) -> MemberLog {
        self.task.abort();
        let _ = self.task.await;
        let log = self.log.borrow().clone();
        log
    }
}

/// Serves every iq get/set `c` receives as `answer` says.
pub fn member(mut c: TestClient, answer: Answer) -> Member {
    let (tx, log) = watch::channel(MemberLog::default());
    let task = tokio::spawn(async move {
        let mut due: Vec<(Instant, String, String)> = Vec::new();
        loop {
            let wait = due
                .iter()
                .map(|d| d.0.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let got = c
                .recv_matching(wait, |e| {
                    e.name() == "iq" && matches!(e.attr("type"), Some("get") | Some("set"))
                })
                .await;
            if let Ok(iq) = got {
                let id = iq.attr("id").unwrap_or_default().to_owned();
                tx.send_modify(|l| l.asked.push(id.clone()));
                if let Some((at, reply)) = answer_to(&iq, &answer) {
                    due.push((at, id, reply));
                }
            }
            let now = Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|d| d.0 <= now);
            due = later;
            for (_, id, reply) in ready {
                tx.send_modify(|l| l.answered.push(id));
                if c.send_xml(&reply).await.is_err() {
                    return;
                }
            }
        }
    });
    Member { task, log }
}

/// When and what `answer` replies to `iq`; `None` for [`Answer::Hold`].
fn answer_to(iq: &Element, answer: &Answer) -> Option<(Instant, String)> {
    let id = iq.attr("id").unwrap_or_default();
    let to = iq.attr("from").unwrap_or_default();
    let echo = iq.get_child("echo", NS_ECHO);
    match answer {
        Answer::Hold => None,
        Answer::Refuse(cond) => Some((
            Instant::now(),
            format!(
                "<iq type='error' id='{id}' to='{to}'><error type='cancel'><{cond} xmlns='{NS_STANZAS}'/></error></iq>"
            ),
        )),
        Answer::Echo(label) => {
            let text = echo.map(|e| e.text()).unwrap_or_default();
            let delay: u64 = echo
                .and_then(|e| e.attr("delay-ms"))
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            Some((
                Instant::now() + Duration::from_millis(delay),
                format!(
                    "<iq type='result' id='{id}' to='{to}'><echo xmlns='{NS_ECHO}' from-resource='{label}'>{text}</echo></iq>"
                ),
            ))
        }
    }
}

/// (type, [`answered_by`] or error condition) of an iq answer.
pub fn answer_of(r: &Element) -> (String, String) {
    let what = match r.attr("type") {
        Some("result") => answered_by(r),
        _ => error_of(r).map(|x| x.1).unwrap_or_default(),
    };
    (r.attr("type").unwrap_or_default().to_owned(), what)
}

/// What a [`paced`] load saw.
pub struct Paced {
    /// The requester, handed back.
    pub client: TestClient,
    /// Ids in sending order.
    pub sent: Vec<String>,
    /// When each id was sent.
    pub sent_at: HashMap<String, Instant>,
    /// Each id's answers: (type, [`answered_by`] or error condition).
    pub answers: HashMap<String, Vec<(String, String)>>,
    /// When each id's first answer arrived.
    pub answered_at: HashMap<String, Instant>,
}

impl Paced {
    /// Ids sent and never answered.
    pub fn missing(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter(|id| !self.answers.contains_key(*id))
            .cloned()
            .collect()
    }
}

/// What a [`paced`] load sends: `n` iq gets to `to`, `rate` per second,
/// ids `prefix0..`, each asking for its answer after `delay_ms`.
#[derive(Clone, Debug)]
pub struct Pace {
    pub to: String,
    pub n: usize,
    pub rate: u32,
    pub prefix: String,
    pub delay_ms: u32,
}

/// Sends [`Pace`]'s requests at a fixed rate whatever comes back (as
/// users do: nobody waits for the previous user), records every answer,
/// and reports the number of ids answered on `progress`. Ends when every
/// id is answered, or when no answer came for [`WAIT`] after the last
/// send (then [`Paced::missing`] says which).
pub fn paced(c: TestClient, pace: Pace, progress: watch::Sender<usize>) -> JoinHandle<Paced> {
    tokio::spawn(async move {
        let gap = Duration::from_secs(1) / pace.rate.max(1);
        let start = Instant::now();
        let mut out = Paced {
            client: c,
            sent: Vec::new(),
            sent_at: HashMap::new(),
            answers: HashMap::new(),
            answered_at: HashMap::new(),
        };
        loop {
            let next_send = start + gap * out.sent.len() as u32;
            if out.sent.len() < pace.n && Instant::now() >= next_send {
                let id = format!("{}{}", pace.prefix, out.sent.len());
                out.client
                    .send_xml(&format!(
                        "<iq id='{id}' to='{}' type='get'><echo xmlns='{NS_ECHO}' delay-ms='{}'>{id}</echo></iq>",
                        pace.to, pace.delay_ms
                    ))
                    .await
                    .expect("requester sends");
                out.sent_at.insert(id.clone(), Instant::now());
                out.sent.push(id);
                continue;
            }
            if out.sent.len() == pace.n && out.answered_at.len() == pace.n {
                break;
            }
            let sending = out.sent.len() < pace.n;
            let wait = if sending {
                next_send.saturating_duration_since(Instant::now())
            } else {
                WAIT
            };
            let prefix = pace.prefix.as_str();
            let got = out
                .client
                .recv_matching(wait, |e| {
                    e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with(prefix))
                })
                .await;
            match got {
                Ok(r) => {
                    let id = r.attr("id").unwrap_or_default().to_owned();
                    out.answered_at
                        .entry(id.clone())
                        .or_insert_with(Instant::now);
                    out.answers.entry(id).or_default().push(answer_of(&r));
                    let _ = progress.send(out.answered_at.len());
                }
                Err(_) if sending => {}
                Err(_) => break,
            }
        }
        out
    })
}

/// Waits until every id in `ids` has an answer (each answer recorded,
/// duplicates too) or `wait` passes; returns what came.
pub async fn collect(
    c: &mut TestClient,
    ids: &[String],
    wait: Duration,
) -> HashMap<String, Vec<(String, String)>> {
    let deadline = Instant::now() + wait;
    let mut answers: HashMap<String, Vec<(String, String)>> = HashMap::new();
    while ids.iter().any(|id| !answers.contains_key(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(r) = c
            .recv_matching(left, |e| {
                e.name() == "iq" && e.attr("id").is_some_and(|i| ids.iter().any(|x| x == i))
            })
            .await
        else {
            break;
        };
        let id = r.attr("id").unwrap_or_default().to_owned();
        answers.entry(id).or_default().push(answer_of(&r));
    }
    answers
}

/// Answers still on their way for ids starting with `prefix`: sends one
/// more request to `to` (answered by the pool) and takes everything that
/// arrived before its answer. A late or duplicate answer shows up here.
pub async fn late_answers(c: &mut TestClient, to: &str, prefix: &str) -> Vec<String> {
    late_elements(c, to, prefix)
        .await
        .iter()
        .map(String::from)
        .collect()
}

/// [`late_answers`] as elements.
pub async fn late_elements(c: &mut TestClient, to: &str, prefix: &str) -> Vec<Element> {
    let marker = "late-marker";
    c.send_xml(&format!(
        "<iq id='{marker}' to='{to}' type='get'><echo xmlns='{NS_ECHO}'>m</echo></iq>"
    ))
    .await
    .expect("send marker");
    c.recv_iq_response(marker, WAIT)
        .await
        .expect("the marker is answered");
    c.drain()
        .into_iter()
        .filter(|e| e.name() == "iq" && e.attr("id").is_some_and(|i| i.starts_with(prefix)))
        .collect()
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
