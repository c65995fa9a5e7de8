//! Either real server, for end-to-end tests that run the same scenario
//! against Prosody and ejabberd: what a scenario needs from a server is
//! where clients and components connect and its log for failure messages.

#![allow(dead_code)]

use std::net::SocketAddr;

use super::ejabberd::Ejabberd;
use super::prosody::Prosody;

pub enum Server {
    Prosody(Box<Prosody>),
    Ejabberd(Box<Ejabberd>),
}

impl Server {
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
