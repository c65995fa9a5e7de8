//! XEP-0114 stream negotiation, both sides.
//!
//! - [`login`] (and [`connect`]): jatproxy as a component, authenticating
//!   to the XMPP server (upstream).
//! - [`admit`] (and [`accept`]): jatproxy as the server, authenticating a
//!   component instance that connected to our listener.
//!
//! The exchange (XEP-0114 §3) is short and fixed, so each side is a plain
//! sequence of typed steps rather than a state machine: the component opens
//! `<stream:stream to='D'>`, the server answers with a header carrying a
//! fresh stream `id`, the component proves it knows the shared secret with
//! `<handshake>hex(SHA-1(id ‖ secret))</handshake>`, and the server answers
//! `<handshake/>` or closes the stream with a stream error.
//!
//! Both sides run over the caller's [`Connection`] ([`login`], [`admit`]),
//! reading its frames and writing straight to its socket, so bytes that
//! arrive in the same read as the final `<handshake/>` (the first stanzas)
//! stay buffered for the relay that takes the connection over.
//! [`connect`] and [`accept`] are the same over a frame reader and a
//! writer held apart (the test fakes and the fuzz targets).
//!
//! It may use the connection and the XML layer, and nothing that runs the
//! proxy (core, app, upstream, listener).
//!
//! **The secret never leaves this module** except as the digest on the
//! wire: it is not logged, and no [`HandshakeError`] holds or prints it (or
//! the digest, which would allow an offline guess of the secret).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rand::RngCore;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::FramedRead;

use crate::config::Secret;
use crate::connection::{Connection, FrameSource};
use crate::time::{ERROR_WRITE_GRACE, REFUSAL_GRACE};
use crate::xml::frame::{NS_COMPONENT, NS_STREAMS};
use crate::xml::{
    escape, inspect, CodecError, Frame, FrameError, Framer, Stanza, StreamCondition, StreamError,
    StreamHeader,
};

/// The stream-error bytes live with the [`Connection`] that writes them
/// ([`Connection::close`]); re-exported here, beside the other XEP-0114
/// bytes, where the core, the tests and the fuzz targets use them.
pub use crate::connection::{stream_error, STREAM_END};

/// The server's answer to a correct handshake.
pub const HANDSHAKE_OK: &[u8] = b"<handshake/>";

/// Bytes of randomness in a stream id: 128 bits, so ids never repeat and a
/// recorded handshake can never be replayed against a later stream.
const STREAM_ID_BYTES: usize = 16;

/// The characters XML counts as whitespace; a digest padded with them (a
/// pretty-printing component library) is still the same digest.
const XML_WHITESPACE: [char; 4] = [' ', '\t', '\r', '\n'];

// ---------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------

/// The handshake digest of XEP-0114 §3: lowercase hex SHA-1 of the stream id
/// followed by the secret. Lowercase because that is what servers emit and
/// what strict ones (comparing strings) expect.
pub fn digest(stream_id: &str, secret: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether `presented` is the digest for this stream id and secret.
///
/// Lenient where components differ harmlessly (hex case, surrounding
/// whitespace) and constant-time in the comparison itself, so response
/// timing tells an attacker nothing about how many leading characters of a
/// guess were right.
pub fn verify(stream_id: &str, secret: &str, presented: &str) -> bool {
    let expected = digest(stream_id, secret);
    let presented = presented
        .trim_matches(XML_WHITESPACE.as_slice())
        .to_ascii_lowercase();
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// A fresh stream id: 128 random bits, hex. The id is the only thing that
/// makes a handshake digest differ between connections, so it must be
/// unpredictable and never reused.
pub fn new_stream_id<G: RngCore + ?Sized>(rng: &mut G) -> String {
    let mut id = [0u8; STREAM_ID_BYTES];
    rng.fill_bytes(&mut id);
    hex::encode(id)
}

/// The stream header a component sends to open its stream to `domain`.
/// XEP-0114 components send no `version`: the stream has no features.
pub fn client_header(domain: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' \
         xmlns:stream='{NS_STREAMS}' to='{}'>",
        escape::attr(domain, b'\'')
    ))
}

/// The stream header a server answers with: `from` the served domain and
/// the stream `id` the component must hash with its secret.
pub fn server_header(domain: &str, stream_id: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' \
         xmlns:stream='{NS_STREAMS}' from='{}' id='{}'>",
        escape::attr(domain, b'\''),
        escape::attr(stream_id, b'\'')
    ))
}

/// The component's proof: `<handshake>DIGEST</handshake>`.
pub fn handshake_element(digest: &str) -> Bytes {
    Bytes::from(format!("<handshake>{}</handshake>", escape::text(digest)))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// How far a handshake got, so a failure says where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Exchanging stream headers.
    OpeningStream,
    /// Exchanging `<handshake>` and its answer.
    Authenticating,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::OpeningStream => "while opening the stream",
            Stage::Authenticating => "while authenticating",
        })
    }
}

