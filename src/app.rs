//! The running proxy as a whole: [`Proxy`], the handle that binds the
//! sockets, spawns the core and the connection tasks, reloads, stops, and
//! supervises the core for panics.
//!
//! The only module that binds and spawns the proxy's tasks. It imports
//! the core, the connection tasks and metrics; none of them imports it.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::Core;
use crate::event::{Event, Inbound};
use crate::reload::{Plan, ReloadError};
use crate::router::RouterConfig;
use crate::status::{Observation, Status};

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
    /// Cancelled if the core task panicked.
    core_failed: CancellationToken,
}

/// Starts the admin endpoint (`metrics.listen`) on its bound listener;
/// the address it serves at.
fn spawn_admin(
    (addr, listener): (SocketAddr, TcpListener),
    sources: crate::admin::Sources,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> SocketAddr {
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving metrics at http://{local}/metrics");
    tasks.spawn(crate::admin::serve(
        listener,
        sources,
        shutdown.clone(),
        tasks.clone(),
    ));
    local
}

impl Proxy {
    /// Starts the core, the upstream link and (if configured) the
    /// instance listener and metrics endpoint, on the current tokio
    /// runtime. Every socket is bound before any task starts: on an error
    /// nothing is left running.
    pub async fn start(cfg: Config) -> Result<Proxy, StartError> {
        let cfg = Arc::new(cfg);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (events_tx, events_rx) = mpsc::channel(1024);
        let inbound = Inbound::new(events_tx.clone());
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (config_tx, config_rx) = watch::channel(cfg.clone());

        // Bind everything before starting anything, so that a failed bind
        // leaves nothing running behind the error.
        let metrics = match cfg.metrics.listen {
            Some(addr) => {
                let bound = TcpListener::bind(addr).await;
                Some((
                    addr,
                    bound.map_err(|source| StartError::Metrics { addr, source })?,
                ))
            }
            None => None,
        };
        let instances = match cfg.instances.listen {
            Some(addr) => {
                let bound = TcpListener::bind(addr).await;
                Some((
                    addr,
                    bound.map_err(|source| StartError::Listen { addr, source })?,
                ))
            }
            None => None,
        };

        let sources = crate::admin::Sources {
            status: status_rx.clone(),
            config: config_rx.clone(),
        };
        let metrics_addr = metrics.map(|bound| spawn_admin(bound, sources, &shutdown, &tasks));
        let listen_addr = instances.map(|(addr, listener)| {
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %local, "listening for component instances");
            tasks.spawn(crate::listener::run(
                listener,
                config_rx.clone(),
                inbound.clone(),
                shutdown.clone(),
                tasks.clone(),
            ));
            local
        });

        let core = Core::new(&cfg, status_tx, inbound.input.clone());
        let core_failed = CancellationToken::new();
        tasks.spawn(supervise_core(
            core.run(events_rx, shutdown.clone()),
            core_failed.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::upstream::run(
            config_rx,
            inbound,
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
            core_failed,
        })
    }

    /// Resolves if the core task panicked: nothing is routed any more,
    /// and the proxy has begun stopping. The process should exit with a
    /// failure so that its supervisor (systemd) restarts it.
    pub fn failed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.core_failed.clone().cancelled_owned()
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
            router: Box::new(RouterConfig::from_config(&new)),
            upstream_buffer: crate::backlog::Bound::of(&new.limits),
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

/// Runs the core; if it panics, says so once and stops the proxy: with
/// the router gone nothing can be routed, and a process that keeps
/// accepting connections it cannot serve is worse than one that exits
/// and is restarted ([`Proxy::failed`]).
async fn supervise_core(
    core: impl std::future::Future<Output = ()>,
    failed: CancellationToken,
    shutdown: CancellationToken,
) {
    if let Err(panic) = AssertUnwindSafe(core).catch_unwind().await {
        tracing::error!(
            "the core task panicked: {}; nothing can be routed any more: stopping",
            crate::connection::panic_message(&*panic)
        );
        failed.cancel();
        shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind that fails leaves nothing running: the metrics endpoint,
    /// bound first, is not served once the instance listener's bind fails.
    #[tokio::test]
    async fn a_failed_bind_starts_nothing() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let taken_addr = taken.local_addr().expect("addr");
        // A free port for metrics: bound, then released for the proxy.
        let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics_addr = free.local_addr().expect("addr");
        drop(free);
        let cfg = crate::config::from_toml_str(&format!(
            "[upstream]\nserver = \"127.0.0.1:1\"\ndomain = \"proxy.example.test\"\n\
             secret = \"s\"\n[instances]\nlisten = \"{taken_addr}\"\nsecret = \"i\"\n\
             [metrics]\nlisten = \"{metrics_addr}\"\n"
        ))
        .expect("test config is valid");
        match Proxy::start(cfg).await {
            Err(StartError::Listen { addr, .. }) => assert_eq!(addr, taken_addr),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started on a taken port"),
        }
        // Nothing holds the metrics port: it can be bound again.
        TcpListener::bind(metrics_addr)
            .await
            .expect("the metrics port was released");
        drop(taken);
    }

    /// A panic in the core stops the proxy and is reported, so the
    /// process can exit with a failure.
    #[tokio::test]
    async fn a_core_panic_stops_the_proxy_and_is_reported() {
        let failed = CancellationToken::new();
        let shutdown = CancellationToken::new();
        supervise_core(
            async { panic!("a bug in routing") },
            failed.clone(),
            shutdown.clone(),
        )
        .await;
        assert!(failed.is_cancelled() && shutdown.is_cancelled());
        // A core that ends normally (shutdown) is no failure.
        let failed = CancellationToken::new();
        supervise_core(async {}, failed.clone(), CancellationToken::new()).await;
        assert!(!failed.is_cancelled());
    }
}
