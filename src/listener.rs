//! The listener for component instances: the server side of XEP-0114.
//!
//! Instances connect here exactly as they would to the XMPP server's
//! component port, unchanged. Connections are capped (all, and those
//! still in the handshake); accept errors are logged and retried after a
//! pause, never ending the listener.
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
//! It talks to the core only through [`crate::event::Event`] and may not
//! import the core or the app, which bind its socket and start it.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, Secret};
use crate::conn::{self, Out};
use crate::event::{Event, InstanceLink};
use crate::handshake;
use crate::pool::InstanceId;
use crate::status::{Observation, Side};
use crate::xml::frame::Frame;
use crate::xml::{CodecError, Framer, StreamCondition};

/// Accepts instances until `shutdown`. Each connection gets the
/// configuration current when it is accepted (a reload's new secret and
/// limits apply to new connections); the connection caps are the ones at
/// start.
pub async fn run(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let cfg = config.borrow().clone();
    let Some(_) = cfg.instances.secret.as_ref() else {
        tracing::error!("instances.listen is set but no instance secret: listener not started");
        return;
    };
    let all = Arc::new(Semaphore::new(cfg.instances.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(cfg.instances.max_unauthenticated));
    let mut next_id: InstanceId = 0;
    let mut pause = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let cfg = config.borrow().clone();
        let Some(secret) = cfg.instances.secret.clone() else {
            return;
        };
        let (mut sock, peer) = match accepted {
            Ok(x) => {
                pause = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then retry.
                tracing::warn!(
                    "accepting an instance connection failed: {e}; retrying in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let permits = (
            all.clone().try_acquire_owned(),
            unauthenticated.clone().try_acquire_owned(),
        );
        let (Ok(conn_permit), Ok(hs_permit)) = permits else {
            let limit = if permits.0.is_err() {
                "instances.max_connections"
            } else {
                "instances.max_unauthenticated"
            };
            tracing::warn!(peer.addr = %peer, limit, "instance connection refused: connection limit reached");
            // A stream error is only readable inside a stream (RFC 6120
            // §4.9.1.1): our header first, as the handshake's refusals do.
            // Without it the instance sees an undeclared `stream:` prefix,
            // not the reason.
            let mut refusal = handshake::server_header(
                &cfg.upstream.domain,
                &handshake::new_stream_id(&mut rand::rng()),
            )
            .to_vec();
            refusal.extend_from_slice(&handshake::stream_error(
                StreamCondition::PolicyViolation,
                Some("too many connections"),
            ));
            let _ = sock.write_all(&refusal).await;
            continue;
        };
        next_id += 1;
        let id = next_id;
        let span =
            tracing::info_span!("instance", peer.addr = %peer, role = "instance", member = id);
        let conn = instance(
            sock,
            peer,
            id,
            cfg,
            config.clone(),
            secret,
            events.clone(),
            shutdown.clone(),
            tasks.clone(),
            (conn_permit, hs_permit),
        );
        tasks.spawn(contain_panic(conn, id, events.clone()).instrument(span));
    }
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
            conn::panic_message(&*panic)
        );
        let _ = events.send(Event::InstanceDown { id }).await;
    }
}

