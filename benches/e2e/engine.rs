//! The load engine: one writer and one reader thread per socket end,
//! requests at a fixed offered rate or as fast as a window allows, every
//! answer checked and timed.
//!
//! A reader never blocks on a write (replies go to its end's writer
//! through a channel), so a slow peer cannot deadlock the generator
//! against the proxy's own backpressure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire::{Elem as Stanza, Unit};

use crate::procstat;
use crate::tls::LinkWriter;
use crate::wire::{Conn, Read1};

/// What a stanza is to the side that receives it.
pub enum Class {
    /// A request this end answers (it plays a member).
    Request,
    /// The end of a request's journey: check, time, count.
    Final,
    /// Traffic the path may add (presence on a c2s stream).
    Ignore,
}

/// One kind of traffic: what to send, how to answer, what must arrive.
pub trait Traffic: Sync {
    fn request(&self, seq: u64, out: &mut Vec<u8>);
    fn respond(&self, st: &Stanza, out: &mut Vec<u8>) -> Result<(), String>;
    /// Checks a final stanza; its sequence number.
    fn check_final(&self, st: &Stanza) -> Result<u64, String>;
    fn classify(&self, st: &Stanza) -> Result<Class, String>;
}

/// How to drive one run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// How long requests are sent; then the engine waits for the rest.
    pub duration: Duration,
    /// Requests sent before this point are checked but not timed.
    pub warmup: Duration,
    /// Requests per second per sender; `None` is as fast as the window
    /// lets (a closed loop).
    pub rate: Option<f64>,
    /// Requests in flight per sender (closed loop).
    pub window: usize,
    /// Bytes of requests in flight per sender (closed loop), so large
    /// stanzas do not pile up in socket buffers.
    pub window_bytes: usize,
    /// How long after the sending phase every request must have completed.
    pub drain: Duration,
}

/// One socket end in a run.
pub struct End<'c> {
    pub conn: &'c mut Conn,
    /// This end sends requests.
    pub sends: bool,
    /// Index (in the run's ends) of the sender whose requests end here.
    pub completes_for: Option<usize>,
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Requests completed (all senders).
    pub items: u64,
    /// Stanza bytes that arrived at a member or a final receiver.
    pub bytes: u64,
    /// From the first send to the last completion.
    pub elapsed: Duration,
    /// Per timed request, nanoseconds from send (or scheduled send) to
    /// arrival.
    pub latencies: Vec<u64>,
    /// CPU seconds of the engine's threads, by role.
    pub sender_cpu: f64,
    pub responder_cpu: f64,
}

enum Msg {
    /// Bytes to write (a member's reply).
    Out(Vec<u8>),
    /// Request `seq` completed.
    Done(u64),
}

/// Per-sender bookkeeping shared with the reader that completes for it.
struct SendLog {
    /// Send time of each request, ns since the run's start; 0 = not sent.
    at: Vec<AtomicU64>,
    sent: AtomicU64,
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn since(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }
}

/// Requests one sender may send in one run: bounds the send log.
const MAX_ITEMS: usize = 4_000_000;
/// A write that blocks this long means the peer stopped reading.
const WRITE_STALL: Duration = Duration::from_secs(20);

