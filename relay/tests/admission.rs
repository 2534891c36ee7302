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

/// A WebSocket server that accepts every upgrade and holds the connection, reading until the
/// relay closes it: the least a bot must do for a call to exist.
fn silent_bot(rt: &tokio::runtime::Runtime) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    port
}

fn bot_call(id: &str, port: u16) -> CreateCall {
    let mut req = bic(id);
    req.internal = InternalLegSpec {
        kind: relay::api::InternalKind::WebSocket(std::sync::Arc::new(relay::bot::BotTarget {
            url: format!("ws://127.0.0.1:{port}/bot"),
            headers: vec![],
            custom_parameters: vec![],
            format: relay::bot::MediaFormat::Mulaw8k,
        })),
        ..InternalLegSpec::default()
    };
    req
}

/// A voice-bot call decodes and encodes Opus on its shard every 20 ms: admission counts it as
/// `transcode_weight` forwarded calls against `capacity`, and gives the weight back when it
/// ends.
#[test]
fn a_transcoded_call_counts_at_its_weight_against_capacity() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = Engine::start(EngineConfig {
        shards: 2,
        capacity: 12,
        transcode_weight: 10,
        max_shard_busy: 1.0,
        ..EngineConfig::default()
    })
    .expect("engine starts");
    let port = silent_bot(&rt);
    let create = |req| rt.block_on(e.create_call(req));
    create(bot_call("wacid.bot1", port)).expect("a bot call: 10 of 12");
    create(bic("wacid.f1")).expect("11 of 12");
    create(bic("wacid.f2")).expect("12 of 12");
    let full = create(bic("wacid.f3"));
    assert!(
        matches!(&full, Err(ApiError::Unavailable(m)) if m.contains("capacity")),
        "{full:?}"
    );
    rt.block_on(e.terminate("wacid.f2".into(), "test".into()))
        .expect("terminate");
    // 11 of 12: a forwarded call fits, a second bot (10 more) does not.
    let bot2 = create(bot_call("wacid.bot2", port));
    assert!(
        matches!(&bot2, Err(ApiError::Unavailable(m)) if m.contains("transcoded call counts as 10")),
        "{bot2:?}"
    );
    // The bot call ending gives its weight back: 1 of 12, so the second bot fits.
    rt.block_on(e.terminate("wacid.bot1".into(), "test".into()))
        .expect("terminate");
    create(bot_call("wacid.bot2", port)).expect("a bot call after the first ended");
    assert_eq!(e.active_calls(), 2);
    e.shutdown();
}
