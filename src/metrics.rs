//! The Prometheus endpoint: the proxy's [`Status`] snapshot rendered at
//! each scrape, and a minimal HTTP/1.1 server for `GET /metrics`.
//!
//! No second set of books: the router's [`Stats`](crate::router::Stats)
//! and the core's [`Status`] already count requests, replies, errors,
//! the pool and the pending table. This module adds only what no one
//! counted before ([`Counters`]: traffic per direction, handshake
//! failures, connect failures, reloads), kept by the core task like the
//! rest (they live in [`crate::status`], beside [`Status`]), so a scrape
//! reads one consistent snapshot and nothing is locked. This module only
//! renders and serves: it may not import the core or the app.
//!
//! The server is deliberately tiny (no HTTP crate): one request per
//! connection, a bounded request head read within a timeout, a bounded
//! number of concurrent scrapes, `Connection: close`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::pool::Member;
use crate::router::{AdmissionStats, MemberStats, Stats};
use crate::stanza::StanzaError;
use crate::status::Status;
// Where they were before `status` existed; tests still name them here.
pub use crate::status::{handshake_reason, Counters, Direction, Observation, Side};
use crate::xml::frame::Limit;

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

/// The Prometheus text exposition (format 0.0.4) of one status snapshot.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(Arc::new(status.clone()))));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct Snapshot(Arc<Status>);

type Enc<'a> = DescriptorEncoder<'a>;

