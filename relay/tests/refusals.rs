//! `relay_calls_refused_total{reason}` through the real engine, gRPC and `/metrics`: every
//! refused CreateCall is counted once, under the reason a client was told.

mod ops_support;

use control::pb;
use ops_support::{Relay, start};
use relay::engine::EngineConfig;
use tonic::Code;

/// A business-initiated create (the relay writes the offer; no peer needed).
fn bic(id: &str, number: &str, consumer: &str) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        call_id: id.into(),
        business_number: number.into(),
        consumer: consumer.into(),
        direction: pb::CallDirection::BusinessInitiated.into(),
        ..Default::default()
    }
}

fn refused(relay: &Relay, reason: &str) -> Option<f64> {
    relay.metric(&format!("relay_calls_refused_total{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_counted_under_its_reason() {
    let relay = start(EngineConfig {
        shards: 1,
        capacity: 4,
        max_calls_per_number: 2,
        max_shard_busy: 1.0,
        ..EngineConfig::default()
    })
    .await;
    let mut c = relay.client().await;
    for reason in [
        "capacity",
        "draining",
        "overloaded",
        "per_number_limit",
        "duplicate",
        "invalid_request",
        "terminated",
    ] {
        assert_eq!(
            refused(&relay, reason),
            Some(0.0),
            "{reason} exposed at zero"
        );
    }

    c.create_call(bic("a", "1555", "c1")).await.unwrap();
    c.create_call(bic("b", "1555", "c2")).await.unwrap();
    let e = c.create_call(bic("c", "1555", "c3")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    c.create_call(bic("d", "1666", "c1")).await.unwrap();
    let e = c.create_call(bic("e", "1666", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    c.create_call(bic("f", "1777", "c1")).await.unwrap();
    let e = c.create_call(bic("g", "1888", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("capacity"), "{e}");
    // Malformed at the gRPC layer (no business number), and in the engine (an offer that is
    // not SDP).
    let e = c.create_call(bic("h", "", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.terminate("f", "").await.unwrap();
    let mut bad = bic("i", "1999", "c1");
    bad.direction = pb::CallDirection::UserInitiated.into();
    bad.whatsapp_offer_sdp = "not sdp".into();
    let e = c.create_call(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A terminated ID.
    let e = c.create_call(bic("f", "1777", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Draining.
    c.drain(Some(std::time::Duration::from_secs(3600)))
        .await
        .unwrap();
    let e = c.create_call(bic("j", "1999", "c2")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    // A repeat of a live call is not a refusal.
    c.create_call(bic("a", "1555", "c1")).await.unwrap();

    for (reason, n) in [
        ("capacity", 1.0),
        ("draining", 1.0),
        ("overloaded", 0.0),
        ("per_number_limit", 1.0),
        ("duplicate", 1.0),
        ("invalid_request", 2.0),
        ("terminated", 1.0),
    ] {
        assert_eq!(refused(&relay, reason), Some(n), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_refusal_is_counted() {
    // A busy limit no shard can be under: every create is refused for load.
    let relay = start(EngineConfig {
        shards: 1,
        max_shard_busy: 0.0,
        ..EngineConfig::default()
    })
    .await;
    let mut c = relay.client().await;
    let e = c.create_call(bic("o", "1555", "c1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(refused(&relay, "overloaded"), Some(1.0));
    assert_eq!(relay.engine.active_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_ice_credentials_outside_rfc8839_is_invalid_with_code_100() {
    let relay = start(EngineConfig {
        shards: 1,
        ..EngineConfig::default()
    })
    .await;
    let mut c = relay.client().await;
    let offer = include_str!("fixtures/sdp/wa_user_offer.sdp").replace(
        "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1tRm==",
        "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1t;Rm=x",
    );
    let mut req = bic("wacid.badpwd", "1555", "c1");
    req.direction = pb::CallDirection::UserInitiated.into();
    req.whatsapp_offer_sdp = offer;
    let e = c.create_call(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(control::client::meta_code(&e), Some(100));
    assert!(e.message().contains("ice-pwd"), "{}", e.message());
    assert_eq!(relay.engine.active_calls(), 0);
    assert_eq!(refused(&relay, "invalid_request"), Some(1.0));
}
