//! The command line of the real binary: exit statuses, the one-line
//! errors an operator (or systemd's journal) sees, `--check-config`,
//! `--version`, the JSON startup line, and SIGINT right after start.
//!
//! Each test runs `target/debug/jatproxy` as a child process with a
//! clean environment for jatproxy's own variables, so a developer's
//! `JATPROXY_CONFIG` or secret cannot change the outcome.

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_jatproxy");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const EXIT_CONFIG: i32 = 64;
const SECRET: &str = "cli-test-s3cr3t-Zq9";
/// Generous: the binary starts in milliseconds, but the machine is shared.
const LIMIT: Duration = Duration::from_secs(30);

fn jatproxy() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "JATPROXY_CONFIG",
        "JATPROXY_UPSTREAM_SECRET",
        "JATPROXY_INSTANCE_SECRET",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c.stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    jatproxy()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

/// A valid configuration for an upstream at `server`, with `extra`
/// appended (new sections only: the ones below may not repeat).
fn config_text(server: &str, extra: &str) -> String {
    format!(
        r#"
[upstream]
server = "{server}"
domain = "proxy.example.test"
secret = "{SECRET}"

[client_proxy]
target_address = "impl@example.test"

{extra}
"#
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("jatproxy.toml");
    let mut f = std::fs::File::create(&path).expect("create config");
    f.write_all(text.as_bytes()).expect("write config");
    path
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Exit 64 with exactly one stderr line, `jatproxy: …`; returns it.
fn one_line_refusal(o: &Output) -> String {
    let lines = stderr_lines(o);
    assert_eq!(o.status.code(), Some(EXIT_CONFIG), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "exactly one line: {lines:?}");
    assert!(lines[0].starts_with("jatproxy: "), "{lines:?}");
    assert!(o.stdout.is_empty(), "nothing on stdout");
    lines[0].clone()
}

#[test]
fn bad_value_in_the_file_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (value, says) in [
        ("30x", "unknown unit \"x\""),
        // Parses, but used to panic at the first request.
        ("300000000000y", "is too long (at most 1day)"),
    ] {
        let text = config_text(
            "127.0.0.1:5347",
            &format!("[routing]\niq_timeout = \"{value}\""),
        );
        let path = write_config(dir.path(), &text);
        let o = run(&["--config", path.to_str().expect("utf-8 path")]);
        let line = one_line_refusal(&o);
        assert!(line.contains("routing.iq_timeout: "), "{line}");
        assert!(line.contains(says), "{line}");
        assert!(!line.contains(SECRET));
    }
}

#[test]
fn bad_flag_is_one_line() {
    let o = run(&["--bogus"]);
    assert_eq!(
        one_line_refusal(&o),
        "jatproxy: unexpected argument '--bogus' found"
    );
    let o = run(&["--balancing", "sometimes"]);
    let line = one_line_refusal(&o);
    assert!(
        line.starts_with("jatproxy: invalid value 'sometimes' for '--balancing"),
        "{line}"
    );
}

#[test]
fn check_config_refuses_a_bad_log_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text("127.0.0.1:5347", "[log]\nlevel = \"jatproxy=loud\"");
    let path = write_config(dir.path(), &text);
    let path = path.to_str().expect("utf-8 path");
    let line = one_line_refusal(&run(&["--config", path, "--check-config"]));
    assert!(line.starts_with("jatproxy: log.level: "), "{line}");
    // The flag is checked the same way, and wins over the file.
    let good = write_config(dir.path(), &config_text("127.0.0.1:5347", ""));
    let good = good.to_str().expect("utf-8 path");
    let line = one_line_refusal(&run(&[
        "--config",
        good,
        "--log-level",
        "info,[{",
        "--check-config",
    ]));
    assert!(line.starts_with("jatproxy: log.level: "), "{line}");
}

