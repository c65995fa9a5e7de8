//! The router's CPU per routed request, without sockets or tasks:
//! `cargo bench --bench router`.
//!
//! The seed flow as `benches/e2e` drives it (issue 15, goal 3): iq gets
//! to the domain from 64 requesters, each rewritten to the member
//! `target/m0`, and the member's results rewritten back, 128 requests in
//! flight (the e2e window). One element is one request and its reply, so
//! the time per element is the router's share of the ~4 µs the whole
//! process may spend per routed request. The router's configuration is
//! what the e2e bench gives the jatproxy child (`[client_proxy]` with a
//! target address, all else default).
//!
//! Before criterion runs, the heap allocations per request (both legs)
//! are counted with a counting global allocator and printed: the figure
//! most of this path's cost follows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jatproxy::backlog::Bound;
use jatproxy::router::{Action, Router, RouterConfig};
use jatproxy::xml::frame::Stanza;
use jatproxy::xml::parse_one;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const D: &str = "proxy.example.test";
const TARGET: &str = "target@example.test";
const NS: &str = "urn:example:bench";
/// Requests in flight per batch, as the e2e bench's window.
const IN_FLIGHT: usize = 128;
const REQUESTERS: usize = 64;

/// One batch's stanzas as the server delivers them: requests, then the
/// member's results.
struct Batch {
    requests: Vec<Stanza>,
    replies: Vec<Stanza>,
}

fn stanza(xml: &str) -> Stanza {
    parse_one(xml.as_bytes()).expect("the bench's stanzas frame")
}

fn batch() -> Batch {
    let body = "<item n='1'>the payload of a small request, about two hundred bytes</item>";
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    for seq in 0..IN_FLIGHT {
        let from = format!("u{}@example.test/r", seq % REQUESTERS);
        requests.push(stanza(&format!(
            "<iq type='get' id='1.{seq}' to='{D}' from='{from}'><query xmlns='{NS}'>{body}</query></iq>"
        )));
        replies.push(stanza(&format!(
            "<iq type='result' id='1.{seq}' to='{D}/{from}' from='{TARGET}/m0'><query xmlns='{NS}'>{body}</query></iq>"
        )));
    }
    Batch { requests, replies }
}

/// A router with the server online and `target/m0` in the pool.
fn router(rng: &mut StdRng, now: Instant) -> Router {
    let toml = format!(
        "[upstream]\nserver = \"127.0.0.1:5347\"\ndomain = \"{D}\"\nsecret = \"s\"\n\
         [client_proxy]\ntarget_address = \"{TARGET}\"\n"
    );
    let cfg = jatproxy::config::from_toml_str(&toml).expect("the bench's config loads");
    let mut r = Router::new(RouterConfig::from_config(&cfg), Bound::items(64));
    let mut out = Vec::new();
    r.upstream_online(&mut out);
    let online = stanza(&format!("<presence from='{TARGET}/m0' to='{D}'/>"));
    r.from_upstream(&online, now, rng, &mut out);
    r
}

/// Routes one batch: every request out, every reply back; returns the
/// actions for the caller to drop (the core hands them on).
fn run(r: &mut Router, b: &Batch, rng: &mut StdRng, now: Instant, out: &mut Vec<Action>) {
    for st in &b.requests {
        r.from_upstream(st, now, rng, out);
    }
    for st in &b.replies {
        r.from_upstream(st, now, rng, out);
    }
}

fn seed(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let now = Instant::now();
    let mut r = router(&mut rng, now);
    let b = batch();
    let mut out = Vec::with_capacity(4 * IN_FLIGHT);
    // Once to check the flow: every request out, every reply back.
    run(&mut r, &b, &mut rng, now, &mut out);
    assert_eq!(out.len(), 2 * IN_FLIGHT, "{out:?}");
    assert_eq!(r.stats().replies_delivered, IN_FLIGHT as u64);
    assert_eq!(r.pending_len(), 0);
    out.clear();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(&mut r, &b, &mut rng, now, &mut out);
    out.clear();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "router seed: {:.1} allocations per request (both legs)",
        allocations as f64 / IN_FLIGHT as f64
    );
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("seed", |bench| {
        bench.iter(|| {
            run(&mut r, black_box(&b), &mut rng, now, &mut out);
            out.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, seed);
criterion_main!(benches);
