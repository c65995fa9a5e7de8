//! The TLS variant of the bench's stream ends: a CA and a server
//! certificate made with rcgen at start (in a temp dir), and a blocking
//! rustls stream whose reading and writing halves run on different
//! threads, as the engine drives every end (see `engine.rs`).
//!
//! rustls' `StreamOwned` wants one owner; the engine wants a reader
//! thread and a writer thread per socket. So the connection state sits
//! behind a mutex held only to encrypt or decrypt, never across a
//! blocking socket call: the reader reads ciphertext unlocked and feeds
//! it in, the writer encrypts under the lock and writes unlocked. A
//! reader never writes (the handshake is finished before the split, and
//! TLS 1.3 needs no answer to tickets), so a blocked write cannot stall
//! the reading half and the proxy's backpressure cannot deadlock it.
//! One writer at a time per stream: setup writes before a run, the
//! engine's single writer thread during it.

#[path = "../../tests/support/certs.rs"]
mod certs;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, Connection, RootCertStore, ServerConfig};

use crate::setup::WAIT;

/// The certificates of one benchmark run and the configs built on them.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// PEM files, for jatproxy's configuration.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Pki {
    /// A fresh CA and a server certificate for 127.0.0.1 (and
    /// `xmpp.example.test`), both ends' rustls configs trusting it.
    pub fn new() -> Result<Pki, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let c = certs::make(dir.path(), "bench-", "jatproxy bench CA");
        let pem = |e: rustls_pki_types::pem::Error| e.to_string();
        let chain = vec![CertificateDer::from_pem_file(&c.cert).map_err(pem)?];
        let key = PrivateKeyDer::from_pem_file(&c.key).map_err(pem)?;
        let provider = provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| format!("server TLS config: {e}"))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&c.ca).map_err(pem)?)
            .map_err(|e| format!("CA: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("client TLS config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Pki {
            ca: c.ca,
            cert: c.cert,
            key: c.key,
            _dir: dir,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// TLS as the server on an accepted socket (the fake XMPP server).
    pub fn accept(&self, sock: TcpStream) -> Result<Link, String> {
        let conn = rustls::ServerConnection::new(self.server.clone())
            .map_err(|e| format!("TLS server: {e}"))?;
        Link::handshake(sock, conn.into())
    }

    /// TLS as the client checking 127.0.0.1 (a component instance).
    pub fn connect(&self, sock: TcpStream) -> Result<Link, String> {
        let name = ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
        let conn = rustls::ClientConnection::new(self.client.clone(), name)
            .map_err(|e| format!("TLS client: {e}"))?;
        Link::handshake(sock, conn.into())
    }
}

/// ring, the provider jatproxy is built with (deprecated in rustls
/// 0.23.48 only for lacking post-quantum key exchange, see
/// `src/config/tls.rs`), so both ends negotiate what a deployment would.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stream end's transport: plain TCP or TLS over it.
pub enum Link {
    Plain(TcpStream),
    Tls {
        sock: TcpStream,
        tls: Arc<Mutex<Connection>>,
    },
}

impl Link {
    fn handshake(mut sock: TcpStream, mut conn: Connection) -> Result<Link, String> {
        sock.set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)
                .map_err(|e| format!("TLS flush: {e}"))?;
        }
        // The writer encrypts whole batches (up to the engine's window).
        conn.set_buffer_limit(None);
        Ok(Link::Tls {
            sock,
            tls: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn sock(&self) -> &TcpStream {
        match self {
            Link::Plain(s) | Link::Tls { sock: s, .. } => s,
        }
    }

    /// Reads once from the socket and appends what it carried in clear to
    /// `buf`; `Ok(false)` when the peer closed.
    pub fn read_into(&mut self, scratch: &mut [u8], buf: &mut BytesMut) -> io::Result<bool> {
        match self {
            Link::Plain(s) => {
                let n = s.read(scratch)?;
                buf.extend_from_slice(&scratch[..n]);
                Ok(n > 0)
            }
            Link::Tls { sock, tls } => {
                let n = sock.read(scratch)?;
                let mut conn = tls
                    .lock()
                    .map_err(|_| io::Error::other("TLS state poisoned"))?;
                let mut rest = &scratch[..n];
                while !rest.is_empty() {
                    conn.read_tls(&mut rest)?;
                    conn.process_new_packets().map_err(io::Error::other)?;
                    drain_plaintext(&mut conn, buf)?;
                }
                Ok(n > 0)
            }
        }
    }

    /// Plaintext that came in with the end of the handshake, into `buf`.
    pub fn drain_pending(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Link::Plain(_) => Ok(()),
            Link::Tls { tls, .. } => {
                let mut conn = tls
                    .lock()
                    .map_err(|_| io::Error::other("TLS state poisoned"))?;
                drain_plaintext(&mut conn, buf)
            }
        }
    }

    /// A writing half for another thread (same socket).
    pub fn writer(&self) -> io::Result<LinkWriter> {
        Ok(LinkWriter {
            sock: self.sock().try_clone()?,
            tls: match self {
                Link::Plain(_) => None,
                Link::Tls { tls, .. } => Some(tls.clone()),
            },
            out: Vec::new(),
        })
    }
}

fn drain_plaintext(conn: &mut Connection, buf: &mut BytesMut) -> io::Result<()> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut tmp) {
            Ok(0) => return Ok(()),
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The writing half of a [`Link`].
pub struct LinkWriter {
    pub sock: TcpStream,
    tls: Option<Arc<Mutex<Connection>>>,
    /// Ciphertext of the current write.
    out: Vec<u8>,
}

impl LinkWriter {
    pub fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.sock.write_all(b);
        };
        self.out.clear();
        {
            let mut conn = tls
                .lock()
                .map_err(|_| io::Error::other("TLS state poisoned"))?;
            conn.writer().write_all(b)?;
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
        }
        self.sock.write_all(&self.out)
    }
}
