//! The admin HTTP endpoint on `metrics.listen`: `/metrics` (Prometheus),
//! `/healthz` (the process serves), `/readyz` (a request arriving now
//! could be served) and `/status` (JSON, or HTML for a browser).
//!
//! HTTP/1.1 is parsed by `hyper`: request parsing is what a well-kept
//! library does better than a hand-written one (chunked bodies, header
//! folding, pipelining edge cases, and the fuzzing behind it). What this
//! module adds is the bound on what a scraper may cost the proxy:
//!
//! - at most [`Limits::max_concurrent`] connections are served at once;
//!   one more is closed at once, unanswered (it is never queued);
//! - each connection gets [`Limits::request_timeout`] in all to send its
//!   head and read the answer, then it is cut;
//! - one request per connection (`Connection: close`), and a request head
//!   of at most [`MAX_HEAD`] bytes (hyper answers 431 past it).
//!
//! Every answer is rendered from the latest [`Status`] snapshot the core
//! published; nothing here locks or waits on the core. Like `metrics`, it
//! may not import the core or the app.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::status::Status;
use crate::status_page;

/// Longest request head read (hyper's smallest buffer); a scrape's is a
/// few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// What one scraper may cost: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed unanswered.
    pub max_concurrent: usize,
    /// Time a connection gets to send its request and read the answer.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// What the hand-written server had: 8 at once, 10 s each.
    fn default() -> Self {
        Limits {
            max_concurrent: 8,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What every answer is made from.
#[derive(Clone)]
pub struct Sources {
    /// The core's latest snapshot.
    pub status: watch::Receiver<Status>,
    /// The running configuration (for `upstream.server`, which a reload
    /// may change).
    pub config: watch::Receiver<Arc<Config>>,
}

type Body = Full<Bytes>;

fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    typed(code, "text/plain; charset=utf-8", body.into())
}

fn typed(code: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Whether an `Accept` header asks for HTML before JSON: a browser's
/// does (`text/html,…`); `curl`'s `*/*` and a tool's `application/json`
/// do not.
fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .map(|part| part.split(';').next().unwrap_or("").trim())
            .take_while(|t| *t != "application/json")
            .any(|t| t.eq_ignore_ascii_case("text/html"))
    })
}

/// The answer to one request, from `status`; `server` is
/// `upstream.server`. `GET` and `HEAD` (hyper sends no body for it) on
/// the four paths; 405 for another method, 404 for another path.
pub fn respond(
    method: &Method,
    path: &str,
    accept: Option<&str>,
    status: &Status,
    server: &str,
) -> Response<Body> {
    const PATHS: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/status"];
    if !PATHS.contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz or /status\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => typed(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(status),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match status.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        _ if wants_html(accept) => typed(
            StatusCode::OK,
            status_page::HTML_TYPE,
            status_page::html(status, server),
        ),
        _ => {
            let mut body = status_page::json(status, server).to_string();
            body.push('\n');
            typed(StatusCode::OK, status_page::JSON_TYPE, body)
        }
    }
}

/// Serves one connection: one request, within `limits.request_timeout`.
async fn connection(sock: TcpStream, sources: Sources, limits: Limits) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
        let server = sources.config.borrow().upstream.server.clone();
        let r = respond(
            req.method(),
            req.uri().path(),
            accept,
            &sources.status.borrow(),
            &server,
        );
        async move { Ok::<_, Infallible>(r) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .keep_alive(false)
        // The hand-written server's header spelling, which scrapers and
        // tests that read raw responses match on.
        .title_case_headers(true)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(sock), service);
    match tokio::time::timeout(limits.request_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("admin request failed: {e}"),
        Err(_) => tracing::debug!("admin request timed out: connection cut"),
    }
}

/// Serves the admin endpoint on `listener` with the default [`Limits`]
/// until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    serve_with(listener, sources, Limits::default(), shutdown, tasks).await
}

/// [`serve`] with other limits (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    sources: Sources,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_concurrent));
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
        let sources = sources.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("metrics", peer.addr = %peer, role = "metrics");
        tasks.spawn(
            async move {
                let _permit = permit;
                tokio::select! {
                    _ = connection(sock, sources, limits) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Member;

    fn get(path: &str, accept: Option<&str>, s: &Status) -> Response<Body> {
        respond(&Method::GET, path, accept, s, "127.0.0.1:5347")
    }

    fn body(r: Response<Body>) -> String {
        use http_body_util::BodyExt;
        let fut = r.into_body().collect();
        let collected = futures::executor::block_on(fut).expect("a full body cannot fail");
        String::from_utf8(collected.to_bytes().to_vec()).expect("utf-8")
    }

    #[test]
    fn routes() {
        let s = Status::default();
        assert_eq!(get("/metrics", None, &s).status(), StatusCode::OK);
        assert_eq!(get("/healthz", None, &s).status(), StatusCode::OK);
        assert_eq!(get("/status", None, &s).status(), StatusCode::OK);
        assert_eq!(get("/", None, &s).status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/metricsX", None, &s).status(), StatusCode::NOT_FOUND);
        let r = respond(&Method::POST, "/readyz", None, &s, "x");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.headers().get(ALLOW).and_then(|v| v.to_str().ok()),
            Some("GET, HEAD")
        );
        let r = respond(&Method::HEAD, "/metrics", None, &s, "x");
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn readyz_says_why_in_one_line() {
        let mut s = Status::default();
        let r = get("/readyz", None, &s);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = body(r);
        assert!(b.starts_with("upstream session down"), "{b}");
        assert_eq!(b.lines().count(), 1, "{b}");
        s.upstream_online = true;
        let r = get("/readyz", None, &s);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).starts_with("no qualified member"));
        s.pool.push(Member::Instance(1));
        assert_eq!(get("/readyz", None, &s).status(), StatusCode::OK);
        // Healthy throughout: serving is all /healthz says.
        assert_eq!(get("/healthz", None, &s).status(), StatusCode::OK);
    }

    #[test]
    fn status_is_html_only_when_asked() {
        let s = Status::default();
        let ct = |accept| {
            get("/status", accept, &s)
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(ct(Some(browser)).as_deref(), Some(status_page::HTML_TYPE));
        assert_eq!(
            ct(Some("TEXT/HTML")).as_deref(),
            Some(status_page::HTML_TYPE)
        );
        for not_html in [None, Some("*/*"), Some("application/json, text/html")] {
            assert_eq!(
                ct(not_html).as_deref(),
                Some(status_page::JSON_TYPE),
                "{not_html:?}"
            );
        }
        let j: serde_json::Value =
            serde_json::from_str(&body(get("/status", None, &s))).expect("json");
        assert_eq!(j["upstream"]["server"], "127.0.0.1:5347");
    }
}
