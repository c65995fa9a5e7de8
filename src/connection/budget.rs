//! [`QueueBytes`]: a writer queue's bound in bytes, beside its bound in
//! stanzas (the channel's room). Counting stanzas alone lets one queue
//! pin `queue × max_stanza_bytes` (512 MiB with the defaults) behind a
//! peer that stopped reading; counting bytes keeps it at the bound.
//!
//! Whoever queues takes the bytes first ([`QueueBytes::try_take`] or
//! [`QueueBytes::take`]); the writer gives them back once it has handed
//! the stanza to its socket buffer ([`QueueBytes::give_back`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes queued for one writer, and their bound.
#[derive(Debug)]
pub struct QueueBytes {
    cap: usize,
    queued: AtomicUsize,
    /// Woken when bytes are given back.
    room: Notify,
}

impl QueueBytes {
    /// A bound of `cap` bytes, nothing queued.
    pub fn new(cap: usize) -> Self {
        QueueBytes {
            cap,
            queued: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// The bound, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes queued now (taken and not yet given back).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts `len` bytes as queued if they fit under the bound, or if
    /// nothing is queued: a stanza larger than the bound goes alone, so
    /// the bound never holds back a stanza the framer accepted (at most
    /// `cap` plus one stanza is ever queued). False if they do not fit.
    pub fn try_take(&self, len: usize) -> bool {
        let mut now = self.queued.load(Ordering::Acquire);
        loop {
            if now != 0 && now.saturating_add(len) > self.cap {
                return false;
            }
            match self.queued.compare_exchange_weak(
                now,
                now.saturating_add(len),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Whether `len` more bytes would fit now, without taking them.
    pub fn fits(&self, len: usize) -> bool {
        let now = self.queued();
        now == 0 || now.saturating_add(len) <= self.cap
    }

    /// Waits until `len` bytes fit (see [`Self::try_take`]) and counts
    /// them. Never ends if the writer stops giving bytes back: the caller
    /// bounds the wait (the core by the peer's progress).
    pub async fn take(&self, len: usize) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so a give-back between the look
            // and the wait is not missed.
            room.as_mut().enable();
            if self.try_take(len) {
                return;
            }
            room.await;
        }
    }

    /// The writer is done with `len` bytes it was given.
    pub fn give_back(&self, len: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(len))
            });
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn bytes_fit_up_to_the_bound_and_one_large_stanza_goes_alone() {
        let q = QueueBytes::new(100);
        assert!(q.try_take(60));
        assert!(q.try_take(40), "exactly at the bound");
        assert!(!q.try_take(1), "over the bound");
        assert!(!q.fits(1) && q.fits(0));
        q.give_back(100);
        assert_eq!(q.queued(), 0);
        assert!(q.try_take(500), "larger than the bound, alone");
        assert!(!q.try_take(1), "nothing beside it");
        q.give_back(500);
        assert!(q.try_take(1));
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_bytes_given_back() {
        let q = Arc::new(QueueBytes::new(10));
        assert!(q.try_take(10));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.take(5).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "no room yet");
        q.give_back(4);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "6 + 5 > 10");
        q.give_back(6);
        waiter.await.expect("taken once room was given back");
        assert_eq!(q.queued(), 5);
    }
}
