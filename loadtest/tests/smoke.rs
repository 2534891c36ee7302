//! CI smoke: the real engine and control plane in process, 20 calls for 5 s through gRPC,
//! exactly as `loadtest run` drives a relay. Asserts that every call came up and that every
//! stamped packet the generator sent arrived, in both directions (the relay's own silence fill
//! toward WhatsApp carries no stamp and is not counted).

mod support;

use std::time::Duration;

use loadtest::session::{Backend, Options, Session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_five_seconds_no_loss_exact_counts() {
    let in_process = support::start_relay().await;
    let engine = &in_process.engine;
    let addr = in_process.addr;

    let client = loadtest::target::connect(
        &format!("http://{addr}"),
        None,
        Duration::from_secs(10),
        None,
    )
    .await
    .expect("control API answers");
    let session = Session::new(
        Backend::Relay {
            client,
            pid: None,
            metrics: None,
        },
        Options {
            live: false,
            settle: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .expect("session starts");
    let r = session.run(20, Duration::from_secs(5), "smoke").await;
    println!("{}", loadtest::report::table(&r));

    assert_eq!(r.failures_total(), 0, "failures: {:?}", r.failures);
    assert_eq!(r.calls_ok, 20);
    assert_eq!(r.setup.count, 20, "every call had media both ways");
    for (name, d) in [
        ("WhatsApp -> internal", &r.up),
        ("internal -> WhatsApp", &r.down),
    ] {
        // About 20 calls × 5 s × 50 packets/s; a loaded CI machine may skip late ticks, so only
        // ask for a second's worth per call. Exactness is the next line.
        assert!(d.sent >= 20 * 50, "{name}: only {} sent", d.sent);
        assert_eq!(d.received, d.sent, "{name}: every stamped packet arrives");
        assert_eq!(d.lost, 0, "{name}");
        assert_eq!(d.reordered, 0, "{name}");
    }
    assert_eq!(r.generator.srtp_errors, 0);
    assert_eq!(r.generator.send_errors, 0);
    let relay = r.relay.as_ref().expect("relay counters from Terminate");
    assert_eq!(relay.calls, 20);
    assert_eq!(relay.auth_failures, 0);
    assert_eq!(engine.active_calls(), 0, "every call was terminated");

    drop(session);
    in_process.stop().await;
}
