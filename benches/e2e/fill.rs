//! `fill N`: jatproxy's memory with its pending table full.
//!
//! jatproxy runs the seed flow with `routing.pending_capacity = N` and an
//! `iq_timeout` of a day; the fake server announces two member resources
//! and never answers for them. It sends 3 × N requests in three phases of
//! N. The first phase fills the table; in the next two, each request
//! evicts the oldest pending one, which must come back at once as an
//! `resource-constraint` error to its requester, oldest first. After each
//! phase it prints jatproxy's `VmRSS` and `VmHWM`: the peak grows with N in
//! the first phase, rises once more while the first N error answers are
//! in flight, and must then stay put, however many more requests arrive
//! (the table is bounded, and so is the memory).

use std::time::{Duration, Instant};

use crate::procstat;
use crate::setup::{self, FakeServer, Role};
use crate::traffic::{preview, requester, target, D};
use crate::wire::{Read1, Unit};

/// Requests per write.
const BATCH: usize = 256;

/// Runs the fill with `pending_capacity = n`; an error if any request is
/// not forwarded, an eviction is missing or out of order, or the peak RSS
/// grows once the table is full.
pub fn run(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("fill: N must be at least 1".into());
    }
    let server = FakeServer::bind()?;
    let extra = format!("[routing]\npending_capacity = {n}\niq_timeout = \"24h\"\n");
    let proxy = setup::start_jatproxy(server.addr(), &Role::Clients, 2, &extra, None)?;
    let mut up = server.accept_component(None)?;
    // The presences go before the requests on the same stream, so the
    // pool has its members when the first request arrives.
    setup::grant_members(&mut up)?;
    let pid = proxy.pid();
    let kb = |field| procstat::status_kb(pid, field);
    println!(
        "fill: pending_capacity = {n}, iq_timeout 24h, {} members that never answer, \
         3 phases of {n} requests",
        setup::MEMBERS
    );
    let mut hwm_kib = [kb("VmHWM")?, 0, 0, 0];
    println!(
        "  start: VmRSS {} KiB, VmHWM {} KiB",
        kb("VmRSS")?,
        hwm_kib[0]
    );
    let mut forwarded = 0usize;
    let mut evicted = 0usize;
    for phase in 0..3 {
        let first = phase * n;
        let mut w = up.link.writer().map_err(|e| e.to_string())?;
        let deadline =
            Instant::now() + Duration::from_secs(60) + Duration::from_micros(n as u64 * 50);
        let started = Instant::now();
        std::thread::scope(|s| -> Result<(), String> {
            let writer = s.spawn(move || -> Result<(), String> {
                let mut out = Vec::with_capacity(BATCH * 160);
                for i in first..first + n {
                    out.extend_from_slice(
                        format!(
                            "<iq type='get' id='fill.{i}' to='{D}' from='{}'><q xmlns='urn:example:bench'/></iq>",
                            requester(i as u64)
                        )
                        .as_bytes(),
                    );
                    if out.len() >= BATCH * 120 || i + 1 == first + n {
                        w.write_all(&out).map_err(|e| format!("fill: write: {e}"))?;
                        out.clear();
                    }
                }
                Ok(())
            });
            // Every request is forwarded to a member; from the second
            // phase on, each also evicts the oldest.
            let (want_fwd, want_evicted) = (first + n, first);
            while forwarded < want_fwd || evicted < want_evicted {
                if Instant::now() > deadline {
                    return Err(format!(
                        "fill phase {phase}: {forwarded} of {want_fwd} forwarded, \
                         {evicted} of {want_evicted} evicted in time"
                    ));
                }
                let st = match up.read()? {
                    Read1::Idle => continue,
                    Read1::Unit(Unit::Stanza(st)) => st,
                    Read1::Unit(other) => return Err(format!("fill: unexpected {other:?}")),
                };
                let seq = st
                    .id()
                    .and_then(|i| i.strip_prefix("fill."))
                    .and_then(|i| i.parse::<usize>().ok());
                match (st.stanza_type(), seq) {
                    (Some("get"), Some(i))
                        if i < first + n
                            && st
                                .to()
                                .is_some_and(|t| t.starts_with(&format!("{}/m", target()))) =>
                    {
                        forwarded += 1
                    }
                    (Some("error"), Some(i)) => {
                        // The oldest pending request, in order, to its
                        // requester, as resource-constraint.
                        let ok = i == evicted
                            && st.to() == Some(requester(i as u64).as_str())
                            && st.from() == Some(D)
                            && st.bytes.windows(19).any(|w| w == b"resource-constraint");
                        if !ok {
                            return Err(format!(
                                "fill: expected request {evicted} evicted with resource-constraint, got {}",
                                preview(&st.bytes)
                            ));
                        }
                        evicted += 1;
                    }
                    _ => return Err(format!("fill: unexpected {}", preview(&st.bytes))),
                }
            }
            writer
                .join()
                .map_err(|_| "fill: writer panicked".to_owned())?
        })?;
        hwm_kib[phase + 1] = kb("VmHWM")?;
        println!(
            "  after {:>8} requests ({n} pending, {evicted} evicted, {:.1} s): VmRSS {} KiB, VmHWM {} KiB",
            first + n,
            started.elapsed().as_secs_f64(),
            kb("VmRSS")?,
            hwm_kib[phase + 1]
        );
    }
    let filled = hwm_kib[1].saturating_sub(hwm_kib[0]);
    let evicting = hwm_kib[2].saturating_sub(hwm_kib[1]);
    let steady = hwm_kib[3].saturating_sub(hwm_kib[2]);
    println!(
        "  filling the table raised the peak by {filled} KiB ({:.0} bytes per pending request); \
         the first {n} evictions by {evicting} KiB (their error answers in flight to the \
         server), the next {n} by {steady} KiB",
        filled as f64 * 1024.0 / n as f64,
    );
    // Bounded: once evictions run, N more requests must not raise the
    // peak by more than an eighth of what filling the table took
    // (allocator slack), or 4 MiB for small tables (buffers and arenas
    // still warming up). The first round of evictions is not judged: it
    // starts a stream of N error answers to the server at once, and the
    // queues carrying them reach their own (bounded) size there.
    let bound = (filled / 8).max(4096);
    if steady > bound {
        return Err(format!(
            "fill: the peak RSS kept growing with the table full: +{steady} KiB \
             (bound {bound} KiB) for {n} evicting requests"
        ));
    }
    Ok(())
}
