//! `loadtest call` against a relay this test starts (the real engine and control plane in
//! process): one call comes up, carries audio both ways without loss, and the account a
//! newcomer reads names the setup time, the packets each way, the call's `relayctl list` row
//! and its events.

mod support;

use std::time::Duration;

use loadtest::session::WaMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_through_a_running_relay_is_explained() {
    let in_process = support::start_relay().await;
    let engine = &in_process.engine;
    let addr = in_process.addr;

    // As typed: `loadtest call --relay 127.0.0.1:PORT`.
    let endpoint = loadtest::call::endpoint(&addr.to_string());
    let outcome = loadtest::call::one_call(&endpoint, None, WaMode::Dtls, Duration::from_secs(2))
        .await
        .expect("the call runs");
    let text = outcome.render();
    println!("{text}");

    assert!(outcome.ok(), "{text}");
    assert!(
        outcome.run.up.received >= 50 && outcome.run.down.received >= 50,
        "{text}"
    );
    assert!(text.contains("setup: "), "{text}");
    assert!(text.contains("WhatsApp -> internal: "), "{text}");
    let row = outcome.during.as_ref().expect("GetCall halfway through");
    assert!(
        text.contains("CALL ID") && text.contains(&row.call_id),
        "the relayctl list row: {text}"
    );
    assert!(
        text.contains(" open "),
        "the gate is open in the row: {text}"
    );
    for event in ["created", "dtls_connected", "gate_opened", "ended"] {
        assert!(text.contains(event), "event {event}: {text}");
    }
    assert!(text.contains("OK: "), "{text}");
    assert_eq!(engine.active_calls(), 0, "the call was terminated");

    in_process.stop().await;
}
