//! The link to the XMPP server: connect, XEP-0114 handshake as a
//! component, relay, and on any loss reconnect with exponential backoff
//! and jitter, forever, logging each attempt once.
//!
//! Each connection is a [`Connection`]: this module decides what to do
//! with the frames it reads and when to close it, not how bytes are
//! framed or written.
//!
//! It talks to the core only through [`crate::event::Event`] and may not
//! import the core or the app, which start it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, UpstreamConfig};
use crate::connection::{self, Connection, Out, Reader, Socket, Writer, WriterSettings};
use crate::event::{Batch, Event, Inbound, Input};
use crate::handshake::{self, HandshakeError};
use crate::liveness::{Check, Liveness};
use crate::stanza::{self, StanzaError};
use crate::status::{Observation, Side};
use crate::tls::{self, TlsError};
use crate::xml::frame::{Frame, Kind, Skipped, NS_STREAMS};
use crate::xml::{CodecError, FrameError, Stanza, StreamCondition, StreamError};

/// Exponential backoff with jitter: each delay is drawn from the upper
/// half of the current step, so many proxies restarted together do not
/// reconnect in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The next delay to wait.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + step.mul_f64(rng.random::<f64>() * 0.5)
    }

    /// Back to the shortest delay (after a session that worked).
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

/// How an upstream session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("connecting to {server} timed out")]
    ConnectTimeout { server: String },
    /// Fatal to this attempt; retried after the backoff (which helps once
    /// the CA file, the name or the server's certificate is fixed).
    #[error("TLS with {server} failed ({}): {}", error.reason, error.detail)]
    Tls { server: String, error: TlsError },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("the server closed the stream")]
    Closed,
    #[error("the server sent stream error {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    StreamError {
        condition: StreamCondition,
        text: Option<String>,
    },
    #[error("the server sent bytes that cannot be framed: {0}")]
    Framing(FrameError),
    #[error("connection to the server failed: {0}")]
    Io(std::io::Error),
    #[error("the server sent nothing for {silent_for:?}, a ping included: link dead")]
    Dead { silent_for: Duration },
    #[error("shutting down")]
    Shutdown,
    #[error("the configuration changed")]
    Reconfigured,
    #[error("the session task panicked: {0}")]
    Panicked(String),
}

/// Runs the upstream link until `shutdown`. Each connection uses the
/// configuration current when it starts; a reload that changes the
/// server or the secret ends the session so the next one uses them.
pub async fn run(
    config: watch::Receiver<Arc<Config>>,
    events: Inbound,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    run_sessions(config, events, shutdown, tasks, session).await
}

