//! The running proxy: one core task that owns the [`Router`], fed by the
//! connection tasks through one bounded channel.
//!
//! Connection tasks own their sockets and only frame and write; the core
//! owns all state and makes every decision, so there are no locks. Output
//! to an instance is `try_send` on its bounded queue: an instance that
//! stops reading is taken out of rotation instead of stalling everyone.
//! Output upstream is awaited: the XMPP server is the one link everything
//! depends on, and waiting on it is the backpressure.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::conn::Out;
use crate::handshake;
use crate::metrics::{Counters, Direction, Observation};
use crate::pool::{InstanceId, Member};
use crate::reload::{Plan, ReloadError};
use crate::rewrite::Wire;
use crate::router::{Action, Router, RouterConfig, Stats};
use crate::stanza::StanzaError;
use crate::xml::frame::Stanza;

/// What connection tasks tell the core.
#[derive(Debug)]
pub enum Event {
    /// A new upstream session is up; its writer queue.
    UpstreamUp(mpsc::Sender<Out>),
    /// The upstream session ended.
    UpstreamDown,
    FromUpstream(Stanza),
    /// An instance finished its handshake; its writer queue.
    InstanceUp {
        id: InstanceId,
        tx: mpsc::Sender<Out>,
        /// Cancelled by the core to cut the connection when it cannot even
        /// queue the stream error (the instance stopped reading).
        cut: CancellationToken,
        /// For the log line when the core closes it.
        peer: SocketAddr,
    },
    InstanceDown {
        id: InstanceId,
    },
    FromInstance {
        id: InstanceId,
        stanza: Stanza,
    },
    /// Something only metrics count.
    Observed(Observation),
    /// A reload's part that the core applies; `done` once it has.
    Reload {
        router: RouterConfig,
        upstream_buffer: usize,
        done: oneshot::Sender<()>,
    },
}

/// A snapshot of the proxy's state, published after every event: for
/// tests to wait on conditions, and for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub upstream_online: bool,
    /// Upstream sessions established so far.
    pub upstream_sessions: u64,
    pub pool: Vec<Member>,
    pub pending: usize,
    /// Stanzas waiting for upstream to come back.
    pub backlog: usize,
    /// Stanzas dropped because the backlog was full.
    pub backlog_dropped: u64,
    pub stats: Stats,
    /// What only metrics need (traffic, handshake failures, reloads).
    pub counters: Counters,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for instances on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    listen_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    /// The running configuration; connection tasks read it when they
    /// start a connection, the upstream task also when it changes.
    config: watch::Sender<Arc<Config>>,
    events: mpsc::Sender<Event>,
}

