//! The printed results: the machine, one row per case, one table.

use crate::engine::quantile_us;
use crate::traffic::{Flow, Size};
use crate::Measured;

/// Prints nproc, the CPU model and the kernel, so a table is never read
/// without knowing where it came from.
pub fn machine() {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: nproc={nproc}, CPU {model}, Linux {}, jatproxy {} ({}), {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release build"
        },
        loadavg()
    );
}

/// The 1-minute load average: on a shared machine, what else was running.
pub fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load average {}",
        l.split_whitespace().next().unwrap_or("?")
    )
}

/// One case at one load: relay and jatproxy side by side.
pub struct Row {
    pub threads: usize,
    pub flow: Flow,
    pub size: Size,
    pub load: &'static str,
    pub relay: Measured,
    pub proxy: Measured,
}

struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
}

fn lat(m: &Measured) -> Lat {
    let mut v = m.outcome.latencies.clone();
    v.sort_unstable();
    Lat {
        p50: quantile_us(&v, 0.5),
        p99: quantile_us(&v, 0.99),
        p999: quantile_us(&v, 0.999),
    }
}

fn si(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

impl Row {
    pub fn line(&self) -> String {
        let cells = self.cells();
        cells.join(" | ")
    }

    fn cells(&self) -> Vec<String> {
        let (r, p) = (&self.relay, &self.proxy);
        let (lr, lp) = (lat(r), lat(p));
        vec![
            self.threads.to_string(),
            self.flow.name().to_owned(),
            self.size.name().to_owned(),
            self.load.to_owned(),
            si(r.stanzas_per_sec()),
            si(p.stanzas_per_sec()),
            format!("{:.0} %", 100.0 * p.mb_per_sec() / r.mb_per_sec()),
            format!("{:.1}", r.mb_per_sec()),
            format!("{:.1}", p.mb_per_sec()),
            format!("{:.0} / {:.0} / {:.0}", lp.p50, lp.p99, lp.p999),
            format!(
                "{:+.0} / {:+.0} / {:+.0}",
                lp.p50 - lr.p50,
                lp.p99 - lr.p99,
                lp.p999 - lr.p999
            ),
            format!("{:.1}", p.cpu_per_million()),
            format!("{:.1}", r.cpu_per_million()),
            format!("{:.1}", p.peak_rss_kib as f64 / 1024.0),
        ]
    }
}

const HEAD: [&str; 14] = [
    "thr",
    "flow",
    "size",
    "load",
    "relay st/s",
    "jatproxy st/s",
    "MB/s vs relay",
    "relay MB/s",
    "jatproxy MB/s",
    "jatproxy p50/p99/p99.9 µs",
    "added p50/p99/p99.9 µs",
    "jatproxy CPU s/M st",
    "relay CPU s/M st",
    "jatproxy peak RSS MiB (this run)",
];

/// The component-side results as one Markdown table.
pub fn table(rows: &[Row], window: usize) {
    println!("| {} |", HEAD.join(" | "));
    println!(
        "|{}|",
        HEAD.iter()
            .enumerate()
            .map(|(i, _)| if i < 4 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        println!("| {} |", r.cells().join(" | "));
    }
    let peak = if rows.iter().all(|r| r.proxy.peak_reset) {
        "peak RSS = jatproxy's VmHWM during that run alone (reset through \
         /proc/PID/clear_refs before it)"
    } else {
        "peak RSS = jatproxy's VmHWM so far, NOT per run: /proc/PID/clear_refs could not \
         reset it here"
    };
    println!(
        "\nst = stanzas forwarded (seed: the iq and its result count 2; latency is the round \
         trip); load max = {} requests in flight, half = a fixed rate of half of jatproxy's max; \
         added = jatproxy minus relay at the same load; CPU of the jatproxy / relay process \
         (its threads' schedstat, ns); {peak}",
        window
    );
}

/// The Prosody comparison: one row per path and load.
pub struct ProsodyRow {
    pub label: String,
    /// Requests in flight in total.
    pub in_flight: usize,
    /// Why the path was not measured (then the figures are empty).
    pub skipped: Option<String>,
    pub requests: u64,
    pub secs: f64,
    pub latencies: Vec<u64>,
    pub prosody_cpu: f64,
    pub proxy_cpu: Option<f64>,
    /// jatproxy's context switches over the run (its wake-ups).
    pub proxy_switches: Option<crate::procstat::Switches>,
    pub requester_cpu: f64,
    pub responder_cpu: f64,
}

impl ProsodyRow {
    /// A path that could not run, printed as a row that says why.
    pub fn skipped(label: String, why: String) -> ProsodyRow {
        ProsodyRow {
            label,
            in_flight: 0,
            skipped: Some(why),
            requests: 0,
            secs: 0.0,
            latencies: Vec::new(),
            prosody_cpu: 0.0,
            proxy_cpu: None,
            proxy_switches: None,
            requester_cpu: 0.0,
            responder_cpu: 0.0,
        }
    }

    /// Prosody's CPU per request, µs.
    fn prosody_us(&self) -> f64 {
        self.prosody_cpu / self.requests.max(1) as f64 * 1e6
    }
}

pub fn prosody_table(rows: &[ProsodyRow]) {
    println!(
        "| path | in flight | requests/s | p50 / p99 / p99.9 ms | max ms | Prosody CPU µs / req | jatproxy CPU µs / req | jatproxy switches / req (vol. + invol.) | requesters CPU µs / req | responders CPU µs / req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some(why) = &r.skipped {
            println!("| {} | – | {why} | | | | | | | |", r.label);
            continue;
        }
        let mut v = r.latencies.clone();
        v.sort_unstable();
        let per = |cpu: f64| cpu / r.requests.max(1) as f64 * 1e6;
        println!(
            "| {} | {} | {:.0} | {:.2} / {:.2} / {:.2} | {:.1} | {:.0} | {} | {} | {:.0} | {:.0} |",
            r.label,
            r.in_flight,
            r.requests as f64 / r.secs,
            quantile_us(&v, 0.5) / 1000.0,
            quantile_us(&v, 0.99) / 1000.0,
            quantile_us(&v, 0.999) / 1000.0,
            v.last().map_or(0.0, |&m| m as f64 / 1e6),
            r.prosody_us(),
            r.proxy_cpu.map_or("–".into(), |c| format!("{:.1}", per(c))),
            r.proxy_switches.map_or("–".into(), |s| {
                let n = r.requests.max(1) as f64;
                format!(
                    "{:.2} + {:.2}",
                    s.voluntary as f64 / n,
                    s.involuntary as f64 / n
                )
            }),
            per(r.requester_cpu),
            per(r.responder_cpu),
        );
    }
    prosody_cpu_summary(rows);
}

/// What an external component costs the server: Prosody's CPU per
/// request on each path at the highest load, on one line.
fn prosody_cpu_summary(rows: &[ProsodyRow]) {
    let top = rows.iter().map(|r| r.in_flight).max().unwrap_or(0);
    let parts: Vec<String> = rows
        .iter()
        .filter(|r| r.skipped.is_none() && r.in_flight == top)
        .map(|r| format!("{}: {:.0} µs", r.label, r.prosody_us()))
        .collect();
    println!(
        "\nProsody CPU per request at {top} in flight — {}",
        parts.join("; ")
    );
}

/// One case at the maximum rate: jatproxy over plain TCP and over direct
/// TLS on both links, measured back to back in the same run.
pub struct TlsRow {
    threads: usize,
    flow: Flow,
    size: Size,
    plain_st: f64,
    tls_st: f64,
    plain_cpu: f64,
    tls_cpu: f64,
    plain_p50: f64,
    tls_p50: f64,
}

impl TlsRow {
    pub fn new(threads: usize, flow: Flow, size: Size, plain: &Measured, tls: &Measured) -> TlsRow {
        TlsRow {
            threads,
            flow,
            size,
            plain_st: plain.stanzas_per_sec(),
            tls_st: tls.stanzas_per_sec(),
            plain_cpu: plain.cpu_per_million(),
            tls_cpu: tls.cpu_per_million(),
            plain_p50: lat(plain).p50,
            tls_p50: lat(tls).p50,
        }
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.threads.to_string(),
            self.flow.name().to_owned(),
            self.size.name().to_owned(),
            si(self.plain_st),
            si(self.tls_st),
            format!("{:.0} %", 100.0 * self.tls_st / self.plain_st.max(1e-9)),
            format!("{:.1}", self.plain_cpu),
            format!("{:.1}", self.tls_cpu),
            format!("{:.2}", self.tls_cpu / self.plain_cpu.max(1e-9)),
            format!("{:.0} / {:.0}", self.plain_p50, self.tls_p50),
        ]
    }

    pub fn line(&self) -> String {
        format!("tls: {}", self.cells().join(" | "))
    }
}

const TLS_HEAD: [&str; 10] = [
    "thr",
    "flow",
    "size",
    "plain st/s",
    "TLS st/s",
    "TLS st/s vs plain",
    "plain CPU s/M st",
    "TLS CPU s/M st",
    "TLS CPU × plain",
    "p50 µs plain / TLS",
];

/// The cost of direct TLS on both component links, at the maximum rate.
pub fn tls_table(rows: &[TlsRow]) {
    println!("| {} |", TLS_HEAD.join(" | "));
    println!(
        "|{}|",
        (0..TLS_HEAD.len())
            .map(|i| if i < 3 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        println!("| {} |", r.cells().join(" | "));
    }
    println!(
        "\nTLS = direct TLS (rustls, TLS 1.3) on jatproxy's upstream link and on its \
         instances' listener, the bench's ends terminating it in its own threads; \
         plain = the jatproxy rows above; max load; CPU of the jatproxy process"
    );
}
