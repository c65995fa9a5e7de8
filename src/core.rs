//! The running proxy: one core task that owns the [`Router`], fed by the
//! connection tasks through one bounded channel.
//!
//! Connection tasks own their sockets and only frame and write; the core
//! owns all state and makes every decision, so there are no locks.
//!
//! Output is backpressure, as in a relay: when a connection's bounded
//! queue is full, the core waits for room, its own input queue fills, the
//! readers wait, and TCP carries the pause back to whoever sends too fast.
//! Upstream, the XMPP server is the one link everything depends on, so
//! the core waits for it as long as it takes. An instance is waited for
//! only while it makes progress: one whose socket has accepted no bytes
//! for `instances.stall_timeout` while its queue was full is cut (out of
//! rotation, its requests answered), so one stalled instance holds the
//! others up for at most that long. A full queue alone says nothing: a
//! burst fills the queue of an instance that reads as fast as it can.
//!
//! This module is the actor alone: it neither binds nor spawns (that is
//! [`crate::app`]), and the connection tasks never import it; they talk to
//! it through [`crate::event::Event`].

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connection::Out;
use crate::event::{Event, Input, InstanceLink};
use crate::handshake;
use crate::pool::{InstanceId, Member};
use crate::rewrite::Wire;
use crate::router::{Action, Router, RouterConfig};
use crate::skip_log::SkipLog;
use crate::status::{Direction, MemberNow, Status, WallClock};
use crate::xml::frame::{Limit, Skipped, Stanza};
use crate::xml::StreamCondition;

pub(crate) struct Core {
    router: Router,
    rng: StdRng,
    upstream: Option<mpsc::Sender<Out>>,
    instances: HashMap<InstanceId, InstanceLink>,
    status: Status,
    status_tx: watch::Sender<Status>,
    /// Room for the batch of actions being executed (see `execute`).
    spare: Vec<Action>,
    /// One log line per limit per minute for skipped stanzas.
    skip_log: SkipLog,
    /// The proxy's shutdown: ends a wait for a slow instance at once.
    shutdown: CancellationToken,
    /// The bytes of stanzas waiting for the core, given back as each is
    /// handled (see [`crate::event::send_stanza`]).
    input: Arc<Input>,
    /// Turns the router's deadlines into wall-clock times for `/status`.
    clock: WallClock,
}

impl Core {
    pub(crate) fn new(cfg: &Config, status_tx: watch::Sender<Status>, input: Arc<Input>) -> Self {
        Core {
            router: Router::new(
                RouterConfig::from_config(cfg),
                crate::backlog::Bound::of(&cfg.limits),
            ),
            rng: StdRng::from_os_rng(),
            upstream: None,
            instances: HashMap::new(),
            status: Status::default(),
            status_tx,
            spare: Vec::new(),
            skip_log: SkipLog::default(),
            shutdown: CancellationToken::new(),
            input,
            clock: WallClock::now(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        let mut actions = Vec::new();
        loop {
            let deadline = self.router.next_deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev, &mut actions);
                        // Under load, events queue up: handle what is
                        // already there before publishing the status once
                        // (a clone and compare of the whole snapshot, which
                        // the profile showed at 3 % per event).
                        for _ in 1..EVENT_BATCH {
                            match rx.try_recv() {
                                Ok(ev) => self.handle(ev, &mut actions),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep_until(deadline) => {}
            }
            // After every batch, not only when the sleep above wins: the
            // select prefers input, so under continuous input the sleep
            // would never be chosen and requests would outlive
            // iq_timeout. Nothing due costs one look at the oldest entry.
            self.router
                .expire(Instant::now(), &mut self.rng, &mut actions);
            self.execute(&mut actions).await;
            self.publish();
        }
        // Shutdown: what the readers queued before they stopped is still
        // handled — replies complete their requests, new requests are
        // refused with an answer — then every pending request gets its
        // answer, then every stream is closed properly.
        rx.close();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                // A member's reply routes as usual: the real answer, not
                // recipient-unavailable for a request that was answered.
                Event::FromUpstream(stanzas) => {
                    self.input.give_back(&stanzas);
                    let now = Instant::now();
                    for st in &stanzas {
                        if st.is_iq_response() {
                            self.route_upstream(st, now, &mut actions);
                        } else {
                            self.router.refuse_closing(st, &mut actions);
                        }
                    }
                }
                other => self.handle(other, &mut actions),
            }
        }
        self.router.drain(&mut actions);
        self.execute(&mut actions).await;
        let close = bytes::Bytes::from_static(handshake::STREAM_END);
        if let Some(up) = self.upstream.take() {
            let _ = up.send(Out::Close(close.clone())).await;
        }
        for (_, link) in self.instances.drain() {
            if link.tx.try_send(Out::Close(close.clone())).is_err() {
                // Full: the writer drops what is queued to end the stream.
                let _ = link.urgent.send(close.clone());
            }
        }
        self.status.upstream_online = false;
        self.publish();
    }