/// Runs `spec` over `ends`; every request must complete exactly once and
/// intact, or the run fails with the first problem seen.
pub fn run(ends: Vec<End<'_>>, traffic: &dyn Traffic, spec: &Spec) -> Result<Outcome, String> {
    let n = ends.len();
    let logs: Vec<Option<SendLog>> = ends
        .iter()
        .map(|e| {
            e.sends.then(|| SendLog {
                at: (0..cap_items(spec)).map(|_| AtomicU64::new(0)).collect(),
                sent: AtomicU64::new(0),
            })
        })
        .collect();
    let mut channels: Vec<(Sender<Msg>, Option<Receiver<Msg>>)> = (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            (tx, Some(rx))
        })
        .collect();
    let mut writers = Vec::with_capacity(n);
    for e in &ends {
        let w = e
            .conn
            .link
            .writer()
            .map_err(|err| format!("{}: clone: {err}", e.conn.who))?;
        w.sock
            .set_write_timeout(Some(WRITE_STALL))
            .map_err(|err| err.to_string())?;
        writers.push(w);
    }
    let shared = Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
    };
    let mut outcome = Outcome::default();

    std::thread::scope(|s| {
        let mut sender_handles = Vec::new();
        let mut other_handles = Vec::new();
        let mut reader_handles = Vec::new();
        for (i, (end, w)) in ends.into_iter().zip(writers).enumerate() {
            let rx = channels[i].1.take();
            let own_tx = channels[i].0.clone();
            let done = end
                .completes_for
                .map(|j| (channels[j].0.clone(), logs[j].as_ref()));
            let shared = &shared;
            let log = logs[i].as_ref();
            // Every end has a writer: a sender's (it has a send log) or
            // a member's.
            match (rx, log) {
                (Some(rx), Some(log)) => sender_handles.push(s.spawn(move || {
                    let t = procstat::thread_cpu_seconds();
                    if let Err(e) = send_loop(w, rx, traffic, spec, log, shared) {
                        shared.fail(e);
                    }
                    procstat::thread_cpu_seconds() - t
                })),
                (Some(rx), None) => other_handles.push(s.spawn(move || {
                    let t = procstat::thread_cpu_seconds();
                    if let Err(e) = reply_loop(w, rx, shared) {
                        shared.fail(e);
                    }
                    procstat::thread_cpu_seconds() - t
                })),
                (None, _) => {}
            }
            let sends = end.sends;
            reader_handles.push(s.spawn(move || {
                let t = procstat::thread_cpu_seconds();
                let r = read_loop(end.conn, own_tx, done, traffic, spec, shared);
                let cpu = procstat::thread_cpu_seconds() - t;
                match r {
                    Ok(st) => (st, cpu, sends),
                    Err(e) => {
                        shared.fail(e);
                        (ReadStats::default(), cpu, sends)
                    }
                }
            }));
        }
        drop(channels);
        for h in sender_handles {
            outcome.sender_cpu += h.join().unwrap_or(0.0);
        }
        shared.stop.store(true, Ordering::SeqCst);
        for h in reader_handles {
            if let Ok((st, cpu, sends)) = h.join() {
                outcome.items += st.items;
                outcome.bytes += st.bytes;
                outcome.latencies.extend(st.latencies);
                if st.last > Duration::ZERO {
                    outcome.elapsed = outcome.elapsed.max(st.last);
                }
                if sends {
                    outcome.sender_cpu += cpu;
                } else {
                    outcome.responder_cpu += cpu;
                }
            }
        }
        for h in other_handles {
            outcome.responder_cpu += h.join().unwrap_or(0.0);
        }
    });
    if let Some(e) = shared.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    let sent: u64 = logs
        .iter()
        .flatten()
        .map(|l| l.sent.load(Ordering::SeqCst))
        .sum();
    if outcome.items != sent {
        return Err(format!("{sent} requests sent, {} completed", outcome.items));
    }
    Ok(outcome)
}

fn cap_items(spec: &Spec) -> usize {
    match spec.rate {
        Some(r) => ((r * spec.duration.as_secs_f64()) as usize + 16).min(MAX_ITEMS),
        None => MAX_ITEMS.min(2_000_000),
    }
}

