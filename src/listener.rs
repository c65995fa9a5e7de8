//! The listener for component instances: the server side of XEP-0114.
//!
//! Instances connect here exactly as they would to the XMPP server's
//! component port, unchanged. Connections are capped (all, and those
//! still in the handshake); accept errors are logged and retried after a
//! pause (which shutdown cuts short), never ending the listener.
//!
//! A stream that ends — closed by the proxy, by the instance, or by a
//! failed write — is not read any further, and its connection is gone
//! within [`CLOSE_WAIT`] even if the instance stops reading: a closed
//! instance never keeps its connection slot. At shutdown, a connection's
//! writer gets to write what is queued and the stream's end as long as
//! the instance keeps taking bytes, and is cut once it has taken none for
//! `instances.stall_timeout` or half the shutdown grace, whichever is
//! shorter.
//!
//! Each instance is a [`Connection`]: this module decides when to read,
//! close and give up on it, not how bytes are framed or written.
//!
//! It talks to the core only through [`crate::event::Event`] and may not
//! import the core or the app, which bind its socket and start it.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, InstancesConfig, Secret};
use crate::connection::{self, Connection, Reader, Socket, Writer, WriterSettings};
use crate::event::{Batch, Event, Inbound, InstanceLink};
use crate::handshake;
use crate::pool::InstanceId;
use crate::status::{Observation, Side};
use crate::tls;
use crate::xml::{CodecError, Frame, FrameError, StreamCondition};

/// Accepts instances until `shutdown`. Each connection gets the
/// configuration current when it is accepted (a reload's new secret and
/// limits apply to new connections); the connection caps are the ones at
/// start.
pub async fn run(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    Inbound { events, input }: Inbound,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let caps = {
        let cfg = config.borrow();
        if cfg.instances.secret.is_none() {
            tracing::error!("instances.listen is set but no instance secret: listener not started");
            return;
        }
        Caps::new(&cfg.instances)
    };
    let shared = Shared {
        config,
        events,
        input,
        shutdown,
        tasks,
    };
    let mut pause = FIRST_PAUSE;
    let mut next_id: InstanceId = 0;
    while let Some((sock, peer)) =
        accept_next(|| listener.accept(), &mut pause, &shared.shutdown).await
    {
        let cfg = shared.config.borrow().clone();
        let Some(secret) = cfg.instances.secret.clone() else {
            return;
        };
        let Some(slots) = caps.take(peer) else {
            // A TLS client could not read a refusal in the clear.
            if cfg.instances.tls.is_none() {
                refuse(sock, &cfg.upstream.domain).await;
            }
            continue;
        };
        next_id += 1;
        let id = next_id;
        let span =
            tracing::info_span!("instance", peer.addr = %peer, role = "instance", member = id);
        let accepted = Accepted {
            sock,
            peer,
            id,
            cfg,
            secret,
            slots,
        };
        let conn = instance(accepted, shared.clone());
        let events = shared.events.clone();
        shared
            .tasks
            .spawn(contain_panic(conn, id, events).instrument(span));
    }
}