/// What one session runs with, owned: each session is a task of its own.
struct SessionArgs {
    /// The configuration when the session started.
    cfg: Arc<Config>,
    /// The configuration as it is now: a change of server or secret ends
    /// the session.
    config: watch::Receiver<Arc<Config>>,
    events: mpsc::Sender<Event>,
    /// The core's input bound in bytes (see [`crate::event::send_stanza`]).
    input: Arc<Input>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The reconnect loop around `session`. Each session runs in its own
/// task, so that a panic in it (a framer bug hostile input found) is one
/// more lost session — the core is told upstream is down, answers what
/// was pending on client resources and holds output — followed by the
/// usual backoff and reconnect, instead of the end of the link.
async fn run_sessions<S, F>(
    mut config: watch::Receiver<Arc<Config>>,
    Inbound { events, input }: Inbound,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    session: S,
) where
    S: Fn(SessionArgs) -> F,
    F: std::future::Future<Output = (SessionEnd, bool)> + Send + 'static,
{
    let first = config.borrow_and_update().clone();
    let mut bounds = (first.upstream.reconnect_min, first.upstream.reconnect_max);
    let mut backoff = Backoff::new(bounds.0, bounds.1);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let cfg = config.borrow_and_update().clone();
        let now_bounds = (cfg.upstream.reconnect_min, cfg.upstream.reconnect_max);
        if now_bounds != bounds {
            bounds = now_bounds;
            backoff = Backoff::new(bounds.0, bounds.1);
        }
        let span =
            tracing::info_span!("upstream", peer.addr = %cfg.upstream.server, role = "upstream");
        let args = SessionArgs {
            cfg: cfg.clone(),
            config: config.clone(),
            events: events.clone(),
            input: input.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        let (end, was_up) = run_contained(&tasks, session(args).instrument(span), &events).await;
        if was_up {
            backoff.reset();
        }
        if let Some(o) = observation(&end) {
            let _ = events.send(Event::Observed(o)).await;
        }
        match &end {
            SessionEnd::Shutdown => return,
            SessionEnd::Reconfigured => {
                tracing::info!(server = %config.borrow().upstream.server, "reconnecting to upstream with the new settings");
                continue;
            }
            _ => log_end(&end, &cfg, attempt),
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tracing::info!(delay = ?delay, "reconnecting to upstream");
        if !pause(delay, &cfg, &mut config, &shutdown).await {
            return;
        }
    }
}

/// Runs one session in a task of its own; a panic there is a lost
/// session (never up, as far as backoff goes).
async fn run_contained<F>(
    tasks: &TaskTracker,
    session: F,
    events: &mpsc::Sender<Event>,
) -> (SessionEnd, bool)
where
    F: std::future::Future<Output = (SessionEnd, bool)> + Send + 'static,
{
    match tasks.spawn(session).await {
        Ok(ended) => ended,
        Err(e) => {
            let why = match e.try_into_panic() {
                Ok(panic) => connection::panic_message(&*panic).to_owned(),
                Err(_) => "cancelled".to_owned(),
            };
            // It may have told the core it was up; the core takes a
            // second Down as a no-op.
            let _ = events.send(Event::UpstreamDown).await;
            (SessionEnd::Panicked(why), false)
        }
    }
}

/// What metrics count of how a session ended.
fn observation(end: &SessionEnd) -> Option<Observation> {
    match end {
        SessionEnd::Handshake(e) => Some(Observation::handshake_failed(Side::Upstream, e)),
        SessionEnd::Connect { .. } | SessionEnd::ConnectTimeout { .. } => {
            Some(Observation::UpstreamConnectFailed)
        }
        SessionEnd::Tls { error, .. } => Some(Observation::TlsHandshakeFailed {
            side: Side::Upstream,
            reason: error.reason.as_str(),
        }),
        _ => None,
    }
}

/// The one log line for a session that ended and is to be retried:
/// loudest for what an operator must fix.
fn log_end(end: &SessionEnd, cfg: &Config, attempt: u64) {
    match end {
        SessionEnd::Handshake(e) => tracing::error!(
            server = %cfg.upstream.server, domain = %cfg.upstream.domain, attempt,
            "upstream handshake failed: {e}"
        ),
        SessionEnd::Connect { .. } | SessionEnd::ConnectTimeout { .. } => tracing::warn!(
            server = %cfg.upstream.server, attempt, "{end}"
        ),
        SessionEnd::Tls { error, .. } => tracing::error!(
            server = %cfg.upstream.server, reason = %error.reason, attempt,
            "upstream {end}"
        ),
        SessionEnd::Panicked(_) => tracing::error!(
            server = %cfg.upstream.server, "upstream session ended: {end}; reconnecting"
        ),
        _ => tracing::warn!(server = %cfg.upstream.server, "upstream session ended: {end}"),
    }
}

/// Waits `delay` before the next attempt; cut short by a new server or
/// secret (try it now rather than after the backoff earned by the old
/// ones). False at shutdown.
async fn pause(
    delay: Duration,
    cfg: &Config,
    config: &mut watch::Receiver<Arc<Config>>,
    shutdown: &CancellationToken,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            _ = shutdown.cancelled() => return false,
            _ = changed(config) => {
                if crate::reload::upstream_needs_reconnect(cfg, &config.borrow()) {
                    return true;
                }
            }
        }
    }
}