fn counter(e: &mut Enc<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(v);
    m.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut Enc<'_>, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(v);
    m.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family: one series per label set.
fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    e: &mut Enc<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

/// What keeps requests alive through member changes (issue 13): the
/// hold, re-dispatch, retries and quarantine.
fn continuity(e: &mut Enc<'_>, st: &Stats) -> Result<(), std::fmt::Error> {
    for (name, help, v) in [
        (
            "jatproxy_requests_held",
            "Requests that found no eligible member and waited for one (routing.hold_when_empty).",
            st.requests_held,
        ),
        (
            "jatproxy_requests_released",
            "Held requests sent to a member that joined or came back.",
            st.requests_released,
        ),
        (
            "jatproxy_requests_hold_expired",
            "Held requests answered because their hold ended.",
            st.hold_expired,
        ),
        (
            "jatproxy_requests_redispatched",
            "Requests in flight to a member that left, sent on to another (routing.redispatch).",
            st.requests_redispatched,
        ),
        (
            "jatproxy_requests_retried",
            "Requests a member refused (routing.retry_on), sent on to another.",
            st.requests_retried,
        ),
        (
            "jatproxy_replies_late",
            "Replies and bounces from a lost member whose request went on elsewhere: dropped.",
            st.replies_late,
        ),
        (
            "jatproxy_quarantines",
            "Times a member was taken out of the rotation for refusing in a row.",
            st.quarantines,
        ),
    ] {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "jatproxy_members_quarantined",
        "Members in the pool but out of the rotation now for refusing \
         (routing.quarantine_after); not counted in jatproxy_pool_members.",
        gauge_i64(st.quarantined.len()),
    )
}

fn member_labels(m: &Member) -> [(&'static str, String); 2] {
    match m {
        Member::Resource(jid) => [("kind", "resource".into()), ("member", jid.clone())],
        Member::Instance(id) => [("kind", "instance".into()), ("member", id.to_string())],
    }
}

/// Client resources kept out of the pool (`client_proxy.resources`,
/// `require_feature`), and those not in it yet while asked.
fn admission(e: &mut Enc<'_>, a: &AdmissionStats) -> Result<(), std::fmt::Error> {
    counter(
        e,
        "jatproxy_members_refused",
        "Client resources refused admission to the pool (by name, by disco#info feature, \
         or for not answering it in time); one per refusal.",
        a.refused,
    )?;
    gauge(
        e,
        "jatproxy_members_qualifying",
        "Client resources asked their disco#info and not in the pool until they answer.",
        i64::try_from(a.qualifying).unwrap_or(i64::MAX),
    )
}

fn gauge_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A member counter family (`jatproxy_member_requests_*`): one series per
/// member in the pool, and `member="other"` for those past the series cap
/// once it counted anything.
fn member_counters(
    e: &mut Enc<'_>,
    name: &str,
    help: &str,
    st: &Stats,
    field: fn(&MemberStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (m, ms) in &st.members {
        ConstCounter::new(field(ms)).encode(d.encode_family(&member_labels(m))?)?;
    }
    let other = field(&st.members_other);
    if other > 0 {
        let l = [("kind", "other"), ("member", "other")];
        ConstCounter::new(other).encode(d.encode_family(&l)?)?;
    }
    Ok(())
}

/// The families in the order they are exposed; each function renders a
/// few related ones (the order is part of the output, so it stays here).
impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.0;
        let e = &mut e;
        upstream_link(e, s)?;
        pool(e, s)?;
        admission(e, &s.stats.admission)?;
        upstream_buffer(e, s)?;
        requests(e, &s.stats)?;
        continuity(e, &s.stats)?;
        counter(
            e,
            "jatproxy_members_cut_slow",
            "Instances cut for not reading: queue at its bound (instances.queue or \
             instances.queue_bytes) and no bytes taken for instances.stall_timeout.",
            s.counters.members_cut_slow,
        )?;
        stanzas(e, &s.stats, &s.counters)?;
        service(e, &s.counters)
    }
}

/// The session with the XMPP server: up, sessions, connect and handshake
/// failures.
fn upstream_link(e: &mut Enc<'_>, s: &Status) -> Result<(), std::fmt::Error> {
    let c = &s.counters;
    gauge(
        e,
        "jatproxy_upstream_up",
        "1 while the component session with the XMPP server is established.",
        i64::from(s.upstream_online),
    )?;
    counter(
        e,
        "jatproxy_upstream_sessions",
        "Upstream sessions established (handshake completed).",
        s.upstream_sessions,
    )?;
    counter(
        e,
        "jatproxy_upstream_reconnects",
        "Upstream sessions established after the first one.",
        s.upstream_sessions.saturating_sub(1),
    )?;
    counter(
        e,
        "jatproxy_upstream_connect_failures",
        "TCP connections to the XMPP server that failed or timed out.",
        c.upstream_connect_failures,
    )?;
    let mut d = e.encode_descriptor(
        "jatproxy_handshake_failures",
        "XEP-0114 handshakes that failed, by side, reason and stream error condition.",
        None,
        MetricType::Counter,
    )?;
    for ((side, reason, condition), n) in &c.handshake_failures {
        let labels = [
            ("side", side.as_str()),
            ("reason", *reason),
            ("condition", *condition),
        ];
        ConstCounter::new(*n).encode(d.encode_family(&labels)?)?;
    }
    let mut d = e.encode_descriptor(
        "jatproxy_tls_handshake_failures",
        "TLS handshakes that failed, by link (upstream, instance) and reason \
         (unknown-ca, name-mismatch, expired, not-tls, ...).",
        None,
        MetricType::Counter,
    )?;
    for ((side, reason), n) in &c.tls_handshake_failures {
        let labels = [("link", side.as_str()), ("reason", *reason)];
        ConstCounter::new(*n).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The pool's members by kind, and the requests waiting on them.
fn pool(e: &mut Enc<'_>, s: &Status) -> Result<(), std::fmt::Error> {
    let instances = s
        .pool
        .iter()
        .filter(|m| matches!(m, Member::Instance(_)))
        .count();
    gauge(
        e,
        "jatproxy_instances_connected",
        "Component instances connected, quarantined ones included.",
        gauge_i64(instances),
    )?;
    {
        let mut d = e.encode_descriptor(
            "jatproxy_pool_members",
            "Members able to take a request now, by kind: qualified and not quarantined \
             (see jatproxy_members_qualifying and jatproxy_members_quarantined).",
            None,
            MetricType::Gauge,
        )?;
        let n = s.eligible();
        for (kind, n) in [("resource", n.resources), ("instance", n.instances)] {
            ConstGauge::new(gauge_i64(n)).encode(d.encode_family(&[("kind", kind)])?)?;
        }
    }
    gauge(
        e,
        "jatproxy_pending_requests",
        "Requests in flight waiting for their one answer.",
        gauge_i64(s.pending),
    )
}

/// What is held for the XMPP server while it is away
/// (`limits.upstream_buffer`), under its name and its deprecated one.
fn upstream_buffer(e: &mut Enc<'_>, s: &Status) -> Result<(), std::fmt::Error> {
    gauge(
        e,
        "jatproxy_upstream_buffer",
        "Stanzas held while the upstream session is down (bounded by limits.upstream_buffer).",
        gauge_i64(s.upstream_buffer),
    )?;
    counter(
        e,
        "jatproxy_upstream_buffer_dropped",
        "Stanzas dropped because limits.upstream_buffer was full (never iq responses).",
        s.upstream_buffer_dropped,
    )?;
    // The old names of the two above, which dashboards use: kept for
    // one release as aliases, removed in the next.
    gauge(
        e,
        "jatproxy_upstream_backlog",
        "Deprecated alias of jatproxy_upstream_buffer, removed in the next release.",
        gauge_i64(s.upstream_buffer),
    )?;
    counter(
        e,
        "jatproxy_upstream_backlog_dropped",
        "Deprecated alias of jatproxy_upstream_buffer_dropped_total, removed in the next release.",
        s.upstream_buffer_dropped,
    )?;
    counter(
        e,
        "jatproxy_upstream_requests_withdrawn",
        "Instance iq requests held while upstream was down and answered (timed out) before it came back, so not sent.",
        s.requests_withdrawn,
    )?;
    counter(
        e,
        "jatproxy_upstream_answers_after_reconnect",
        "Answers made while upstream was down, written once it was back. Requesters whose \
         sessions ended meanwhile (a server restart) do not get them: the server drops them unseen.",
        s.stats.answers_after_reconnect,
    )
}

/// Requests and their answers: routed, per member, the errors the proxy
/// wrote, timeouts, replies dropped.
fn requests(e: &mut Enc<'_>, st: &Stats) -> Result<(), std::fmt::Error> {
    counter(
        e,
        "jatproxy_requests_routed",
        "Inbound iq requests forwarded to a pool member.",
        st.requests_routed,
    )?;
    counter(
        e,
        "jatproxy_requests_outbound",
        "iq requests started by target resources or instances, sent upstream.",
        st.requests_outbound,
    )?;
    counter(
        e,
        "jatproxy_replies_delivered",
        "Member and peer replies delivered to whoever waited for them.",
        st.replies_delivered,
    )?;
    member_counters(
        e,
        "jatproxy_member_requests_routed",
        "Requests forwarded per pool member (members in the pool now; \
         member=\"other\" sums those past the series cap).",
        st,
        |ms| ms.routed,
    )?;
    member_counters(
        e,
        "jatproxy_member_requests_answered",
        "Replies per pool member delivered to the requester.",
        st,
        |ms| ms.answered,
    )?;
    counters(
        e,
        "jatproxy_errors_generated",
        "Error replies jatproxy wrote itself, by condition.",
        StanzaError::ALL
            .iter()
            .map(|x| ([("condition", x.condition())], st.generated(*x))),
    )?;
    counter(
        e,
        "jatproxy_timeouts",
        "Requests answered remote-server-timeout because no reply came in time.",
        st.generated(StanzaError::RemoteServerTimeout),
    )?;
    counters(
        e,
        "jatproxy_replies_dropped",
        "Replies dropped: unmatched (late after a timeout, duplicate) or \
         spoofed (from someone other than the member asked).",
        [
            ([("reason", "unmatched")], st.replies_unmatched),
            ([("reason", "spoofed")], st.replies_spoofed),
        ],
    )
}

/// Stanzas: dropped, skipped over a limit, and the traffic per link and
/// direction.
fn stanzas(e: &mut Enc<'_>, st: &Stats, c: &Counters) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "jatproxy_stanzas_dropped",
        "Other stanzas dropped: unaddressed/foreign, or of no use to the proxy.",
        [
            ([("reason", "unaddressed")], st.dropped_unaddressed),
            ([("reason", "other")], st.dropped_other),
        ],
    )?;
    counters(
        e,
        "jatproxy_stanzas_skipped",
        "Stanzas from the server skipped for breaking a per-stanza limit \
         (limits.upstream_*), by limit; the session went on.",
        Limit::ALL
            .iter()
            .zip(st.skipped)
            .map(|(l, n)| ([("limit", l.as_str())], n)),
    )?;
    counters(
        e,
        "jatproxy_stanzas",
        "Stanzas per link and direction (headers and keepalives excluded).",
        Direction::ALL.iter().map(|d| {
            let (peer, dir) = d.labels();
            ([("peer", peer), ("direction", dir)], c.stanzas(*d))
        }),
    )?;
    counters(
        e,
        "jatproxy_stanza_bytes",
        "Stanza bytes per link and direction.",
        Direction::ALL.iter().map(|d| {
            let (peer, dir) = d.labels();
            ([("peer", peer), ("direction", dir)], c.bytes(*d))
        }),
    )
}

/// The process itself: configuration reloads and the version.
fn service(e: &mut Enc<'_>, c: &Counters) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "jatproxy_config_reloads",
        "Configuration reloads (SIGHUP), applied or refused.",
        [
            ([("result", "applied")], c.reloads_applied),
            ([("result", "refused")], c.reloads_refused),
        ],
    )?;
    let mut d = e.encode_descriptor(
        "jatproxy_build",
        "The running version.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(1i64).encode(d.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more connections are closed unanswered.
const MAX_CONCURRENT: usize = 8;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (query ignored); `head` for `HEAD`.
    Metrics { head: bool },
    /// Any other path.
    NotFound,
    /// A method other than GET and HEAD.
    MethodNotAllowed,
}

/// Why a request head is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request line")]
    BadRequest,
    #[error("request head too large")]
    TooLarge,
}

/// Parses the request line of a complete head (up to the blank line).
/// Headers are not needed to answer, so they are not looked at.
pub fn parse_head(head: &[u8]) -> Result<Route, HeadError> {
    let line_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(HeadError::BadRequest)?;
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| HeadError::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequest);
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/1.")
    {
        return Err(HeadError::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ok(Route::MethodNotAllowed),
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(if path == "/metrics" {
        Route::Metrics { head: head_only }
    } else {
        Route::NotFound
    })
}

/// Index just past the blank line ending a request head, if there is one.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads one request head and answers it; `body` renders the metrics.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    body: impl FnOnce() -> String,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let route = loop {
        if let Some(end) = head_end(&buf) {
            break parse_head(&buf[..end]);
        }
        if buf.len() >= MAX_HEAD {
            break Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_HEAD - buf.len());
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            // Closed before a full head: nothing to answer.
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (code, extra, text, head_only) = match route {
        Ok(Route::Metrics { head }) => ("200 OK", "", body(), head),
        Ok(Route::NotFound) => ("404 Not Found", "", "try /metrics\n".to_owned(), false),
        Ok(Route::MethodNotAllowed) => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n".to_owned(),
            false,
        ),
        Err(HeadError::BadRequest) => ("400 Bad Request", "", "bad request\n".to_owned(), false),
        Err(HeadError::TooLarge) => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n".to_owned(),
            false,
        ),
    };
    let content_type = if code.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = String::with_capacity(text.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        text.len()
    );
    if !head_only {
        out.push_str(&text);
    }
    io.write_all(out.as_bytes()).await?;
    io.shutdown().await
}

