//! What connection tasks tell the core: [`Event`], and the
//! [`InstanceLink`] through which the core reaches an instance.
//!
//! A leaf shared by the listener, the upstream task, the app and the
//! core, so that none of them has to import another to talk: it may not
//! import the core, the app or any connection task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::connection::Out;
use crate::pool::InstanceId;
use crate::router::RouterConfig;
use crate::status::Observation;
use crate::xml::frame::{Skipped, Stanza};

/// What connection tasks tell the core.
#[derive(Debug)]
pub enum Event {
    /// A new upstream session is up; its writer queue.
    UpstreamUp(mpsc::Sender<Out>),
    /// The upstream session ended.
    UpstreamDown,
    FromUpstream(Stanza),
    /// A stanza from the server broke a per-stanza limit and was skipped.
    SkippedFromUpstream(Skipped),
    /// An instance finished its handshake; how to reach it.
    InstanceUp {
        id: InstanceId,
        link: InstanceLink,
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
        upstream_buffer: crate::backlog::Bound,
        done: oneshot::Sender<()>,
    },
}

/// The way into the core for the tasks that read peers: the events
/// channel (bounded in events) and the bound of the stanza bytes waiting
/// in it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub events: mpsc::Sender<Event>,
    pub input: Arc<crate::connection::QueueBytes>,
}

/// The bound, in bytes, of the stanzas read from peers that wait for the
/// core (the channel bounds them in events). The core waits for a slow
/// instance up to `instances.stall_timeout`; meanwhile the readers fill
/// this and then stop reading, and TCP holds the rest. 8 MiB is
/// thousands of ordinary stanzas and several of the largest.
pub const INPUT_BYTES: usize = 8 * 1024 * 1024;

impl Inbound {
    /// The way into the core through `events`, bounded by [`INPUT_BYTES`].
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        Inbound {
            events,
            input: Arc::new(crate::connection::QueueBytes::new(INPUT_BYTES)),
        }
    }
}

/// Sends `ev`, a stanza of `len` bytes read from a peer, to the core once
/// those bytes fit in `input`, the bound of what waits for the core in
/// bytes (the channel bounds it in events). While the core waits for a
/// slow instance, stanzas pile up here: 1024 events of the largest
/// stanzas would be gigabytes. Fails, giving `ev` back, when the core is
/// gone; the core gives the bytes back when it takes the event.
pub async fn send_stanza(
    events: &mpsc::Sender<Event>,
    input: &crate::connection::QueueBytes,
    len: usize,
    ev: Event,
) -> Result<(), mpsc::error::SendError<Event>> {
    tokio::select! {
        _ = input.take(len) => {}
        _ = events.closed() => return Err(mpsc::error::SendError(ev)),
    }
    events.send(ev).await
}

/// What the core holds for one connected instance.
#[derive(Debug)]
pub struct InstanceLink {
    /// Its writer's queue (`instances.queue`).
    pub tx: mpsc::Sender<Out>,
    /// Cancelled when the core closes the stream: the connection stops
    /// reading, lets the writer finish, and frees its slot.
    pub closing: CancellationToken,
    /// The close for when the queue is full (the core closes an instance
    /// that is behind, or cuts one that stopped reading): the writer drops
    /// what is queued and writes this stream error instead, right after
    /// the stanza it is writing.
    pub urgent: oneshot::Sender<bytes::Bytes>,
    /// For the log line when the core closes it.
    pub peer: SocketAddr,
    /// When its socket last accepted bytes, recorded by its writer.
    pub progress: Arc<crate::connection::Progress>,
    /// How long the core waits for room in a full queue while the socket
    /// accepts nothing (`instances.stall_timeout` when it connected).
    pub stall_timeout: Duration,
    /// Its queue's bound in bytes (`instances.queue_bytes`), taken from
    /// before each stanza is queued; `None`: bounded in stanzas only.
    pub bytes: Option<Arc<crate::connection::QueueBytes>>,
}