/// Resolves when the configuration changes; never if the [`crate::app::Proxy`]
/// handle (the sender) is gone, as then it cannot change any more.
async fn changed(config: &mut watch::Receiver<Arc<Config>>) {
    if config.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One connection: returns how it ended and whether it got as far as an
/// established session.
async fn session(mut s: SessionArgs) -> (SessionEnd, bool) {
    let up = &s.cfg.upstream;
    let conn = match open(&s.cfg, &s.shutdown).await {
        Ok(conn) => conn,
        Err(end) => return (end, false),
    };
    tracing::info!(server = %up.server, domain = %up.domain, "upstream session established");
    let settings = WriterSettings {
        queue: s.cfg.limits.write_queue,
        queue_bytes: None,
        keepalive: Some(up.keepalive_interval),
        urgent: None,
    };
    let (mut reader, mut writer) = conn.start_writer(&s.tasks, settings);
    // The core holds the queue from now on and ends it (with the stream's
    // end at shutdown): the writer outlives this task to write that.
    writer.detach();
    if s.events
        .send(Event::UpstreamUp(writer.queue()))
        .await
        .is_err()
    {
        return (SessionEnd::Shutdown, true);
    }
    let liveness = Liveness::new(
        &up.domain,
        up.ping_interval,
        up.ping_timeout,
        tokio::time::Instant::now(),
    );
    let mut stragglers = Vec::new();
    let end = s
        .read_loop(&mut reader, &writer, liveness, &mut stragglers)
        .await;
    match &end {
        SessionEnd::Shutdown => {
            // The core answers what it has and closes our stream; the
            // server may have routed more to us meanwhile. Read until it
            // closes its side, then answer the requests among them over a
            // fresh session.
            drop(writer);
            let wait = s.cfg.service.shutdown_grace / 2;
            read_stragglers(&mut reader, wait, &mut stragglers).await;
            answer_stragglers(&s.cfg, stragglers).await;
            return (end, true);
        }
        SessionEnd::Framing(e) => writer.close(e.condition()),
        SessionEnd::Reconfigured => writer.end_stream(),
        _ => {}
    }
    drop(writer);
    let _ = s.events.send(Event::UpstreamDown).await;
    (end, true)
}

/// Connects and logs in as the component: the connection once the server
/// has answered `<handshake/>`.
async fn open(cfg: &Config, shutdown: &CancellationToken) -> Result<Connection, SessionEnd> {
    let up = &cfg.upstream;
    let connect = tokio::time::timeout(up.connect_timeout, TcpStream::connect(&up.server));
    let stream = tokio::select! {
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(SessionEnd::Connect { server: up.server.clone(), source }),
            Err(_) => return Err(SessionEnd::ConnectTimeout { server: up.server.clone() }),
        },
        _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
    };
    let stream = tokio::select! {
        r = secure(stream, up) => r.map_err(|error| SessionEnd::Tls { server: up.server.clone(), error })?,
        _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
    };
    let mut conn =
        Connection::with_quickack(stream, cfg.limits.upstream_framer(), cfg.limits.tokenizer);
    let login = handshake::login(&mut conn, &up.domain, &up.secret, up.handshake_timeout);
    tokio::select! {
        r = login => r?,
        _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
    };
    Ok(conn)
}

/// The connected socket as the session speaks over it: as is, or
/// wrapped in direct TLS (`upstream.tls = "direct"`) within the
/// handshake timeout.
async fn secure(stream: TcpStream, up: &UpstreamConfig) -> Result<Socket, TlsError> {
    match &up.tls {
        None => Ok(Socket::from(stream)),
        Some(t) => tls::connect(stream, t, up.handshake_timeout).await,
    }
}

