//! Shared test support: a private Prosody server, XMPP client helpers, and
//! real component instances (slixmpp) as child processes.
#![allow(dead_code)]

pub mod echo;
pub mod prosody;
pub mod xmpp;

use std::time::Duration;

/// The component domain jatproxy registers as in the end-to-end tests.
pub const D: &str = "proxy.example.test";
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
/// Requests kept in flight by a test requester. tokio-xmpp 6's client
/// waits, inside `send_stanza`, for its worker to write the stanza, while
/// that worker may be blocked handing incoming stanzas to a 16-deep queue
/// the caller is not draining: more than ~16 stanzas arriving at one test
/// client during a send deadlock it. A window under that keeps every test
/// client's incoming burst small.
pub const WINDOW: usize = 8;
