//! CPU time and memory of a process or thread, from `/proc`.
//!
//! Read from outside the measured process so that the figures are what an
//! operator's `top` would show, not what the program believes about itself.

use std::fs;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`);
/// 100 on every Linux this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (all its threads, live
/// and exited).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. utime and stime are fields 14 and 15 overall.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64 / TICKS_PER_SEC)
            .ok_or_else(|| format!("{path}: field {} missing", i + 3))
    };
    Ok(tick(11)? + tick(12)?)
}

/// CPU seconds of the calling thread, with nanosecond resolution
/// (`/proc/thread-self/schedstat`: time on CPU, in ns).
pub fn thread_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// A `/proc/PID/status` field in kB (`VmHWM`: peak RSS; `VmRSS`: now).
pub fn status_kb(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{path}: no {field}"))
}