    fn handle(&mut self, ev: Event, actions: &mut Vec<Action>) {
        let now = Instant::now();
        match ev {
            Event::FromUpstream(stanzas) => {
                self.input.give_back(&stanzas);
                for st in &stanzas {
                    self.route_upstream(st, now, actions);
                }
            }
            Event::SkippedFromUpstream(sk) => self.skipped_from_upstream(sk, now, actions),
            Event::FromInstance { id, stanzas } => {
                self.input.give_back(&stanzas);
                let known = self.instances.contains_key(&id);
                for st in &stanzas {
                    self.status
                        .counters
                        .stanza(Direction::InstancesIn, st.bytes.len());
                    if known {
                        self.router
                            .from_instance(id, st, now, &mut self.rng, actions)
                    }
                }
            }
            Event::UpstreamUp(tx) => {
                self.upstream = Some(tx);
                self.status.upstream_online = true;
                self.status.upstream_sessions += 1;
                self.status.upstream_since = Some(self.clock.at(now));
                // The subscription refresh, then what the router held.
                self.router.upstream_online(actions);
            }
            Event::UpstreamDown => {
                self.upstream = None;
                self.status.upstream_online = false;
                self.status.upstream_since = None;
                self.router.upstream_lost(now, &mut self.rng, actions);
            }
            Event::InstanceUp { id, link } => {
                self.instances.insert(id, link);
                self.router.instance_up(id, now, actions);
            }
            Event::InstanceDown { id } => {
                if self.instances.remove(&id).is_some() {
                    self.router.instance_down(id, now, &mut self.rng, actions);
                }
            }
            Event::Observed(o) => self.status.counters.observe(o),
            Event::Reload {
                router,
                upstream_buffer,
                done,
            } => {
                self.router.reload(*router, now, &mut self.rng, actions);
                self.router.set_upstream_buffer(upstream_buffer);
                self.status.counters.reloads_applied += 1;
                let _ = done.send(());
            }
        }
    }

    fn route_upstream(&mut self, st: &Stanza, now: Instant, actions: &mut Vec<Action>) {
        self.status
            .counters
            .stanza(Direction::UpstreamIn, st.bytes.len());
        self.router.from_upstream(st, now, &mut self.rng, actions)
    }

    /// A stanza from the server skipped over a per-stanza limit: logged
    /// (rate-limited) and handed to the router, which answers its sender
    /// where it may.
    fn skipped_from_upstream(&mut self, sk: Skipped, now: Instant, actions: &mut Vec<Action>) {
        let key = sk.limit.key();
        let what = match sk.limit {
            Limit::Size => format!("stanza larger than {} bytes", sk.max),
            Limit::Depth => format!("elements nested deeper than {}", sk.max),
            Limit::Token => {
                format!("attribute value or name longer than {} bytes", sk.max)
            }
        };
        let text = format!("{what} (limits.upstream_{key}): not delivered");
        if let Some(quiet) = self.skip_log.admit(sk.limit, now) {
            let head = sk.head.as_ref();
            tracing::warn!(
                limit = %format_args!("limits.upstream_{key}"),
                max = sk.max,
                bytes = sk.len,
                sender = head.and_then(|h| h.from()).unwrap_or("(unknown)"),
                to = head.and_then(|h| h.to()).unwrap_or("(unknown)"),
                element = head.map_or("(unknown)", |h| &*h.name),
                skipped_unlogged = quiet,
                "skipped a stanza from the server over limits.upstream_{key} = {} \
                 (one line per limit per minute)",
                sk.max
            );
        }
        self.router
            .skipped_from_upstream(sk.limit, sk.head.as_deref(), &text, actions)
    }

    /// Carries out the router's actions, in order. They are final (the
    /// router holds output for an absent server and takes back requests it
    /// answered), so this only writes. Writing can find a writer ended,
    /// upstream or an instance, or an instance closed or cut; the router
    /// hears it at once, as an input, with the rest of the batch in front
    /// of it, so that it holds rather than sends, takes back that
    /// instance's requests, and appends the answers that follow; then
    /// this goes on with what the router left. (That is the one loop that
    /// remains: only writing can tell that a writer ended.)
    async fn execute(&mut self, actions: &mut Vec<Action>) {
        // The batch being executed lives in `spare` between calls, so that
        // neither vector gives its allocation back: a fresh one per batch
        // showed in the profile of the relay path.
        let mut batch = std::mem::take(&mut self.spare);
        while !actions.is_empty() {
            std::mem::swap(actions, &mut batch);
            let mut rest = batch.drain(..);
            while let Some(a) = rest.next() {
                let Some(found) = self.carry_out(a).await else {
                    continue;
                };
                actions.extend(rest);
                match found {
                    Found::InstanceDown(id) => {
                        let now = Instant::now();
                        self.router.instance_down(id, now, &mut self.rng, actions)
                    }
                    Found::UpstreamUnsent(a) => self.router.upstream_unsent(a, actions),
                }
                break;
            }
        }
        self.spare = batch;
    }

