//! Shared test support: a private Prosody server, XMPP client helpers, and
//! real component instances (slixmpp) as child processes.
#![allow(dead_code)]

pub mod echo;
pub mod prosody;
pub mod xmpp;