/// Serves `GET /metrics` on `listener` from the latest `status` until
/// `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer.addr = %peer, "metrics: too many scrapes at once; closing");
            continue;
        };
        let status = status.clone();
        let span = tracing::debug_span!("metrics", peer.addr = %peer, role = "metrics");
        tasks.spawn(
            async move {
                let _permit = permit;
                let work = answer(sock, || render(&status.borrow()));
                match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("metrics request failed: {e}"),
                    Err(_) => tracing::debug!("metrics request timed out"),
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::HandshakeError;
    use crate::router::MemberStats;

    #[test]
    fn request_lines() {
        let ok = |s: &str| parse_head(s.as_bytes());
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Metrics { head: false })
        );
        assert_eq!(
            ok("HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Ok(Route::Metrics { head: true })
        );
        assert_eq!(ok("GET / HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(ok("GET /metricsX HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(
            ok("POST /metrics HTTP/1.1\r\n\r\n"),
            Ok(Route::MethodNotAllowed)
        );
        for bad in [
            "GET /metrics\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/2\r\n\r\n",
            "get /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "\u{1}\u{2}\r\n\r\n",
            "",
        ] {
            assert_eq!(ok(bad), Err(HeadError::BadRequest), "{bad:?}");
        }
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(HeadError::BadRequest)
        );
    }

    async fn exchange(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(answer(server, || "metric 1\n".to_owned()));
        client.write_all(request).await.expect("write");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        task.await.expect("join").expect("answer");
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn answers() {
        let r = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 9\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nmetric 1\n"), "{r}");
        let r = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = exchange(b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD"),
            "{r}"
        );
        let r = exchange(b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // A head that never ends is cut at the bound, not buffered.
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        let r = exchange(&huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    #[tokio::test]
    async fn a_client_that_closes_early_gets_nothing() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(answer(server, || unreachable!("no body for a cut request")));
        client.write_all(b"GET /met").await.expect("write");
        client.shutdown().await.expect("shutdown");
        drop(client);
        assert!(task.await.expect("join").is_ok());
    }

    /// The value of the series whose line starts with `series` + ' '.
    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn render_covers_every_number() {
        let mut s = Status {
            upstream_online: true,
            upstream_sessions: 3,
            pool: vec![
                Member::Resource("impl@example.test/a\"b".into()),
                Member::Instance(4),
                // Connected, but quarantined: not able to serve now.
                Member::Instance(9),
            ],
            pending: 5,
            upstream_buffer: 6,
            upstream_buffer_dropped: 7,
            requests_withdrawn: 8,
            ..Status::default()
        };
        s.stats.requests_routed = 11;
        s.stats.replies_unmatched = 12;
        s.stats.replies_spoofed = 13;
        s.stats.requests_held = 21;
        s.stats.requests_released = 22;
        s.stats.hold_expired = 23;
        s.stats.requests_redispatched = 24;
        s.stats.requests_retried = 25;
        s.stats.replies_late = 26;
        s.stats.quarantines = 27;
        s.stats.quarantined.insert(Member::Instance(9));
        s.stats.answers_after_reconnect = 29;
        s.stats.errors_generated[1] = 14; // remote-server-timeout
        s.stats.members.insert(
            Member::Instance(4),
            MemberStats {
                routed: 15,
                answered: 16,
            },
        );
        s.stats.members.insert(
            Member::Resource("impl@example.test/a\"b".into()),
            MemberStats {
                routed: 1,
                answered: 0,
            },
        );
        s.counters.stanza(Direction::UpstreamIn, 100);
        s.counters.stanza(Direction::UpstreamIn, 50);
        s.counters.observe(Observation::HandshakeFailed {
            side: Side::Instance,
            reason: "rejected",
            condition: "not-authorized",
        });
        s.counters.observe(Observation::UpstreamConnectFailed);
        s.counters.observe(Observation::TlsHandshakeFailed {
            side: Side::Upstream,
            reason: "unknown-ca",
        });
        let t = render(&s);
        for (series, v) in [
            (
                "jatproxy_tls_handshake_failures_total{link=\"upstream\",reason=\"unknown-ca\"}",
                1,
            ),
            ("jatproxy_upstream_up", 1),
            ("jatproxy_upstream_sessions_total", 3),
            ("jatproxy_upstream_reconnects_total", 2),
            ("jatproxy_upstream_connect_failures_total", 1),
            (
                "jatproxy_handshake_failures_total{side=\"instance\",reason=\"rejected\",condition=\"not-authorized\"}",
                1,
            ),
            ("jatproxy_instances_connected", 2),
            ("jatproxy_pool_members{kind=\"resource\"}", 1),
            ("jatproxy_pool_members{kind=\"instance\"}", 1),
            ("jatproxy_pending_requests", 5),
            ("jatproxy_upstream_buffer", 6),
            ("jatproxy_upstream_buffer_dropped_total", 7),
            // The deprecated aliases say the same.
            ("jatproxy_upstream_backlog", 6),
            ("jatproxy_upstream_backlog_dropped_total", 7),
            ("jatproxy_upstream_requests_withdrawn_total", 8),
            ("jatproxy_upstream_answers_after_reconnect_total", 29),
            ("jatproxy_requests_routed_total", 11),
            ("jatproxy_replies_dropped_total{reason=\"unmatched\"}", 12),
            ("jatproxy_replies_dropped_total{reason=\"spoofed\"}", 13),
            (
                "jatproxy_errors_generated_total{condition=\"remote-server-timeout\"}",
                14,
            ),
            (
                "jatproxy_errors_generated_total{condition=\"service-unavailable\"}",
                0,
            ),
            ("jatproxy_timeouts_total", 14),
            ("jatproxy_requests_held_total", 21),
            ("jatproxy_requests_released_total", 22),
            ("jatproxy_requests_hold_expired_total", 23),
            ("jatproxy_requests_redispatched_total", 24),
            ("jatproxy_requests_retried_total", 25),
            ("jatproxy_replies_late_total", 26),
            ("jatproxy_quarantines_total", 27),
            ("jatproxy_members_quarantined", 1),
            (
                "jatproxy_member_requests_routed_total{kind=\"instance\",member=\"4\"}",
                15,
            ),
            (
                "jatproxy_member_requests_answered_total{kind=\"instance\",member=\"4\"}",
                16,
            ),
            // Label values are escaped: a resource may contain a quote.
            (
                "jatproxy_member_requests_routed_total{kind=\"resource\",member=\"impl@example.test/a\\\"b\"}",
                1,
            ),
            (
                "jatproxy_stanzas_total{peer=\"upstream\",direction=\"in\"}",
                2,
            ),
            (
                "jatproxy_stanza_bytes_total{peer=\"upstream\",direction=\"in\"}",
                150,
            ),
            (
                "jatproxy_stanzas_total{peer=\"instance\",direction=\"out\"}",
                0,
            ),
            ("jatproxy_config_reloads_total{result=\"applied\"}", 0),
        ] {
            assert_eq!(value(&t, series), Some(v), "{series} in\n{t}");
        }
        assert!(
            t.contains("# TYPE jatproxy_requests_routed_total counter\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE jatproxy_pending_requests gauge\n"),
            "{t}"
        );
        assert!(t.contains("jatproxy_build{version=\""), "{t}");
    }

    #[test]
    fn peer_supplied_conditions_cannot_mint_series() {
        let e = HandshakeError::Refused {
            domain: "d".into(),
            condition: crate::xml::StreamCondition::from_name("made-up-by-the-peer"),
            text: None,
        };
        assert_eq!(handshake_reason(&e), ("refused", "other"));
        let e = HandshakeError::Refused {
            domain: "d".into(),
            condition: crate::xml::StreamCondition::from_name("conflict"),
            text: None,
        };
        assert_eq!(handshake_reason(&e), ("refused", "conflict"));
    }

    /// Every family, in the order it is exposed: a family lost, renamed or
    /// moved while the rendering is reshaped shows here.
    #[test]
    fn every_family_is_exposed_in_order() {
        let t = render(&Status::default());
        let families: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            families,
            [
                "jatproxy_upstream_up gauge",
                "jatproxy_upstream_sessions_total counter",
                "jatproxy_upstream_reconnects_total counter",
                "jatproxy_upstream_connect_failures_total counter",
                "jatproxy_handshake_failures_total counter",
                "jatproxy_tls_handshake_failures_total counter",
                "jatproxy_instances_connected gauge",
                "jatproxy_pool_members gauge",
                "jatproxy_pending_requests gauge",
                "jatproxy_members_refused_total counter",
                "jatproxy_members_qualifying gauge",
                "jatproxy_upstream_buffer gauge",
                "jatproxy_upstream_buffer_dropped_total counter",
                "jatproxy_upstream_backlog gauge",
                "jatproxy_upstream_backlog_dropped_total counter",
                "jatproxy_upstream_requests_withdrawn_total counter",
                "jatproxy_upstream_answers_after_reconnect_total counter",
                "jatproxy_requests_routed_total counter",
                "jatproxy_requests_outbound_total counter",
                "jatproxy_replies_delivered_total counter",
                "jatproxy_member_requests_routed_total counter",
                "jatproxy_member_requests_answered_total counter",
                "jatproxy_errors_generated_total counter",
                "jatproxy_timeouts_total counter",
                "jatproxy_replies_dropped_total counter",
                "jatproxy_requests_held_total counter",
                "jatproxy_requests_released_total counter",
                "jatproxy_requests_hold_expired_total counter",
                "jatproxy_requests_redispatched_total counter",
                "jatproxy_requests_retried_total counter",
                "jatproxy_replies_late_total counter",
                "jatproxy_quarantines_total counter",
                "jatproxy_members_quarantined gauge",
                "jatproxy_members_cut_slow_total counter",
                "jatproxy_stanzas_dropped_total counter",
                "jatproxy_stanzas_skipped_total counter",
                "jatproxy_stanzas_total counter",
                "jatproxy_stanza_bytes_total counter",
                "jatproxy_config_reloads_total counter",
                "jatproxy_build gauge",
            ]
        );
    }
}