    /// Carries out one action; what it found that the router must hear
    /// before anything else is done.
    async fn carry_out(&mut self, a: Action) -> Option<Found> {
        match a {
            Action::Upstream(w) => self.send_upstream(w, Action::Upstream).await,
            Action::UpstreamAnswer(w) => self.send_upstream(w, Action::UpstreamAnswer).await,
            Action::UpstreamRequest(w, key) => {
                self.send_upstream(w, |w| Action::UpstreamRequest(w, key))
                    .await
            }
            Action::Instance(id, w) => self.send_instance(id, w).await,
            Action::CloseInstance(id, reason) => {
                self.close_instance(id, reason.condition(), reason.why())
            }
        }
    }

    /// Writes `w` to the server, waiting for room as long as it takes
    /// (everything depends on that link). If its writer has ended, `w`
    /// goes back to the router as the action `unsent` makes of it.
    async fn send_upstream(
        &mut self,
        w: Wire,
        unsent: impl FnOnce(Wire) -> Action,
    ) -> Option<Found> {
        let Some(tx) = &self.upstream else {
            return Some(Found::UpstreamUnsent(unsent(w)));
        };
        let len = w.len();
        match tx.send(Out::Wire(w)).await {
            Ok(()) => {
                self.status.counters.stanza(Direction::UpstreamOut, len);
                None
            }
            Err(mpsc::error::SendError(out)) => {
                self.upstream = None;
                match out {
                    Out::Wire(w) => Some(Found::UpstreamUnsent(unsent(w))),
                    Out::Close(_) => None,
                }
            }
        }
    }

    /// Queues `w` for instance `id`. A full queue (at its bound in
    /// stanzas or in bytes) is waited on, as long as the instance's socket
    /// keeps accepting bytes: a burst faster than it reads is slowed down,
    /// not cut. Everything else waits meanwhile, which is the point (the
    /// upstream reader stops, and the server with it), and also the cost:
    /// so once the socket has accepted nothing for the link's stall
    /// timeout, the instance is cut with `policy-violation` and lost like
    /// any member (its requests re-dispatched by the router's
    /// `instance_down`). Shutdown ends the wait at once, dropping the
    /// stanza: the instance is being closed anyway.
    async fn send_instance(&mut self, id: InstanceId, w: Wire) -> Option<Found> {
        let link = self.instances.get(&id)?;
        let len = w.len();
        let bytes = link.bytes.clone();
        let taken = bytes.as_ref().is_none_or(|b| b.try_take(len));
        let out = if taken {
            match link.tx.try_send(Out::Wire(w)) {
                Ok(()) => {
                    self.status.counters.stanza(Direction::InstancesOut, len);
                    return None;
                }
                Err(mpsc::error::TrySendError::Full(out)) => out,
                Err(mpsc::error::TrySendError::Closed(_)) => return self.instance_gone(id),
            }
        } else {
            Out::Wire(w)
        };
        let room = Room {
            tx: link.tx.clone(),
            bytes: if taken { None } else { bytes },
            len,
        };
        let (progress, stall) = (link.progress.clone(), link.stall_timeout);
        match self.wait_for_room(room, out, &progress, stall).await {
            Waited::Queued => {
                self.status.counters.stanza(Direction::InstancesOut, len);
                None
            }
            Waited::Gone => self.instance_gone(id),
            Waited::Stalled => {
                self.status.counters.members_cut_slow += 1;
                self.close_instance(
                    id,
                    StreamCondition::PolicyViolation,
                    &format!(
                        "accepted no bytes for {} (instances.stall_timeout) while its write \
                     queue was at its bound (instances.queue or instances.queue_bytes): \
                     not reading; lost",
                        humantime::format_duration(stall)
                    ),
                )
            }
            Waited::Shutdown => {
                tracing::debug!(
                    member = id,
                    "shutting down: a stanza for a slow instance dropped"
                );
                None
            }
        }
    }