/// Why a handshake failed. Every variant is fatal to the connection it
/// happened on (drop it; on the accepting side the stream error has already
/// been written). Each variant's doc says whether a new connection with the
/// same settings could succeed; [`HandshakeError::is_permanent`] sums that
/// up for the reconnect loop's log level.
///
/// No variant holds the secret or the digest.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the socket failed. Transient: the network or the
    /// peer's process; a new connection may work.
    #[error("connection failed {stage}: {source}")]
    Io {
        stage: Stage,
        #[source]
        source: std::io::Error,
    },
    /// The exchange did not finish within the handshake timeout. Transient
    /// (an overloaded or stalled peer), unless it happens every time: then
    /// the port is probably not an XEP-0114 port (TLS, HTTP…).
    #[error("handshake not finished within {after:?}, stuck {stage}")]
    Timeout { stage: Stage, after: Duration },
    /// The peer closed the connection (or its stream, without a stream
    /// error) before the handshake finished. Transient: a restart or a
    /// proxy cutting idle connections; a new connection may work.
    #[error("the peer closed the connection {stage}")]
    Closed { stage: Stage },
    /// The peer sent bytes that are not an XMPP stream. Permanent: the
    /// address points at something that does not speak XEP-0114.
    #[error("the peer sent something that is not an XMPP stream {stage}: {source}")]
    Framing {
        stage: Stage,
        #[source]
        source: FrameError,
    },
    /// Component side: the server closed our stream with a stream error.
    /// Permanent for `not-authorized`, `host-unknown` and addressing or
    /// namespace conditions (the configuration is wrong on one side);
    /// transient for `conflict` (an old session still holds the domain) and
    /// the rest (`system-shutdown`, `connection-timeout`…).
    #[error("{}", refusal_message(.domain, .condition, .text))]
    Refused {
        /// The domain we asked to serve.
        domain: String,
        /// The defined condition (`undefined-condition` if the server named none).
        condition: StreamCondition,
        /// The server's human-readable `<text>`, if any.
        text: Option<String>,
    },
    /// Component side: the server's stream header cannot be used (no `id`
    /// to hash, or not the component namespace). Permanent: the address is
    /// not a component port, or the server is broken.
    #[error("unusable stream header from the server: {0}")]
    BadHeader(String),
    /// Component side: the server answered our handshake with something
    /// other than `<handshake/>` or a stream error. Permanent: the server
    /// does not follow XEP-0114.
    #[error("the server sent <{element}> {stage} instead of <handshake/>")]
    Unexpected { stage: Stage, element: String },
    /// Accepting side: we refused the instance and sent it the stream error
    /// `condition`. Permanent for that instance: its domain, namespace or
    /// secret is configured wrong.
    #[error("refused the instance with <{condition}/>: {reason}")]
    Rejected {
        condition: StreamCondition,
        reason: String,
    },
}

impl HandshakeError {
    /// True when a new connection with the same configuration will fail the
    /// same way: an operator has to fix something, so the reconnect loop
    /// should say so loudly instead of retrying quietly.
    pub fn is_permanent(&self) -> bool {
        match self {
            HandshakeError::Io { .. }
            | HandshakeError::Timeout { .. }
            | HandshakeError::Closed { .. } => false,
            HandshakeError::Framing { .. }
            | HandshakeError::BadHeader(_)
            | HandshakeError::Unexpected { .. }
            | HandshakeError::Rejected { .. } => true,
            HandshakeError::Refused { condition, .. } => condition.is_permanent(),
        }
    }

    /// Where the failure happened, when the variant records it.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            HandshakeError::Io { stage, .. }
            | HandshakeError::Timeout { stage, .. }
            | HandshakeError::Closed { stage }
            | HandshakeError::Framing { stage, .. }
            | HandshakeError::Unexpected { stage, .. } => Some(*stage),
            HandshakeError::Refused { .. }
            | HandshakeError::BadHeader(_)
            | HandshakeError::Rejected { .. } => None,
        }
    }

    /// The stream error the accepting side owes the instance for this
    /// failure, if the instance is still there to read it.
    fn condition_to_send(&self) -> Option<StreamCondition> {
        match self {
            HandshakeError::Rejected { condition, .. } => Some(*condition),
            HandshakeError::Framing { source, .. } => Some(source.condition()),
            HandshakeError::Timeout { .. } => Some(StreamCondition::ConnectionTimeout),
            _ => None,
        }
    }
}

/// The operator's reading of a server's stream error: what to fix, not
/// just the condition name.
fn refusal_message(domain: &str, condition: &StreamCondition, text: &Option<String>) -> String {
    let mut msg = match condition {
        StreamCondition::NotAuthorized => format!("the server refused the secret for {domain}"),
        StreamCondition::HostUnknown => {
            format!("the server has no component {domain} configured")
        }
        StreamCondition::Conflict => format!(
            "another connection holds {domain} (Prosody's default \
             component_conflict_resolve = \"kick_new\" refuses a quick \
             reconnect while the old session lingers)"
        ),
        StreamCondition::InvalidNamespace => format!(
            "the server does not accept components for {domain} on this port \
             (invalid-namespace): is it the component port?"
        ),
        StreamCondition::Other => format!(
            "the server closed the stream for {domain} with a condition RFC 6120 does not define"
        ),
        defined => format!("the server closed the stream for {domain} with <{defined}/>"),
    };
    if let Some(text) = text {
        // Debug formatting quotes and escapes the peer's text, so it cannot
        // forge extra log lines.
        msg.push_str(&format!(" (server said {text:?})"));
    }
    msg
}

// ---------------------------------------------------------------------------
// Component side (upstream)
// ---------------------------------------------------------------------------

/// Opens a component stream for `domain` on `conn` and authenticates with
/// `secret`.
///
/// Returns the server's stream header (its `id` names the session in logs)
/// once the server has answered `<handshake/>`; the connection then holds
/// any stanzas that arrived behind it. The whole exchange runs under
/// `timeout`. On error nothing more is written: drop the connection.
pub async fn login<F, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<StreamHeader, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    let mut stage = Stage::OpeningStream;
    let steps = connect_steps(conn, domain, secret, &mut stage);
    match tokio::time::timeout(timeout, steps).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout {
            stage,
            after: timeout,
        }),
    }
}

/// [`login`] over a frame reader and a writer the caller keeps apart.
pub async fn connect<R, W>(
    reader: &mut FramedRead<R, Framer>,
    writer: &mut W,
    domain: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<StreamHeader, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut conn = Connection::from_parts(reader, writer);
    login(&mut conn, domain, secret, timeout).await
}

