//! Calls that must not outlive their purpose, through gRPC against the real engine: Meta's
//! `terminate` webhook can overtake the `connect` it ends, so a Terminate for an ID the relay
//! has not seen (or is still creating) must keep a later CreateCall for it from starting a
//! call nobody will end; and GetCall after the end answers with the call's final state.

mod ops_support;

use std::time::{Duration, Instant};

use control::client::error_reason;
use control::pb;
use ops_support::start;
use relay::engine::EngineConfig;
use tonic::Code;

/// A business-initiated create (the relay writes the offer; no peer needed).
fn bic(id: &str) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        call_id: id.into(),
        business_number: "15550001111".into(),
        consumer: format!("c-{id}"),
        direction: pb::CallDirection::BusinessInitiated.into(),
        ..Default::default()
    }
}

fn big_engine() -> EngineConfig {
    EngineConfig {
        shards: 2,
        capacity: 10_000,
        max_calls_per_number: 10_000,
        max_shard_busy: 1.0,
        ..EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_create_racing_on_the_same_ids_leave_no_call_alive() {
    let relay = start(big_engine()).await;
    let client = relay.client().await;
    const PAIRS: usize = 1000;
    // Each pair races a Terminate against a CreateCall for one ID; half start the Terminate
    // first, half the CreateCall, all at once (as out-of-order webhooks would).
    let mut tasks = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let (mut a, mut b) = (client.clone(), client.clone());
        let id = format!("wacid.race{i}");
        tasks.push(tokio::spawn(async move {
            let create = async { a.create_call(bic(&id)).await.map(|_| ()) };
            let terminate = async { b.terminate(id.clone(), "terminate webhook").await };
            let (created, terminated) = if i % 2 == 0 {
                let (t, c) = tokio::join!(terminate, create);
                (c, t)
            } else {
                tokio::join!(create, terminate)
            };
            terminated.expect("Terminate always succeeds");
            created.err()
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if let Some(status) = t.await.unwrap() {
            // Refused creates say why: terminated (tombstone, or ended while being created).
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(error_reason(&status).as_deref(), Some("CALL_TERMINATED"));
            refused += 1;
        }
    }
    // Every call that was created was ended by its Terminate: none is left.
    let mut c = relay.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.engine.active_calls() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = c.list_calls("", &[]).await.unwrap();
    assert_eq!(live.len(), 0, "calls left alive: {}", live.len());
    assert_eq!(relay.engine.active_calls(), 0);
    // Every ID is remembered; a late repeat of any create is refused and creates nothing.
    assert_eq!(relay.engine.tombstones(), PAIRS);
    let late = c.create_call(bic("wacid.race7")).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("terminated"), "{}", late.message());
    assert!(c.list_calls("", &[]).await.unwrap().is_empty());
    assert!(refused > 0, "some Terminates arrived first");
    assert_eq!(
        relay.metric("relay_calls_refused_total{reason=\"terminated\"}"),
        Some((refused + 1) as f64)
    );
    eprintln!(
        "{PAIRS} Terminate/CreateCall pairs: {refused} creates refused, {} created then ended, 0 left",
        PAIRS - refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_call_after_the_end_returns_the_final_state_and_the_id_is_not_reused() {
    let relay = start(big_engine()).await;
    let mut c = relay.client().await;
    c.create_call(bic("wacid.ended")).await.unwrap();
    let last = c
        .terminate("wacid.ended", "consumer hung up")
        .await
        .unwrap()
        .expect("the call as it ended");

    let got = c
        .get_call("wacid.ended")
        .await
        .expect("GetCall after the end");
    let call = got.call.expect("the final CallInfo, not an empty answer");
    assert_eq!(call.state(), pb::CallState::Ended);
    assert_eq!(call.end_cause(), pb::EndCause::Terminated);
    assert_eq!(call.meta_code, None, "terminated has no Meta code");
    assert_eq!(call.business_number, "15550001111");
    assert_eq!(call.consumer, "c-wacid.ended");
    assert_eq!(call.whatsapp, last.whatsapp, "the final stats");

    // Not in the live list, and the ID cannot be created again.
    assert!(c.list_calls("", &[]).await.unwrap().is_empty());
    let again = c.create_call(bic("wacid.ended")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&again).as_deref(), Some("CALL_TERMINATED"));
    assert_eq!(relay.engine.active_calls(), 0);

    // Terminate for an ID never seen: success, then its create is refused and nothing exists.
    assert!(c.terminate("wacid.early", "").await.unwrap().is_none());
    let late = c.create_call(bic("wacid.early")).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(
        c.get_call("wacid.early").await.unwrap_err().code(),
        Code::NotFound,
        "no call ever existed"
    );
    assert_eq!(relay.engine.active_calls(), 0);
    // A repeated Terminate is still harmless.
    assert!(c.terminate("wacid.ended", "").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_ends_on_its_own_leaves_its_end_readable() {
    // A business-initiated call whose answer arrives but whose ICE never connects: the ICE
    // timer ends it (Meta 138020), and GetCall still answers with how it ended.
    let relay = start(EngineConfig {
        call: relay::call::CallConfig {
            ice_connect_timeout: Duration::from_millis(200),
            ..Default::default()
        },
        ..big_engine()
    })
    .await;
    let mut c = relay.client().await;
    c.create_call(bic("wacid.noice")).await.unwrap();
    let answer = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sdp/meta_answer.sdp"
    ))
    .unwrap();
    c.set_remote_description("wacid.noice", pb::Leg::Whatsapp, answer)
        .await
        .expect("Meta's answer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.engine.active_calls() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = c.get_call("wacid.noice").await.unwrap().call.expect("call");
    assert_eq!(call.state(), pb::CallState::Ended);
    assert_eq!(call.end_cause(), pb::EndCause::IceFailed);
    assert_eq!(call.meta_code, Some(138020));
    assert!(c.create_call(bic("wacid.noice")).await.is_err());
}
