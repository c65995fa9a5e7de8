//! Shared test support: a private Prosody server and XMPP client helpers.
#![allow(dead_code)]

pub mod prosody;
pub mod xmpp;