    /// Waits for `room` in a full instance queue and queues `out` there,
    /// while the socket makes `progress`; stalled once it has taken no
    /// bytes for `stall` (counted from now at the earliest).
    async fn wait_for_room(
        &self,
        room: Room,
        out: Out,
        progress: &crate::connection::Progress,
        stall: std::time::Duration,
    ) -> Waited {
        let Room { tx, bytes, len } = room;
        let closed = tx.clone();
        // One future for both bounds, kept across the deadline checks so
        // that bytes taken are not taken twice.
        let queued = async move {
            if let Some(b) = &bytes {
                b.take(len).await;
            }
            match tx.reserve_owned().await {
                Ok(permit) => {
                    permit.send(out);
                    Waited::Queued
                }
                Err(_) => Waited::Gone,
            }
        };
        tokio::pin!(queued);
        let since = Instant::now();
        loop {
            let deadline = progress.stalled_at(since, stall);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Waited::Shutdown,
                done = &mut queued => return done,
                _ = closed.closed() => return Waited::Gone,
                _ = tokio::time::sleep_until(deadline) => {
                    // The writer may have made progress since the
                    // deadline was computed: look again.
                    if progress.stalled_at(since, stall) <= Instant::now() {
                        return Waited::Stalled;
                    }
                }
            }
        }
    }

    /// The instance's writer ended (its connection failed): out of the
    /// pool now, its requests answered, rather than when its connection
    /// task reports it.
    fn instance_gone(&mut self, id: InstanceId) -> Option<Found> {
        let link = self.instances.remove(&id)?;
        tracing::debug!(member = id, peer.addr = %link.peer, "instance connection gone");
        link.closing.cancel();
        Some(Found::InstanceDown(id))
    }

    /// Closes an instance's stream with `cond`, logging one line with the
    /// peer and `why` (the rule or limit it hit).
    fn close_instance(
        &mut self,
        id: InstanceId,
        cond: StreamCondition,
        why: &str,
    ) -> Option<Found> {
        let link = self.instances.remove(&id)?;
        tracing::warn!(member = id, peer.addr = %link.peer, condition = %cond, "closing instance stream: it {why}");
        let error = handshake::stream_error(cond, None);
        let bytes_full = link.bytes.as_ref().is_some_and(|b| !b.fits(error.len()));
        if bytes_full {
            // Its queue is at its byte bound: what is queued is dropped
            // (its requests are the router's to answer or move) and the
            // error goes out after the stanza being written.
            let _ = link.urgent.send(error);
        } else if let Err(mpsc::error::TrySendError::Full(_)) =
            link.tx.try_send(Out::Close(error.clone()))
        {
            // The same, at its bound in stanzas.
            let _ = link.urgent.send(error);
        }
        link.closing.cancel();
        Some(Found::InstanceDown(id))
    }

    fn publish(&mut self) {
        self.status.pool = self.router.pool().members().to_vec();
        self.status.pending = self.router.pending_len();
        self.status.upstream_buffer = self.router.backlog().len();
        self.status.upstream_buffer_dropped = self.router.backlog().dropped();
        self.status.requests_withdrawn = self.router.requests_withdrawn();
        self.status.stats = self.router.stats().clone();
        self.status.held = self.router.held_len();
        let pool = self.router.pool();
        self.status.members = pool
            .members()
            .iter()
            .map(|m| MemberNow {
                member: m.clone(),
                peer: match m {
                    Member::Instance(id) => self.instances.get(id).map(|l| l.peer),
                    Member::Resource(_) => None,
                },
                in_flight: pool.load(m),
                quarantined_until: pool.quarantined_until(m).map(|t| self.clock.at(t)),
            })
            .collect();
        self.status.outside = self.router.resources_outside();
        let snapshot = &self.status;
        self.status_tx.send_if_modified(|s| {
            if s == snapshot {
                false
            } else {
                s.clone_from(snapshot);
                true
            }
        });
    }
}

/// What carrying out an action found that the router must hear before
/// the rest of the batch is carried out.
enum Found {
    /// An instance's stream ended: its writer gone, or closed by the core
    /// (on the router's word, or cut for not reading).
    InstanceDown(InstanceId),
    /// The upstream writer ended before `Event::UpstreamDown` arrived:
    /// this action was not written.
    UpstreamUnsent(Action),
}

/// What a stanza for a full instance queue waits for: a slot in `tx`,
/// and `len` bytes of `bytes` unless they are taken already.
struct Room {
    tx: mpsc::Sender<Out>,
    bytes: Option<std::sync::Arc<crate::connection::QueueBytes>>,
    len: usize,
}

/// How a wait for room in an instance's queue ended.
enum Waited {
    Queued,
    /// Its writer ended: the connection is gone.
    Gone,
    /// Its socket accepted no bytes for its stall timeout.
    Stalled,
    Shutdown,
}

