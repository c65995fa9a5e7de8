//! TLS on both links: the PEM files the configuration names, read and
//! checked at load, and the rustls settings built from them.
//!
//! The files are read whenever a configuration is loaded — at start and
//! at every reload — so a SIGHUP after a certificate was renewed in place
//! picks up the new files even though no key changed; each resolved form
//! keeps a digest of what it read, which [`crate::reload`] compares.
//! Errors name the key and the path, never a key's bytes: an unreadable
//! or unusable file stops the start (or refuses the reload) with one
//! line the operator can act on.
//!
//! The crypto is rustls with the *ring* provider, chosen explicitly
//! rather than through a process-wide default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha1::{Digest, Sha1};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use super::ConfigError;

/// `upstream.tls`: whether the link to the server is wrapped in TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    /// Plain TCP (the default; what Prosody's component port speaks).
    #[default]
    None,
    /// TLS right after the TCP connect, before the stream header (what
    /// ejabberd's `ejabberd_service` with `tls: true` and Openfire's
    /// component SSL port expect).
    Direct,
}

impl UpstreamTlsMode {
    pub(super) fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "none" => Ok(Self::None),
            "direct" => Ok(Self::Direct),
            other => Err(ConfigError::invalid(
                "upstream.tls",
                format!("{other:?} is not one of \"none\", \"direct\""),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Direct => "direct",
        }
    }
}

/// The upstream TLS keys as given (file and flags merged).
#[derive(Debug, Default)]
pub(super) struct RawClientTls {
    pub mode: Option<String>,
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where the upstream link's trust anchors come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// The system's roots (`rustls-native-certs`).
    System,
    File(PathBuf),
}

/// Direct TLS to the server, ready to connect with.
#[derive(Clone)]
pub struct ClientTls {
    /// The name the server's certificate must carry (a DNS name, or an
    /// IP address for an IP SAN).
    pub server_name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
    pub ca: CaSource,
    /// The client certificate's file, when one is presented.
    pub client_cert: Option<PathBuf>,
    digest: [u8; 20],
}

/// Direct TLS on the instance listener, ready to accept with.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub cert: PathBuf,
    pub key: PathBuf,
    digest: [u8; 20],
}

impl ClientTls {
    /// True when `other` was built from the same name and the same file
    /// contents (a renewed file differs, a re-read unchanged one does not).
    pub fn same_as(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl ServerTls {
    /// True when `other` was built from the same file contents.
    pub fn same_as(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

/// Paths and the name only: no key material, whatever rustls's own
/// `Debug` prints.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// ring, not aws-lc-rs: it builds with a C compiler alone (aws-lc-rs
/// wants cmake and, on some targets, NASM and bindgen). rustls 0.23.48
/// marks ring's provider deprecated for lacking post-quantum key
/// exchange; classical X25519/P-256 is what the XMPP servers offer on
/// their component ports today.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resolves the upstream TLS keys; `server` is `upstream.server`, already
/// checked as HOST:PORT, whose host is the default server name. None for
/// `tls = "none"`, where any other TLS key is an error (it would be
/// silently ignored otherwise).
pub(super) fn client(raw: RawClientTls, server: &str) -> Result<Option<ClientTls>, ConfigError> {
    let mode = match &raw.mode {
        Some(m) => UpstreamTlsMode::parse(m)?,
        None => UpstreamTlsMode::None,
    };
    if mode == UpstreamTlsMode::None {
        let given = [
            ("upstream.tls_server_name", raw.server_name.is_some()),
            ("upstream.tls_ca_file", raw.ca_file.is_some()),
            ("upstream.tls_cert", raw.cert.is_some()),
            ("upstream.tls_key", raw.key.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(
                key,
                "has no effect while upstream.tls = \"none\" (set upstream.tls = \"direct\")",
            ));
        }
        return Ok(None);
    }
    let mut hash = Sha1::new();
    let name = raw
        .server_name
        .clone()
        .unwrap_or_else(|| host_of(server).to_owned());
    hash.update(name.as_bytes());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        ConfigError::invalid(
            "upstream.tls_server_name",
            format!("{name:?} is neither a DNS name nor an IP address"),
        )
    })?;
    let (roots, ca) = roots(raw.ca_file, &mut hash)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("upstream.tls", e.to_string()))?
        .with_root_certificates(roots);
    let (config, client_cert) = match (raw.cert, raw.key) {
        (None, None) => (builder.with_no_client_auth(), None),
        (Some(cert), Some(key)) => {
            let chain = read_certs("upstream.tls_cert", &cert, &mut hash)?;
            let private = read_key("upstream.tls_key", &key, &mut hash)?;
            let config = builder.with_client_auth_cert(chain, private).map_err(|e| {
                ConfigError::invalid(
                    "upstream.tls_key",
                    format!("does not go with upstream.tls_cert: {e}"),
                )
            })?;
            (config, Some(cert))
        }
        (Some(_), None) => return Err(pair_missing("upstream.tls_key", "upstream.tls_cert")),
        (None, Some(_)) => return Err(pair_missing("upstream.tls_cert", "upstream.tls_key")),
    };
    Ok(Some(ClientTls {
        server_name,
        config: Arc::new(config),
        ca,
        client_cert,
        digest: hash.finalize().into(),
    }))
}

/// Resolves `instances.tls_cert` / `instances.tls_key`: both or neither.
pub(super) fn server(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ServerTls>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(pair_missing("instances.tls_key", "instances.tls_cert")),
        (None, Some(_)) => return Err(pair_missing("instances.tls_cert", "instances.tls_key")),
    };
    let mut hash = Sha1::new();
    let chain = read_certs("instances.tls_cert", &cert, &mut hash)?;
    let private = read_key("instances.tls_key", &key, &mut hash)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("instances.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            ConfigError::invalid(
                "instances.tls_key",
                format!(
                    "\"{}\" does not go with instances.tls_cert: {e}",
                    key.display()
                ),
            )
        })?;
    Ok(Some(ServerTls {
        config: Arc::new(config),
        cert,
        key,
        digest: hash.finalize().into(),
    }))
}

