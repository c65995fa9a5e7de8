//! The writer task's loop: [`write_loop`] writes queued output in
//! batches (with a whitespace keepalive and an urgent close), and
//! [`Tracked`]/[`Progress`] record when the socket last took bytes.
//!
//! Only [`super::Writer`] starts it; everything else queues [`Out`].

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::budget::QueueBytes;
use crate::rewrite::Wire;

/// Output for one connection, in order.
#[derive(Debug)]
pub enum Out {
    Wire(Wire),
    /// Write this (a stream error and/or `</stream:stream>`) and stop.
    Close(bytes::Bytes),
}

/// Writes everything queued on `rx`: what is queued when the writer
/// wakes up goes to the socket in one vectored write (a burst becomes
/// one syscall, and the bytes are not copied first), and a whitespace
/// keepalive goes after `keepalive` without output. Ends when the queue
/// closes or an [`Out::Close`] is written.
///
/// `urgent` is how a close gets past a full queue (an instance closed
/// while it is behind, or cut for not reading): when it delivers,
/// whatever is still queued is dropped, and the bytes it carries (a
/// stream error) are written right after the stanzas already taken from
/// the queue, so the stream stays well-formed. It is looked at between
/// stanzas only: a write blocked on a peer that does not read is the
/// caller's to abort (the listener's close wait does).
///
/// `bytes`, if the queue is bounded in bytes too, gets each stanza's
/// bytes back once they are in the socket's buffer.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    keepalive: Option<Duration>,
    mut urgent: Option<oneshot::Receiver<bytes::Bytes>>,
    bytes: Option<std::sync::Arc<QueueBytes>>,
) -> std::io::Result<()> {
    let mut batch = Batch::default();
    let mut idle = Idle::new(keepalive);
    loop {
        let first = tokio::select! {
            biased;
            last = urgent_close(&mut urgent) => return close(&mut w, &last).await,
            next = rx.recv() => next,
            _ = idle.due() => {
                w.write_all(b" ").await?;
                w.flush().await?;
                continue;
            }
        };
        let Some(first) = first else { break };
        let last = batch.collect(first, &mut rx, &mut urgent);
        batch.write(&mut w, bytes.as_deref()).await?;
        idle.touch();
        if let Some(last) = last {
            return close(&mut w, &last).await;
        }
    }
    w.flush().await
}

/// Most stanzas, and bytes, written in one go: a vectored write takes at
/// most `IOV_MAX` (1024) pieces, and a batch holds its stanzas until the
/// socket has taken them all.
const BATCH_WIRES: usize = 128;
const BATCH_BYTES: usize = 256 * 1024;

/// The stanzas of one wake-up of the writer.
#[derive(Default)]
struct Batch {
    wires: Vec<Wire>,
    len: usize,
    /// For a writer that cannot write vectored (TLS without it, test
    /// pipes): the batch copied into one buffer, kept between batches.
    copy: Vec<u8>,
}

impl Batch {
    /// Takes `first` and whatever else is queued now, up to the batch's
    /// bounds; the bytes to end the stream with after it, if a close was
    /// queued or the urgent close arrived meanwhile.
    fn collect(
        &mut self,
        first: Out,
        rx: &mut mpsc::Receiver<Out>,
        urgent: &mut Option<oneshot::Receiver<bytes::Bytes>>,
    ) -> Option<bytes::Bytes> {
        let mut out = first;
        loop {
            match out {
                Out::Wire(wire) => {
                    self.len += wire.len();
                    self.wires.push(wire);
                }
                Out::Close(last) => return Some(last),
            }
            if let Some(last) = try_urgent(urgent) {
                return Some(last);
            }
            if self.wires.len() >= BATCH_WIRES || self.len >= BATCH_BYTES {
                return None;
            }
            match rx.try_recv() {
                Ok(o) => out = o,
                Err(_) => return None,
            }
        }
    }

    /// Writes the batch and empties it, giving each stanza's bytes back
    /// to `bytes` as soon as the socket has taken all of them.
    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        bytes: Option<&QueueBytes>,
    ) -> std::io::Result<()> {
        if w.is_write_vectored() {
            self.write_vectored(w, bytes).await?;
        } else {
            self.copy.clear();
            for chunk in self.wires.iter().flat_map(Wire::chunks) {
                self.copy.extend_from_slice(chunk);
            }
            w.write_all(&self.copy).await?;
            if let Some(b) = bytes {
                b.give_back(self.len);
            }
        }
        self.wires.clear();
        self.len = 0;
        // A no-op on TCP; TLS may hold a record until flushed.
        w.flush().await
    }

    async fn write_vectored<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        bytes: Option<&QueueBytes>,
    ) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self
            .wires
            .iter()
            .flat_map(Wire::chunks)
            .filter(|c| !c.is_empty())
            .map(|c| IoSlice::new(c))
            .collect();
        let mut rest = &mut slices[..];
        // Stanzas [0, done) are in the socket; `written` bytes in all.
        let (mut done, mut done_end, mut written) = (0, 0, 0);
        while !rest.is_empty() {
            let n = w.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            written += n;
            IoSlice::advance_slices(&mut rest, n);
            let mut freed = 0;
            while let Some(wire) = self.wires.get(done) {
                if done_end + wire.len() > written {
                    break;
                }
                done_end += wire.len();
                freed += wire.len();
                done += 1;
            }
            if let (Some(b), true) = (bytes, freed > 0) {
                b.give_back(freed);
            }
        }
        // Empty stanzas, if any, after the last byte.
        if let (Some(b), true) = (bytes, done_end < self.len) {
            b.give_back(self.len - done_end);
        }
        Ok(())
    }
}