/// Most events the core handles between two status publications.
const EVENT_BATCH: usize = 64;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The core alone, fed events as the connection tasks would, with
    //! tokio's paused clock: what it does with time and with output held
    //! for upstream.

    use super::*;
    use crate::connection::QueueBytes;
    use crate::pool::Member;
    use crate::stanza::StanzaError;
    use crate::xml::frame::Stanza;
    use crate::xml::parse_one;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const D: &str = "proxy.example.test";
    const T: &str = "impl@example.test";
    const ALICE: &str = "alice@example.test/phone";

    /// `[routing]` keys for the module's answer to a lost member (at
    /// once, `recipient-unavailable`), which these tests are about; the
    /// default re-dispatches and holds (issue 13, `router_tests`).
    const MODULE_LOSS: &str = "redispatch = \"none\"\nhold_when_empty = \"0s\"";

    fn config(extra: &str) -> Config {
        crate::config::from_toml_str(&format!(
            "[upstream]\nserver = \"127.0.0.1:1\"\ndomain = \"{D}\"\nsecret = \"s\"\n\
             [instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"i\"\n{extra}\n"
        ))
        .expect("test config is valid")
    }

    struct Harness {
        events: mpsc::Sender<Event>,
        status: watch::Receiver<Status>,
        shutdown: CancellationToken,
        core: JoinHandle<()>,
    }

    fn start(cfg: &Config, queue: usize) -> Harness {
        let (status_tx, status) = watch::channel(Status::default());
        let (events, rx) = mpsc::channel(queue);
        let shutdown = CancellationToken::new();
        let core = tokio::spawn(
            Core::new(cfg, status_tx, Arc::new(Input::new(usize::MAX, usize::MAX)))
                .run(rx, shutdown.clone()),
        );
        Harness {
            events,
            status,
            shutdown,
            core,
        }
    }

    impl Harness {
        async fn send(&self, ev: Event) {
            self.events.send(ev).await.expect("core runs");
        }

        async fn server_sends(&self, xml: &str) {
            self.send(Event::FromUpstream(vec![stanza(xml)])).await;
        }

        async fn instance_sends(&self, id: InstanceId, xml: &str) {
            let stanza = stanza(xml);
            self.send(Event::FromInstance {
                id,
                stanzas: vec![stanza],
            })
            .await;
        }

        /// A new upstream session; its output.
        async fn upstream_up(&self) -> mpsc::Receiver<Out> {
            let (tx, rx) = mpsc::channel(4096);
            self.send(Event::UpstreamUp(tx)).await;
            rx
        }

        /// A connected instance; its output and its urgent close.
        async fn instance_up(
            &self,
            id: InstanceId,
        ) -> (mpsc::Receiver<Out>, oneshot::Receiver<bytes::Bytes>) {
            let (rx, urgent, _) = self.instance_with(id, 64, Duration::from_secs(5)).await;
            (rx, urgent)
        }

        /// A connected instance with this queue and stall timeout; also
        /// the progress its writer would record.
        async fn instance_with(
            &self,
            id: InstanceId,
            queue: usize,
            stall_timeout: Duration,
        ) -> (
            mpsc::Receiver<Out>,
            oneshot::Receiver<bytes::Bytes>,
            Arc<crate::connection::Progress>,
        ) {
            self.instance_bounded(id, queue, None, stall_timeout).await
        }

        /// [`Self::instance_with`], its queue bounded in bytes too if
        /// `bytes` is given (the reader must give them back, as the
        /// writer does).
        async fn instance_bounded(
            &self,
            id: InstanceId,
            queue: usize,
            bytes: Option<Arc<QueueBytes>>,
            stall_timeout: Duration,
        ) -> (
            mpsc::Receiver<Out>,
            oneshot::Receiver<bytes::Bytes>,
            Arc<crate::connection::Progress>,
        ) {
            let (tx, rx) = mpsc::channel(queue);
            let (urgent, urgent_rx) = oneshot::channel();
            let progress = Arc::new(crate::connection::Progress::new());
            let link = InstanceLink {
                tx,
                closing: CancellationToken::new(),
                urgent,
                peer: "127.0.0.1:9".parse().expect("addr"),
                progress: progress.clone(),
                stall_timeout,
                bytes,
            };
            self.send(Event::InstanceUp { id, link }).await;
            (rx, urgent_rx, progress)
        }

        /// Waits until `cond` holds (failing once everything is idle
        /// for a minute of the paused clock without it).
        async fn wait_for(&mut self, cond: impl Fn(&Status) -> bool) -> Status {
            let waited =
                tokio::time::timeout(Duration::from_secs(60), self.status.wait_for(|s| cond(s)))
                    .await
                    .map(|r| r.map(|s| s.clone()));
            match waited {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => panic!("the core stopped"),
                Err(_) => panic!("condition never held: {:?}", *self.status.borrow()),
            }
        }
    }

    fn stanza(xml: &str) -> Stanza {
        parse_one(xml.as_bytes()).expect("test stanza frames")
    }

    /// The next thing written to a connection, as text. (With the clock
    /// paused, the timeout fires as soon as everything is idle.)
    async fn next(rx: &mut mpsc::Receiver<Out>) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("output within the wait")
            .expect("connection queue open");
        match out {
            Out::Wire(w) => String::from_utf8_lossy(&w.to_bytes()).into_owned(),
            Out::Close(b) => format!("CLOSE {}", String::from_utf8_lossy(&b)),
        }
    }

    fn request(id: &str, from: &str) -> String {
        format!("<iq type='get' id='{id}' to='{D}' from='{from}'><q xmlns='urn:x'/></iq>")
    }

    /// Under input that never pauses, requests still time out on time:
    /// the core must not wait for a quiet moment to look at the clock.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn requests_time_out_under_continuous_input() {
        let cfg = config("[routing]\niq_timeout = \"1s\"");
        let h = start(&cfg, 4096);
        let mut up = h.upstream_up().await;
        let (mut inst, _) = h.instance_up(1).await;
        h.server_sends(&request("slow", ALICE)).await;
        assert!(next(&mut inst).await.contains("id='slow'"));
        // A flood already queued when the deadline passes: each iq of no
        // known type gets its bad-request reply, and the core never finds
        // its queue empty until the flood is through.
        let flood = 1000;
        for i in 0..flood {
            let msg = format!("<iq type='bogus' id='m{i}' to='{D}' from='bob@example.test/x'/>");
            h.events
                .try_send(Event::FromUpstream(vec![stanza(&msg)]))
                .expect("room in the queue");
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut position = None;
        for i in 0..=flood {
            let out = next(&mut up).await;
            if out.contains("id='slow'") {
                assert!(out.contains("<remote-server-timeout "), "{out}");
                assert!(position.replace(i).is_none(), "answered twice");
            }
        }
        let position = position.expect("the request got its timeout answer");
        assert!(
            position <= EVENT_BATCH,
            "the timeout answer waited for {position} stanzas of input"
        );
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// While upstream is away, messages and presence are held up to the
    /// bound and then dropped; answers are held whatever the bound, and
    /// all of it goes out, in order, when upstream is back.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn held_answers_are_never_dropped_other_output_is_bounded() {
        let cfg = config(&format!(
            "[client_proxy]\ntarget_address = \"{T}\"\n[limits]\nupstream_buffer = 2\n\
             [routing]\nbalancing = \"round-robin\"\n{MODULE_LOSS}"
        ));
        let mut h = start(&cfg, 1024);
        let mut up = h.upstream_up().await;
        assert!(next(&mut up).await.contains("type='subscribe'"));
        h.server_sends(&format!("<presence from='{T}/a' to='{D}'/>"))
            .await;
        h.wait_for(|s| s.pool.len() == 1).await;
        let (_inst, _) = h.instance_up(1).await;
        // Round-robin: half of them on the resource, whose requests are
        // answered when upstream goes (client resources are reached
        // through it), half on the instance, which keeps them.
        let n = 6;
        for i in 0..n {
            h.server_sends(&request(&format!("q{i}"), &format!("u{i}@example.test/r")))
                .await;
        }
        let on_resource = h.wait_for(|s| s.pending == n).await;
        let resource_requests =
            on_resource.stats.members[&Member::Resource(format!("{T}/a"))].routed;
        drop(up);
        h.send(Event::UpstreamDown).await;
        for i in 0..4 {
            h.instance_sends(
                1,
                &format!("<message id='m{i}' from='{D}' to='bob@example.test'/>"),
            )
            .await;
        }
        let st = h
            .wait_for(|s| !s.upstream_online && s.upstream_buffer_dropped == 2)
            .await;
        assert_eq!(st.upstream_buffer, resource_requests as usize + 2, "{st:?}");
        let mut up = h.upstream_up().await;
        assert!(next(&mut up).await.contains("type='subscribe'"));
        for _ in 0..resource_requests {
            let out = next(&mut up).await;
            assert!(out.contains("<recipient-unavailable "), "{out}");
        }
        for i in 0..2 {
            assert!(next(&mut up).await.contains(&format!("id='m{i}'")));
        }
        h.instance_sends(
            1,
            &format!("<message id='marker' from='{D}' to='bob@example.test'/>"),
        )
        .await;
        assert!(next(&mut up).await.contains("id='marker'"), "nothing else");
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// An instance's request held for upstream and answered by timeout
    /// meanwhile is not sent when upstream comes back: the instance was
    /// told it failed.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_held_request_answered_by_timeout_is_withdrawn() {
        let cfg = config("[routing]\niq_timeout = \"1s\"");
        let mut h = start(&cfg, 1024);
        let (mut inst, _) = h.instance_up(1).await;
        h.instance_sends(
            1,
            &format!("<iq type='get' id='held' from='{D}' to='peer@example.test'/>"),
        )
        .await;
        h.wait_for(|s| s.upstream_buffer == 1 && s.pending == 1)
            .await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let answer = next(&mut inst).await;
        assert!(
            answer.contains("id='held'") && answer.contains("<remote-server-timeout "),
            "{answer}"
        );
        let mut up = h.upstream_up().await;
        h.instance_sends(
            1,
            &format!("<message id='marker' from='{D}' to='bob@example.test'/>"),
        )
        .await;
        assert!(
            next(&mut up).await.contains("id='marker'"),
            "the request was sent"
        );
        let st = h.wait_for(|s| s.upstream_buffer == 0).await;
        assert_eq!((st.requests_withdrawn, st.pending), (1, 0));
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// A held request that has to be held again (the new session failed
    /// at once) and finds the bound reached gets its answer, as it did
    /// the first time.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_re_held_past_the_bound_is_answered() {
        let cfg = config(&format!(
            "[client_proxy]\ntarget_address = \"{T}\"\n[limits]\nupstream_buffer = 1"
        ));
        let mut h = start(&cfg, 1024);
        let (mut inst, _) = h.instance_up(1).await;
        h.instance_sends(
            1,
            &format!("<iq type='get' id='r1' from='{D}' to='peer@example.test'/>"),
        )
        .await;
        h.wait_for(|s| s.upstream_buffer == 1).await;
        // A session that is gone before the flush: the subscription
        // refresh is held first and takes the one place.
        let dead = h.upstream_up().await;
        drop(dead);
        let answer = next(&mut inst).await;
        assert!(
            answer.contains("id='r1'") && answer.contains("<resource-constraint "),
            "{answer}"
        );
        let st = h.wait_for(|s| s.pending == 0).await;
        assert_eq!(
            (st.upstream_buffer, st.upstream_buffer_dropped),
            (1, 1),
            "{st:?}"
        );
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// A member's reply that reached the core just before shutdown is
    /// delivered: the requester gets the real answer, once.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn shutdown_delivers_replies_already_queued() {
        let cfg = config(&format!("[client_proxy]\ntarget_address = \"{T}\""));
        let mut h = start(&cfg, 1024);
        let mut up = h.upstream_up().await;
        assert!(next(&mut up).await.contains("type='subscribe'"));
        h.server_sends(&format!("<presence from='{T}/a' to='{D}'/>"))
            .await;
        h.wait_for(|s| s.pool.len() == 1).await;
        h.server_sends(&request("q", ALICE)).await;
        let fwd = next(&mut up).await;
        assert!(fwd.contains(&format!("to='{T}/a'")), "{fwd}");
        // Queued, then shutdown before the core gets to run: it sees the
        // shutdown first (its select prefers it) and the reply in the drain.
        h.events
            .try_send(Event::FromUpstream(vec![stanza(&format!(
                "<iq type='result' id='q' to='{D}/{ALICE}' from='{T}/a'/>"
            ))]))
            .expect("room");
        h.shutdown.cancel();
        let answer = next(&mut up).await;
        assert_eq!(
            answer,
            format!("<iq type='result' id='q' to='{ALICE}' from='{D}'/>")
        );
        assert!(next(&mut up).await.starts_with("CLOSE "));
        h.core.await.expect("core ends");
        let st = h.status.borrow().clone();
        assert_eq!(
            (
                st.stats.replies_delivered,
                st.stats.generated(StanzaError::RecipientUnavailable)
            ),
            (1, 0)
        );
    }

    fn message(id: &str) -> String {
        format!("<message id='{id}' to='{D}' from='bob@example.test/x'><body>b</body></message>")
    }

    /// A burst many times an instance's queue, to an instance that reads
    /// steadily but slower than it comes: the core waits for room as long
    /// as the instance takes bytes, however long that is in all. Nothing
    /// is cut, and everything arrives once, in order.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_queue_is_waited_for_while_the_instance_reads() {
        let cfg = config("");
        let mut h = start(&cfg, 16);
        let _up = h.upstream_up().await;
        let stall = Duration::from_secs(1);
        let (mut inst, mut urgent, progress) = h.instance_with(1, 4, stall).await;
        let n = 40;
        // A reader taking one stanza every 300 ms (the socket accepting
        // its bytes): 12 s in all, the queue full for most of it.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                got.push(next(&mut inst).await);
                progress.touch();
            }
            got
        });
        let started = Instant::now();
        for i in 0..n {
            h.server_sends(&message(&format!("m{i}"))).await;
        }
        let got = reader.await.expect("reader");
        assert!(started.elapsed() >= Duration::from_secs(10), "it did wait");
        for (i, out) in got.iter().enumerate() {
            assert!(out.contains(&format!("id='m{i}'")), "{i}: {out}");
        }
        assert!(urgent.try_recv().is_err(), "no close");
        let st = h
            .wait_for(|s| s.counters.stanzas(Direction::InstancesOut) == n as u64)
            .await;
        assert_eq!(st.pool, [Member::Instance(1)], "still in rotation");
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// The byte bound is backpressure too: a queue roomy in stanzas but
    /// full in bytes is waited for while the instance reads, never past
    /// its bound, and nothing is cut.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_queue_at_its_byte_bound_is_waited_for_while_the_instance_reads() {
        let cfg = config("");
        let mut h = start(&cfg, 16);
        let _up = h.upstream_up().await;
        let cap = 3 * message("m00").len();
        let bytes = Arc::new(QueueBytes::new(cap));
        let stall = Duration::from_secs(1);
        let (mut inst, mut urgent, progress) = h
            .instance_bounded(1, 1000, Some(bytes.clone()), stall)
            .await;
        let n = 20;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut most = 0;
            while got.len() < n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                most = most.max(bytes.queued());
                let out = next(&mut inst).await;
                bytes.give_back(out.len());
                progress.touch();
                got.push(out);
            }
            (got, most)
        });
        let started = Instant::now();
        for i in 0..n {
            h.server_sends(&message(&format!("m{i:02}"))).await;
        }
        let (got, most) = reader.await.expect("reader");
        assert!(started.elapsed() >= Duration::from_secs(5), "it did wait");
        assert!(most <= cap && most > 0, "queued {most} of {cap}");
        for (i, out) in got.iter().enumerate() {
            assert!(out.contains(&format!("id='m{i:02}'")), "{i}: {out}");
        }
        assert!(urgent.try_recv().is_err(), "no close");
        let st = h
            .wait_for(|s| s.counters.stanzas(Direction::InstancesOut) == n as u64)
            .await;
        assert_eq!(st.pool, [Member::Instance(1)], "still in rotation");
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// An instance at its byte bound (its stanza count far from full)
    /// that takes nothing for its stall timeout is cut with
    /// policy-violation and lost: its get goes to the next instance, which
    /// answers it, and no error reaches the requester.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_instance_stalled_at_its_byte_bound_is_lost_and_its_get_redispatched() {
        let cfg = config(
            "[routing]
redispatch = \"get\"\nhold_when_empty = \"10s\"",
        );
        let mut h = start(&cfg, 16);
        let mut up = h.upstream_up().await;
        let stall = Duration::from_secs(3);
        let bytes = Arc::new(QueueBytes::new(200));
        let (_inst, mut urgent, _progress) = h
            .instance_bounded(1, 1000, Some(bytes.clone()), stall)
            .await;
        h.server_sends(&request("q", ALICE)).await;
        h.wait_for(|s| s.pending == 1).await;
        let started = Instant::now();
        for i in 0..4 {
            h.server_sends(&message(&format!("m{i}"))).await;
        }
        // Queued behind the wait: joins once the first is cut.
        let (mut second, _) = h.instance_up(2).await;
        let moved = next(&mut second).await;
        let waited = started.elapsed();
        assert!(moved.contains("id='q'"), "{moved}");
        assert!(
            waited >= stall && waited < stall + Duration::from_secs(1),
            "cut after {waited:?}"
        );
        assert!(bytes.queued() <= 200, "{}", bytes.queued());
        let close = urgent.try_recv().expect("the urgent close");
        assert!(
            String::from_utf8_lossy(&close).contains("<policy-violation "),
            "{close:?}"
        );
        assert!(
            up.try_recv().is_err(),
            "no answer yet: the get is in flight again"
        );
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// An instance whose socket accepts nothing while its queue is full
    /// is cut after its stall timeout, not before: out of the pool, its
    /// stream closed past the queue, its pending request answered.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_instance_that_takes_nothing_is_cut_after_the_stall_timeout() {
        let cfg = config(&format!("[routing]\n{MODULE_LOSS}"));
        let mut h = start(&cfg, 16);
        let mut up = h.upstream_up().await;
        let stall = Duration::from_secs(3);
        let (_inst, mut urgent, _progress) = h.instance_with(1, 2, stall).await;
        h.server_sends(&request("q", ALICE)).await;
        h.wait_for(|s| s.pending == 1).await;
        // Progress long ago does not count against it: the wait starts
        // when the queue is found full.
        tokio::time::advance(Duration::from_secs(10)).await;
        let started = Instant::now();
        for i in 0..4 {
            h.server_sends(&message(&format!("m{i}"))).await;
        }
        let answer = next(&mut up).await;
        let waited = started.elapsed();
        assert!(
            answer.contains("id='q'") && answer.contains("<recipient-unavailable "),
            "{answer}"
        );
        assert!(
            waited >= stall && waited < stall + Duration::from_secs(1),
            "cut after {waited:?}"
        );
        let close = urgent.try_recv().expect("the urgent close");
        assert!(
            String::from_utf8_lossy(&close).contains("<policy-violation "),
            "{close:?}"
        );
        let st = h.wait_for(|s| s.pool.is_empty()).await;
        assert_eq!(st.pending, 0);
        assert_eq!(
            st.counters.members_cut_slow, 1,
            "counted as cut for being slow"
        );
        h.shutdown.cancel();
        h.core.await.expect("core ends");
    }

    /// Shutdown while the core waits for a stalled instance: the wait
    /// ends at once, the requests are answered and upstream is closed,
    /// without waiting for the stall timeout.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn shutdown_ends_a_wait_for_a_stalled_instance() {
        let cfg = config("");
        let h = start(&cfg, 16);
        let mut up = h.upstream_up().await;
        let (inst, mut urgent, _progress) = h.instance_with(1, 2, Duration::from_secs(3600)).await;
        h.server_sends(&request("q", ALICE)).await;
        for i in 0..4 {
            h.server_sends(&message(&format!("m{i}"))).await;
        }
        // The core is waiting (the status is published after the wait):
        // two messages queued, the others not.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(inst.len(), 2);
        let started = Instant::now();
        h.shutdown.cancel();
        let answer = next(&mut up).await;
        assert!(
            answer.contains("id='q'") && answer.contains("<recipient-unavailable "),
            "{answer}"
        );
        assert!(next(&mut up).await.starts_with("CLOSE "));
        h.core.await.expect("core ends");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            urgent.try_recv().is_ok(),
            "its stream is closed past the queue"
        );
    }
}
