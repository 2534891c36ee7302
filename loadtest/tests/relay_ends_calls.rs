//! When the relay ends calls on its own (here: another client terminates them, which the
//! relay reports on its Watch stream as it would a media timeout), the load test stops counting
//! them as up (the live line's `calls=`) and counts them as failed in the summary, instead of
//! reporting "N ok" beside the loss their silence causes.

mod support;

use std::time::Duration;

use loadtest::session::{Backend, Options, Session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_relay_ends_count_as_failed_and_leave_the_live_count() {
    let in_process = support::start_relay().await;
    let engine = &in_process.engine;
    let addr = in_process.addr;
    let endpoint = format!("http://{addr}");
    let client = loadtest::target::connect(&endpoint, None, Duration::from_secs(10), None)
        .await
        .expect("control API answers");
    let mut other = client.clone();
    let session = Session::new(
        Backend::Relay {
            client,
            pid: None,
            metrics: None,
        },
        Options {
            live: false,
            ..Options::default()
        },
    )
    .expect("session starts");

    // Two of the four calls end at the relay halfway through the hold.
    let ender = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let calls = other.list_calls("", &[]).await.expect("ListCalls");
            if calls.len() == 4 && calls.iter().all(|c| c.gate_open) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut ids: Vec<String> = other
            .list_calls("", &[])
            .await
            .expect("ListCalls")
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        ids.sort();
        for id in ids.iter().take(2) {
            other
                .terminate(id.clone(), "ended at the relay")
                .await
                .expect("Terminate");
        }
    });
    let r = session
        .run(4, Duration::from_secs(3), "relay ends two")
        .await;
    ender.await.expect("ender");
    println!("{}", loadtest::report::table(&r));

    assert_eq!(r.calls, 4);
    assert_eq!(r.calls_ok, 2, "{:?}", r.failures);
    let (n, example) = r
        .failures
        .get("ended_by_relay")
        .expect("the ended calls are failures");
    assert_eq!(*n, 2, "{example}");
    assert!(
        example.contains("terminated"),
        "with the relay's cause: {example}"
    );
    assert_eq!(r.failures_total(), 2, "{:?}", r.failures);
    // The live count dropped to the two calls left, and stayed there until the teardown.
    let counts: Vec<usize> = r.timeline.iter().map(|s| s.calls).collect();
    let after: Vec<usize> = counts.iter().copied().skip_while(|&c| c == 4).collect();
    assert_eq!(after.first(), Some(&2), "{counts:?}");
    assert!(after.iter().all(|&c| c <= 2), "{counts:?}");
    assert!(r.table_mentions_ended());
    assert_eq!(
        engine.active_calls(),
        0,
        "the other two were terminated at the end"
    );

    drop(session);
    in_process.stop().await;
}

trait Mentions {
    fn table_mentions_ended(&self) -> bool;
}

impl Mentions for loadtest::report::RunReport {
    fn table_mentions_ended(&self) -> bool {
        loadtest::report::table(self).contains("ended by the relay before the run ended: 2")
    }
}
