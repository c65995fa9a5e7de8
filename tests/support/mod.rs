//! Shared test support: private Prosody and ejabberd servers, XMPP client helpers,
//! real component instances (slixmpp) as child processes, and a recording relay
//! between jatproxy and a server's component port.
#![allow(dead_code)]

pub mod attribution;
pub mod certs;
pub mod differences;
pub mod echo;
pub mod ejabberd;
pub mod flows;
pub mod prosody;
pub mod relay;
pub mod scrape;
pub mod server;
pub mod setup;
pub mod xmpp;

use std::time::Duration;

/// The component domain jatproxy registers as in the end-to-end tests.
pub const D: &str = "proxy.example.test";
/// The target account whose resources serve requests in the client-proxy
/// tests.
pub const T: &str = "impl@example.test";
/// The requester.
pub const ALICE: &str = "alice@example.test";
/// The upstream component secret Prosody is configured with.
pub const SECRET: &str = "component-secret";
/// Every test account's password.
pub const PW: &str = "pw";
/// The bound on every wait in the end-to-end tests.
pub const WAIT: Duration = Duration::from_secs(15);
pub const NS_ECHO: &str = "urn:example:echo";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Requests kept in flight by a test requester: enough to have several
/// pending on each member when one vanishes, small enough that a test's
/// answers arrive in a few round trips.
pub const WINDOW: usize = 8;
