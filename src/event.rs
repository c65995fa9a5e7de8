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

use crate::connection::{Out, QueueBytes};
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
    /// Stanzas from the server, in the order read: every one that one
    /// read of the socket yielded (see [`Batch`]).
    FromUpstream(Vec<Stanza>),
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
    /// Stanzas from an instance, in the order read (see [`Batch`]).
    FromInstance {
        id: InstanceId,
        stanzas: Vec<Stanza>,
    },
    /// Something only metrics count.
    Observed(Observation),
    /// A reload's part that the core applies; `done` once it has.
    Reload {
        router: Box<RouterConfig>,
        upstream_buffer: crate::backlog::Bound,
        done: oneshot::Sender<()>,
    },
}

/// The way into the core for the tasks that read peers: the events
/// channel (bounded in events) and the bound of the stanzas waiting in
/// it, in bytes and in number.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub events: mpsc::Sender<Event>,
    pub input: Arc<Input>,
}

/// The bound, in bytes, of the stanzas read from peers that wait for the
/// core (the channel bounds them in events). The core waits for a slow
/// instance up to `instances.stall_timeout`; meanwhile the readers fill
/// this and then stop reading, and TCP holds the rest. 8 MiB is
/// thousands of ordinary stanzas and several of the largest.
pub const INPUT_BYTES: usize = 8 * 1024 * 1024;

/// The bound, in stanzas, of what waits for the core: what the channel
/// held when each event carried one stanza. An event carries a batch now,
/// and without this a peer that floods would queue up to [`INPUT_BYTES`]
/// of small stanzas ahead of every other peer's next one.
pub const INPUT_STANZAS: usize = 1024;

impl Inbound {
    /// The way into the core through `events`, bounded by [`INPUT_BYTES`]
    /// and [`INPUT_STANZAS`].
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        Inbound {
            events,
            input: Arc::new(Input::new(INPUT_BYTES, INPUT_STANZAS)),
        }
    }
}

/// What waits for the core from the readers, and its bounds: readers
/// take before they send ([`send_stanza`]), the core gives back as it
/// takes each event ([`Input::give_back`]).
#[derive(Debug)]
pub struct Input {
    bytes: QueueBytes,
    stanzas: QueueBytes,
}

impl Input {
    /// At most `bytes` bytes and `stanzas` stanzas (plus one batch, which
    /// goes alone when nothing waits, however large).
    pub fn new(bytes: usize, stanzas: usize) -> Self {
        Input {
            bytes: QueueBytes::new(bytes),
            stanzas: QueueBytes::new(stanzas),
        }
    }

    async fn take(&self, len: usize, count: usize) {
        self.stanzas.take(count).await;
        self.bytes.take(len).await;
    }

    /// The core has taken these stanzas.
    pub fn give_back(&self, stanzas: &[Stanza]) {
        self.bytes
            .give_back(stanzas.iter().map(|st| st.bytes.len()).sum());
        self.stanzas.give_back(stanzas.len());
    }
}

/// Sends `ev`, `count` stanzas of `len` bytes in all read from a peer,
/// to the core once they fit in `input`, the bound of what waits for the
/// core (the channel bounds it in events). While the core waits for a
/// slow instance, stanzas pile up here: 1024 events of the largest
/// stanzas would be gigabytes. Fails, giving `ev` back, when the core is
/// gone; the core gives them back when it takes the event.
pub async fn send_stanza(
    events: &mpsc::Sender<Event>,
    input: &Input,
    (len, count): (usize, usize),
    ev: Event,
) -> Result<(), mpsc::error::SendError<Event>> {
    tokio::select! {
        _ = input.take(len, count) => {}
        _ = events.closed() => return Err(mpsc::error::SendError(ev)),
    }
    events.send(ev).await
}

/// The stanzas a reader has framed and not yet handed to the core. A
/// reader collects every frame one read of its socket yielded
/// ([`crate::connection::Reader::try_read_frame`]) and sends them as one
/// event: one wake-up of the core, and one take from the byte bound, per
/// read instead of per stanza.
#[derive(Debug, Default)]
pub struct Batch {
    stanzas: Vec<Stanza>,
    len: usize,
}

/// A batch is sent once it holds this many stanzas or bytes, so that the
/// core's turns stay short and the byte bound is taken in small steps.
const BATCH_STANZAS: usize = 256;
const BATCH_BYTES: usize = 64 * 1024;

impl Batch {
    pub fn push(&mut self, st: Stanza) {
        self.len += st.bytes.len();
        self.stanzas.push(st);
    }

    /// Whether it is time to send it even if more frames are at hand.
    pub fn is_full(&self) -> bool {
        self.stanzas.len() >= BATCH_STANZAS || self.len >= BATCH_BYTES
    }

    /// Sends what it holds (nothing if empty) as the event `wrap` makes
    /// of the stanzas, through [`send_stanza`]. The core gone, the stanzas
    /// come back.
    pub async fn send(
        &mut self,
        inbound: (&mpsc::Sender<Event>, &Input),
        wrap: impl FnOnce(Vec<Stanza>) -> Event,
    ) -> Result<(), Vec<Stanza>> {
        if self.stanzas.is_empty() {
            return Ok(());
        }
        let len = std::mem::take(&mut self.len);
        let stanzas = std::mem::take(&mut self.stanzas);
        let count = stanzas.len();
        match send_stanza(inbound.0, inbound.1, (len, count), wrap(stanzas)).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(ev)) => Err(match ev {
                Event::FromUpstream(stanzas) | Event::FromInstance { stanzas, .. } => stanzas,
                _ => Vec::new(),
            }),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn stanzas(n: usize) -> Vec<Stanza> {
        (0..n)
            .map(|_| crate::xml::parse_one(b"<message to='a@b'/>").expect("a stanza"))
            .collect()
    }

    /// A batch waits for room in stanzas as well as in bytes: the core's
    /// channel holds no more stanzas than it did when each event carried
    /// one, however much room there is in bytes.
    #[tokio::test]
    async fn the_input_is_bounded_in_stanzas_too() {
        let (tx, mut rx) = mpsc::channel(16);
        let input = Input::new(usize::MAX, 3);
        let two = stanzas(2);
        let len = two.iter().map(|s| s.bytes.len()).sum();
        send_stanza(&tx, &input, (len, 2), Event::FromUpstream(two))
            .await
            .expect("room");
        let next = stanzas(2);
        let mut blocked = Box::pin(send_stanza(
            &tx,
            &input,
            (len, 2),
            Event::FromUpstream(next),
        ));
        assert!(blocked.as_mut().now_or_never().is_none(), "4 stanzas > 3");
        let Some(Event::FromUpstream(taken)) = rx.recv().await else {
            panic!("the first batch")
        };
        input.give_back(&taken);
        blocked.await.expect("room once the core took the first");
    }
}