/// When the keepalive is due: `every` after the last output. One timer
/// for the writer's life, moved only when it fires early, not re-armed
/// per stanza.
struct Idle {
    every: Option<Duration>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    last: Instant,
}

impl Idle {
    fn new(every: Option<Duration>) -> Self {
        let now = Instant::now();
        let first = every.map_or(now, |e| now + e);
        Idle {
            every,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            last: now,
        }
    }

    /// Output went out now.
    fn touch(&mut self) {
        if self.every.is_some() {
            self.last = Instant::now();
        }
    }

    /// Resolves once `every` has passed without output; never without
    /// a keepalive.
    async fn due(&mut self) {
        let Some(every) = self.every else {
            return std::future::pending().await;
        };
        loop {
            self.sleep.as_mut().await;
            let at = self.last + every;
            let now = Instant::now();
            if at <= now {
                self.last = now;
                self.sleep.as_mut().reset(now + every);
                return;
            }
            self.sleep.as_mut().reset(at);
        }
    }
}

/// Resolves with the urgent close's bytes; never if there is none (or
/// its sender went away without one).
async fn urgent_close(urgent: &mut Option<oneshot::Receiver<bytes::Bytes>>) -> bytes::Bytes {
    if let Some(rx) = urgent.as_mut() {
        let got = rx.await;
        // A oneshot must not be polled again once it has answered.
        *urgent = None;
        if let Ok(last) = got {
            return last;
        }
    }
    std::future::pending().await
}

fn try_urgent(urgent: &mut Option<oneshot::Receiver<bytes::Bytes>>) -> Option<bytes::Bytes> {
    let rx = urgent.as_mut()?;
    match rx.try_recv() {
        Ok(last) => {
            *urgent = None;
            Some(last)
        }
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => {
            *urgent = None;
            None
        }
    }
}

async fn close<W: AsyncWrite + Unpin>(w: &mut W, last: &[u8]) -> std::io::Result<()> {
    w.write_all(last).await?;
    w.flush().await?;
    w.shutdown().await
}

/// When a connection's socket last accepted bytes. Its writer records it
/// ([`Tracked`]); whoever waits on that writer reads it to tell a slow
/// peer, which keeps taking bytes (a large stanza a little at a time),
/// from a stalled one, which takes none. A queue's fill level cannot tell
/// them apart: a full queue is only a peer slower than its sender.
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    /// Milliseconds from `base` to the last write that took bytes.
    last_ms: AtomicU64,
}