/// A sender's writer: requests (paced or windowed) plus any replies this
/// end owes as a member, until every request has completed.
fn send_loop(
    mut w: LinkWriter,
    rx: Receiver<Msg>,
    traffic: &dyn Traffic,
    spec: &Spec,
    log: &SendLog,
    shared: &Shared,
) -> Result<(), String> {
    let cap = log.at.len() as u64;
    let end_send = shared.start + spec.duration;
    let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut fresh: Vec<u64> = Vec::new();
    let (mut seq, mut inflight, mut inflight_bytes) = (0u64, 0usize, 0usize);
    // Size of each request, to release its share of the byte window.
    let mut sizes: Vec<u32> = Vec::new();
    let absorb =
        |m: Msg, out: &mut Vec<u8>, inflight: &mut usize, ib: &mut usize, sizes: &[u32]| match m {
            Msg::Out(b) => out.extend_from_slice(&b),
            Msg::Done(q) => {
                *inflight = inflight.saturating_sub(1);
                *ib = ib.saturating_sub(sizes.get(q as usize).map_or(0, |&n| n as usize));
            }
        };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        while let Ok(m) = rx.try_recv() {
            absorb(m, &mut out, &mut inflight, &mut inflight_bytes, &sizes);
        }
        let now = Instant::now();
        let sending = now < end_send && seq < cap;
        let mut next_due = None;
        if sending {
            match spec.rate {
                None => {
                    while inflight < spec.window && inflight_bytes < spec.window_bytes && seq < cap
                    {
                        let before = out.len();
                        traffic.request(seq, &mut out);
                        let len = out.len() - before;
                        sizes.push(len as u32);
                        inflight += 1;
                        inflight_bytes += len;
                        fresh.push(seq);
                        seq += 1;
                    }
                }
                Some(rate) => loop {
                    let due = shared.start + Duration::from_secs_f64(seq as f64 / rate);
                    if due > now || seq >= cap {
                        next_due = Some(due);
                        break;
                    }
                    traffic.request(seq, &mut out);
                    // Timed from when it was due, not when it went out: a
                    // stall in the path delays sending too, and must count.
                    log.at[seq as usize].store(shared.since(due).max(1), Ordering::Relaxed);
                    inflight += 1;
                    seq += 1;
                },
            }
        }
        if !out.is_empty() {
            let t = shared.since(Instant::now()).max(1);
            for &q in &fresh {
                log.at[q as usize].store(t, Ordering::Relaxed);
            }
            fresh.clear();
            log.sent.store(seq, Ordering::SeqCst);
            w.write_all(&out)
                .map_err(|e| format!("sender: write: {e}"))?;
            out.clear();
            continue;
        }
        log.sent.store(seq, Ordering::SeqCst);
        if !sending && inflight == 0 {
            return Ok(());
        }
        if !sending && Instant::now() > end_send + spec.drain {
            return Err(format!(
                "{inflight} of {seq} requests not answered {:?} after the last was sent",
                spec.drain
            ));
        }
        let wait = match next_due {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(20),
        };
        match rx.recv_timeout(wait) {
            Ok(m) => absorb(m, &mut out, &mut inflight, &mut inflight_bytes, &sizes),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// A member-only end's writer: replies, batched when several are ready.
fn reply_loop(mut w: LinkWriter, rx: Receiver<Msg>, shared: &Shared) -> Result<(), String> {
    let mut out = Vec::with_capacity(1 << 20);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Msg::Out(b)) => out.extend_from_slice(&b),
            Ok(Msg::Done(_)) => {}
            Err(RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        while let Ok(m) = rx.try_recv() {
            if let Msg::Out(b) = m {
                out.extend_from_slice(&b);
            }
        }
        w.write_all(&out)
            .map_err(|e| format!("member: write: {e}"))?;
        out.clear();
    }
}

#[derive(Default)]
struct ReadStats {
    items: u64,
    bytes: u64,
    latencies: Vec<u64>,
    /// Time of the last completion, from the run's start.
    last: Duration,
}

fn read_loop(
    conn: &mut Conn,
    own: Sender<Msg>,
    done: Option<(Sender<Msg>, Option<&SendLog>)>,
    traffic: &dyn Traffic,
    spec: &Spec,
    shared: &Shared,
) -> Result<ReadStats, String> {
    let mut st = ReadStats::default();
    let mut seen: Vec<bool> = Vec::new();
    let warm = spec.warmup.as_nanos() as u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(st);
        }
        let stanza = match conn.read()? {
            Read1::Idle => continue,
            Read1::Unit(Unit::Stanza(s)) => s,
            Read1::Unit(other) => return Err(format!("{}: unexpected {other:?}", conn.who)),
        };
        match traffic.classify(&stanza)? {
            Class::Ignore => {}
            Class::Request => {
                st.bytes += stanza.bytes.len() as u64;
                let mut reply = Vec::with_capacity(stanza.bytes.len() + 64);
                traffic
                    .respond(&stanza, &mut reply)
                    .map_err(|e| format!("{}: {e}", conn.who))?;
                let _ = own.send(Msg::Out(reply));
            }
            Class::Final => {
                let now = shared.since(Instant::now());
                let seq = traffic
                    .check_final(&stanza)
                    .map_err(|e| format!("{}: {e}", conn.who))?;
                let Some((tx, Some(log))) = &done else {
                    return Err(format!(
                        "{}: a final stanza on an end that completes nothing: {}",
                        conn.who,
                        crate::traffic::preview(&stanza.bytes)
                    ));
                };
                let i = seq as usize;
                let sent_at = log.at.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
                if sent_at == 0 {
                    return Err(format!("{}: answer {seq} before its request", conn.who));
                }
                if seen.len() <= i {
                    seen.resize(i + 1024, false);
                }
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!("{}: request {seq} answered twice", conn.who));
                }
                if sent_at >= warm {
                    st.latencies.push(now.saturating_sub(sent_at));
                }
                st.items += 1;
                st.bytes += stanza.bytes.len() as u64;
                st.last = Duration::from_nanos(now);
                let _ = tx.send(Msg::Done(seq));
            }
        }
    }
}

/// The value at quantile `q` (0..=1) of sorted samples, in µs.
pub fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}
