//! [`Writer`]: the handle on a connection's writer task, made by
//! [`super::Connection::start_writer`]. It queues output and closes, says
//! when the socket last took bytes, and bounds how long the task may take
//! to finish; dropped, it aborts the task, so a connection task that ends
//! (even by panic) takes its socket with it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::budget::QueueBytes;
use super::write::{write_loop, Out, Progress, Tracked};
use super::{stream_error, STREAM_END};
use crate::xml::StreamCondition;

/// How a writer task runs.
#[derive(Debug)]
pub struct WriterSettings {
    /// Room in its queue, in stanzas: a full queue is backpressure on
    /// whoever sends.
    pub queue: usize,
    /// Room in its queue, in bytes, if bounded that way too (see
    /// [`QueueBytes`]); whoever queues takes from [`Writer::bytes`].
    pub queue_bytes: Option<usize>,
    /// Whitespace is written after this long without output, so that
    /// idle links are not cut by the peer or a middlebox.
    pub keepalive: Option<Duration>,
    /// The close that gets past a full queue (see [`write_loop`]), for
    /// whoever holds its sender.
    pub urgent: Option<oneshot::Receiver<Bytes>>,
}

/// The handle on a running writer task.
#[derive(Debug)]
pub struct Writer {
    queue: mpsc::Sender<Out>,
    task: JoinHandle<()>,
    abort: AbortOnDrop,
    progress: Arc<Progress>,
    closing: CancellationToken,
    bytes: Option<Arc<QueueBytes>>,
}

impl Writer {
    /// Spawns the task on `tasks`, in the caller's span.
    pub(super) fn start<W>(w: W, tasks: &TaskTracker, settings: WriterSettings) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(settings.queue);
        let progress = Arc::new(Progress::new());
        let closing = CancellationToken::new();
        let done = closing.clone().drop_guard();
        let w = Tracked::new(w, progress.clone());
        let bytes = settings
            .queue_bytes
            .map(|cap| Arc::new(QueueBytes::new(cap)));
        let given_back = bytes.clone();
        let task = tasks.spawn(
            async move {
                // Cancels `closing` however the loop ends.
                let _done = done;
                if let Err(e) =
                    write_loop(w, rx, settings.keepalive, settings.urgent, given_back).await
                {
                    tracing::debug!("writer ended: {e}");
                }
            }
            .in_current_span(),
        );
        Writer {
            queue,
            abort: AbortOnDrop(Some(task.abort_handle())),
            task,
            progress,
            closing,
            bytes,
        }
    }

    /// The queue's bound in bytes, if it has one: take from it before
    /// queueing a stanza, or the writer gives back bytes never taken.
    pub fn bytes(&self) -> Option<Arc<QueueBytes>> {
        self.bytes.clone()
    }

    /// A sender on the queue (for the core).
    pub fn queue(&self) -> mpsc::Sender<Out> {
        self.queue.clone()
    }

    /// When the socket last took bytes.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Cancelled when the writer task ends, for any reason, and by
    /// whoever holds a clone and closes the stream: either way there is
    /// no point in reading on.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Queues the stream error `condition` and the stream's end, after
    /// what is already queued. Best effort: with the queue full, the
    /// writer is behind a peer that does not read, and whoever waits for
    /// it ([`Writer::finish_within`]) cuts it.
    pub fn close(&self, condition: StreamCondition) {
        let _ = self
            .queue
            .try_send(Out::Close(stream_error(condition, None)));
    }

    /// Queues `</stream:stream>`, as best effort as [`Writer::close`].
    pub fn end_stream(&self) {
        let _ = self
            .queue
            .try_send(Out::Close(Bytes::from_static(STREAM_END)));
    }

    /// Lets the task outlive this handle: it ends when every sender on
    /// its queue is gone or a close is written.
    pub fn detach(&mut self) {
        self.abort.0 = None;
    }

    /// Drops this handle's sender and waits up to `wait` for the task to
    /// end; aborts it after that. True if it ended by itself.
    pub async fn finish_within(self, wait: Duration) -> bool {
        let Writer {
            queue, mut task, ..
        } = self;
        drop(queue);
        if tokio::time::timeout(wait, &mut task).await.is_ok() {
            return true;
        }
        task.abort();
        false
    }

    /// Drops this handle's sender and waits for the task to end while its
    /// socket keeps accepting bytes; aborts it once the socket has
    /// accepted none for `stall` (counted from now at the earliest). True
    /// if it ended by itself.
    pub async fn finish_while_progressing(self, stall: Duration) -> bool {
        let Writer {
            queue,
            mut task,
            progress,
            ..
        } = self;
        drop(queue);
        let since = tokio::time::Instant::now();
        loop {
            let deadline = progress.stalled_at(since, stall);
            tokio::select! {
                _ = &mut task => return true,
                _ = tokio::time::sleep_until(deadline) => {
                    if progress.stalled_at(since, stall) <= tokio::time::Instant::now() {
                        task.abort();
                        return false;
                    }
                }
            }
        }
    }
}

/// Aborts the writer task when dropped, unless disarmed.
#[derive(Debug)]
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn settings() -> WriterSettings {
        WriterSettings {
            queue: 4,
            queue_bytes: None,
            keepalive: None,
            urgent: None,
        }
    }

    /// A connection task that ends without finishing its writer (a
    /// panic, the core gone) takes the socket with it; a detached writer
    /// lives on until its queue closes.
    #[tokio::test]
    async fn dropping_the_handle_cuts_the_writer_unless_detached() {
        let tasks = TaskTracker::new();
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let writer = Writer::start(ours, &tasks, settings());
        let closing = writer.closing();
        drop(writer);
        closing.cancelled().await;
        let mut out = Vec::new();
        theirs.read_to_end(&mut out).await.expect("EOF");
        assert!(out.is_empty());

        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut writer = Writer::start(ours, &tasks, settings());
        let queue = writer.queue();
        writer.detach();
        drop(writer);
        queue
            .send(Out::Close(Bytes::from_static(b"<bye/>")))
            .await
            .expect("the detached writer still reads its queue");
        let mut out = Vec::new();
        theirs.read_to_end(&mut out).await.expect("EOF");
        assert_eq!(out, b"<bye/>");
    }

    /// A peer that takes nothing is cut after `stall`; without virtual
    /// time this would be a real wait.
    #[tokio::test(start_paused = true)]
    async fn a_writer_whose_peer_takes_nothing_is_cut_after_the_stall() {
        let tasks = TaskTracker::new();
        let (ours, _theirs) = tokio::io::duplex(8);
        let writer = Writer::start(ours, &tasks, settings());
        let queue = writer.queue();
        queue
            .send(Out::Close(Bytes::from(vec![b'x'; 64])))
            .await
            .expect("queued");
        drop(queue);
        let t0 = tokio::time::Instant::now();
        let stall = Duration::from_secs(3);
        assert!(!writer.finish_while_progressing(stall).await);
        assert!(tokio::time::Instant::now() - t0 >= stall);
    }
}
