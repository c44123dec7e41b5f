//! A batch split by its handler's [`Outcome::Split`], on the in-memory queue with the paused
//! clock: the events that succeeded are never handled again, a retried part comes back after
//! its backoff counting the receives its events spent, a dead-letter part goes to the DLQ at
//! once with its own reason, a deferred part comes back at its time, and the original is gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{handler, retry, setup, start, until};
use crate::engine::{Clock, Outcome, Part};

#[tokio::test(start_paused = true)]
async fn a_split_batch_sends_each_part_on_with_its_own_fate_and_counts_each_events_receives() {
    let (queues, url, dlq, config) = setup("split");
    queues.push(&url, "[a,b,c,d]", None);
    let clock = Clock::tokio();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            record.lock().unwrap().push((
                m.body.clone(),
                m.receive_count,
                Instant::now(),
                m.attributes.get("conveyor.batch_id").cloned(),
            ));
            let outcome = match m.body.as_str() {
                // "a" succeeds; the others each end their own way.
                "[a,b,c,d]" => Outcome::Split(vec![
                    Part {
                        body: "b".into(),
                        events: 1,
                        outcome: retry("b's receiver answered 503"),
                    },
                    Part {
                        body: "c".into(),
                        events: 1,
                        outcome: Outcome::DeadLetter {
                            reason: "c's address is invalid".into(),
                            label: "permanent",
                            pipeline: Some("notify-deliver".into()),
                        },
                    },
                    Part {
                        body: "d".into(),
                        events: 1,
                        outcome: Outcome::Defer {
                            until: clock.now() + Duration::from_secs(1800),
                            reason: "rate limit".into(),
                        },
                    },
                ]),
                "b" => retry("b's receiver answered 503"),
                _ => Outcome::Success,
            };
            Box::pin(async move { outcome })
        }),
        Duration::from_secs(25),
    )
    .await;
    until(
        "c dead-lettered, b dead-lettered after its retries, d done",
        || queues.len(&dlq) == 2 && queues.is_empty(&url),
    )
    .await;
    running.stop().await;

    let seen = seen.lock().unwrap().clone();
    let of = |body: &str| -> Vec<(u32, Instant)> {
        seen.iter()
            .filter(|(b, ..)| b == body)
            .map(|(_, count, at, _)| (*count, *at))
            .collect()
    };
    assert_eq!(of("[a,b,c,d]").len(), 1, "the batch is handled once");
    assert!(of("a").is_empty() && of("c").is_empty(), "{seen:?}");
    // b: its first receive was the batch's; its part comes back counting it.
    let b = of("b");
    assert_eq!(
        b.iter().map(|(count, _)| *count).collect::<Vec<_>>(),
        [2, 3],
        "{seen:?}"
    );
    let first = of("[a,b,c,d]")[0].1;
    let waited = (b[0].1 - first).as_secs_f64();
    assert!(
        (waited - 5.0).abs() < 0.5,
        "backoff after 1 receive: {waited}"
    );
    // A part's events keep the identity of the batch they came in.
    let batch_id = seen
        .iter()
        .find(|(b, ..)| b == "b")
        .and_then(|s| s.3.clone());
    assert!(batch_id.is_some_and(|id| !id.is_empty()), "{seen:?}");
    let d = of("d");
    assert_eq!(d.len(), 1);
    assert!(d[0].1 - first >= Duration::from_secs(1800));
    let dead = queues.messages(&dlq);
    let reason = |body: &str| {
        dead.iter()
            .find(|m| m.body == body)
            .map(|m| m.attributes["conveyor.error"].clone())
            .unwrap_or_default()
    };
    assert_eq!(reason("c"), "c's address is invalid");
    assert!(
        reason("b").starts_with("retries exhausted after 3 receives (maxReceiveCount 3)"),
        "{dead:?}"
    );
}