impl Proxy {
    /// Starts the core, the upstream link and (if configured) the
    /// instance listener, on the current tokio runtime.
    pub async fn start(cfg: Config) -> Result<Proxy, StartError> {
        let cfg = Arc::new(cfg);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (config_tx, config_rx) = watch::channel(cfg.clone());

        let metrics_addr = match cfg.metrics.listen {
            Some(addr) => {
                let listener = crate::metrics::bind(addr)
                    .await
                    .map_err(|source| StartError::Metrics { addr, source })?;
                let local = listener.local_addr().unwrap_or(addr);
                tracing::info!(addr = %local, "serving metrics at http://{local}/metrics");
                tasks.spawn(crate::metrics::serve(
                    listener,
                    status_rx.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                ));
                Some(local)
            }
            None => None,
        };

        let listen_addr = match cfg.instances.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                let local = listener.local_addr().unwrap_or(addr);
                tracing::info!(addr = %local, "listening for component instances");
                tasks.spawn(crate::listener::run(
                    listener,
                    config_rx.clone(),
                    events_tx.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                ));
                Some(local)
            }
            None => None,
        };

        let core = Core::new(&cfg, status_tx);
        tasks.spawn(core.run(events_rx, shutdown.clone()));
        tasks.spawn(crate::upstream::run(
            config_rx,
            events_tx.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        Ok(Proxy {
            status: status_rx,
            shutdown,
            tasks,
            listen_addr,
            metrics_addr,
            config: config_tx,
            events: events_tx,
        })
    }

    /// The metrics endpoint's bound address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The configuration running now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Applies a new, already validated configuration without a restart
    /// (see [`crate::reload`] for what changes how). Refused as a whole,
    /// with the running configuration kept, when a key that needs a
    /// restart changed. Returns once the core runs with the new settings;
    /// a reconnect, if the plan has one, is under way by then. The log
    /// level is the caller's: it owns the subscriber.
    pub async fn reload(&self, new: Config) -> Result<Plan, ReloadError> {
        let old = self.config();
        let plan = match crate::reload::plan(&old, &new) {
            Ok(p) => p,
            Err(e) => {
                self.reload_refused().await;
                return Err(e);
            }
        };
        let (done, applied) = oneshot::channel();
        let ev = Event::Reload {
            router: RouterConfig::from_config(&new),
            upstream_buffer: new.limits.upstream_buffer,
            done,
        };
        if self.events.send(ev).await.is_err() || applied.await.is_err() {
            return Err(ReloadError::Stopped);
        }
        if !plan.reconnect.is_empty() {
            tracing::warn!(
                changed = %plan.reconnect.join(","),
                "upstream settings changed: closing the upstream session and reconnecting to apply them"
            );
        }
        // Connection tasks pick it up from here; the upstream task
        // reconnects if its session no longer matches.
        self.config.send_replace(Arc::new(new));
        Ok(plan)
    }

    /// Counts a reload refused before it reached [`Proxy::reload`] (the
    /// file did not validate).
    pub async fn reload_refused(&self) {
        let _ = self
            .events
            .send(Event::Observed(Observation::ReloadRefused))
            .await;
    }

    /// The instance listener's bound address (useful with port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of status updates.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until `cond` holds, up to `limit`; true if it did.
    pub async fn wait_for(&self, limit: Duration, cond: impl Fn(&Status) -> bool) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(limit, rx.wait_for(|s| cond(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A token that stops the proxy when cancelled (signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, answers every pending request with an error,
    /// closes every stream with `</stream:stream>` and waits for the
    /// tasks to finish, at most `grace`. True if all finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

struct Core {
    router: Router,
    rng: StdRng,
    upstream: Option<mpsc::Sender<Out>>,
    backlog: VecDeque<Wire>,
    backlog_cap: usize,
    instances: HashMap<InstanceId, (mpsc::Sender<Out>, CancellationToken, SocketAddr)>,
    status: Status,
    status_tx: watch::Sender<Status>,
}

impl Core {
    fn new(cfg: &Config, status_tx: watch::Sender<Status>) -> Self {
        Core {
            router: Router::new(RouterConfig::from_config(cfg)),
            rng: StdRng::from_os_rng(),
            upstream: None,
            backlog: VecDeque::new(),
            backlog_cap: cfg.limits.upstream_buffer,
            instances: HashMap::new(),
            status: Status::default(),
            status_tx,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
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
                _ = sleep_until(deadline) => self.router.expire(Instant::now(), &mut actions),
            }
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
                Event::FromUpstream(st) => {
                    self.router.refuse_closing(&st, &mut actions);
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
        for (_, (tx, _, _)) in self.instances.drain() {
            let _ = tx.try_send(Out::Close(close.clone()));
        }
        self.status.upstream_online = false;
        self.publish();
    }

    fn handle(&mut self, ev: Event, actions: &mut Vec<Action>) {
        let now = Instant::now();
        match ev {
            Event::FromUpstream(st) => {
                self.status
                    .counters
                    .stanza(Direction::UpstreamIn, st.bytes.len());
                self.router.from_upstream(&st, now, &mut self.rng, actions)
            }
            Event::FromInstance { id, stanza } => {
                self.status
                    .counters
                    .stanza(Direction::InstancesIn, stanza.bytes.len());
                if self.instances.contains_key(&id) {
                    self.router
                        .from_instance(id, &stanza, now, &mut self.rng, actions)
                }
            }
            Event::UpstreamUp(tx) => {
                self.upstream = Some(tx);
                self.status.upstream_online = true;
                self.status.upstream_sessions += 1;
                self.router.upstream_online(actions);
                // Held output goes after the subscription refresh.
                let held: Vec<Wire> = self.backlog.drain(..).collect();
                actions.extend(held.into_iter().map(Action::Upstream));
            }
            Event::UpstreamDown => {
                self.upstream = None;
                self.status.upstream_online = false;
                self.router.upstream_lost(actions);
            }
            Event::InstanceUp { id, tx, cut, peer } => {
                self.instances.insert(id, (tx, cut, peer));
                self.router.instance_up(id);
            }
            Event::InstanceDown { id } => {
                if self.instances.remove(&id).is_some() {
                    self.router.instance_down(id, actions);
                }
            }
            Event::Observed(o) => self.status.counters.observe(o),
            Event::Reload {
                router,
                upstream_buffer,
                done,
            } => {
                self.router
                    .reload(router, self.upstream.is_some(), now, actions);
                self.backlog_cap = upstream_buffer;
                self.status.counters.reloads_applied += 1;
                let _ = done.send(());
            }
        }
    }

    async fn execute(&mut self, actions: &mut Vec<Action>) {
        while !actions.is_empty() {
            let batch: Vec<Action> = std::mem::take(actions);
            for a in batch {
                match a {
                    Action::Upstream(w) => {
                        self.send_upstream(w).await;
                    }
                    Action::UpstreamRequest(w, key) => {
                        if !self.send_upstream(w).await {
                            // Neither sent nor held: answer it rather
                            // than lose it.
                            self.router.fail_request(
                                &key,
                                StanzaError::ResourceConstraint,
                                actions,
                            );
                        }
                    }
                    Action::Instance(id, w) => {
                        let len = w.len();
                        let queued = self
                            .instances
                            .get(&id)
                            .map(|(tx, _, _)| tx.try_send(Out::Wire(w)).is_ok());
                        match queued {
                            Some(true) => self.status.counters.stanza(Direction::InstancesOut, len),
                            Some(false) => {
                                self.close_instance(
                                    id,
                                    "policy-violation",
                                    "not reading: its write queue (instances.queue) is full; out of rotation",
                                    actions,
                                );
                            }
                            None => {}
                        }
                    }
                    Action::CloseInstance(id, cond) => {
                        let why = match cond {
                            "invalid-from" => "sent a 'from' that is not an address in the domain",
                            "improper-addressing" => "sent a stanza without 'from'",
                            _ => "broke the stream rules",
                        };
                        self.close_instance(id, cond, why, actions)
                    }
                }
            }
        }
    }

    /// Closes an instance's stream with `cond`, logging one line with the
    /// peer and `why` (the rule or limit it hit).
    fn close_instance(
        &mut self,
        id: InstanceId,
        cond: &'static str,
        why: &str,
        actions: &mut Vec<Action>,
    ) {
        if let Some((tx, cut, peer)) = self.instances.remove(&id) {
            tracing::warn!(member = id, peer.addr = %peer, condition = cond, "closing instance stream: it {why}");
            if tx
                .try_send(Out::Close(handshake::stream_error(cond, None)))
                .is_err()
            {
                // Its queue is full: the error cannot be written in order.
                // Cut the connection, so the instance learns it is out and
                // its slot is freed.
                cut.cancel();
            }
            self.router.instance_down(id, actions);
        }
    }

    /// Sends or holds; false if the output had to be dropped.
    async fn send_upstream(&mut self, w: Wire) -> bool {
        if let Some(tx) = &self.upstream {
            let len = w.len();
            match tx.send(Out::Wire(w)).await {
                Ok(()) => {
                    self.status.counters.stanza(Direction::UpstreamOut, len);
                    return true;
                }
                Err(mpsc::error::SendError(out)) => {
                    self.upstream = None;
                    return match out {
                        Out::Wire(w) => self.hold(w),
                        Out::Close(_) => false,
                    };
                }
            }
        }
        self.hold(w)
    }

    /// Keeps output for upstream until it is back, within the bound;
    /// false if the bound is reached.
    fn hold(&mut self, w: Wire) -> bool {
        if self.backlog.len() < self.backlog_cap {
            self.backlog.push_back(w);
            true
        } else {
            self.status.backlog_dropped += 1;
            if self.status.backlog_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.status.backlog_dropped,
                    bound = self.backlog_cap,
                    "upstream is down and its buffer is full: dropping output"
                );
            }
            false
        }
    }

    fn publish(&mut self) {
        self.status.pool = self.router.pool().members().to_vec();
        self.status.pending = self.router.pending_len();
        self.status.backlog = self.backlog.len();
        self.status.stats = self.router.stats().clone();
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

/// Most events the core handles between two status publications.
const EVENT_BATCH: usize = 64;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
