//! `jatproxy`: parse flags, load the configuration, start logging, run
//! until SIGTERM/SIGINT, shut down gracefully.

use std::process::ExitCode;

use clap::Parser;
use jatproxy::config::{self, Cli, LogFormat, EXIT_CONFIG};
use jatproxy::proxy::Proxy;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let cfg = match config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jatproxy: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if cli.check_config {
        println!("configuration ok: {}", cfg.summary());
        return ExitCode::SUCCESS;
    }
    let filter = match EnvFilter::try_new(&cfg.log.level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("jatproxy: log.level: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.service.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jatproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg))
}

async fn run(cfg: config::Config) -> ExitCode {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), settings = %cfg.summary(), "jatproxy starting");
    let grace = cfg.service.shutdown_grace;
    let proxy = match Proxy::start(cfg).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!(grace = ?grace, "shutting down: answering pending requests and closing streams");
    if proxy.shutdown(grace).await {
        ExitCode::SUCCESS
    } else {
        tracing::warn!("grace period over with tasks still running");
        ExitCode::SUCCESS
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
