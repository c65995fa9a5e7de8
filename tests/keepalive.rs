//! Whitespace keepalives (`upstream.keepalive_interval`, README "Limits
//! and failure behaviour"), over loopback fakes:
//!
//! - `quiet_links_get_whitespace_keepalives_and_nothing_else`: with
//!   `keepalive_interval = "200ms"`, jatproxy writes whitespace on a quiet
//!   upstream link and on a quiet instance link, no more often than the
//!   interval, and nothing else;
//! - `peer_keepalives_are_absorbed_and_never_relayed`: whitespace from the
//!   server and from an instance, alone or glued to and between stanzas,
//!   does not disturb framing: the stanzas arrive byte for byte, and no
//!   whitespace is relayed to the other side;
//! - `instance_keepalives_hold_off_the_idle_timeout`: an instance that
//!   sends only keepalives is not idle; once it stops, `idle_timeout`
//!   closes it with `connection-timeout`.

#[path = "support/fake.rs"]
mod fake;

use std::time::Duration;

use fake::{start_with_upstream, text, FakeInstance, FakeServer, Reader, D, WAIT};
use jatproxy::xml::{Frame, StreamCondition};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(200);
const KEEPALIVES: usize = 3;

/// Reads `KEEPALIVES` whitespace keepalives from `r`, failing on any
/// other frame; returns when the last arrived.
async fn keepalives_only(r: &mut Reader, link: &str) -> Instant {
    let mut got = 0;
    loop {
        match r.next_frame().await {
            Some(Frame::Whitespace(b)) => {
                assert!(
                    !b.is_empty() && b.iter().all(|c| b" \t\r\n".contains(c)),
                    "{link}: a keepalive is whitespace only: {b:?}"
                );
                got += 1;
                if got == KEEPALIVES {
                    return Instant::now();
                }
            }
            other => panic!("{link}: only keepalives on a quiet link, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_links_get_whitespace_keepalives_and_nothing_else() {
    let server = FakeServer::bind().await;
    let (proxy, mut up) =
        start_with_upstream(&server, "keepalive_interval = \"200ms\"", "", "").await;
    // jatproxy's last output upstream was its handshake, before this.
    let up_quiet = Instant::now();
    let mut inst = FakeInstance::connect(proxy.listen_addr().expect("listener"), "quiet").await;
    // ... and on the instance link, `<handshake/>`.
    let inst_quiet = Instant::now();
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    let (up_done, inst_done) = tokio::join!(
        keepalives_only(&mut up.r, "upstream"),
        keepalives_only(&mut inst.r, "instance"),
    );
    let (up_took, inst_took) = (up_done - up_quiet, inst_done - inst_quiet);
    println!(
        "{KEEPALIVES} keepalives every {INTERVAL:?}: upstream after {up_took:?}, instance after {inst_took:?}"
    );
    // Each keepalive needs a full interval of quiet: three cannot come in
    // much less than three intervals (some slack: the test starts its
    // clock a little after jatproxy's last write).
    for (link, took) in [("upstream", up_took), ("instance", inst_took)] {
        assert!(
            took >= INTERVAL * KEEPALIVES as u32 - INTERVAL / 2,
            "{link}: {KEEPALIVES} keepalives within {took:?}, more often than every {INTERVAL:?}"
        );
    }
    // Both links still carry traffic afterwards.
    let msg = format!("<message to='{D}' from='alice@example.test/x' id='after'/>");
    up.w.send(&msg).await;
    assert_eq!(text(&inst.r.recv().await), msg);
    assert!(proxy.shutdown(WAIT).await);
}

/// Writes `parts` one write each, flushed.
async fn dribble(w: &mut fake::Writer, parts: &[&str]) {
    for p in parts {
        w.send(p).await;
    }
}

/// The next `n` frames on `r`: every one must be a stanza (no relayed
/// whitespace); their texts.
async fn stanzas_only(r: &mut Reader, n: usize, link: &str) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        match r.next_frame().await {
            Some(Frame::Stanza(s)) => out.push(text(&s)),
            other => panic!("{link}: expected only stanzas, got {other:?} after {out:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_keepalives_are_absorbed_and_never_relayed() {
    let server = FakeServer::bind().await;
    // jatproxy's own keepalives far off, so any whitespace a side sees
    // would be the other side's, relayed.
    let (proxy, mut up) =
        start_with_upstream(&server, "keepalive_interval = \"60s\"", "", "").await;
    let mut inst = FakeInstance::connect(proxy.listen_addr().expect("listener"), "peer").await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    // Server to instance: keepalives alone, glued before, after and
    // between stanzas, and a stanza cut in the middle of a tag.
    let m1 =
        format!("<message to='{D}' from='alice@example.test/x' id='m1'><body>one</body></message>");
    let m2 = format!(
        "<message to='{D}' from='alice@example.test/x' id='m2'><body> two </body></message>"
    );
    let m3 = format!("<message to='{D}' from='alice@example.test/x' id='m3'/>");
    let (m1a, m1b) = m1.split_at(m1.find("<bo").expect("body") + 3);
    dribble(
        &mut up.w,
        &[
            " ",
            "\n\n",
            &format!("\t{m1a}"),
            &format!("{m1b} \t"),
            " \r\n",
            &format!("{m2}\n \n{m3}"),
            "  ",
        ],
    )
    .await;
    // The trailing keepalive, then a marker: had the keepalive been
    // relayed, it would come before the marker.
    let m4 = format!("<message to='{D}' from='alice@example.test/x' id='m4'/>");
    up.w.send(&m4).await;
    assert_eq!(
        stanzas_only(&mut inst.r, 4, "instance").await,
        [m1.as_str(), &m2, &m3, &m4]
    );

    // Instance to server, the same.
    let r1 =
        format!("<message from='{D}' to='alice@example.test/x' id='r1'><body>one</body></message>");
    let r2 = format!("<message from='{D}' to='alice@example.test/x' id='r2'/>");
    let r3 = format!("<message from='{D}' to='alice@example.test/x' id='r3'/>");
    let (r1a, r1b) = r1.split_at(5);
    dribble(
        &mut inst.w,
        &[
            "\n",
            r1a,
            &format!("{r1b}  "),
            "\t",
            &format!("\r\n{r2} "),
            " \n",
            &r3,
        ],
    )
    .await;
    assert_eq!(
        stanzas_only(&mut up.r, 3, "upstream").await,
        [r1.as_str(), &r2, &r3]
    );
    // Nothing was dropped or counted as a stanza on either side.
    let st = proxy.status();
    assert_eq!(
        st.stats.dropped_unaddressed + st.stats.dropped_other,
        0,
        "{st:?}"
    );
    assert!(proxy.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_keepalives_hold_off_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    const EVERY: Duration = Duration::from_millis(100);
    let server = FakeServer::bind().await;
    let (proxy, _up) = start_with_upstream(
        &server,
        "keepalive_interval = \"60s\"",
        "",
        "[limits]\nidle_timeout = \"1s\"",
    )
    .await;
    let mut inst = FakeInstance::connect(proxy.listen_addr().expect("listener"), "alive").await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);

    // Keepalives only, for 2.5 idle timeouts: the connection stays.
    let until = Instant::now() + IDLE * 5 / 2;
    let mut tick = tokio::time::interval(EVERY);
    let mut sent = 0;
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                inst.w.send(" ").await;
                sent += 1;
            }
            f = inst.r.next_frame() => panic!("the instance sent keepalives and got {f:?}"),
        }
    }
    assert_eq!(proxy.status().pool.len(), 1, "still in the pool");
    // Silence: closed after idle_timeout, with connection-timeout.
    let quiet = Instant::now();
    let (cond, before) = inst.r.expect_stream_error().await;
    let took = quiet.elapsed();
    println!(
        "{sent} keepalives kept the instance for {:?}; then closed {took:?} after it fell silent",
        IDLE * 5 / 2
    );
    assert_eq!(cond, StreamCondition::ConnectionTimeout, "{before:?}");
    assert!(
        took >= IDLE - EVERY && took < IDLE + WAIT,
        "closed {took:?} after the last keepalive, idle_timeout {IDLE:?}"
    );
    assert!(proxy.wait_for(WAIT, |s| s.pool.is_empty()).await);
    assert!(proxy.shutdown(WAIT).await);
}