impl Progress {
    /// A tracker that counts "now" as the last progress.
    pub fn new() -> Self {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records progress now (what [`Tracked`] does on every write that
    /// the socket took bytes from).
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        // One writer stores; readers only need a recent value, not an
        // ordering with other memory.
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the socket last accepted bytes (or when tracking began).
    pub fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the peer counts as stalled if it accepts nothing more: `stall`
    /// after its last progress, but never before `stall` after `since`,
    /// the moment the caller began to need progress (a writer that had
    /// nothing to write for a minute is not to blame for that minute).
    pub fn stalled_at(&self, since: Instant, stall: Duration) -> Instant {
        self.last().max(since) + stall
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// A writer that records in a [`Progress`] every write that the layer
/// below (the socket) accepted bytes from, so bytes count when the
/// socket takes them.
#[derive(Debug)]
pub struct Tracked<W> {
    inner: W,
    progress: std::sync::Arc<Progress>,
}

impl<W> Tracked<W> {
    pub fn new(inner: W, progress: std::sync::Arc<Progress>) -> Self {
        Tracked { inner, progress }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tracked<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.progress.touch();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.progress.touch();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    /// A socket that writes vectored but takes at most `step` bytes per
    /// write, as a full socket buffer does, and records each write.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        writes: usize,
        /// What was given back to the queue's bound before each write.
        queued_before: Vec<usize>,
        bound: std::sync::Arc<QueueBytes>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let queued = self.bound.queued();
            self.queued_before.push(queued);
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What is queued at once goes out in vectored writes that the socket
    /// may take in part: every byte in order, each stanza's bytes given
    /// back once the socket has taken all of it (not before, not only at
    /// the end of the batch).
    #[tokio::test]
    async fn partial_vectored_writes_keep_order_and_give_back_per_stanza() {
        let bound = std::sync::Arc::new(QueueBytes::new(1 << 20));
        let mut batch = Batch::default();
        let stanzas: [&[u8]; 3] = [b"<a>0123456789</a>", b"<b/>", b"<c>xyz</c>"];
        for st in stanzas {
            assert!(bound.try_take(st.len()));
            batch.wires.push(Wire::Parts(vec![
                Bytes::from_static(&st[..2]),
                Bytes::new(),
                Bytes::from_static(&st[2..]),
            ]));
            batch.len += st.len();
        }
        let mut sock = Trickle {
            got: Vec::new(),
            step: 5,
            writes: 0,
            queued_before: Vec::new(),
            bound: bound.clone(),
        };
        batch.write(&mut sock, Some(&bound)).await.expect("written");
        assert_eq!(sock.got, stanzas.concat());
        assert_eq!(sock.writes, 7, "31 bytes, 5 at a time");
        // <a> (17 bytes) is in after the 4th write, <b/> (4) after the
        // 5th, <c> after the last.
        assert_eq!(sock.queued_before, [31, 31, 31, 31, 14, 10, 10]);
        assert_eq!(bound.queued(), 0);
        assert!(batch.wires.is_empty() && batch.len == 0);
    }

    /// A close that cannot be queued (the queue is full) still reaches the
    /// peer, after the stanzas already written and instead of the ones
    /// still queued.
    #[tokio::test]
    async fn urgent_close_drops_the_queue_and_ends_the_stream_well_formed() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(2);
        let (urgent_tx, urgent_rx) = oneshot::channel();
        tx.try_send(Out::Wire(Wire::One(Bytes::from_static(b"<a/>"))))
            .expect("room");
        let writer = tokio::spawn(write_loop(ours, rx, None, Some(urgent_rx), None));
        // Wait until the first stanza is written, then fill the queue.
        let mut got = vec![0u8; 4];
        theirs.read_exact(&mut got).await.expect("first stanza");
        assert_eq!(&got, b"<a/>");
        tx.try_send(Out::Wire(Wire::One(Bytes::from_static(b"<b/>"))))
            .expect("room");
        tx.try_send(Out::Wire(Wire::One(Bytes::from_static(b"<c/>"))))
            .expect("room");
        // The writer may write <b/> and <c/> before it sees the close, or
        // not: either way the close comes last and nothing comes after it.
        urgent_tx
            .send(Bytes::from_static(b"<err/>"))
            .expect("writer listens");
        let mut rest = Vec::new();
        theirs
            .read_to_end(&mut rest)
            .await
            .expect("EOF after close");
        assert!(rest.ends_with(b"<err/>"), "{rest:?}");
        assert!(
            [&b"<err/>"[..], b"<b/><err/>", b"<b/><c/><err/>"].contains(&&rest[..]),
            "{}",
            String::from_utf8_lossy(&rest)
        );
        writer.await.expect("join").expect("writer ok");
    }

    /// Progress is the socket taking bytes: not a write that is blocked,
    /// however long, and each partial write counts.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn progress_is_when_the_socket_last_took_bytes() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let progress = std::sync::Arc::new(Progress::new());
        let t0 = progress.last();
        let mut w = Tracked::new(ours, progress.clone());
        tokio::time::advance(Duration::from_secs(5)).await;
        w.write_all(b"12345678").await.expect("fits");
        assert_eq!(progress.last(), t0 + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        // 8 more bytes fit, the rest waits for the reader.
        let writer = tokio::spawn(async move {
            w.write_all(&[b'x'; 64]).await.expect("written in the end");
        });
        tokio::task::yield_now().await;
        assert_eq!(progress.last(), t0 + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            progress.last(),
            t0 + Duration::from_secs(10),
            "a blocked write is no progress"
        );
        assert_eq!(
            progress.stalled_at(t0 + Duration::from_secs(12), Duration::from_secs(3)),
            t0 + Duration::from_secs(15),
            "the wait counts from when it began, not from the last write before it"
        );
        let mut got = vec![0u8; 16];
        theirs.read_exact(&mut got).await.expect("read");
        tokio::task::yield_now().await;
        assert_eq!(progress.last(), t0 + Duration::from_secs(15));
        let mut rest = vec![0u8; 56];
        theirs.read_exact(&mut rest).await.expect("the rest");
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_queued_close_ends_the_stream_after_everything_before_it() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(4);
        let (_urgent_tx, urgent_rx) = oneshot::channel::<Bytes>();
        for b in [&b"<a/>"[..], b"<b/>"] {
            tx.try_send(Out::Wire(Wire::One(Bytes::from_static(b))))
                .expect("room");
        }
        tx.try_send(Out::Close(Bytes::from_static(b"</end>")))
            .expect("room");
        write_loop(ours, rx, None, Some(urgent_rx), None)
            .await
            .expect("writer ok");
        let mut all = Vec::new();
        theirs.read_to_end(&mut all).await.expect("EOF");
        assert_eq!(&all, b"<a/><b/></end>");
    }
}