/// The pause after the first failed accept; it doubles with each further
/// failure up to [`MAX_PAUSE`], and is back here after a success.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The next accepted connection, or None at shutdown. An accept error
/// (out of file descriptors and the like) is logged and retried after
/// `pause`, which shutdown cuts short: it never ends the listener, nor
/// holds up the shutdown.
async fn accept_next<T, A, F>(
    mut accept: A,
    pause: &mut Duration,
    shutdown: &CancellationToken,
) -> Option<T>
where
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            r = accept() => r,
            _ = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok(x) => {
                *pause = FIRST_PAUSE;
                return Some(x);
            }
            Err(e) => {
                tracing::warn!(
                    "accepting an instance connection failed: {e}; retrying in {:?}",
                    *pause
                );
                tokio::select! {
                    _ = tokio::time::sleep(*pause) => {}
                    _ = shutdown.cancelled() => return None,
                }
                *pause = (*pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// What every connection task of the listener is started with.
#[derive(Clone)]
struct Shared {
    /// The configuration as it is now (a connection reads the shutdown
    /// grace from it when the shutdown comes).
    config: watch::Receiver<Arc<Config>>,
    events: mpsc::Sender<Event>,
    /// The core's input bound in bytes (see [`crate::event::send_stanza`]).
    input: Arc<crate::event::Input>,
    shutdown: CancellationToken,
    /// Where connection tasks and their writers are spawned, so that the
    /// app's shutdown waits for them.
    tasks: TaskTracker,
}

/// The connection caps: all connections, and those still in the
/// handshake (the ones a peer can open without the secret).
struct Caps {
    all: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
}

/// The slots one connection holds.
struct Slots {
    /// Until its socket is closed, so the slot is free when the
    /// connection is gone.
    all: OwnedSemaphorePermit,
    /// Until its handshake ends.
    handshake: OwnedSemaphorePermit,
}

impl Caps {
    fn new(cfg: &InstancesConfig) -> Self {
        Caps {
            all: Arc::new(Semaphore::new(cfg.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
        }
    }

    /// A slot under both caps, or None (logged) if either is full.
    fn take(&self, peer: SocketAddr) -> Option<Slots> {
        let permits = (
            self.all.clone().try_acquire_owned(),
            self.unauthenticated.clone().try_acquire_owned(),
        );
        if let (Ok(all), Ok(handshake)) = permits {
            return Some(Slots { all, handshake });
        }
        let limit = if permits.0.is_err() {
            "instances.max_connections"
        } else {
            "instances.max_unauthenticated"
        };
        tracing::warn!(peer.addr = %peer, limit, "instance connection refused: connection limit reached");
        None
    }
}

/// Tells a connection over the caps why it is closed. A stream error is
/// only readable inside a stream (RFC 6120 §4.9.1.1): our header first,
/// as the handshake's refusals do. Without it the instance sees an
/// undeclared `stream:` prefix, not the reason.
async fn refuse(mut sock: TcpStream, domain: &str) {
    let stream_id = handshake::new_stream_id(&mut rand::rng());
    let mut refusal = handshake::server_header(domain, &stream_id).to_vec();
    refusal.extend_from_slice(&connection::stream_error(
        StreamCondition::PolicyViolation,
        Some("too many connections"),
    ));
    let _ = sock.write_all(&refusal).await;
}

/// Runs one connection so that a bug its input triggers ends that
/// connection only. Unwinding drops its socket, its writer (aborted by its
/// guard) and its connection slot; the core is still told the instance is
/// gone, to take it out of the pool and answer what was pending on it (a
/// no-op if it never got that far).
async fn contain_panic(
    conn: impl std::future::Future<Output = ()>,
    id: InstanceId,
    events: mpsc::Sender<Event>,
) {
    if let Err(panic) = AssertUnwindSafe(conn).catch_unwind().await {
        tracing::error!(
            "instance connection task panicked: {}; connection closed",
            connection::panic_message(&*panic)
        );
        let _ = events.send(Event::InstanceDown { id }).await;
    }
}

/// How long a closing instance connection may take to write what is
/// already queued and its stream's end (or error). An instance that does
/// not read even that is cut: it must not keep its connection slot.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One accepted connection and what it was accepted under.
struct Accepted {
    sock: TcpStream,
    peer: SocketAddr,
    id: InstanceId,
    /// The configuration when it was accepted.
    cfg: Arc<Config>,
    secret: Secret,
    slots: Slots,
}

async fn instance(a: Accepted, shared: Shared) {
    // Held until the end of this function, which comes only once the
    // socket is closed.
    let _all = a.slots.all;
    let (cfg, id, peer) = (a.cfg, a.id, a.peer);
    // The handshake slot is held through TLS too: a peer that opens
    // connections and never finishes TLS holds no more than the cap.
    let Some(sock) = secure(a.sock, &cfg, &shared).await else {
        return;
    };
    let conn = Connection::new(sock, cfg.limits.instance_framer(), cfg.limits.tokenizer);
    let Some(conn) = authenticate(conn, &cfg, &a.secret, a.slots.handshake, &shared).await else {
        return;
    };
    tracing::info!(peer.addr = %peer, "instance connected");
    let (urgent, urgent_rx) = oneshot::channel();
    let settings = WriterSettings {
        queue: cfg.instances.queue,
        queue_bytes: Some(cfg.instances.queue_bytes),
        keepalive: Some(cfg.upstream.keepalive_interval),
        urgent: Some(urgent_rx),
    };
    let (mut reader, writer) = conn.start_writer(&shared.tasks, settings);
    let link = InstanceLink {
        tx: writer.queue(),
        closing: writer.closing(),
        urgent,
        peer,
        progress: writer.progress(),
        stall_timeout: cfg.instances.stall_timeout,
        bytes: writer.bytes(),
    };
    if shared
        .events
        .send(Event::InstanceUp { id, link })
        .await
        .is_err()
    {
        return;
    }
    let ended = relay(&mut reader, &writer, id, cfg.limits.idle_timeout, &shared).await;
    // Nothing more is read.
    drop(reader);
    match ended {
        Ended::CoreGone => {}
        Ended::Shutdown => {
            // The core queues the stream's end; the writer writes it
            // while the instance takes bytes. One that stopped reading is
            // cut, after its stall timeout or half the grace (as the
            // upstream side budgets it), whichever is shorter, rather
            // than keep the whole shutdown waiting.
            let grace = shared.config.borrow().service.shutdown_grace;
            let stall = cfg.instances.stall_timeout.min(grace / 2);
            if !writer.finish_while_progressing(stall).await {
                tracing::info!(stall = ?stall, "instance stopped reading during shutdown: connection cut");
            }
        }
        Ended::Closed => {
            // Out of the pool first, so nothing more is queued; then the
            // writer gets a bounded time to finish.
            let _ = shared.events.send(Event::InstanceDown { id }).await;
            if !writer.finish_within(CLOSE_WAIT).await {
                tracing::info!(wait = ?CLOSE_WAIT, "instance did not read the end of its stream in time: connection cut");
            }
        }
    }
}

/// The accepted socket as the instance speaks over it: as is, or after
/// the direct TLS handshake (`instances.tls_cert`) with the certificate
/// loaded when this connection was accepted (so a reload's renewed files
/// serve new connections, and established ones keep their sessions).
/// None when TLS failed — logged once and counted; no other connection
/// is touched — or at shutdown.
async fn secure(sock: TcpStream, cfg: &Config, shared: &Shared) -> Option<Socket> {
    let Some(t) = &cfg.instances.tls else {
        return Some(Socket::from(sock));
    };
    let accepted = tokio::select! {
        r = tls::accept(sock, t, cfg.limits.header_timeout) => r,
        _ = shared.shutdown.cancelled() => return None,
    };
    match accepted {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(reason = %e.reason, "instance {e}");
            let seen = Observation::TlsHandshakeFailed {
                side: Side::Instance,
                reason: e.reason.as_str(),
            };
            let _ = shared.events.send(Event::Observed(seen)).await;
            None
        }
    }
}

/// The handshake, with the handshake slot held until it ends; abandoned
/// at shutdown (a connection still negotiating has nothing to drain:
/// shutdown need not wait up to `header_timeout` for it). The connection
/// if the instance is in.
async fn authenticate(
    mut conn: Connection,
    cfg: &Config,
    secret: &Secret,
    handshake_slot: OwnedSemaphorePermit,
    shared: &Shared,
) -> Option<Connection> {
    let handshake = handshake::admit(
        &mut conn,
        &cfg.upstream.domain,
        secret,
        &mut rand::rng(),
        cfg.limits.header_timeout,
    );
    let accepted = tokio::select! {
        r = handshake => r,
        _ = shared.shutdown.cancelled() => {
            tracing::debug!("shutting down: instance handshake abandoned");
            return None;
        }
    };
    drop(handshake_slot);
    if let Err(e) = accepted {
        tracing::info!("instance handshake failed: {e}");
        let seen = Observation::handshake_failed(Side::Instance, &e);
        let _ = shared.events.send(Event::Observed(seen)).await;
        return None;
    }
    Some(conn)
}

/// How an instance's stream ended, as far as reading goes.
enum Ended {
    /// The proxy is shutting down: the core closes the stream.
    Shutdown,
    /// Closed by the instance, by the proxy or by a failed write; the end
    /// the instance is owed (if any) is queued.
    Closed,
    /// The core has stopped: there is no one to tell.
    CoreGone,
}

/// Hands the instance's stanzas to the core until its stream ends: the
/// stanzas of one read as one event, in order, and before whatever ends
/// the stream.
///
/// A stream that the core closes, or whose writer ends, is not read any
/// further: a peer could otherwise keep a closed stream half-open with
/// whitespace, and its slot with it.
async fn relay(
    reader: &mut Reader,
    writer: &Writer,
    id: InstanceId,
    idle: Duration,
    shared: &Shared,
) -> Ended {
    let closing = writer.closing();
    let mut batch = Batch::default();
    // One timer for the connection, moved only when it fires while
    // input came meanwhile: not a new one per read.
    let mut silent = Box::pin(tokio::time::sleep(idle));
    let mut heard = tokio::time::Instant::now();
    loop {
        let first = tokio::select! {
            f = reader.read_frame() => f,
            _ = silent.as_mut() => {
                if heard + idle > tokio::time::Instant::now() {
                    silent.as_mut().reset(heard + idle);
                    continue;
                }
                tracing::info!(idle = ?idle, "instance silent too long; closing");
                writer.close(StreamCondition::ConnectionTimeout);
                return Ended::Closed;
            },
            _ = shared.shutdown.cancelled() => return Ended::Shutdown,
            _ = closing.cancelled() => return Ended::Closed,
        };
        let mut next = Some(first);
        let mut end = None;
        while let Some(frame) = next {
            match frame {
                Ok(Frame::Stanza(stanza)) => batch.push(stanza),
                // (Skipped: never on an instance link, whose limits are fatal.)
                Ok(Frame::Whitespace(_) | Frame::Header(_) | Frame::Skipped(_)) => {}
                Ok(Frame::End(_)) => end = Some(Ending::Ended),
                Err(CodecError::Io(e)) => end = Some(Ending::Io(e)),
                Err(CodecError::Frame(e)) => end = Some(Ending::Bad(e)),
            }
            if end.is_some() || batch.is_full() {
                break;
            }
            next = reader.try_read_frame();
        }
        let inbound = (&shared.events, &*shared.input);
        let wrap = |stanzas| Event::FromInstance { id, stanzas };
        if batch.send(inbound, wrap).await.is_err() {
            return Ended::CoreGone;
        }
        if let Some(end) = end {
            return end.finish(writer);
        }
        heard = tokio::time::Instant::now();
    }
}

/// How an instance's stream ended on its side.
enum Ending {
    /// `</stream:stream>` or EOF.
    Ended,
    Io(std::io::Error),
    Bad(FrameError),
}

impl Ending {
    /// Logs it and ends our side of the stream as it calls for.
    fn finish(self, writer: &Writer) -> Ended {
        match self {
            Ending::Ended => {
                tracing::info!("instance closed its stream");
                writer.end_stream();
            }
            Ending::Io(e) => tracing::info!("instance connection failed: {e}"),
            Ending::Bad(e) => {
                tracing::warn!("instance sent bad XML: {e}");
                writer.close(e.condition());
            }
        }
        Ended::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_connection_is_reported_gone() {
        let (events, mut rx) = mpsc::channel(4);
        contain_panic(async { panic!("a framer bug") }, 7, events.clone()).await;
        assert!(matches!(rx.try_recv(), Ok(Event::InstanceDown { id: 7 })));
        // A connection that ends normally has said so itself.
        contain_panic(async {}, 8, events).await;
        assert!(rx.try_recv().is_err());
    }

    /// The pause after a failed accept (out of file descriptors, say)
    /// ends when shutdown comes, not when the pause is over: the
    /// listener holds up no shutdown. Virtual time: the pause would
    /// otherwise pass unnoticed.
    #[tokio::test(start_paused = true)]
    async fn the_pause_after_a_failed_accept_ends_at_shutdown() {
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            cancel.cancel();
        });
        let mut calls = 0;
        let failing_once = || {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    Err(std::io::Error::other("too many open files"))
                } else {
                    std::future::pending::<std::io::Result<()>>().await
                }
            }
        };
        let mut pause = MAX_PAUSE;
        let t0 = tokio::time::Instant::now();
        assert!(accept_next(failing_once, &mut pause, &shutdown)
            .await
            .is_none());
        let waited = tokio::time::Instant::now() - t0;
        assert!(
            waited < MAX_PAUSE,
            "shutdown waited {waited:?} for the pause"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_double_the_pause_up_to_the_cap_and_a_success_resets_it() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let fails_twice = || {
            calls += 1;
            let n = calls;
            async move {
                if n <= 2 {
                    Err(std::io::Error::other("too many open files"))
                } else {
                    Ok(n)
                }
            }
        };
        let mut pause = MAX_PAUSE / 2 + Duration::from_millis(1);
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            accept_next(fails_twice, &mut pause, &shutdown).await,
            Some(3)
        );
        let waited = tokio::time::Instant::now() - t0;
        assert_eq!(waited, MAX_PAUSE / 2 + Duration::from_millis(1) + MAX_PAUSE);
        assert_eq!(pause, FIRST_PAUSE);
    }
}
