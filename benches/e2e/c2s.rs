//! A minimal c2s client for the Prosody comparison: plaintext TCP, SASL
//! PLAIN, resource binding, optional initial presence. Nothing else: the
//! requesters must cost far less than the server they load.

use std::net::{SocketAddr, TcpStream};

use crate::setup::WAIT;
use crate::wire::Conn;

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// Logs `user@domain/resource` in; with `presence`, also sends initial
/// presence (so the resource is available: a pool member).
pub fn login(
    addr: SocketAddr,
    user: &str,
    domain: &str,
    password: &str,
    resource: &str,
    presence: bool,
) -> Result<Conn, String> {
    let who = format!("{user}@{domain}/{resource}");
    let sock = TcpStream::connect(addr).map_err(|e| format!("{who}: connect: {e}"))?;
    let mut c = Conn::new(sock, who.clone()).map_err(|e| e.to_string())?;
    c.write_all(header(domain).as_bytes())?;
    c.header_within(WAIT)?;
    expect_name(&mut c, "stream:features")?;
    let creds = base64(format!("\0{user}\0{password}").as_bytes());
    c.write_all(format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>").as_bytes())?;
    expect_name(&mut c, "success")?;
    c.restart();
    c.write_all(header(domain).as_bytes())?;
    c.header_within(WAIT)?;
    expect_name(&mut c, "stream:features")?;
    c.write_all(
        format!(
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>"
        )
        .as_bytes(),
    )?;
    loop {
        let s = c.stanza_within(WAIT)?;
        if s.name == "iq" && s.id() == Some("bind1") {
            if s.stanza_type() != Some("result") {
                return Err(format!(
                    "{who}: bind failed: {}",
                    crate::traffic::preview(&s.bytes)
                ));
            }
            break;
        }
    }
    if presence {
        c.write_all(b"<presence><priority>1</priority></presence>")?;
    }
    Ok(c)
}

fn expect_name(c: &mut Conn, name: &str) -> Result<(), String> {
    let s = c.stanza_within(WAIT)?;
    if s.name != name {
        return Err(format!(
            "{}: expected <{name}>, got {}",
            c.who,
            crate::traffic::preview(&s.bytes)
        ));
    }
    Ok(())
}

/// Standard base64 with padding (RFC 4648), for the SASL PLAIN message.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
