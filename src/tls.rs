//! Direct TLS on a freshly connected or accepted TCP socket: the
//! handshake on both links, with a deadline, and why one failed.
//!
//! XEP-0114 ports that offer TLS (ejabberd's `ejabberd_service` with
//! `tls: true`, Openfire's component SSL port) start it right after the
//! TCP connection, before any stream header; so does the instance
//! listener with `instances.tls_cert`. The stream then runs over the
//! returned [`Socket`] as over plain TCP.
//!
//! A failed handshake is a [`TlsError`]: the peer is the caller's to
//! name (it is on the span), the [`TlsFailure`] is what an operator
//! fixes (unknown CA, name mismatch, expired), and a metrics label. No
//! key material ever reaches an error.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTls, ServerTls};
use crate::connection::Socket;

/// Why a TLS handshake failed, as an operator fixes it; each is a fixed
/// metrics label (`reason`), so a peer cannot mint series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsFailure {
    /// The certificate chains to no CA we trust (or the peer said so of
    /// ours): wrong `tls_ca_file`, or a self-signed certificate.
    UnknownCa,
    /// The certificate is not for the name we asked (`tls_server_name`).
    NameMismatch,
    /// The certificate has expired (or the peer said ours has).
    Expired,
    /// The certificate is not valid yet (a clock off, or issued early).
    NotYetValid,
    /// Any other certificate problem (bad encoding, signature, usage).
    BadCertificate,
    /// The peer asked for a client certificate and none was configured,
    /// or gave none where one is required.
    NoCertificate,
    /// The peer sent an alert about something else, or spoke TLS
    /// wrongly (no common version or cipher, garbage).
    Protocol,
    /// The peer is not speaking TLS at all, or closed mid-handshake
    /// (a plain-TCP port, most often).
    NotTls,
    /// The handshake did not finish in time.
    Timeout,
    /// The socket failed.
    Io,
}

impl TlsFailure {
    /// The metrics label and the word in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown-ca",
            TlsFailure::NameMismatch => "name-mismatch",
            TlsFailure::Expired => "expired",
            TlsFailure::NotYetValid => "not-yet-valid",
            TlsFailure::BadCertificate => "bad-certificate",
            TlsFailure::NoCertificate => "no-certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::NotTls => "not-tls",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Io => "io",
        }
    }

    /// What rustls reported (ours, or the peer's alert) as an operator
    /// reads it.
    fn of_rustls(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(c) => Self::of_certificate(c),
            rustls::Error::AlertReceived(a) => Self::of_alert(*a),
            rustls::Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            rustls::Error::InvalidMessage(_) => TlsFailure::NotTls,
            _ => TlsFailure::Protocol,
        }
    }

    fn of_certificate(c: &CertificateError) -> Self {
        match c {
            CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::NameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsFailure::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsFailure::NotYetValid
            }
            _ => TlsFailure::BadCertificate,
        }
    }

    /// The peer's verdict on our certificate.
    fn of_alert(a: AlertDescription) -> Self {
        match a {
            AlertDescription::UnknownCA => TlsFailure::UnknownCa,
            AlertDescription::CertificateExpired => TlsFailure::Expired,
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked => TlsFailure::BadCertificate,
            AlertDescription::CertificateRequired => TlsFailure::NoCertificate,
            _ => TlsFailure::Protocol,
        }
    }

    /// The failure an I/O error from the handshake stands for.
    pub fn of_io(e: &std::io::Error) -> Self {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::of_rustls(tls);
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
                TlsFailure::NotTls
            }
            _ => TlsFailure::Io,
        }
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TLS handshake that failed; fatal to that connection. Upstream, the
/// next attempt comes after the usual backoff (it helps once the file or
/// the server is fixed); on the listener, the instance is refused and
/// nothing else is touched.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({reason}): {detail}")]
pub struct TlsError {
    pub reason: TlsFailure,
    /// rustls's or the socket's own words (certificate names, alert
    /// names; never key material).
    pub detail: String,
}

impl TlsError {
    fn io(e: &std::io::Error) -> Self {
        TlsError {
            reason: TlsFailure::of_io(e),
            detail: e.to_string(),
        }
    }

    fn timeout(limit: Duration) -> Self {
        TlsError {
            reason: TlsFailure::Timeout,
            detail: format!("no handshake within {limit:?}"),
        }
    }
}

/// The client side over `tcp`, within `limit`: the server's certificate
/// is checked against `tls.server_name` and `tls`'s roots.
pub async fn connect(tcp: TcpStream, tls: &ClientTls, limit: Duration) -> Result<Socket, TlsError> {
    // Nagle off before the handshake: its flights are small writes too.
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(limit, connector.connect(tls.server_name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(Socket::from(s)),
        Ok(Err(e)) => Err(TlsError::io(&e)),
        Err(_) => Err(TlsError::timeout(limit)),
    }
}

/// The server side over `tcp`, within `limit`.
pub async fn accept(tcp: TcpStream, tls: &ServerTls, limit: Duration) -> Result<Socket, TlsError> {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(tls.config.clone());
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Ok(Socket::from(s)),
        Ok(Err(e)) => Err(TlsError::io(&e)),
        Err(_) => Err(TlsError::timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    /// The three an operator meets most, from our side and from the
    /// peer's alert, each get their own label.
    #[test]
    fn failures_are_told_apart() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsFailure::UnknownCa,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                TlsFailure::Expired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                TlsFailure::UnknownCa,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
                TlsFailure::Expired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
                TlsFailure::Protocol,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(TlsFailure::of_io(&wrapped(e)), want);
        }
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(TlsFailure::of_io(&eof), TlsFailure::NotTls);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(TlsFailure::of_io(&reset), TlsFailure::Io);
    }
}