impl SessionArgs {
    /// Hands the server's stanzas to the core until the session ends, and
    /// keeps the link alive: pings when it is quiet, ends it when the
    /// server stays silent. `stragglers` gets the requests the core could
    /// no longer take. The stanzas of one read go to the core as one
    /// event, in order, and before whatever ends the session.
    async fn read_loop(
        &mut self,
        reader: &mut Reader,
        writer: &Writer,
        mut liveness: Liveness,
        stragglers: &mut Vec<Stanza>,
    ) -> SessionEnd {
        let ping_queue = writer.queue();
        let mut batch = Batch::default();
        // One timer for the session, moved when the wake-up comes earlier
        // or has passed: not a new one per read.
        let mut wake = Box::pin(tokio::time::sleep(Duration::ZERO));
        loop {
            match liveness.check(tokio::time::Instant::now()) {
                Check::Wait(at) => {
                    if wake.is_elapsed() || at < wake.deadline() {
                        wake.as_mut().reset(at);
                    }
                }
                Check::Ping(ping) => {
                    tracing::debug!("upstream quiet: pinging the server");
                    // A full queue means output is already waiting on the
                    // link: the timeout below judges it either way.
                    let _ = ping_queue.try_send(Out::Wire(ping.into()));
                    continue;
                }
                Check::Dead { silent_for } => return SessionEnd::Dead { silent_for },
            };
            let mut next = tokio::select! {
                f = reader.read_frame() => Some(f),
                _ = wake.as_mut() => continue,
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = changed(&mut self.config) => {
                    if crate::reload::upstream_needs_reconnect(&self.cfg, &self.config.borrow()) {
                        return SessionEnd::Reconfigured;
                    }
                    continue;
                }
            };
            liveness.input(tokio::time::Instant::now());
            let mut end = None;
            while let Some(frame) = next {
                match sort(frame, &liveness) {
                    Sorted::Stanza(st) => batch.push(st),
                    Sorted::Nothing => {}
                    Sorted::Skipped(sk) => {
                        end = self.skipped(&mut batch, sk, stragglers).await;
                    }
                    Sorted::End(e) => end = Some(e),
                }
                if end.is_some() || batch.is_full() {
                    break;
                }
                next = reader.try_read_frame();
            }
            if let Err(st) = batch.send(self.inbound(), Event::FromUpstream).await {
                // The core has stopped: these are answered at the end.
                stragglers.extend(st);
                return SessionEnd::Shutdown;
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn inbound(&self) -> (&mpsc::Sender<Event>, &Input) {
        (&self.events, &self.input)
    }

    /// A user's stanza over a per-stanza limit: answered by the core,
    /// after the stanzas read before it; the session goes on unless the
    /// core has stopped.
    async fn skipped(
        &self,
        batch: &mut Batch,
        sk: Skipped,
        stragglers: &mut Vec<Stanza>,
    ) -> Option<SessionEnd> {
        if let Err(st) = batch.send(self.inbound(), Event::FromUpstream).await {
            stragglers.extend(st);
            return Some(SessionEnd::Shutdown);
        }
        if let Err(mpsc::error::SendError(Event::SkippedFromUpstream(sk))) =
            self.events.send(Event::SkippedFromUpstream(sk)).await
        {
            stragglers.extend(
                sk.head
                    .filter(|h| h.kind == Kind::Iq && h.is_iq_request())
                    .map(|h| *h),
            );
            return Some(SessionEnd::Shutdown);
        }
        None
    }
}

/// What one frame from the server is to the read loop.
enum Sorted {
    /// For the core.
    Stanza(Stanza),
    /// Whitespace, the header, or the answer to our own ping.
    Nothing,
    Skipped(Skipped),
    End(SessionEnd),
}

fn sort(frame: Result<Frame, CodecError>, liveness: &Liveness) -> Sorted {
    let stanza = match frame {
        Ok(Frame::End(_)) => return Sorted::End(SessionEnd::Closed),
        Err(CodecError::Io(e)) => return Sorted::End(SessionEnd::Io(e)),
        Err(CodecError::Frame(e)) => return Sorted::End(SessionEnd::Framing(e)),
        Ok(Frame::Whitespace(_)) | Ok(Frame::Header(_)) => return Sorted::Nothing,
        Ok(Frame::Skipped(sk)) => return Sorted::Skipped(sk),
        Ok(Frame::Stanza(st)) => st,
    };
    if stanza.name == "error" && stanza.ns == NS_STREAMS {
        let StreamError { condition, text } = StreamError::parse(&stanza.bytes);
        return Sorted::End(SessionEnd::StreamError { condition, text });
    }
    if stanza.is_iq_response() && liveness.is_answer(stanza.from(), stanza.id()) {
        return Sorted::Nothing;
    }
    Sorted::Stanza(stanza)
}

/// After shutdown: the iq requests the server still sends us until it
/// closes its side (or `wait` runs out). Everything else is dropped: the
/// requests those replies belonged to were answered by the core.
async fn read_stragglers(reader: &mut Reader, wait: Duration, stragglers: &mut Vec<Stanza>) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, reader.read_frame()).await {
            Ok(Ok(Frame::Stanza(st))) => {
                if st.kind == Kind::Iq && st.is_iq_request() {
                    stragglers.push(st);
                }
            }
            Ok(Ok(Frame::Skipped(sk))) => {
                stragglers.extend(
                    sk.head
                        .filter(|h| h.kind == Kind::Iq && h.is_iq_request())
                        .map(|h| *h),
                );
            }
            Ok(Ok(Frame::Whitespace(_) | Frame::Header(_))) => {}
            Ok(Ok(Frame::End(_)) | Err(_)) => return,
            Err(_) => {
                tracing::warn!(wait = ?wait, "upstream did not close its stream after ours");
                return;
            }
        }
    }
}