async fn connect_steps<F, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
    secret: &Secret,
    stage: &mut Stage,
) -> Result<StreamHeader, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    send(conn, &client_header(domain), *stage).await?;

    let header = match next_frame(conn, *stage).await? {
        Frame::Header(header) => *header,
        // The framer's first frame is always the header: the root element
        // is the stream.
        Frame::Stanza(s) => {
            return Err(HandshakeError::BadHeader(format!(
                "<{}> instead of a stream header",
                s.name
            )))
        }
        // Whitespace and skips come only after a header.
        Frame::Whitespace(_) | Frame::End(_) | Frame::Skipped(_) => {
            return Err(HandshakeError::Closed { stage: *stage })
        }
    };
    let stream_id = match usable_stream_id(&header) {
        Ok(id) => id,
        Err(problem) => {
            // A server about to refuse often opens a bare stream first;
            // its stream error is the better explanation.
            let next = tokio::time::timeout(REFUSAL_GRACE, next_frame(conn, *stage)).await;
            return Err(match next {
                Ok(Ok(Frame::Stanza(s))) if is_stream_error(&s) => refused(domain, &s),
                _ => HandshakeError::BadHeader(problem),
            });
        }
    };

    *stage = Stage::Authenticating;
    let proof = handshake_element(&digest(&stream_id, secret.expose()));
    if let Err(e) = send(conn, &proof, *stage).await {
        // The server may have refused and closed before our handshake got
        // there; if its stream error is already readable, that is the cause.
        return Err(buffered_refusal(conn, domain).unwrap_or(e));
    }

    match next_frame(conn, *stage).await? {
        Frame::Stanza(s) if s.name == "handshake" && s.ns == NS_COMPONENT => Ok(header),
        Frame::Stanza(s) if is_stream_error(&s) => Err(refused(domain, &s)),
        Frame::Stanza(s) => Err(HandshakeError::Unexpected {
            stage: *stage,
            element: s.name.into_owned(),
        }),
        Frame::Header(_) => Err(HandshakeError::Unexpected {
            stage: *stage,
            element: "stream:stream".into(),
        }),
        Frame::Skipped(_) => Err(HandshakeError::Unexpected {
            stage: *stage,
            element: "an element over the limits".into(),
        }),
        Frame::Whitespace(_) | Frame::End(_) => Err(HandshakeError::Closed { stage: *stage }),
    }
}

/// The server header's stream id, or why the header cannot be used.
fn usable_stream_id(header: &StreamHeader) -> Result<String, String> {
    if header.xmlns.as_deref() != Some(NS_COMPONENT) {
        return Err(format!(
            "default namespace {:?}, not {NS_COMPONENT:?}: is this the component port?",
            header.xmlns.as_deref().unwrap_or("")
        ));
    }
    match &header.id {
        Some(id) if !id.is_empty() => Ok(id.clone()),
        _ => Err("no stream id to compute the handshake from".into()),
    }
}

/// A stream error the connection can produce without waiting.
fn buffered_refusal<F: FrameSource, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
) -> Option<HandshakeError>
where
    W: AsyncWrite + Unpin,
{
    loop {
        match conn.read_frame().now_or_never() {
            Some(Ok(Frame::Whitespace(_))) => continue,
            Some(Ok(Frame::Stanza(s))) if is_stream_error(&s) => return Some(refused(domain, &s)),
            _ => return None,
        }
    }
}

fn is_stream_error(s: &Stanza) -> bool {
    s.name == "error" && s.ns == NS_STREAMS
}

fn refused(domain: &str, error: &Stanza) -> HandshakeError {
    let StreamError { condition, text } = StreamError::parse(&error.bytes);
    HandshakeError::Refused {
        domain: domain.to_owned(),
        condition,
        text,
    }
}

// ---------------------------------------------------------------------------
// Server side (listener)
// ---------------------------------------------------------------------------

/// Where the accepting side got to, kept outside the steps so that a
/// timeout (which drops them) can still answer with a well-formed stream.
struct Progress {
    stage: Stage,
    header_sent: bool,
}

/// Authenticates a component instance that connected to our listener for
/// `domain` with `secret`, on `conn`.
///
/// Returns the `to` the instance opened its stream with (as it wrote it;
/// it matched `domain` ignoring ASCII case and one trailing dot). The whole
/// exchange runs under `timeout`. On refusal, framing errors and timeouts
/// the instance is sent the matching stream error (preceded by our stream
/// header if it was not sent yet, as RFC 6120 §4.9.1.1 requires) before
/// this returns; then drop the connection.
///
/// Not an `async fn`: the stream id is drawn from `rng` before the future
/// is built, so the future does not borrow `rng` and stays `Send` even with
/// a thread-local generator such as `rand::rng()`.
pub fn admit<'a, F, W, G>(
    conn: &'a mut Connection<F, W>,
    domain: &'a str,
    secret: &'a Secret,
    rng: &mut G,
    timeout: Duration,
) -> impl Future<Output = Result<String, HandshakeError>> + 'a
where
    F: FrameSource + 'a,
    W: AsyncWrite + Unpin + 'a,
    G: RngCore + ?Sized,
{
    admit_as(conn, domain, secret, new_stream_id(rng), timeout)
}

/// [`admit`] over a frame reader and a writer the caller keeps apart.
pub fn accept<'a, R, W, G>(
    reader: &'a mut FramedRead<R, Framer>,
    writer: &'a mut W,
    domain: &'a str,
    secret: &'a Secret,
    rng: &mut G,
    timeout: Duration,
) -> impl Future<Output = Result<String, HandshakeError>> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + Unpin + 'a,
    G: RngCore + ?Sized,
{
    let stream_id = new_stream_id(rng);
    async move {
        let mut conn = Connection::from_parts(reader, writer);
        admit_as(&mut conn, domain, secret, stream_id, timeout).await
    }
}

