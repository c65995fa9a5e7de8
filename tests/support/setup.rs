//! jatproxy set up against a real server in the end-to-end tests: the
//! `[upstream]` table every one of them uses, and a start that waits
//! until jatproxy registered, showing the server's log when it did not;
//! and the real binary as a child process, its log lines tagged.

use std::fmt::Display;
use std::path::Path;
use std::process::Stdio;

use jatproxy::config;
use jatproxy::proxy::Proxy;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{D, SECRET, WAIT};

/// The `[upstream]` table for a server (or a relay) whose component port
/// is `server`: jatproxy registers as [`D`] with [`SECRET`] and
/// reconnects quickly, so a test that loses the session does not wait.
pub fn upstream_toml(server: impl Display) -> String {
    format!(
        "[upstream]\nserver = \"{server}\"\ndomain = \"{D}\"\nsecret = \"{SECRET}\"\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n"
    )
}

/// Starts jatproxy with `toml` and waits until its upstream session is
/// up; otherwise panics with `server_log()` (the server's log tail),
/// which says why the server refused it.
pub async fn start_registered(toml: &str, server_log: impl FnOnce() -> String) -> Proxy {
    let cfg = config::from_toml_str(toml)
        .unwrap_or_else(|e| panic!("jatproxy refuses the config: {e}\n{toml}"));
    let proxy = Proxy::start(cfg).await.expect("start");
    assert!(
        proxy.wait_for(WAIT, |s| s.upstream_online).await,
        "jatproxy did not register as {D}; server log:\n{}",
        server_log()
    );
    proxy
}

/// A jatproxy process (the real binary) with `config`; its log lines go
/// to `lines`, tagged.
pub fn spawn_jatproxy(
    tag: &'static str,
    config: &Path,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jatproxy"))
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run jatproxy");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for pipe in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = lines.send((tag, l));
            }
        });
    }
    child
}
