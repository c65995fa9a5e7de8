//! A minimal "implementing client" for jatproxy's client mode: an ordinary
//! XMPP account (the target) whose resources answer the requests that
//! jatproxy forwards from its component domain.
//!
//! ```text
//! cargo run --example implementing_client -- \
//!     --jid impl@example.test/a --password implpw --server 127.0.0.1:5222
//! ```
//!
//! (or set IMPL_JID, IMPL_PASSWORD, IMPL_SERVER). It
//! * logs in over plaintext TCP (for a test server on loopback: no TLS),
//! * sends initial presence,
//! * answers `<presence type='subscribe'>` from anyone with `subscribed`,
//! * answers iq get/set carrying `<echo xmlns='urn:example:echo'>TEXT</echo>`
//!   with `<echo xmlns='urn:example:echo' from-resource='RES'>TEXT</echo>`,
//!   and every other iq get/set with `service-unavailable`,
//! * prints each iq it receives: the `from` shows the translated requester
//!   address, e.g. `proxy.example.test/alice@example.test/phone`.
//!
//! Network data never panics it: unparsable input is reported and skipped.

use std::collections::BTreeMap;
use std::str::FromStr;

use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::minidom::rxml::NcName;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

pub const NS_ECHO: &str = "urn:example:echo";

/// Command-line / environment options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Full JID (with the resource to bind), e.g. `impl@example.test/a`.
    pub jid: String,
    pub password: String,
    /// `host:port` of the c2s listener, e.g. `127.0.0.1:5222`.
    pub server: String,
}

impl Options {
    /// `--jid J --password P --server ADDR`, each falling back to
    /// IMPL_JID / IMPL_PASSWORD / IMPL_SERVER.
    pub fn from_args_and_env() -> Result<Options, String> {
        let mut jid = std::env::var("IMPL_JID").ok();
        let mut password = std::env::var("IMPL_PASSWORD").ok();
        let mut server = std::env::var("IMPL_SERVER").ok();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--jid" => &mut jid,
                "--password" => &mut password,
                "--server" => &mut server,
                "-h" | "--help" => return Err(usage()),
                other => return Err(format!("unknown argument {other:?}\n{}", usage())),
            };
            *slot = Some(args.next().ok_or_else(|| format!("{arg} needs a value"))?);
        }
        Ok(Options {
            jid: jid.ok_or_else(usage)?,
            password: password.ok_or_else(usage)?,
            server: server.unwrap_or_else(|| "127.0.0.1:5222".to_string()),
        })
    }
}

fn usage() -> String {
    "usage: implementing_client --jid USER@HOST/RESOURCE --password PW [--server HOST:PORT]\n\
     (or IMPL_JID, IMPL_PASSWORD, IMPL_SERVER)"
        .to_string()
}

/// Logs in and serves until the connection's event stream ends.
pub async fn run(opts: Options) -> Result<(), String> {
    let jid = Jid::from_str(&opts.jid).map_err(|e| format!("bad JID {:?}: {e}", opts.jid))?;
    let mut client = Client::new_plaintext(
        jid,
        opts.password.clone(),
        DnsConfig::addr(&opts.server),
        Timeouts::tight(),
    );
    let mut resource = String::new();

    while let Some(event) = client.next().await {
        match event {
            Event::Online { bound_jid, .. } => {
                // Also after an automatic reconnect: presence must be re-sent.
                resource = bound_jid
                    .resource()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default();
                println!("online as {bound_jid}");
                send(&mut client, Presence::available().into()).await;
            }
            Event::Disconnected(e) => eprintln!("disconnected: {e}"),
            Event::Stanza(Stanza::Presence(p)) if p.type_ == PresenceType::Subscribe => {
                if let Some(from) = p.from {
                    println!("subscribe from {from}: accepting");
                    let mut answer = Presence::new(PresenceType::Subscribed);
                    answer.to = Some(from.to_bare().into());
                    send(&mut client, answer.into()).await;
                }
            }
            Event::Stanza(Stanza::Presence(_)) => {}
            Event::Stanza(Stanza::Message(m)) => {
                println!(
                    "message from {} : {:?}",
                    show(m.from.as_ref()),
                    m.bodies.values().next()
                );
            }
            Event::Stanza(Stanza::Iq(iq)) => {
                if let Some(answer) = answer_iq(iq, &resource) {
                    send(&mut client, answer.into()).await;
                }
            }
        }
    }
    Ok(())
}

/// The answer to a request iq, or None for results/errors.
pub fn answer_iq(iq: Iq, resource: &str) -> Option<Iq> {
    let (kind, from, to, id, payload) = match iq {
        Iq::Get {
            from,
            to,
            id,
            payload,
        } => ("get", from, to, id, payload),
        Iq::Set {
            from,
            to,
            id,
            payload,
        } => ("set", from, to, id, payload),
        Iq::Result { from, id, .. } | Iq::Error { from, id, .. } => {
            println!("iq result/error id={id} from={}", show(from.as_ref()));
            return None;
        }
    };
    println!(
        "iq {kind} id={id} from={} to={} payload={}",
        show(from.as_ref()),
        show(to.as_ref()),
        String::from(&payload)
    );
    let reply_to = from?; // a request without `from` cannot be answered
    let answer = if payload.is("echo", NS_ECHO) {
        let echo = Element::builder("echo", NS_ECHO)
            .attr(xml_name("from-resource"), resource)
            .append(payload.text())
            .build();
        Iq::Result {
            from: None,
            to: Some(reply_to),
            id,
            payload: Some(echo),
        }
    } else {
        Iq::Error {
            from: None,
            to: Some(reply_to),
            id,
            error: StanzaError {
                type_: ErrorType::Cancel,
                by: None,
                defined_condition: DefinedCondition::ServiceUnavailable,
                texts: BTreeMap::new(),
                other: None,
            },
            payload: None,
        }
    };
    Some(answer)
}

/// An attribute name for minidom's builder (constant names only).
fn xml_name(name: &'static str) -> NcName {
    NcName::try_from(name).expect("a constant, valid XML name")
}

async fn send(client: &mut Client, stanza: Stanza) {
    if let Err(e) = client.send_stanza(stanza).await {
        eprintln!("send failed: {e}");
    }
}

fn show(j: Option<&Jid>) -> String {
    j.map(|j| j.to_string()).unwrap_or_else(|| "-".to_string())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{}", usage());
        return;
    }
    let opts = match Options::from_args_and_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    tokio::select! {
        r = run(opts) => {
            if let Err(e) = r {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
    }
}
