//! End-to-end benchmark: `cargo bench --bench e2e` (or `scripts/bench.sh`).
//!
//! Plays the XMPP server and the pool members over loopback TCP around
//! the real `jatproxy` binary (a child process, so its CPU and memory are
//! its own), and sends the same traffic through a plain TCP relay
//! (`copy_bidirectional`) as the physical reference:
//!
//! - `pass`: messages from the server side to a component instance,
//!   forwarded unchanged;
//! - `seed`: the client-proxy flow, an iq get to the domain rewritten to a
//!   member resource, its result rewritten back;
//!
//! with small (~200 B), mixed and 64 KiB stanzas, with jatproxy on 1 and 2
//! worker threads, at the maximum rate a window of requests allows and at
//! a fixed rate of half jatproxy's maximum (for latency). Every stanza is
//! checked to arrive exactly once and byte for byte as it must.
//! Each maximum-rate jatproxy run is repeated against jatproxy with
//! direct TLS on both links (`tls.rs`), for the cost of TLS in the same
//! run.
//!
//! Then the same requesters against a real Prosody: straight to the
//! target's resources (the floor), and through jatproxy as Prosody's
//! external component (see `prosody_bench.rs`).
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does a smoke
//! run of a fraction of a second, so CI checks the harness cheaply.
//! `cargo bench --bench e2e -- soak 600 5000` runs the RSS soak instead
//! (seconds, requests/s); `cargo bench --bench e2e -- fill 100000` fills
//! the pending table (`pending_capacity` = N) three times over with
//! requests nobody answers and reports jatproxy's peak RSS against N (see
//! `fill.rs`).
//! Environment: `E2E_SECONDS` (per run, default 1.5), `E2E_FILTER`
//! (run only rows whose label contains it), `E2E_MAX_ONLY=1` (only the
//! maximum-rate runs, not the half-rate ones), `E2E_WINDOW` (requests
//! in flight at the maximum rate, default 128; the 4 MiB byte window
//! still applies, so a large value floods a member with up to 4 MiB
//! ahead of what it has read), `E2E_NO_PROSODY=1`,
//! `E2E_TOKENIZER` (`rxml` or `fast`: jatproxy's `--tokenizer`),
//! `E2E_PROSODY_THREADS` (jatproxy's threads beside Prosody, default 2),
//! `E2E_PROSODY_NO_NAGLE=1` (Prosody's `network_settings = { nagle = false }`),
//! `E2E_JATPROXY` (the jatproxy binary to run instead of this build's, to
//! compare two builds alternately),
//! `PROSODY_MODULES_DIR` (where `mod_client_proxy/` is, default
//! `../shared/reference/prosody-modules`; its row is skipped without it).

#[path = "../../tests/support/prosody.rs"]
mod prosody;

mod c2s;
mod engine;
mod fill;
mod procstat;
mod prosody_bench;
mod report;
mod setup;
mod tls;
mod traffic;
mod wire;

use std::net::TcpStream;
use std::time::Duration;

use engine::{End, Spec};
use jatproxy::handshake;
use report::Row;
use setup::{ChildProc, FakeServer, Role};
use traffic::{Bodies, Flow, Path, Plan, Size, D};
use wire::Conn;

/// First argument that makes this binary the relay child.
pub const RELAY_MODE: &str = "__relay";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RELAY_MODE) {
        let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
        if let Err(e) = setup::relay_main(args.get(1).map_or("", String::as_str), threads) {
            eprintln!("relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let positional: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let result = match positional.as_slice() {
        ["soak", rest @ ..] => {
            let secs = rest.first().and_then(|s| s.parse().ok()).unwrap_or(600);
            let rate = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000.0);
            soak(secs, rate)
        }
        ["fill", rest @ ..] => {
            let n = rest.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
            report::machine();
            fill::run(n)
        }
        _ if full => bench(&Settings::full()),
        _ => bench(&Settings::smoke()).and_then(|()| {
            // And the fill harness, small.
            println!();
            fill::run(2_000)
        }),
    };
    if let Err(e) = result {
        eprintln!("e2e benchmark FAILED: {e}");
        std::process::exit(1);
    }
}

