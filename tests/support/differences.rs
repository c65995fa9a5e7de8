//! Issue 11's smaller differences from mod_client_proxy, as one scenario
//! run through each real server (Prosody and ejabberd): with no instance
//! listener the client pool serves `node@D` (the module's errors, answers
//! from the address written to), a reply to ENC written case-folded or
//! with a trailing dot still reaches the requester, presence the target
//! directs at `D/x` or `node@D` leaves the pool alone, and a target
//! request to `D/<not a JID>` gets `jid-malformed`.

use jatproxy::proxy::Proxy;

use super::flows::error_of;
use super::xmpp::TestClient;
use super::{ALICE, D, NS_ECHO, WAIT};

/// Runs the scenario. `proxy` serves `D` for the target `impl@…` with
/// no instance listener; `a` is the target's one resource, already in
/// the pool; `alice` is `ALICE/phone`, online.
pub async fn module_differences(proxy: &Proxy, a: &mut TestClient, alice: &mut TestClient) {
    let room = format!("room@{D}");

    // (written to, the same prepared, ENC as impl writes it back)
    let cases = [
        (room.clone(), room.clone(), format!("{ALICE}/phone")),
        (
            format!("{room}/nick"),
            format!("{room}/nick"),
            "ALICE@EXAMPLE.TEST/phone".to_owned(),
        ),
        (format!("ROOM@{D}"), room.clone(), format!("{ALICE}./phone")),
        (
            D.to_owned(),
            D.to_owned(),
            "Alice@Example.Test./phone".to_owned(),
        ),
    ];
    for (n, (to, prepared, enc)) in cases.iter().enumerate() {
        let id = format!("node-{n}");
        alice
            .send_xml(&format!(
                "<iq id='{id}' to='{to}' type='get'><echo xmlns='{NS_ECHO}'>hi</echo></iq>"
            ))
            .await
            .expect("send");
        let req = a
            .recv_matching(WAIT, |e| e.attr("id") == Some(id.as_str()))
            .await
            .unwrap_or_else(|e| panic!("impl gets the request to {to}: {e}"));
        // The module's translated address, whichever node was asked.
        assert_eq!(
            req.attr("from"),
            Some(format!("{D}/{ALICE}/phone").as_str()),
            "{to}"
        );
        a.send_xml(&format!(
            "<iq type='result' to='{D}/{enc}' id='{id}'><echo xmlns='{NS_ECHO}'>hi</echo></iq>"
        ))
        .await
        .expect("reply");
        let res = alice
            .recv_iq_response(&id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("alice gets the answer to {to} via {enc}: {e}"));
        assert_eq!(res.attr("type"), Some("result"), "{to}");
        // From the address written to, as the server delivered it:
        // Prosody prepares `to` first (`ROOM@D` arrives as `room@D`),
        // ejabberd hands it on as the client wrote it.
        let from = res.attr("from").unwrap_or_default();
        assert!(from == prepared || from == to, "{to}: answered from {from}");
        assert_eq!(res.attr("to"), Some(format!("{ALICE}/phone").as_str()));
    }

    // A message and presence to a node: the module's errors, from the node.
    alice
        .send_xml(&format!(
            "<message type='chat' to='{room}' id='nm'><body>hi</body></message>"
        ))
        .await
        .expect("send");
    let e = alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("nm"))
        .await
        .expect("answered");
    assert_eq!((e.name(), e.attr("from")), ("message", Some(room.as_str())));
    assert_eq!(
        error_of(&e),
        Some(("cancel".into(), "feature-not-implemented".into()))
    );
    alice
        .send_xml(&format!("<presence to='{room}' id='np'/>"))
        .await
        .expect("send");
    let e = alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("np"))
        .await
        .expect("answered");
    assert_eq!(
        (e.name(), e.attr("from")),
        ("presence", Some(room.as_str()))
    );
    assert_eq!(error_of(&e), Some(("cancel".into(), "bad-request".into())));

    // Directed presence from the target: not pool presence.
    let dropped = proxy.status().stats.dropped_other;
    for p in [
        format!("<presence type='unavailable' to='{D}/x'/>"),
        format!("<presence to='{room}'/>"),
        format!("<presence type='unavailable' to='{room}'/>"),
    ] {
        a.send_xml(&p).await.expect("send");
    }
    assert!(
        proxy
            .wait_for(WAIT, |s| s.stats.dropped_other == dropped + 3)
            .await,
        "the three directed presences reached the proxy"
    );
    assert_eq!(proxy.status().pool.len(), 1, "impl/a is still in the pool");

    // A target request to no JID: jid-malformed, from where it was sent.
    a.send_xml(&format!(
        "<iq id='bad-enc' to='{D}/a b@example.test' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await
    .expect("send");
    let e = a
        .recv_iq_response("bad-enc", WAIT)
        .await
        .expect("impl gets an answer");
    assert_eq!(
        e.attr("from"),
        Some(format!("{D}/a b@example.test").as_str())
    );
    assert_eq!(
        error_of(&e),
        Some(("modify".into(), "jid-malformed".into()))
    );

    // And impl/a still serves requests.
    alice
        .send_xml(&format!(
            "<iq id='after' to='{D}' type='get'><echo xmlns='{NS_ECHO}'/></iq>"
        ))
        .await
        .expect("send");
    let req = a
        .recv_matching(WAIT, |e| e.attr("id") == Some("after"))
        .await
        .expect("impl/a gets it");
    a.send_xml(&format!(
        "<iq type='result' to='{}' id='after'/>",
        req.attr("from").unwrap_or_default()
    ))
    .await
    .expect("reply");
    let res = alice
        .recv_iq_response("after", WAIT)
        .await
        .expect("answered");
    assert_eq!(res.attr("type"), Some("result"));
}