fn pair_missing(missing: &str, given: &str) -> ConfigError {
    ConfigError::invalid(
        missing,
        format!("none given, but {given} is set (give both)"),
    )
}

/// The host part of a HOST:PORT already validated (`[v6]:port` too).
fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}

/// The trust anchors: the file's certificates, or the system's roots.
fn roots(
    ca_file: Option<PathBuf>,
    hash: &mut Sha1,
) -> Result<(RootCertStore, CaSource), ConfigError> {
    const KEY: &str = "upstream.tls_ca_file";
    let mut store = RootCertStore::empty();
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ConfigError::invalid(
                KEY,
                "none given, and no system root certificates were found (give the CA's PEM file)",
            ));
        }
        hash.update(b"system roots");
        return Ok((store, CaSource::System));
    };
    for cert in read_certs(KEY, &path, hash)? {
        store.add(cert).map_err(|e| {
            ConfigError::invalid(
                KEY,
                format!(
                    "\"{}\" holds an unusable CA certificate: {e}",
                    path.display()
                ),
            )
        })?;
    }
    Ok((store, CaSource::File(path)))
}

/// Reads `path` for `key`; an empty path or an unreadable file is an
/// error naming both.
fn read_file(key: &str, path: &Path, hash: &mut Sha1) -> Result<Vec<u8>, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(key, "is empty (give a path)"));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::invalid(key, format!("cannot read \"{}\": {e}", path.display()))
    })?;
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(&bytes);
    Ok(bytes)
}

/// Every certificate in a PEM file; at least one.
fn read_certs(
    key: &str,
    path: &Path,
    hash: &mut Sha1,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_file(key, path, hash)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::invalid(key, format!("\"{}\" is not valid PEM: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("\"{}\" holds no CERTIFICATE block", path.display()),
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1). The
/// parser's own error is left out: it could quote the file's bytes.
fn read_key(
    key: &str,
    path: &Path,
    hash: &mut Sha1,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read_file(key, path, hash)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        ConfigError::invalid(
            key,
            format!(
                "\"{}\" holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_name_is_the_host_of_the_server() {
        assert_eq!(host_of("xmpp.example.test:5347"), "xmpp.example.test");
        assert_eq!(host_of("127.0.0.1:5347"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5347"), "::1");
    }

    #[test]
    fn modes() {
        assert_eq!(
            UpstreamTlsMode::parse("direct").ok(),
            Some(UpstreamTlsMode::Direct)
        );
        assert_eq!(
            UpstreamTlsMode::parse("none").ok(),
            Some(UpstreamTlsMode::None)
        );
        let e = UpstreamTlsMode::parse("starttls").expect_err("not offered");
        assert_eq!(e.key(), Some("upstream.tls"));
    }
}
