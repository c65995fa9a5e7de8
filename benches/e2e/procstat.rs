//! CPU time and memory of a process or thread, from `/proc`.
//!
//! Read from outside the measured process so that the figures are what an
//! operator's `top` would show, not what the program believes about itself.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`);
/// 100 on every Linux this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (all its threads, live
/// and exited), in clock ticks (10 ms).
fn cpu_seconds_ticks(pid: u32) -> Result<f64, String> {
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

/// CPU time on each live thread of `pid`, in ns
/// (`/proc/PID/task/TID/schedstat`: time on CPU, first field).
fn task_ns(pid: u32) -> Result<HashMap<u32, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = HashMap::new();
    for e in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let Ok(e) = e else { continue };
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Some(ns) = fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// A process's CPU time at one moment, for [`cpu_since`].
pub struct CpuMark {
    ticks: f64,
    tasks: HashMap<u32, u64>,
}

pub fn cpu_mark(pid: u32) -> Result<CpuMark, String> {
    Ok(CpuMark {
        tasks: task_ns(pid)?,
        ticks: cpu_seconds_ticks(pid)?,
    })
}

/// CPU seconds `pid` spent since `mark`: the sum over its threads of
/// their nanosecond counters. A thread that exited meanwhile takes its
/// time with it; when the process's tick counters (which keep exited
/// threads' time) show more than two ticks beyond the sum, they are used
/// instead.
pub fn cpu_since(pid: u32, mark: &CpuMark) -> Result<f64, String> {
    let now = task_ns(pid)?;
    let ticks = cpu_seconds_ticks(pid)? - mark.ticks;
    let ns: u64 = now
        .iter()
        .map(|(tid, &ns)| ns.saturating_sub(mark.tasks.get(tid).copied().unwrap_or(0)))
        .sum();
    let precise = ns as f64 / 1e9;
    Ok(if ticks > precise + 2.0 / TICKS_PER_SEC {
        ticks
    } else {
        precise
    })
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current
/// RSS (`echo 5 > /proc/PID/clear_refs`, Linux 4.0+), so the next
/// reading is the peak of what came after.
pub fn reset_peak_rss(pid: u32) -> Result<(), String> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").map_err(|e| format!("{path}: {e}"))
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

/// Context switches of every live thread of `pid` so far, voluntary and
/// not (`/proc/PID/task/TID/status`): each voluntary one is a thread
/// parking for want of work, i.e. a wake-up to come, which is what
/// jatproxy pays per request at low load.
pub fn switches(pid: u32) -> Result<Switches, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Switches::default();
    for e in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let Ok(e) = e else { continue };
        // A thread may exit between the listing and the read.
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        out.voluntary += field("voluntary_ctxt_switches");
        out.involuntary += field("nonvoluntary_ctxt_switches");
    }
    Ok(out)
}

/// Context switch counts, summed over a process's threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Switches {
    pub voluntary: u64,
    pub involuntary: u64,
}

impl Switches {
    /// What happened since `earlier` (threads that exited take theirs
    /// with them, so a count may only undercount).
    pub fn since(self, earlier: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}
