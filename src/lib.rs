//! jatproxy: an XMPP component proxy.
//!
//! ```text
//! requesters ── XMPP server ══ XEP-0114 ══ jatproxy ══ XEP-0114 ══ component instances
//!                   │          (upstream)     │      (listener)
//!                   └── target_address/a, /b  (client resources, reached through upstream)
//! ```
//!
//! jatproxy registers at an XMPP server's component port as one domain and
//! puts a pool of members behind it: the online resources of one account
//! (as Prosody's `mod_client_proxy` does) and/or instances of an existing
//! component that connect to jatproxy's own XEP-0114 listener. IQ requests
//! go to one member; replies come back through Jabber Address Translation.
//!
//! **The byte-verbatim invariant.** A stanza is never re-serialised: it is
//! forwarded as the very bytes it arrived as, or with only its `to`/`from`
//! attribute values replaced. Everything else — attribute order, quoting,
//! namespace prefixes, children, whitespace — comes out as it came in.
//!
//! # Layout
//!
//! Pure logic (no sockets, no clock, no randomness of its own):
//! - [`xml`]: the framer (bytes → stanzas with byte spans), escaping,
//!   read-only inspection of control elements, and the stream error
//!   conditions ([`xml::StreamCondition`]) with the one reader of a
//!   received `<stream:error>`.
//! - [`rewrite`]: splicing new `to`/`from` values into a stanza.
//! - [`router`]: the routing table: one stanza in, actions out; it also
//!   decides what waits for the XMPP server while it is away ([`backlog`]);
//!   which client resources it admits to the pool is in `router_admission.rs`,
//!   messages and presence between users and the client pool in
//!   `router_chat.rs`.
//! - [`pool`]: members, presence tracking, balancing.
//! - [`qualify`]: which client resources may join the pool: the name
//!   rule, the disco#info question and its answer, XEP-0115 caps and
//!   their cache, and each resource's qualification state.
//! - [`jat`]: address translation and the pending-request table.
//! - [`conversation`]: which target resource each user's messages and
//!   presence stick to, and who hears when the domain comes and goes
//!   (issue 14); the router's side is `router_chat.rs`.
//! - [`hold`]: where an inbound request has been (members tried, lost,
//!   refusals), and the queue of requests waiting for an eligible member.
//! - [`refusal`]: the condition of a member's error, for `retry_on`.
//! - [`stanza`]: the error replies and presence the proxy writes itself.
//! - [`skip_log`]: one log line per per-stanza limit per minute.
//! - [`backlog`]: what is kept for the XMPP server while it is away, and
//!   what is dropped.
//! - [`jid`]: address splitting and validation.
//! - [`liveness`]: when to ping the server, and when its silence means
//!   the link is dead.
//! - [`time`]: fixed durations with their reasons, and overflow-safe
//!   deadlines.
//! - [`config`]: settings from `config.toml` and flags, validated.
//!
//! I/O:
//! - [`connection`]: one stream over one socket, as every connection task
//!   holds it: [`connection::Connection`] (made from a socket and the
//!   framer limits; `read_frame`, `send`, `close(condition)`), then its
//!   reader and the handle on its batched writer task, which aborts the
//!   task when dropped. Imports nothing that runs the proxy.
//! - [`tls`]: direct TLS on a connected or accepted socket (both links),
//!   with a deadline, and why a handshake failed.
//! - [`handshake`]: XEP-0114 on both sides (logging in upstream, admitting
//!   instances) over a `Connection`, and the header and handshake bytes.
//! - [`upstream`]: the link to the XMPP server, with reconnect and backoff.
//! - [`listener`]: the listener for component instances.
//! - [`admin`]: the HTTP endpoint on `metrics.listen` (`/metrics`,
//!   `/healthz`, `/readyz`, `/status`) on hyper, with its bounds on what a
//!   scraper may cost.
//! - [`metrics`]: the Prometheus exposition of a status snapshot.
//! - [`status_page`]: `/status` as JSON and as a self-contained HTML page.
//! - [`reload`]: what a configuration reload changes, and how (pure).
//!
//! The running proxy, imports pointing one way (app → core, upstream,
//! listener, admin → metrics, status_page → event, status → the logic above):
//! - [`event`] and [`status`]: what connection tasks send the core, and
//!   the snapshot and counters the core publishes; leaves every task shares.
//! - [`core`]: the actor that owns the router and moves bytes; what only
//!   writing can tell (a writer gone) goes back to the router as an input.
//! - [`app`]: [`app::Proxy`], the handle that binds, spawns, reloads and
//!   stops everything; the only module that binds the proxy's sockets and
//!   starts its long-running tasks (connection tasks spawn only their own
//!   per-connection helpers).
//! - [`proxy`]: the old paths (`proxy::Proxy`, `proxy::Status`), re-exported.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backlog;
pub mod config;
pub mod connection;
pub mod conversation;
pub mod core;
pub mod event;
pub mod handshake;
pub mod hold;
pub mod jat;
pub mod jid;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod qualify;
pub mod refusal;
pub mod reload;
pub mod rewrite;
pub mod router;
pub mod skip_log;
pub mod stanza;
pub mod status;
pub mod status_page;
pub mod time;
pub mod tls;
pub mod upstream;
pub mod xml;
