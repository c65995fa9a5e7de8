//! `jatproxy`: parse flags, load the configuration, start logging, run
//! until SIGTERM/SIGINT and shut down gracefully; reload the
//! configuration on SIGHUP.
//!
//! Exit status: 0 after a graceful stop (and for `--help`, `--version`,
//! a passing `--check-config`); 64 for an unusable command line or
//! configuration, with one line on stderr; 1 when the proxy cannot start.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use jatproxy::config::{self, Cli, LogFormat, EXIT_CONFIG};
use jatproxy::proxy::Proxy;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Swaps the log filter of the running subscriber (SIGHUP, `log.level`).
type LogHandle = reload::Handle<EnvFilter, Registry>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // `--help` and `--version`: clap's own output and status (0).
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(0));
        }
        // A usage error is one line, like a configuration error: what
        // lands in a journal or a supervisor's log must not be a help
        // screen, and the exit status tells "fix the invocation" (64).
        Err(e) => {
            eprintln!("jatproxy: {}", usage_error_line(&e));
            return exit_config();
        }
    };
    // The log filter is validated here too (`log.level`), so
    // `--check-config` refuses what would only fail once logging starts.
    let cfg = match config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jatproxy: {e}");
            return exit_config();
        }
    };
    if cli.check_config {
        println!("configuration ok: {}", cfg.summary());
        return ExitCode::SUCCESS;
    }
    let filter = match EnvFilter::try_new(&cfg.log.level) {
        Ok(f) => f,
        // Unreachable after `config::load`; kept so a change there cannot
        // turn into a panic here.
        Err(e) => {
            eprintln!("jatproxy: log.level: {e}");
            return exit_config();
        }
    };
    let (filter, log) = reload::Layer::new(filter);
    // Colours only on a terminal: under systemd, stderr goes to the
    // journal, where escape codes would be noise.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match cfg.log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    let runtime = match runtime_builder(cfg.service.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jatproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, cfg, log))
}

/// The runtime for `worker_threads`: one thread is tokio's current-thread
/// runtime, every task on the thread that runs `main`. A multi-thread
/// runtime with one worker would park that thread and hand every wake-up
/// across threads, which costs more than the one worker does (README
/// "Performance"). More than one, or `None` (one per CPU), is the
/// multi-thread runtime.
fn runtime_builder(worker_threads: Option<usize>) -> tokio::runtime::Builder {
    match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                builder.worker_threads(n);
            }
            builder
        }
    }
}

/// The status for an unusable configuration or command line (64).
fn exit_config() -> ExitCode {
    ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1))
}

/// clap's error, which spans several lines (the error, a tip, the usage,
/// a pointer to `--help`), as its first line, without clap's `error: `
/// prefix: `unexpected argument '--bogus' found`.
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid command line");
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

async fn run(cli: Cli, cfg: config::Config, log: LogHandle) -> ExitCode {
    // Before anything else: the default action of SIGHUP, SIGTERM and
    // SIGINT ends the process at once, so a signal sent while starting
    // must already find its handler (a SIGINT then stops the proxy
    // gracefully as soon as it is up).
    let mut signals = Signals::install();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), settings = %cfg.summary(), "jatproxy starting");
    let proxy = match Proxy::start(cfg).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        // A core that died (a bug, logged where it happened) routes
        // nothing any more: exit with a failure so that the service
        // manager restarts jatproxy, rather than linger accepting
        // connections it cannot serve.
        let signal = tokio::select! {
            s = signals.next() => s,
            () = proxy.failed() => {
                tracing::error!("the core task failed: exiting so that jatproxy is restarted");
                return ExitCode::FAILURE;
            }
        };
        match signal {
            Signal::Reload => reload_config(&cli, &proxy, &log).await,
            Signal::Stop => break,
        }
    }
    let grace = proxy.config().service.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: answering pending requests and closing streams");
    if !proxy.shutdown(grace).await {
        tracing::warn!("grace period over with tasks still running");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the file (the command line's flags still win over
/// it) and applies what can change live. Anything wrong — the file does
/// not validate, the log filter does not parse, a key needs a restart —
/// is one error line, and the running configuration stays.
async fn reload_config(cli: &Cli, proxy: &Proxy, log: &LogHandle) {
    const REFUSED: &str = "configuration reload refused, keeping the running configuration";
    let source = cli.config.as_ref().map_or_else(
        || "the command line (no config file)".to_owned(),
        |p| p.display().to_string(),
    );
    tracing::info!("SIGHUP: reloading the configuration from {source}");
    let new = match config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{REFUSED}: {e}");
            proxy.reload_refused().await;
            return;
        }
    };
    let filter = match EnvFilter::try_new(&new.log.level) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{REFUSED}: log.level: {e}");
            proxy.reload_refused().await;
            return;
        }
    };
    let summary = new.summary();
    match proxy.reload(new).await {
        Ok(plan) if plan.is_empty() => tracing::info!("configuration reloaded: nothing changed"),
        Ok(plan) => {
            if plan.live.contains(&"log.level") {
                if let Err(e) = log.reload(filter) {
                    tracing::warn!("cannot change the log level: {e}");
                }
            }
            tracing::info!(
                changed = %plan.changed().join(","),
                applied_to_new_connections = %plan.next_connection.join(","),
                settings = %summary,
                "configuration reloaded"
            );
        }
        Err(e) => tracing::error!("{REFUSED}: {e}"),
    }
}

enum Signal {
    Reload,
    Stop,
}

/// The signals the process acts on. A handler that cannot be installed
/// is logged and left out (the process then keeps that signal's default).
struct Signals {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let get = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot handle {name}: {e}");
                    None
                }
            };
            Signals {
                hup: get(SignalKind::hangup(), "SIGHUP"),
                term: get(SignalKind::terminate(), "SIGTERM"),
                // Registered now, not lazily by `ctrl_c()` at the first
                // wait, which comes only after the proxy has started.
                int: get(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(sig) = s {
                    if sig.recv().await.is_some() {
                        return;
                    }
                }
                std::future::pending().await
            }
            tokio::select! {
                _ = recv(&mut self.hup) => Signal::Reload,
                _ = recv(&mut self.term) => Signal::Stop,
                _ = recv(&mut self.int) => Signal::Stop,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
