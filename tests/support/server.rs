//! Either real server, for end-to-end tests that run the same scenario
//! against Prosody and ejabberd: what a scenario needs from a server is
//! where clients and components connect and its log for failure messages.

#![allow(dead_code)]

use std::net::SocketAddr;

use super::ejabberd::{Ejabberd, EjabberdConfig};
use super::prosody::{Prosody, ProsodyConfig, Subscription};
use super::{D, PW, SECRET};

pub enum Server {
    Prosody(Box<Prosody>),
    Ejabberd(Box<Ejabberd>),
}

impl Server {
    /// Prosody with alice, bob and `target` (a local part) as users, the
    /// component [`D`], and target's roster holding `D` with `from` (as
    /// `prosodyctl mod_roster_command subscribe` leaves it). No c2s limit
    /// is set: Prosody's defaults apply (`c2s_stanza_size_limit` 256 KiB,
    /// and 512 KiB on component streams).
    pub async fn prosody(target: &str) -> Server {
        Server::Prosody(Box::new(
            Prosody::start(
                ProsodyConfig::new()
                    .user("alice", PW)
                    .user("bob", PW)
                    .user(target, PW)
                    .component(D, SECRET)
                    .roster_item(target, D, Subscription::From)
                    .log_level("info"),
            )
            .await
            .expect("prosody starts (is it installed? run scripts/setup.sh)"),
        ))
    }

    /// ejabberd the same way. The harness sets no `max_stanza_size`, so
    /// the listeners have 23.01's default: `infinity` for both
    /// `ejabberd_c2s` and `ejabberd_service` (read from the installed
    /// modules with `erl -pa /usr/lib/x86_64-linux-gnu/ejabberd-23.01-1/ebin
    /// -eval 'ejabberd_c2s:listen_options()'`, and `ejabberd_service:…`).
    pub async fn ejabberd(target: &str) -> Server {
        Server::Ejabberd(Box::new(
            Ejabberd::start(
                EjabberdConfig::new()
                    .user("alice", PW)
                    .user("bob", PW)
                    .user(target, PW)
                    .component(D, SECRET)
                    .roster_item(target, D, "from"),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("ejabberd starts (is it installed? run scripts/setup.sh): {e}")
            }),
        ))
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        match self {
            Server::Prosody(p) => p.c2s_addr(),
            Server::Ejabberd(e) => e.c2s_addr(),
        }
    }
    pub fn component_addr(&self) -> SocketAddr {
        match self {
            Server::Prosody(p) => p.component_addr(),
            Server::Ejabberd(e) => e.component_addr(),
        }
    }
    pub fn log_tail(&self, n: usize) -> String {
        match self {
            Server::Prosody(p) => p.log_tail(n),
            Server::Ejabberd(e) => e.log_tail(n),
        }
    }
}