/// Requests that reached us after our stream was closed still get their
/// one answer (`recipient-unavailable`, type `wait`), over short extra
/// sessions: servers that accept several connections per component
/// (ejabberd) routed them to us while our `</stream:stream>` was on its
/// way, and do not bounce them themselves.
///
/// An extra session is registered for the domain too, so the server
/// routes new requests to it as well. Each one therefore answers at once
/// every request it reads while open, stays open until no request has
/// come for [`STRAGGLER_QUIET`] (at most [`STRAGGLER_LINGER`]), and then
/// ends its stream; what still arrives after that end is answered by the
/// next round, after a pause that doubles each time (while no session is
/// registered, the server sends new traffic elsewhere). All of it
/// within half the grace period: what is left when that runs out is
/// logged as lost.
async fn answer_stragglers(cfg: &Config, stragglers: Vec<Stanza>) {
    let budget = cfg.service.shutdown_grace / 2;
    let deadline = tokio::time::Instant::now() + budget;
    // Sessions stop drawing new requests a little before the deadline, so
    // that the last one can still end its stream and hand on what it got.
    let open_until = deadline - budget / 4;
    let mut waiting = stragglers;
    let mut answered = 0;
    let mut rounds = 0;
    let mut gap = STRAGGLER_GAP;
    while waiting.iter().any(|st| straggler_reply(cfg, st).is_some()) {
        if rounds > 0 {
            // Not registered in between: the server sends all new traffic
            // to the other connections, and the next session draws less.
            tokio::time::sleep(
                gap.min(open_until.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
            gap *= 2;
        }
        let outcome =
            tokio::time::timeout_at(deadline, straggler_round(cfg, &waiting, open_until)).await;
        let lost = waiting.len();
        match outcome {
            Ok(Ok(round)) => {
                rounds += 1;
                answered += round.answered;
                waiting = round.after_end;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    lost,
                    "could not answer requests that arrived after our stream closed: {e}"
                );
                return;
            }
            Err(_) => {
                tracing::warn!(
                    lost,
                    "timed out answering requests that arrived after our stream closed"
                );
                return;
            }
        }
    }
    if rounds > 0 {
        tracing::info!(
            answered,
            sessions = rounds,
            "answered requests that arrived after our stream closed"
        );
    }
}

/// How long an extra session at shutdown stays open without a request
/// before it ends its stream…
const STRAGGLER_QUIET: Duration = Duration::from_millis(5);
/// …and at most, quiet or not. While a session is registered the server
/// routes part of the new traffic to it, which can only be answered with
/// an error: a short session disturbs fewer requests, and what arrives
/// during its end is answered by the next (short) one.
const STRAGGLER_LINGER: Duration = Duration::from_millis(25);
/// The pause before the next extra session, doubling each time.
const STRAGGLER_GAP: Duration = Duration::from_millis(20);

/// What one extra session did: how many requests it answered, and the
/// requests that reached it after its own stream end.
struct StragglerRound {
    answered: usize,
    after_end: Vec<Stanza>,
}

/// The error answer to a request that arrived after our stream closed;
/// None for anything that is no request (or has no one to answer).
fn straggler_reply(cfg: &Config, st: &Stanza) -> Option<bytes::Bytes> {
    if !(st.kind == Kind::Iq && st.is_iq_request()) {
        return None;
    }
    let from = st.from()?;
    let to = st.to().unwrap_or(&cfg.upstream.domain);
    Some(stanza::error_reply(
        &st.name,
        st.id(),
        to,
        from,
        StanzaError::RecipientUnavailable,
        Some("the component is shutting down"),
    ))
}

/// Why an extra session at shutdown could not answer what it had.
#[derive(Debug, thiserror::Error)]
enum StragglerError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("writing the answers failed: {0}")]
    Write(std::io::Error),
}