/// [`admit`] with the stream id already drawn.
async fn admit_as<F, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
    secret: &Secret,
    stream_id: String,
    timeout: Duration,
) -> Result<String, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    let mut progress = Progress {
        stage: Stage::OpeningStream,
        header_sent: false,
    };
    let steps = accept_steps(conn, domain, secret, &stream_id, &mut progress);
    let result = match tokio::time::timeout(timeout, steps).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout {
            stage: progress.stage,
            after: timeout,
        }),
    };
    if let Some(condition) = result.as_ref().err().and_then(|e| e.condition_to_send()) {
        // Best effort: the instance may be gone or not reading, and the
        // error we return says what matters.
        let write = async {
            if !progress.header_sent {
                conn.send(&server_header(domain, &stream_id)).await?;
            }
            conn.close(condition).await
        };
        let _ = tokio::time::timeout(ERROR_WRITE_GRACE, write).await;
    }
    result
}

async fn accept_steps<F, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
    secret: &Secret,
    stream_id: &str,
    progress: &mut Progress,
) -> Result<String, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    let to = instance_header(conn, domain, progress.stage).await?;
    // Counted as sent once attempted: after a partial write, a second
    // header in front of a stream error would only garble it further.
    progress.header_sent = true;
    send(conn, &server_header(domain, stream_id), progress.stage).await?;

    progress.stage = Stage::Authenticating;
    let handshake = instance_handshake(conn, progress.stage).await?;
    let presented = inspect::element_text(&handshake.bytes);
    if !verify(stream_id, secret.expose(), &presented) {
        return Err(reject(
            StreamCondition::NotAuthorized,
            "the instance's handshake does not match the instance secret".into(),
        ));
    }
    send(conn, HANDSHAKE_OK, progress.stage).await?;
    Ok(to)
}

