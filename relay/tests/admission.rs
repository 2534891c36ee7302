//! Admission by load: a relay whose every shard is over the busy limit refuses new calls with
//! UNAVAILABLE and says why, while the same relay with the check off admits them.
//!
//! The busy ratio is real (each shard measures the time it spends working between polls and
//! publishes it once a second); the test sets the limit below any real shard's figure rather
//! than loading the machine, so it stays deterministic on a noisy host.

use std::time::{Duration, Instant};

use relay::api::{ApiError, CallControl, CallDirection, CreateCall, InternalLegSpec, WaSecurity};
use relay::engine::{Engine, EngineConfig, EngineHandle};

fn engine(max_shard_busy: f64) -> EngineHandle {
    Engine::start(EngineConfig {
        shards: 2,
        max_shard_busy,
        ..EngineConfig::default()
    })
    .expect("engine starts")
}

fn bic(id: &str) -> CreateCall {
    CreateCall {
        call_id: id.into(),
        business_number: "15550001111".into(),
        consumer: format!("c-{id}"),
        direction: CallDirection::BusinessInitiated,
        whatsapp_offer: None,
        whatsapp_security: WaSecurity::DtlsSrtp,
        internal: InternalLegSpec::default(),
    }
}

/// Wait until every shard has published a busy figure (they publish once a second).
fn wait_for_busy_figures(rt: &tokio::runtime::Runtime, e: &EngineHandle) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let load = rt.block_on(e.load()).unwrap();
        let busy: Vec<f64> = load.shards.iter().map(|s| s.busy_ratio).collect();
        if busy.iter().all(|b| *b > 0.0) || Instant::now() > deadline {
            return busy;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_shard_over_the_busy_limit_refuses_new_calls_with_the_reason() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A limit no working shard is under: a shard that woke even once is "busy" above it.
    let e = engine(1e-9);
    let busy = wait_for_busy_figures(&rt, &e);
    assert!(busy.iter().all(|b| *b > 0.0 && *b <= 1.0), "{busy:?}");
    let err = rt.block_on(e.create_call(bic("wacid.over"))).unwrap_err();
    match &err {
        ApiError::Unavailable(msg) => assert!(msg.contains("overloaded"), "{msg}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(e.active_calls(), 0, "a refused call leaves nothing behind");
    assert!(e.metrics_snapshot().overloaded());
    e.shutdown();

    // The same relay with the check off (100 %) admits.
    let e = engine(1.0);
    wait_for_busy_figures(&rt, &e);
    rt.block_on(e.create_call(bic("wacid.ok")))
        .expect("admitted");
    assert_eq!(e.active_calls(), 1);
    assert!(!e.metrics_snapshot().overloaded());
    e.shutdown();
}

#[test]
fn load_reports_packets_per_second_and_busy_per_shard() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = engine(0.9);
    let busy = wait_for_busy_figures(&rt, &e);
    // An idle relay is far below the default limit and admits.
    assert!(busy.iter().all(|b| *b < 0.9), "{busy:?}");
    rt.block_on(e.create_call(bic("wacid.idle")))
        .expect("admitted");
    let load = rt.block_on(e.load()).unwrap();
    assert_eq!(load.shards.len(), 2);
    assert_eq!(load.active_calls, 1);
    e.shutdown();
}