/// How long a closing instance connection may take to write what is
/// already queued and its stream's end (or error). An instance that does
/// not read even that is cut: it must not keep its connection slot.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Aborts the connection's writer when dropped, unless disarmed: a
/// connection task that ends, even by panic, takes its socket with it.
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn instance(
    sock: TcpStream,
    peer: SocketAddr,
    id: InstanceId,
    cfg: Arc<Config>,
    current: watch::Receiver<Arc<Config>>,
    secret: Secret,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    // Held until the end of this function, which comes only once the
    // socket is closed: the slot is free when the connection is gone.
    let (_conn_permit, hs_permit) = permits;
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let limits = cfg.limits.instance_framer();
    let mut frames = FramedRead::with_capacity(
        r,
        Framer::with_tokenizer(limits, cfg.limits.tokenizer),
        64 * 1024,
    );
    let handshake = handshake::accept(
        &mut frames,
        &mut w,
        &cfg.upstream.domain,
        &secret,
        &mut rand::rng(),
        cfg.limits.header_timeout,
    );
    // A connection still negotiating has nothing to drain: shutdown need
    // not wait up to header_timeout for it.
    let accepted = tokio::select! {
        r = handshake => r,
        _ = shutdown.cancelled() => {
            tracing::debug!("shutting down: instance handshake abandoned");
            return;
        }
    };
    drop(hs_permit);
    if let Err(e) = accepted {
        tracing::info!("instance handshake failed: {e}");
        let seen = Observation::handshake_failed(Side::Instance, &e);
        let _ = events.send(Event::Observed(seen)).await;
        return;
    }
    tracing::info!(peer.addr = %peer, "instance connected");
    let (tx, rx) = mpsc::channel(cfg.instances.queue);
    let (urgent, urgent_rx) = oneshot::channel();
    let progress = Arc::new(conn::Progress::new());
    let stall_timeout = cfg.instances.stall_timeout;
    let w = conn::Tracked::new(w, progress.clone());
    let keepalive = Some(cfg.upstream.keepalive_interval);
    // Cancelled by the core when it closes this stream, and by the writer
    // when it ends for any reason: either way there is no point in
    // reading on (a peer could otherwise keep a closed stream half-open
    // with whitespace, and its slot with it).
    let closing = CancellationToken::new();
    let writer_done = closing.clone().drop_guard();
    let mut writer = tasks.spawn(
        async move {
            let _writer_done = writer_done;
            if let Err(e) = conn::write_loop(w, rx, keepalive, Some(urgent_rx)).await {
                tracing::debug!("instance writer ended: {e}");
            }
        }
        .in_current_span(),
    );
    let mut abort_writer = AbortOnDrop(Some(writer.abort_handle()));
    let link = InstanceLink {
        tx: tx.clone(),
        closing: closing.clone(),
        urgent,
        peer,
        progress: progress.clone(),
        stall_timeout,
    };
    if events.send(Event::InstanceUp { id, link }).await.is_err() {
        return;
    }
    loop {
        let next = tokio::select! {
            f = tokio::time::timeout(cfg.limits.idle_timeout, frames.next()) => match f {
                Ok(f) => f,
                Err(_) => {
                    tracing::info!(idle = ?cfg.limits.idle_timeout, "instance silent too long; closing");
                    let _ = tx.try_send(Out::Close(handshake::stream_error(StreamCondition::ConnectionTimeout, None)));
                    break;
                }
            },
            _ = shutdown.cancelled() => {
                // The core queues the stream's end; the writer writes it
                // while the instance takes bytes. One that stopped
                // reading is cut, after its stall timeout or half the
                // grace (as the upstream side budgets it), whichever is
                // shorter, rather than keep the whole shutdown waiting.
                drop(frames);
                drop(tx);
                let grace = current.borrow().service.shutdown_grace;
                let stall = stall_timeout.min(grace / 2);
                if !finish_writer(&mut writer, &progress, stall).await {
                    tracing::info!(stall = ?stall, "instance stopped reading during shutdown: connection cut");
                }
                abort_writer.disarm();
                return;
            }
            _ = closing.cancelled() => break,
        };
        match next {
            Some(Ok(Frame::Stanza(stanza))) => {
                if events
                    .send(Event::FromInstance { id, stanza })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // (Skipped: never on an instance link, whose limits are fatal.)
            Some(Ok(Frame::Whitespace(_) | Frame::Header(_) | Frame::Skipped(_))) => {}
            None | Some(Ok(Frame::End(_))) => {
                tracing::info!("instance closed its stream");
                let _ = tx.try_send(Out::Close(bytes::Bytes::from_static(handshake::STREAM_END)));
                break;
            }
            Some(Err(CodecError::Io(e))) => {
                tracing::info!("instance connection failed: {e}");
                break;
            }
            Some(Err(CodecError::Frame(e))) => {
                tracing::warn!("instance sent bad XML: {e}");
                let _ = tx.try_send(Out::Close(handshake::stream_error(e.condition(), None)));
                break;
            }
        }
    }
    // Nothing more is read. Out of the pool first, so nothing more is
    // queued; then the writer gets a bounded time to finish.
    drop(frames);
    let _ = events.send(Event::InstanceDown { id }).await;
    drop(tx);
    if tokio::time::timeout(CLOSE_WAIT, &mut writer).await.is_err() {
        tracing::info!(wait = ?CLOSE_WAIT, "instance did not read the end of its stream in time: connection cut");
        writer.abort();
    }
}

/// Waits for `writer` to end while its socket keeps accepting bytes, and
/// aborts it once the socket has accepted none for `stall` (counted from
/// now at the earliest). True if it ended by itself.
async fn finish_writer(
    writer: &mut tokio::task::JoinHandle<()>,
    progress: &conn::Progress,
    stall: Duration,
) -> bool {
    let since = tokio::time::Instant::now();
    loop {
        let deadline = progress.stalled_at(since, stall);
        tokio::select! {
            _ = &mut *writer => return true,
            _ = tokio::time::sleep_until(deadline) => {
                if progress.stalled_at(since, stall) <= tokio::time::Instant::now() {
                    writer.abort();
                    return false;
                }
            }
        }
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
}