/// What to run.
pub struct Settings {
    pub threads: Vec<usize>,
    pub flows: Vec<Flow>,
    pub sizes: Vec<Size>,
    pub run: Duration,
    pub prosody: bool,
    pub prosody_run: Duration,
    pub filter: Option<String>,
    /// Skip the half-rate runs (to repeat the maximum-rate ones cheaply).
    pub max_only: bool,
    /// Requests in flight per sender at the maximum rate (the byte
    /// window, 4 MiB, still applies).
    pub window: usize,
}

impl Settings {
    fn full() -> Settings {
        let secs = std::env::var("E2E_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.5);
        Settings {
            threads: vec![1, 2],
            flows: vec![Flow::Pass, Flow::Seed],
            sizes: vec![Size::Small, Size::Mixed, Size::Large],
            run: Duration::from_secs_f64(secs),
            prosody: std::env::var_os("E2E_NO_PROSODY").is_none(),
            prosody_run: Duration::from_secs_f64(secs * 3.0),
            filter: std::env::var("E2E_FILTER").ok(),
            max_only: std::env::var_os("E2E_MAX_ONLY").is_some(),
            window: std::env::var("E2E_WINDOW")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(128),
        }
    }

    /// A fraction of a second per run, one thread, small stanzas: enough
    /// to check the harness and the verification under `cargo test`.
    fn smoke() -> Settings {
        Settings {
            threads: vec![1],
            flows: vec![Flow::Pass, Flow::Seed],
            sizes: vec![Size::Small],
            run: Duration::from_millis(150),
            prosody: false,
            prosody_run: Duration::from_millis(300),
            filter: None,
            max_only: false,
            window: 128,
        }
    }

    fn spec(&self, rate: Option<f64>) -> Spec {
        Spec {
            duration: self.run,
            warmup: self.run / 8,
            rate,
            window: self.window,
            window_bytes: 4 << 20,
            drain: Duration::from_secs(15),
        }
    }
}

fn bench(s: &Settings) -> Result<(), String> {
    let started = std::time::Instant::now();
    report::machine();
    let bodies = Bodies::new();
    let pki = tls::Pki::new()?;
    let mut rows = Vec::new();
    let mut tls_rows = Vec::new();
    let mut tag = 1u32;
    for &threads in &s.threads {
        let mut env = Env::start(threads, &pki)?;
        for &flow in &s.flows {
            for &size in &s.sizes {
                let label = format!("t{threads} {} {}", flow.name(), size.name());
                if s.filter
                    .as_ref()
                    .is_some_and(|f| !label.contains(f.as_str()))
                {
                    continue;
                }
                let mut go = |path: Path, rate: Option<f64>, tls: bool, env: &mut Env| {
                    tag += 1;
                    env.measure(
                        &Plan {
                            tag,
                            flow,
                            size,
                            path,
                            bodies: &bodies,
                        },
                        &s.spec(rate),
                        tls,
                    )
                    .map_err(|e| format!("{label} {path:?} tls {tls} rate {rate:?}: {e}"))
                };
                let relay_max = go(Path::Relay, None, false, &mut env)?;
                let proxy_max = go(Path::Proxy, None, false, &mut env)?;
                let tls_max = go(Path::Proxy, None, true, &mut env)?;
                let tls_row = report::TlsRow::new(threads, flow, size, &proxy_max, &tls_max);
                let mut loads = Vec::new();
                if !s.max_only {
                    let half = proxy_max.items_per_sec() / 2.0;
                    let relay_half = go(Path::Relay, Some(half), false, &mut env)?;
                    let proxy_half = go(Path::Proxy, Some(half), false, &mut env)?;
                    loads.push(("half", relay_half, proxy_half));
                }
                loads.insert(0, ("max", relay_max, proxy_max));
                for (load, relay, proxy) in loads {
                    let row = Row {
                        threads,
                        flow,
                        size,
                        load,
                        relay,
                        proxy,
                    };
                    eprintln!("{}", row.line());
                    rows.push(row);
                }
                eprintln!("{}", tls_row.line());
                tls_rows.push(tls_row);
            }
        }
    }
    println!();
    report::table(&rows, s.window);
    println!();
    report::tls_table(&tls_rows);
    if s.prosody {
        let p = prosody_bench::run(s, &bodies)?;
        println!();
        report::prosody_table(&p);
    }
    println!(
        "\nwhole benchmark: {:.0} s, {} at the end",
        started.elapsed().as_secs_f64(),
        report::loadavg()
    );
    Ok(())
}

/// One measured run: what the engine saw plus the processes' CPU.
pub struct Measured {
    pub flow: Flow,
    pub outcome: engine::Outcome,
    /// CPU seconds of the process under test (relay or jatproxy).
    pub cpu: f64,
    /// Its peak RSS during this run (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// Whether `VmHWM` was reset before the run; if not, `peak_rss_kib`
    /// is the process's peak so far.
    pub peak_reset: bool,
}

impl Measured {
    pub fn items_per_sec(&self) -> f64 {
        self.outcome.items as f64 / self.outcome.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn stanzas_per_sec(&self) -> f64 {
        self.items_per_sec() * self.flow.stanzas_per_item() as f64
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.outcome.bytes as f64 / self.outcome.elapsed.as_secs_f64().max(1e-9) / 1e6
    }

    /// CPU seconds of the process under test per million stanzas.
    pub fn cpu_per_million(&self) -> f64 {
        self.cpu / (self.outcome.items * self.flow.stanzas_per_item()) as f64 * 1e6
    }
}

/// The streams and processes of one thread count.
struct Env {
    relay: ChildProc,
    /// Relay ends: `a` plays the server side, `b` the member side.
    relay_a: Conn,
    relay_b: Conn,
    plain: Proxies,
    /// The same over direct TLS on both links.
    tls: Proxies,
}

/// A pass-through jatproxy with its server and instance ends, and a
/// seed-flow jatproxy with its server end.
struct Proxies {
    pass_proxy: ChildProc,
    pass_up: Conn,
    pass_inst: Conn,
    seed_proxy: ChildProc,
    seed_up: Conn,
}

impl Proxies {
    fn start(threads: usize, tls: Option<&tls::Pki>) -> Result<Proxies, String> {
        let server = FakeServer::bind()?;
        let inst_addr = setup::free_addr()?;
        let pass_proxy =
            setup::start_jatproxy(server.addr(), &Role::Instances(inst_addr), threads, "", tls)?;
        let mut pass_up = server.accept_component(tls)?;
        let mut pass_inst = setup::connect_instance(inst_addr, tls)?;
        setup::wait_instance_in_pool(&mut pass_up, &mut pass_inst)?;

        let server = FakeServer::bind()?;
        let seed_proxy = setup::start_jatproxy(server.addr(), &Role::Clients, threads, "", tls)?;
        let mut seed_up = server.accept_component(tls)?;
        setup::grant_members(&mut seed_up)?;
        Ok(Proxies {
            pass_proxy,
            pass_up,
            pass_inst,
            seed_proxy,
            seed_up,
        })
    }
}

impl Env {
    fn start(threads: usize, pki: &tls::Pki) -> Result<Env, String> {
        // The relay, its two ends introducing themselves with stream
        // headers so both framers start as on a component stream.
        let sink = FakeServer::bind()?;
        let (relay, relay_addr) = setup::start_relay(sink.addr(), threads)?;
        let a = TcpStream::connect(relay_addr).map_err(|e| format!("connect relay: {e}"))?;
        let mut relay_a = Conn::new(a, "relay end A").map_err(|e| e.to_string())?;
        let mut relay_b = sink.accept_raw("relay end B")?;
        relay_a.write_all(&handshake::server_header(D, "a"))?;
        relay_b.write_all(&handshake::server_header(D, "b"))?;
        for c in [&mut relay_a, &mut relay_b] {
            c.header_within(setup::WAIT)?;
        }
        Ok(Env {
            relay,
            relay_a,
            relay_b,
            plain: Proxies::start(threads, None)?,
            tls: Proxies::start(threads, Some(pki))?,
        })
    }