/// The instance's stream header, checked: its `to` if it names `domain`
/// in the component namespace.
async fn instance_header<F, W>(
    conn: &mut Connection<F, W>,
    domain: &str,
    stage: Stage,
) -> Result<String, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    let header = match next_frame(conn, stage).await? {
        Frame::Header(header) => *header,
        // Unreachable with the framer (the root element is the header);
        // answered as the framer would answer a bad root.
        Frame::Stanza(s) => {
            return Err(reject(
                StreamCondition::InvalidNamespace,
                format!("<{}> before a stream header", s.name),
            ))
        }
        // Whitespace and skips come only after a header.
        Frame::Whitespace(_) | Frame::End(_) | Frame::Skipped(_) => {
            return Err(HandshakeError::Closed { stage })
        }
    };
    let Some(to) = header.to else {
        return Err(reject(
            StreamCondition::ImproperAddressing,
            "the instance's stream header has no 'to'".into(),
        ));
    };
    if !same_domain(&to, domain) {
        return Err(reject(
            StreamCondition::HostUnknown,
            format!("the instance asked for {to:?}; this listener serves {domain:?}"),
        ));
    }
    if header.xmlns.as_deref() != Some(NS_COMPONENT) {
        return Err(reject(
            StreamCondition::InvalidNamespace,
            format!(
                "the instance's default namespace is {:?}, not {NS_COMPONENT:?}",
                header.xmlns.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(to)
}

/// The instance's `<handshake>` element, whatever it holds.
async fn instance_handshake<F, W>(
    conn: &mut Connection<F, W>,
    stage: Stage,
) -> Result<Stanza, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    match next_frame(conn, stage).await? {
        Frame::Stanza(s) if s.name == "handshake" && s.ns == NS_COMPONENT => Ok(s),
        Frame::Stanza(s) => Err(reject(
            StreamCondition::NotAuthorized,
            format!("the instance sent <{}> before <handshake>", s.name),
        )),
        Frame::Header(_) => Err(reject(
            StreamCondition::NotAuthorized,
            "the instance sent a second stream header before <handshake>".into(),
        )),
        // Instance links have per-stanza limits off: unreachable.
        Frame::Skipped(_) => Err(reject(
            StreamCondition::NotAuthorized,
            "the instance sent an element over the limits before <handshake>".into(),
        )),
        Frame::Whitespace(_) | Frame::End(_) => Err(HandshakeError::Closed { stage }),
    }
}

fn reject(condition: StreamCondition, reason: String) -> HandshakeError {
    HandshakeError::Rejected { condition, reason }
}

/// Domain equality as instances expect it: ASCII case-insensitive (DNS
/// names), and a fully qualified `example.` equal to `example`.
/// Internationalised names are compared as written, not IDNA-mapped.
fn same_domain(a: &str, b: &str) -> bool {
    fn bare(d: &str) -> &str {
        d.strip_suffix('.').unwrap_or(d)
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

// ---------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------

/// The next frame that is not a keepalive. A closed connection (EOF, or
/// EOF in the middle of an element) is [`HandshakeError::Closed`]; `End`
/// is returned for the caller to treat as closed.
async fn next_frame<F, W>(
    conn: &mut Connection<F, W>,
    stage: Stage,
) -> Result<Frame, HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    loop {
        return match conn.read_frame().await {
            Ok(Frame::Whitespace(_)) => continue,
            Ok(frame) => Ok(frame),
            Err(CodecError::Frame(FrameError::Truncated)) => Err(HandshakeError::Closed { stage }),
            Err(CodecError::Io(source)) => Err(HandshakeError::Io { stage, source }),
            Err(CodecError::Frame(source)) => Err(HandshakeError::Framing { stage, source }),
        };
    }
}

/// Writes and flushes, so the peer is not left waiting for a step that
/// sits in a buffer.
async fn send<F, W>(
    conn: &mut Connection<F, W>,
    bytes: &[u8],
    stage: Stage,
) -> Result<(), HandshakeError>
where
    F: FrameSource,
    W: AsyncWrite + Unpin,
{
    conn.send(bytes)
        .await
        .map_err(|source| HandshakeError::Io { stage, source })
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tokio::io::AsyncReadExt;
    use tokio::time::Instant;

    use bytes::BytesMut;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::xml::frame::NS_STREAM_ERRORS;
    use crate::xml::FramerLimits;

    const DOMAIN: &str = "x.example.test";
    const SECRET: &str = "s3cr3t-never-log";
    const OTHER_SECRET: &str = "other-s3cr3t-never-log";
    const T: Duration = Duration::from_secs(5);
    const SEED: u64 = 7;

    const SERVER_HDR: &str = "<?xml version='1.0'?><stream:stream \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' \
        from='x.example.test' id='3BF96D32'>";
    const INSTANCE_HDR: &str = "<stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' to='x.example.test'>";

    fn framed<R: AsyncRead>(r: R) -> FramedRead<R, Framer> {
        FramedRead::new(r, Framer::new(FramerLimits::default()))
    }

    /// Every error these tests produce goes through here: neither secret
    /// may show in what an operator would see.
    fn hidden(e: &HandshakeError) -> &HandshakeError {
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(SECRET), "secret leaked: {shown}");
            assert!(!shown.contains(OTHER_SECRET), "secret leaked: {shown}");
        }
        e
    }

    fn err<T: fmt::Debug>(r: Result<T, HandshakeError>) -> HandshakeError {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => {
                hidden(&e);
                e
            }
        }
    }

    fn frames_of(bytes: &[u8]) -> Vec<Frame> {
        let mut framer = Framer::new(FramerLimits::default());
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(f)) = framer.next_frame(&mut buf) {
            out.push(f);
        }
        out
    }

    /// What an instance reads back from a refusing listener: exactly one
    /// stream header, then the stream error's condition.
    fn refusal_seen(written: &[u8]) -> (StreamHeader, StreamCondition) {
        let frames = frames_of(written);
        let headers = frames
            .iter()
            .filter(|f| matches!(f, Frame::Header(_)))
            .count();
        assert_eq!(headers, 1, "{:?}", String::from_utf8_lossy(written));
        let header = match &frames[0] {
            Frame::Header(h) => StreamHeader::clone(h),
            other => panic!("{other:?}"),
        };
        let error = frames
            .iter()
            .find_map(|f| match f {
                Frame::Stanza(s) if is_stream_error(s) => Some(s),
                _ => None,
            })
            .expect("a stream error");
        assert!(written.ends_with(STREAM_END));
        (header, StreamError::parse(&error.bytes).condition)
    }

    /// Runs the component side against canned server bytes; returns the
    /// result and what the component wrote.
    async fn connect_canned(server: &str) -> (Result<StreamHeader, HandshakeError>, Vec<u8>) {
        let mut reader = framed(server.as_bytes());
        let mut written = Vec::new();
        let r = connect(&mut reader, &mut written, DOMAIN, &Secret::new(SECRET), T).await;
        (r, written)
    }

    /// Runs the listener side against canned instance bytes, with the
    /// stream id drawn from a fixed seed.
    async fn accept_canned(instance: &str) -> (Result<String, HandshakeError>, Vec<u8>) {
        let mut reader = framed(instance.as_bytes());
        let mut written = Vec::new();
        let mut rng = StdRng::seed_from_u64(SEED);
        let secret = Secret::new(SECRET);
        let r = accept(&mut reader, &mut written, DOMAIN, &secret, &mut rng, T).await;
        (r, written)
    }

    fn seeded_id() -> String {
        new_stream_id(&mut StdRng::seed_from_u64(SEED))
    }

    /// Both real sides over an in-memory socket.
    async fn pair(
        c_domain: &'static str,
        c_secret: &'static str,
        s_secret: &'static str,
    ) -> (
        Result<StreamHeader, HandshakeError>,
        Result<String, HandshakeError>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let component = async move {
            let (r, mut w) = tokio::io::split(a);
            let mut reader = framed(r);
            connect(&mut reader, &mut w, c_domain, &Secret::new(c_secret), T).await
        };
        let listener = async move {
            let (r, mut w) = tokio::io::split(b);
            let mut reader = framed(r);
            let secret = Secret::new(s_secret);
            let mut rng = StdRng::seed_from_u64(SEED);
            accept(&mut reader, &mut w, DOMAIN, &secret, &mut rng, T).await
        };
        tokio::join!(component, listener)
    }

    // --- pure parts ---

    #[test]
    fn digest_matches_an_independent_sha1() {
        // python3 -c "import hashlib; print(hashlib.sha1(b'3BF96D32' + b's3cr3t').hexdigest())"
        assert_eq!(
            digest("3BF96D32", "s3cr3t"),
            "ba33290100f616a33656a931798d6c9011cfa840"
        );
    }

    #[test]
    fn verify_is_lenient_on_case_and_whitespace_only() {
        let d = digest("id1", "pw");
        assert!(verify("id1", "pw", &d));
        assert!(verify("id1", "pw", &d.to_uppercase()));
        assert!(verify("id1", "pw", &format!("\n\t {d} \r\n")));
        assert!(!verify("id1", "other", &d));
        assert!(!verify("id2", "pw", &d));
        assert!(!verify("id1", "pw", &d[..39]));
        assert!(!verify("id1", "pw", &format!("{d}0")));
        assert!(!verify("id1", "pw", &format!("{} {}", &d[..20], &d[20..])));
        assert!(!verify("id1", "pw", ""));
    }

    #[test]
    fn stream_ids_are_128_bit_hex_and_fresh() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = new_stream_id(&mut rng);
        let b = new_stream_id(&mut rng);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn builders_write_the_exact_bytes() {
        assert_eq!(
            client_header("x.example.test"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='x.example.test'>"
        );
        assert_eq!(
            server_header("x.example.test", "abc"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' from='x.example.test' id='abc'>"
        );
        assert_eq!(handshake_element("00ff"), "<handshake>00ff</handshake>");
        assert_eq!(
            stream_error(StreamCondition::Conflict, None),
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             </stream:error></stream:stream>"
        );
        assert_eq!(
            stream_error(StreamCondition::HostUnknown, Some("a<b & c")),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b &amp; c</text>\
             </stream:error></stream:stream>"
        );
        assert!(
            std::str::from_utf8(&client_header("o'x")).is_ok_and(|h| h.ends_with("to='o&apos;x'>"))
        );
    }

    #[test]
    fn builders_frame_as_what_they_claim() {
        let mut bytes = server_header(DOMAIN, "id-1").to_vec();
        bytes.extend_from_slice(&stream_error(StreamCondition::NotAuthorized, Some("no")));
        let frames = frames_of(&bytes);
        assert!(matches!(&frames[0], Frame::Header(h)
            if h.from.as_deref() == Some(DOMAIN) && h.id.as_deref() == Some("id-1")
                && h.xmlns.as_deref() == Some(NS_COMPONENT)));
        assert!(matches!(&frames[1], Frame::Stanza(s) if is_stream_error(s)));
        assert!(matches!(&frames[2], Frame::End(_)));
        let frames = frames_of(&client_header(DOMAIN));
        assert!(matches!(&frames[0], Frame::Header(h) if h.to.as_deref() == Some(DOMAIN)));
    }

    #[test]
    fn stream_errors_read_back_as_written() {
        for condition in StreamCondition::ALL {
            let mut written = server_header(DOMAIN, "id-1").to_vec();
            written.extend_from_slice(&stream_error(condition, Some("why & how")));
            let frames = frames_of(&written);
            let Frame::Stanza(error) = &frames[1] else {
                panic!("{frames:?}")
            };
            let read = StreamError::parse(&error.bytes);
            let expected = match condition {
                StreamCondition::Other => StreamCondition::UndefinedCondition,
                c => c,
            };
            assert_eq!(read.condition, expected);
            assert_eq!(read.text.as_deref(), Some("why & how"));
        }
    }

    #[test]
    fn permanence_follows_what_an_operator_must_fix() {
        let refused = |c: &str| HandshakeError::Refused {
            domain: DOMAIN.into(),
            condition: StreamCondition::from_name(c),
            text: None,
        };
        assert!(refused("not-authorized").is_permanent());
        assert!(refused("host-unknown").is_permanent());
        assert!(!refused("conflict").is_permanent());
        assert!(!refused("system-shutdown").is_permanent());
        assert!(!HandshakeError::Closed {
            stage: Stage::Authenticating
        }
        .is_permanent());
        assert!(HandshakeError::BadHeader("x".into()).is_permanent());
    }

    // --- both sides against each other ---

    #[tokio::test]
    async fn both_sides_agree() {
        let (c, s) = pair(DOMAIN, SECRET, SECRET).await;
        let header = c.expect("component authenticated");
        assert_eq!(header.id, Some(seeded_id()));
        assert_eq!(header.from.as_deref(), Some(DOMAIN));
        assert_eq!(s.expect("instance accepted"), DOMAIN);
    }

    #[tokio::test]
    async fn domain_matches_ignoring_case_and_trailing_dot() {
        let (c, s) = pair("X.Example.TEST.", SECRET, SECRET).await;
        assert!(c.is_ok());
        assert_eq!(s.expect("accepted").as_str(), "X.Example.TEST.");
    }

    #[tokio::test]
    async fn wrong_secret_either_way_round() {
        for (c_secret, s_secret) in [(SECRET, OTHER_SECRET), (OTHER_SECRET, SECRET)] {
            let (c, s) = pair(DOMAIN, c_secret, s_secret).await;
            let c = err(c);
            assert!(
                matches!(&c, HandshakeError::Refused { condition, .. } if *condition == StreamCondition::NotAuthorized)
            );
            assert_eq!(
                c.to_string(),
                "the server refused the secret for x.example.test"
            );
            assert!(c.is_permanent());
            let s = err(s);
            assert!(matches!(
                s,
                HandshakeError::Rejected {
                    condition: StreamCondition::NotAuthorized,
                    ..
                }
            ));
        }
    }

    #[tokio::test]
    async fn unknown_domain_is_host_unknown_on_both_sides() {
        let (c, s) = pair("other.example.test", SECRET, SECRET).await;
        assert_eq!(
            err(c).to_string(),
            "the server has no component other.example.test configured"
        );
        let s = err(s);
        assert!(matches!(
            &s,
            HandshakeError::Rejected {
                condition: StreamCondition::HostUnknown,
                reason
            } if reason.contains("other.example.test")
        ));
    }

    // --- component side against canned servers ---

    #[tokio::test]
    async fn component_writes_header_then_digest_and_keeps_later_stanzas() {
        let server = format!("{SERVER_HDR} <handshake/><message to='a@b' from='c@d'/>");
        let mut reader = framed(server.as_bytes());
        let mut written = Vec::new();
        let header = connect(&mut reader, &mut written, DOMAIN, &Secret::new(SECRET), T)
            .await
            .expect("authenticated");
        assert_eq!(header.id.as_deref(), Some("3BF96D32"));
        let mut want = client_header(DOMAIN).to_vec();
        want.extend_from_slice(&handshake_element(&digest("3BF96D32", SECRET)));
        assert_eq!(written, want);
        assert!(matches!(reader.next().await, Some(Ok(Frame::Stanza(s))) if s.name == "message"));
    }

    #[tokio::test]
    async fn server_stream_errors_read_as_operator_advice() {
        let cases = [
            (
                "not-authorized",
                "the server refused the secret for x.example.test",
            ),
            (
                "host-unknown",
                "the server has no component x.example.test configured",
            ),
            (
                "conflict",
                "another connection holds x.example.test (Prosody's default \
                 component_conflict_resolve = \"kick_new\" refuses a quick reconnect \
                 while the old session lingers)",
            ),
            (
                "system-shutdown",
                "the server closed the stream for x.example.test with <system-shutdown/>",
            ),
        ];
        for (condition, advice) in cases {
            let error =
                String::from_utf8_lossy(&stream_error(StreamCondition::from_name(condition), None))
                    .into_owned();
            let (r, _) = connect_canned(&format!("{SERVER_HDR}{error}")).await;
            let e = err(r);
            assert_eq!(e.to_string(), advice);
            assert_eq!(e.stage(), None);
        }
        // A name outside RFC 6120 is not echoed as if it were one.
        let made_up = format!(
            "{SERVER_HDR}<stream:error><made-up xmlns='{NS_STREAM_ERRORS}'/></stream:error>"
        );
        let (r, _) = connect_canned(&made_up).await;
        assert_eq!(
            err(r).to_string(),
            "the server closed the stream for x.example.test with a condition RFC 6120 \
             does not define"
        );
    }

    #[tokio::test]
    async fn server_text_is_quoted_after_the_advice() {
        let error = stream_error(
            StreamCondition::Conflict,
            Some("Replaced by new\nconnection"),
        );
        let (r, _) =
            connect_canned(&format!("{SERVER_HDR}{}", String::from_utf8_lossy(&error))).await;
        let shown = err(r).to_string();
        assert!(shown.starts_with("another connection holds x.example.test"));
        assert!(
            shown.ends_with(r#"(server said "Replaced by new\nconnection")"#),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn prosody_refusal_without_stream_id_is_not_blamed_on_the_header() {
        // What Prosody 0.12 sends for an unconfigured component domain.
        let server = "<?xml version='1.0'?><stream:stream \
            xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept'>\
            <stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>x.example.test does not match \
            any configured external components</text></stream:error></stream:stream>";
        let (r, written) = connect_canned(server).await;
        let e = err(r);
        assert!(
            matches!(&e, HandshakeError::Refused { condition, text: Some(_), .. }
            if *condition == StreamCondition::HostUnknown)
        );
        assert_eq!(written, client_header(DOMAIN), "no handshake without an id");
    }

    #[tokio::test]
    async fn header_without_id_or_in_the_wrong_namespace_is_bad() {
        let no_id = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
            xmlns='jabber:component:accept'>";
        let (r, _) = connect_canned(no_id).await;
        assert!(matches!(err(r), HandshakeError::BadHeader(m) if m.contains("no stream id")));

        let c2s = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
            xmlns='jabber:client' id='1' version='1.0'>";
        let (r, _) = connect_canned(c2s).await;
        assert!(matches!(err(r), HandshakeError::BadHeader(m) if m.contains("component port")));
    }

    #[tokio::test(start_paused = true)]
    async fn header_without_id_and_silence_is_bad_after_a_short_grace() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs
            .write_all(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept'>")
            .await
            .expect("buffered");
        let (r, mut w) = tokio::io::split(ours);
        let mut reader = framed(r);
        let start = Instant::now();
        let e = err(connect(&mut reader, &mut w, DOMAIN, &Secret::new(SECRET), T).await);
        assert!(matches!(e, HandshakeError::BadHeader(_)));
        assert_eq!(start.elapsed(), REFUSAL_GRACE);
        drop(theirs);
    }

    #[tokio::test]
    async fn refusal_already_received_beats_a_failed_handshake_write() {
        /// Accepts the stream header, then fails like a socket the server
        /// has already reset.
        struct ResetAfterFirstWrite(bool);
        impl AsyncWrite for ResetAfterFirstWrite {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                if std::mem::replace(&mut self.0, true) {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                } else {
                    Poll::Ready(Ok(buf.len()))
                }
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let server = format!(
            "{SERVER_HDR}{}",
            String::from_utf8_lossy(&stream_error(StreamCondition::Conflict, None))
        );
        let mut reader = framed(server.as_bytes());
        let mut writer = ResetAfterFirstWrite(false);
        let e = err(connect(&mut reader, &mut writer, DOMAIN, &Secret::new(SECRET), T).await);
        assert!(
            matches!(e, HandshakeError::Refused { condition, .. } if condition == StreamCondition::Conflict)
        );

        // Without a refusal to show, the write error stands.
        let mut reader = framed(SERVER_HDR.as_bytes());
        let mut writer = ResetAfterFirstWrite(false);
        let e = err(connect(&mut reader, &mut writer, DOMAIN, &Secret::new(SECRET), T).await);
        assert!(matches!(
            e,
            HandshakeError::Io {
                stage: Stage::Authenticating,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn server_closing_mid_handshake_is_closed() {
        let (r, _) = connect_canned(SERVER_HDR).await;
        assert!(matches!(
            err(r),
            HandshakeError::Closed {
                stage: Stage::Authenticating
            }
        ));
        let (r, _) = connect_canned(&format!("{SERVER_HDR}</stream:stream>")).await;
        assert!(matches!(err(r), HandshakeError::Closed { .. }));
        let (r, _) = connect_canned(&SERVER_HDR[..40]).await;
        assert!(matches!(
            err(r),
            HandshakeError::Closed {
                stage: Stage::OpeningStream
            }
        ));
        let (r, _) = connect_canned("").await;
        assert!(matches!(err(r), HandshakeError::Closed { .. }));
    }

    #[tokio::test]
    async fn something_else_than_the_handshake_reply_is_unexpected() {
        let (r, _) = connect_canned(&format!("{SERVER_HDR}<message to='x'/>")).await;
        let e = err(r);
        assert!(matches!(&e, HandshakeError::Unexpected { element, .. } if element == "message"));
        assert!(e.is_permanent());
    }

    #[tokio::test]
    async fn garbage_from_the_server_is_a_framing_error() {
        let (r, _) = connect_canned("HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let e = err(r);
        assert!(matches!(
            e,
            HandshakeError::Framing {
                stage: Stage::OpeningStream,
                ..
            }
        ));
        assert!(e.is_permanent());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_times_out_without_real_sleeping() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (r, mut w) = tokio::io::split(ours);
        let mut reader = framed(r);
        let start = Instant::now();
        let e = err(connect(&mut reader, &mut w, DOMAIN, &Secret::new(SECRET), T).await);
        assert!(matches!(
            e,
            HandshakeError::Timeout {
                stage: Stage::OpeningStream,
                after: T
            }
        ));
        assert_eq!(start.elapsed(), T);
        assert!(!e.is_permanent());
        drop(theirs);
    }

    // --- listener side against canned instances ---

    #[tokio::test]
    async fn listener_accepts_uppercase_padded_digest() {
        let proof = digest(&seeded_id(), SECRET).to_uppercase();
        let (r, written) = accept_canned(&format!(
            "{INSTANCE_HDR}\n<handshake> {proof}\n</handshake>"
        ))
        .await;
        assert_eq!(r.expect("accepted"), DOMAIN);
        let mut want = server_header(DOMAIN, &seeded_id()).to_vec();
        want.extend_from_slice(HANDSHAKE_OK);
        assert_eq!(written, want);
    }

    #[tokio::test]
    async fn missing_to_is_improper_addressing() {
        let (r, written) = accept_canned(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .await;
        assert!(matches!(
            err(r),
            HandshakeError::Rejected {
                condition: StreamCondition::ImproperAddressing,
                ..
            }
        ));
        let (header, condition) = refusal_seen(&written);
        assert_eq!(header.from.as_deref(), Some(DOMAIN));
        assert_eq!(condition, StreamCondition::ImproperAddressing);
    }

    #[tokio::test]
    async fn unknown_to_is_host_unknown() {
        let (r, written) = accept_canned(&INSTANCE_HDR.replace("x.example", "y.example")).await;
        assert!(matches!(
            err(r),
            HandshakeError::Rejected {
                condition: StreamCondition::HostUnknown,
                ..
            }
        ));
        assert_eq!(refusal_seen(&written).1, StreamCondition::HostUnknown);
    }

    #[tokio::test]
    async fn client_namespace_is_invalid_namespace() {
        let (r, written) =
            accept_canned(&INSTANCE_HDR.replace("jabber:component:accept", "jabber:client")).await;
        assert!(matches!(
            err(r),
            HandshakeError::Rejected {
                condition: StreamCondition::InvalidNamespace,
                ..
            }
        ));
        assert_eq!(refusal_seen(&written).1, StreamCondition::InvalidNamespace);
    }

    #[tokio::test]
    async fn stanza_before_handshake_is_not_authorized() {
        let (r, written) = accept_canned(&format!("{INSTANCE_HDR}<iq type='get' id='1'/>")).await;
        assert!(matches!(
            err(r),
            HandshakeError::Rejected {
                condition: StreamCondition::NotAuthorized,
                ..
            }
        ));
        let (header, condition) = refusal_seen(&written);
        assert_eq!(header.id, Some(seeded_id()));
        assert_eq!(condition, StreamCondition::NotAuthorized);
    }

    #[tokio::test]
    async fn garbage_from_an_instance_gets_the_framers_condition() {
        let (r, written) = accept_canned("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let e = err(r);
        let HandshakeError::Framing { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(refusal_seen(&written).1, source.condition());
    }

    #[tokio::test]
    async fn instance_closing_mid_handshake_is_closed_and_gets_no_error() {
        let (r, written) = accept_canned(INSTANCE_HDR).await;
        assert!(matches!(
            err(r),
            HandshakeError::Closed {
                stage: Stage::Authenticating
            }
        ));
        assert_eq!(written, server_header(DOMAIN, &seeded_id()));
    }

    async fn accept_silent(instance_sends: &[u8]) -> (HandshakeError, Vec<u8>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(instance_sends).await.expect("buffered");
        let (r, mut w) = tokio::io::split(ours);
        let mut reader = framed(r);
        let secret = Secret::new(SECRET);
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(SEED);
        let e = err(accept(&mut reader, &mut w, DOMAIN, &secret, &mut rng, T).await);
        assert_eq!(start.elapsed(), T);
        drop((reader, w));
        let mut written = Vec::new();
        theirs.read_to_end(&mut written).await.expect("readable");
        (e, written)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_instance_gets_connection_timeout() {
        let (e, written) = accept_silent(b"").await;
        assert!(matches!(
            e,
            HandshakeError::Timeout {
                stage: Stage::OpeningStream,
                ..
            }
        ));
        assert_eq!(refusal_seen(&written).1, StreamCondition::ConnectionTimeout);

        let (e, written) = accept_silent(INSTANCE_HDR.as_bytes()).await;
        assert!(matches!(
            e,
            HandshakeError::Timeout {
                stage: Stage::Authenticating,
                ..
            }
        ));
        assert_eq!(refusal_seen(&written).1, StreamCondition::ConnectionTimeout);
    }

    #[test]
    fn accept_future_is_send_with_a_thread_local_rng() {
        fn assert_send<F: Send>(_: &F) {}
        let (a, _b) = tokio::io::duplex(64);
        let (r, mut w) = tokio::io::split(a);
        let mut reader = framed(r);
        let secret = Secret::new(SECRET);
        let fut = accept(&mut reader, &mut w, DOMAIN, &secret, &mut rand::rng(), T);
        assert_send(&fut);
    }

    #[test]
    fn connect_future_is_send() {
        fn assert_send<F: Send>(_: &F) {}
        let (a, _b) = tokio::io::duplex(64);
        let (r, mut w) = tokio::io::split(a);
        let mut reader = framed(r);
        let secret = Secret::new(SECRET);
        assert_send(&connect(&mut reader, &mut w, DOMAIN, &secret, T));
    }
}