/// One extra session: log in, answer `waiting` and what arrives while it
/// is open, end the stream, and keep what the server still sends.
async fn straggler_round(
    cfg: &Config,
    waiting: &[Stanza],
    open_until: tokio::time::Instant,
) -> Result<StragglerRound, StragglerError> {
    let up = &cfg.upstream;
    let stream = TcpStream::connect(&up.server)
        .await
        .map_err(StragglerError::Connect)?;
    let stream = secure(stream, up).await?;
    let mut conn =
        Connection::with_quickack(stream, cfg.limits.upstream_framer(), cfg.limits.tokenizer);
    handshake::login(&mut conn, &up.domain, &up.secret, up.handshake_timeout).await?;
    let replies: Vec<bytes::Bytes> = waiting
        .iter()
        .filter_map(|st| straggler_reply(cfg, st))
        .collect();
    // One write for all of them.
    conn.send(&replies.concat())
        .await
        .map_err(StragglerError::Write)?;
    let (more, server_closed) = answer_while_open(&mut conn, cfg, open_until).await?;
    conn.end_stream().await.map_err(StragglerError::Write)?;
    // Closing: what the server sends until it has read our end is for
    // the next round.
    let mut after_end = Vec::new();
    if !server_closed {
        while let Ok(f) = conn.read_frame().await {
            match f {
                Frame::Stanza(st) if straggler_reply(cfg, &st).is_some() => after_end.push(st),
                Frame::Skipped(sk) => after_end.extend(
                    sk.head
                        .filter(|st| straggler_reply(cfg, st).is_some())
                        .map(|st| *st),
                ),
                Frame::End(_) => break,
                _ => {}
            }
        }
    }
    Ok(StragglerRound {
        answered: replies.len() + more,
        after_end,
    })
}

/// Answers what an extra session draws until it goes quiet (or
/// `open_until`): how many it answered, and whether the server closed.
async fn answer_while_open(
    conn: &mut Connection,
    cfg: &Config,
    open_until: tokio::time::Instant,
) -> Result<(usize, bool), StragglerError> {
    let mut answered = 0;
    let linger_until = (tokio::time::Instant::now() + STRAGGLER_LINGER).min(open_until);
    loop {
        let quiet = (tokio::time::Instant::now() + STRAGGLER_QUIET).min(linger_until);
        let reply = match tokio::time::timeout_at(quiet, conn.read_frame()).await {
            Ok(Ok(Frame::Stanza(st))) => straggler_reply(cfg, &st),
            Ok(Ok(Frame::Skipped(sk))) => sk.head.and_then(|st| straggler_reply(cfg, &st)),
            Ok(Ok(Frame::Whitespace(_) | Frame::Header(_))) => None,
            Ok(Ok(Frame::End(_)) | Err(_)) => return Ok((answered, true)),
            Err(_) => return Ok((answered, false)),
        };
        if let Some(reply) = reply {
            conn.send(&reply).await.map_err(StragglerError::Write)?;
            answered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A session that panics is a lost session: the core hears that
    /// upstream is down, and the loop reconnects after the backoff.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_session_is_a_lost_session() {
        let cfg = crate::config::from_toml_str(
            "[upstream]\nserver = \"127.0.0.1:1\"\ndomain = \"d.example.test\"\nsecret = \"s\"\n\
             [instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"i\"\n",
        )
        .expect("test config is valid");
        let (_config_tx, config) = watch::channel(Arc::new(cfg));
        let (events_tx, mut events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = attempts.clone();
        let link = tokio::spawn(run_sessions(
            config,
            Inbound {
                events: events_tx,
                input: Arc::new(Input::new(1 << 20, 1024)),
            },
            shutdown.clone(),
            TaskTracker::new(),
            move |s: SessionArgs| {
                let attempt = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if attempt == 0 {
                        panic!("a framer bug");
                    }
                    let (tx, _rx) = mpsc::channel(1);
                    let _ = s.events.send(Event::UpstreamUp(tx)).await;
                    s.shutdown.cancelled().await;
                    (SessionEnd::Shutdown, true)
                }
            },
        ));
        let first = events.recv().await.expect("an event");
        assert!(matches!(first, Event::UpstreamDown), "{first:?}");
        let second = events.recv().await.expect("an event");
        assert!(matches!(second, Event::UpstreamUp(_)), "{second:?}");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
        shutdown.cancel();
        link.await.expect("the loop ends at shutdown");
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        // Step n lies in [step/2, step].
        let steps = [100u64, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, s) in delays.iter().zip(steps) {
            let s = Duration::from_millis(s);
            assert!(*d >= s / 2 && *d <= s, "{d:?} not within step {s:?}");
        }
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "jittered");
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}
