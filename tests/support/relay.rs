//! A TCP relay between jatproxy and a server's component port that frames
//! both directions with jatproxy's own framer and records, per request id,
//! whether the request was written to jatproxy's socket and whether
//! jatproxy's answer was written towards the server. A test points
//! jatproxy's `upstream.server` at [`Relay::addr`]; every connection
//! jatproxy opens (a reconnect, or the short second session a stopping
//! process opens to answer late requests) is relayed and recorded in the
//! same [`Seen`]. With it a test can tell a request or answer lost inside
//! jatproxy from one lost outside it (on a cut link, or inside the server).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use jatproxy::xml::{Frame, Framer, FramerLimits, Stanza};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// What crossed the relay, by request id.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests from a requester that the relay handed to jatproxy (their
    /// bytes written to jatproxy's socket).
    pub accepted: HashMap<String, usize>,
    /// Answers to a requester that jatproxy sent (delivered or not): the
    /// `to` of each, in order.
    pub answered: HashMap<String, Vec<String>>,
    /// Of those, answers the relay could not deliver (link cut).
    pub undelivered: HashMap<String, usize>,
    /// Requests from a requester that the relay read from the server but
    /// could not write to jatproxy: jatproxy had closed its socket.
    pub unwritten: HashMap<String, usize>,
    /// Connections jatproxy opened through the relay, counted from 1.
    pub sessions: usize,
    /// The connection (1, 2, …) each accepted request reached jatproxy on,
    /// first one first.
    pub accepted_on: HashMap<String, Vec<usize>>,
}

/// A TCP relay from jatproxy to a server's component port. `cut` ends the
/// current connection as a broken link does: what the server sent that is
/// not yet through is gone, jatproxy sees its connection end without a
/// stream close, and what jatproxy still writes is read and discarded.
/// Without a cut it passes everything through, stream closes and TCP
/// half-closes included, in both directions.
pub struct Relay {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    cut: watch::Sender<CancellationToken>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `upstream`. `requesters`: the bare JIDs whose
    /// requests and answers are recorded ([`requester_id`]).
    pub async fn start(upstream: SocketAddr, requesters: &[&str]) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let requesters: Arc<[String]> = requesters.iter().map(|r| r.to_string()).collect();
        let (cut, cut_rx) = watch::channel(CancellationToken::new());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((proxy_side, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server_side) = TcpStream::connect(upstream).await else {
                    // The server is down: jatproxy sees the connection
                    // close and retries.
                    continue;
                };
                let _ = server_side.set_nodelay(true);
                let _ = proxy_side.set_nodelay(true);
                let session = {
                    let mut seen = s.lock().expect("lock");
                    seen.sessions += 1;
                    seen.sessions
                };
                let token = cut_rx.borrow().clone();
                tokio::spawn(relay_session(
                    proxy_side,
                    server_side,
                    token,
                    s.clone(),
                    requesters.clone(),
                    session,
                ));
            }
        });
        Relay {
            addr,
            seen,
            cut,
            task,
        }
    }

    /// Cuts the current connection; the next one jatproxy opens is relayed.
    pub fn cut(&self) {
        let old = self.cut.send_replace(CancellationToken::new());
        old.cancel();
    }

    /// What the relay has seen so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().expect("lock")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.borrow().cancel();
    }
}

/// The requester-facing id of a stanza crossing the relay: requests from
/// a requester to the domain (server → jatproxy) and answers to a
/// requester (jatproxy → server). Requests jatproxy forwards to client
/// resources carry the same id, so the direction and addresses decide.
/// A requester is any JID starting with one of `requesters`.
pub fn requester_id(st: &Stanza, to_proxy: bool, requesters: &[String]) -> Option<String> {
    let is_requester =
        |a: Option<&str>| a.is_some_and(|a| requesters.iter().any(|r| a.starts_with(r.as_str())));
    let id = st.id()?.to_owned();
    if to_proxy && st.is_iq_request() && is_requester(st.from()) {
        return Some(id);
    }
    if !to_proxy && st.is_iq_response() && is_requester(st.to()) {
        return Some(id);
    }
    None
}

async fn relay_session(
    proxy_side: TcpStream,
    server_side: TcpStream,
    cut: CancellationToken,
    seen: Arc<Mutex<Seen>>,
    requesters: Arc<[String]>,
    session: usize,
) {
    let (pr, mut pw) = proxy_side.into_split();
    let (sr, mut sw) = server_side.into_split();
    let limits = FramerLimits {
        max_stanza_bytes: 4 << 20,
        ..FramerLimits::default()
    };
    // Server → jatproxy, stanza by stanza: a request counts as accepted
    // once its bytes are written to jatproxy's socket.
    let down = {
        let seen = seen.clone();
        let cut = cut.clone();
        let requesters = requesters.clone();
        async move {
            let mut frames = FramedRead::new(sr, Framer::new(limits));
            loop {
                let f = tokio::select! {
                    f = frames.next() => f,
                    _ = cut.cancelled() => None,
                };
                let Some(Ok(f)) = f else { break };
                let id = match &f {
                    Frame::Stanza(st) => requester_id(st, true, &requesters),
                    _ => None,
                };
                if pw.write_all(f.bytes()).await.is_err() {
                    if let Some(id) = id {
                        *seen.lock().expect("lock").unwritten.entry(id).or_default() += 1;
                    }
                    break;
                }
                if let Some(id) = id {
                    let mut seen = seen.lock().expect("lock");
                    seen.accepted_on
                        .entry(id.clone())
                        .or_default()
                        .push(session);
                    *seen.accepted.entry(id).or_default() += 1;
                }
            }
            // Whatever the server still sends is dropped with its socket;
            // jatproxy reads all it was given, then the end.
            let _ = pw.shutdown().await;
        }
    };
    // jatproxy → server: every answer jatproxy writes is counted; after a
    // cut (or once the server is gone) they are read and discarded.
    let up = {
        let seen = seen.clone();
        async move {
            let mut frames = FramedRead::new(pr, Framer::new(limits));
            let mut open = true;
            while let Some(Ok(f)) = frames.next().await {
                let id = match &f {
                    Frame::Stanza(st) => requester_id(st, false, &requesters),
                    _ => None,
                };
                if let (Some(id), Frame::Stanza(st)) = (&id, &f) {
                    seen.lock()
                        .expect("lock")
                        .answered
                        .entry(id.clone())
                        .or_default()
                        .push(st.to().unwrap_or_default().to_owned());
                }
                if open && !cut.is_cancelled() && sw.write_all(f.bytes()).await.is_ok() {
                    continue;
                }
                open = false;
                let _ = sw.shutdown().await;
                if let Some(id) = id {
                    *seen
                        .lock()
                        .expect("lock")
                        .undelivered
                        .entry(id)
                        .or_default() += 1;
                }
            }
        }
    };
    tokio::join!(down, up);
}