    /// One run; `tls` picks the proxies over TLS (the relay is plain).
    fn measure(&mut self, plan: &Plan<'_>, spec: &Spec, tls: bool) -> Result<Measured, String> {
        let px = if tls { &mut self.tls } else { &mut self.plain };
        let (proc, ends) = match (plan.path, plan.flow) {
            (Path::Relay, Flow::Pass) => (
                &mut self.relay,
                vec![
                    End {
                        conn: &mut self.relay_a,
                        sends: true,
                        completes_for: None,
                    },
                    End {
                        conn: &mut self.relay_b,
                        sends: false,
                        completes_for: Some(0),
                    },
                ],
            ),
            (Path::Relay, Flow::Seed) => (
                &mut self.relay,
                vec![
                    End {
                        conn: &mut self.relay_a,
                        sends: true,
                        completes_for: Some(0),
                    },
                    End {
                        conn: &mut self.relay_b,
                        sends: false,
                        completes_for: None,
                    },
                ],
            ),
            (Path::Proxy, Flow::Pass) => (
                &mut px.pass_proxy,
                vec![
                    End {
                        conn: &mut px.pass_up,
                        sends: true,
                        completes_for: None,
                    },
                    End {
                        conn: &mut px.pass_inst,
                        sends: false,
                        completes_for: Some(0),
                    },
                ],
            ),
            (Path::Proxy, Flow::Seed) => (
                &mut px.seed_proxy,
                vec![End {
                    conn: &mut px.seed_up,
                    sends: true,
                    completes_for: Some(0),
                }],
            ),
        };
        proc.check()?;
        // This run's own peak: VmHWM back to the current RSS first. If
        // the kernel refuses, the reading is the peak so far, and the
        // table says so.
        let peak_reset = procstat::reset_peak_rss(proc.pid()).is_ok();
        let cpu0 = procstat::cpu_mark(proc.pid())?;
        let outcome = engine::run(ends, plan, spec)?;
        let cpu = procstat::cpu_since(proc.pid(), &cpu0)?;
        let peak_rss_kib = procstat::status_kb(proc.pid(), "VmHWM").unwrap_or(0);
        proc.check()?;
        Ok(Measured {
            flow: plan.flow,
            outcome,
            cpu,
            peak_rss_kib,
            peak_reset,
        })
    }
}

/// `soak [SECONDS [RATE]]` (default 600 s, 5000 requests/s): the seed
/// flow with mixed stanzas at a steady rate against one jatproxy, printing
/// its RSS every 10 % of the time, to show memory stays flat.
fn soak(secs: u64, rate: f64) -> Result<(), String> {
    report::machine();
    let bodies = Bodies::new();
    let server = FakeServer::bind()?;
    let proxy = setup::start_jatproxy(server.addr(), &Role::Clients, 2, "", None)?;
    let mut up = server.accept_component(None)?;
    setup::grant_members(&mut up)?;
    let slice = Duration::from_secs(secs.max(10)) / 10;
    println!("soak: seed flow, mixed stanzas, {rate} requests/s, {secs} s; jatproxy RSS:");
    for (i, tag) in (1..=10u32).enumerate() {
        let spec = Spec {
            duration: slice,
            warmup: Duration::ZERO,
            rate: Some(rate),
            window: 128,
            window_bytes: 4 << 20,
            drain: Duration::from_secs(15),
        };
        let plan = Plan {
            tag,
            flow: Flow::Seed,
            size: Size::Mixed,
            path: Path::Proxy,
            bodies: &bodies,
        };
        let out = engine::run(
            vec![End {
                conn: &mut up,
                sends: true,
                completes_for: Some(0),
            }],
            &plan,
            &spec,
        )?;
        println!(
            "  {:>4} s: {} requests ok, VmRSS {} KiB, VmHWM {} KiB",
            slice.as_secs() * (i as u64 + 1),
            out.items,
            procstat::status_kb(proxy.pid(), "VmRSS")?,
            procstat::status_kb(proxy.pid(), "VmHWM")?
        );
    }
    Ok(())
}