/// The continuity and qualification keys that `--check-config` must
/// refuse: one line naming the key and what is wrong, exit 64, whether
/// the value comes from the file or a flag.
#[test]
fn check_config_refuses_bad_continuity_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: &[(&str, &str)] = &[
        (
            "[client_proxy]\nresources = \"re:focus-(\"",
            "jatproxy: client_proxy.resources: \"focus-(\" is not a valid regex: ",
        ),
        (
            "[routing]\nretry_on = [\"feature-not-implemented\", \"busy\"]",
            "jatproxy: routing.retry_on: \"busy\" is not a stanza error condition (RFC 6120 8.3.3: ",
        ),
        (
            "[routing]\nretry_on = [\"service-unavailable\"]\nretry_limit = 0",
            "jatproxy: routing.retry_limit: is 0 while routing.retry_on is set",
        ),
    ];
    for (extra, starts) in rows {
        // [client_proxy] is already in the base text: put the key there.
        let text = match extra.strip_prefix("[client_proxy]\n") {
            Some(key) => config_text("127.0.0.1:5347", "")
                .replace("[client_proxy]\n", &format!("[client_proxy]\n{key}\n")),
            None => config_text("127.0.0.1:5347", extra),
        };
        let path = write_config(dir.path(), &text);
        let path = path.to_str().expect("utf-8 path");
        let line = one_line_refusal(&run(&["--config", path, "--check-config"]));
        assert!(line.starts_with(starts), "{extra}: {line}");
    }
    // The same from flags.
    let good = write_config(dir.path(), &config_text("127.0.0.1:5347", ""));
    let good = good.to_str().expect("utf-8 path");
    for (flags, starts) in [
        (
            &["--resources", "re:[z-a]"][..],
            "jatproxy: client_proxy.resources: \"[z-a]\" is not a valid regex: ",
        ),
        (
            &["--retry-on", "conflict,nope"][..],
            "jatproxy: routing.retry_on: \"nope\" is not a stanza error condition",
        ),
        (
            &["--retry-on", "conflict", "--retry-limit", "0"][..],
            "jatproxy: routing.retry_limit: is 0 while routing.retry_on is set",
        ),
    ] {
        let mut args = vec!["--config", good];
        args.extend_from_slice(flags);
        args.push("--check-config");
        let line = one_line_refusal(&run(&args));
        assert!(line.starts_with(starts), "{flags:?}: {line}");
    }
    // And the good forms pass, shown in the effective settings.
    let o = run(&[
        "--config",
        good,
        "--resources",
        "re:focus-[0-9]+",
        "--retry-on",
        "feature-not-implemented,service-unavailable",
        "--check-config",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stderr: {:?}", stderr_lines(&o));
    assert!(
        stdout.contains("client_proxy.resources=\"re:focus-[0-9]+\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("routing.retry_on=feature-not-implemented,service-unavailable"),
        "{stdout}"
    );
}

#[test]
fn check_config_passes_a_good_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        "127.0.0.1:5347",
        "[log]\nlevel = \"jatproxy=debug,info\"\n[service]\nworker_threads = 1",
    );
    let path = write_config(dir.path(), &text);
    let o = run(&[
        "--config",
        path.to_str().expect("utf-8 path"),
        "--check-config",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stderr: {:?}", stderr_lines(&o));
    assert!(o.stderr.is_empty(), "{:?}", stderr_lines(&o));
    assert!(stdout.starts_with("configuration ok: "), "{stdout}");
    assert!(
        stdout.contains("log.level=\"jatproxy=debug,info\""),
        "{stdout}"
    );
    assert!(stdout.contains("upstream.secret=[redacted]"), "{stdout}");
    assert!(!stdout.contains(SECRET), "{stdout}");
}

#[test]
fn version_and_help_are_clap_output_with_status_zero() {
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("jatproxy {VERSION}\n")
    );
    assert!(o.stderr.is_empty());
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Usage: jatproxy [OPTIONS]"), "{help}");
    assert!(help.contains("--check-config"), "{help}");
}

/// A running jatproxy whose stderr lines arrive on a channel; killed on
/// drop if still running.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(config: &Path, args: &[&str]) -> Self {
        let mut child = jatproxy()
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line satisfying `pred`, waiting for it.
    fn line_where(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no such line ({e}); stderr so far: {:?}", self.seen),
            }
        }
    }

    /// Waits for the process to exit on its own; its exit code. Its
    /// stderr closes when it exits, which ends the line channel.
    fn exit_code(mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("did not exit; stderr: {:?}", self.seen)
                }
            }
        }
        match self.child.wait() {
            Ok(status) => status.code(),
            Err(e) => panic!("wait: {e}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An upstream that takes the TCP connection and never answers: enough
/// for the proxy to start and log, without a server.
fn silent_upstream() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local addr").to_string();
    (l, addr)
}

#[test]
fn json_startup_line_carries_the_version_and_no_secret() {
    let (_upstream, addr) = silent_upstream();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &config_text(&addr, ""));
    let mut p = Running::start(&path, &["--log-format", "json"]);
    let line = p.line_where(|l| l.contains("jatproxy starting"));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let fields = &v["fields"];
    assert_eq!(fields["message"], "jatproxy starting", "{line}");
    assert_eq!(fields["version"], VERSION, "{line}");
    assert_eq!(v["level"], "INFO", "{line}");
    let settings = fields["settings"].as_str().expect("settings is a string");
    assert!(
        settings.contains("upstream.secret=[redacted]"),
        "{settings}"
    );
    assert!(
        settings.contains(&format!("upstream.server={addr}")),
        "{settings}"
    );
    for seen in &p.seen {
        assert!(!seen.contains(SECRET), "secret logged: {seen}");
        assert!(
            serde_json::from_str::<serde_json::Value>(seen).is_ok(),
            "every line is JSON: {seen}"
        );
    }
}

#[test]
fn sigint_right_after_start_stops_gracefully() {
    let (_upstream, addr) = silent_upstream();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&addr, "[service]\nshutdown_grace = \"1s\"");
    let path = write_config(dir.path(), &text);
    let mut p = Running::start(&path, &[]);
    // The handlers are installed before this line is logged, and the
    // proxy may still be starting: SIGINT must not kill it outright.
    p.line_where(|l| l.contains("jatproxy starting"));
    let pid = p.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    assert_eq!(
        p.exit_code(),
        Some(0),
        "a graceful stop, not death by signal"
    );
}
