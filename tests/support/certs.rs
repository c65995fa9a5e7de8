//! Test certificates, made by the test with rcgen (no key is committed):
//! a CA, and a server certificate it signed with a DNS SAN and the IP SAN
//! 127.0.0.1 (slixmpp checks the certificate against the address it
//! connects to), written as PEM files.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// The DNS name in every server certificate made here.
pub const SERVER_NAME: &str = "xmpp.example.test";

/// PEM files of one CA and one server certificate it signed.
pub struct Certs {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// Certificate and key in one file (ejabberd's `certfile:`).
    pub combined: PathBuf,
}

/// Makes a new CA named `ca_name` and a server certificate for
/// [`SERVER_NAME`] and 127.0.0.1, and writes them into `dir` as
/// `{prefix}ca.pem`, `{prefix}cert.pem`, `{prefix}key.pem` and
/// `{prefix}combined.pem` (overwriting: a renewal in place).
pub fn make(dir: &Path, prefix: &str, ca_name: &str) -> Certs {
    make_with(dir, prefix, ca_name, false)
}

/// [`make`], with a server certificate that expired in 2021 when
/// `expired`.
pub fn make_with(dir: &Path, prefix: &str, ca_name: &str, expired: bool) -> Certs {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("params");
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    if expired {
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("server key");
    let cert = leaf.signed_by(&key, &ca).expect("server certificate");
    let at = |name: &str| dir.join(format!("{prefix}{name}"));
    let certs = Certs {
        ca: at("ca.pem"),
        cert: at("cert.pem"),
        key: at("key.pem"),
        combined: at("combined.pem"),
    };
    let write = |p: &Path, s: String| std::fs::write(p, s).expect("write a PEM file");
    write(&certs.ca, ca.pem());
    write(&certs.cert, cert.pem());
    write(&certs.key, key.serialize_pem());
    write(
        &certs.combined,
        format!("{}{}", cert.pem(), key.serialize_pem()),
    );
    certs
}
