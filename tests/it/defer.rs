//! Deferral against LocalStack: a message a handler defers comes back at its time as a fresh
//! copy (its receive count untouched), and a copy back before its time — a deferral longer
//! than SQS's 15-minute delay — is deferred again without the handler seeing it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sqs::types::MessageAttributeValue;
use conveyor::engine::{Clock, Consumer, Context, Handler, Outcome, Received};
use futures::future::BoxFuture;

use crate::helpers::*;

/// (body, receive count, deferrals, when) of each call; defers `defer-me` once by 3 s.
#[derive(Default)]
struct Deferring {
    calls: Mutex<Vec<(String, u32, u32, Instant)>>,
}

impl Handler for Deferring {
    fn handle(self: Arc<Self>, m: Arc<Received>) -> BoxFuture<'static, Outcome> {
        self.calls.lock().unwrap().push((
            m.body.clone(),
            m.receive_count,
            m.deferrals,
            Instant::now(),
        ));
        let outcome = if m.body == "defer-me" && m.deferrals == 0 {
            Outcome::Defer {
                until: SystemTime::now() + Duration::from_secs(3),
                reason: "not yet".into(),
            }
        } else {
            Outcome::Success
        };
        Box::pin(async move { outcome })
    }
}

#[tokio::test]
async fn deferred_messages_come_back_at_their_time_as_fresh_copies_and_early_copies_hop_unhandled()
{
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-defer", 3).await;
    let sent_at = Instant::now();
    sqs.send_message()
        .queue_url(&q.url)
        .message_body("defer-me")
        .send()
        .await
        .unwrap();
    // As a deferred copy would arrive if its deferral were longer than SQS's longest delay.
    let until_ms = (SystemTime::now() + Duration::from_secs(4))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    sqs.send_message()
        .queue_url(&q.url)
        .message_body("early-copy")
        .message_attributes(
            "conveyor.defer_until",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(until_ms.to_string())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // The recorder the daemon installs, so that the engine's metrics are counted.
    conveyor::telemetry::metrics_handle();
    let key = format!("d{:08x}", rand::random::<u32>());
    let handler = Arc::new(Deferring::default());
    let shutdown = conveyor::shutdown::Shutdown::new();
    let context = Context {
        api: Arc::new(conveyor::engine::queue::Sqs(sqs.clone())),
        shutdown: shutdown.clone(),
        grace: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        readiness: Default::default(),
        clock: Clock::System,
    };
    let config = test_config(&queue_toml(&key, &q.url, "wait_time_secs = 1"))
        .queues
        .remove(&key)
        .unwrap();
    let consumer = Consumer::start(&key, config, handler.clone(), &context)
        .await
        .unwrap();
    eventually("both handled", Duration::from_secs(30), async || {
        handler
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.2 > 0 || c.0 == "early-copy")
            .count()
            == 2
    })
    .await;
    eventually("the queue empty", Duration::from_secs(10), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    shutdown.begin();
    consumer.stopped().await;

    let calls = handler.calls.lock().unwrap().clone();
    let of = |body: &str| {
        calls
            .iter()
            .filter(|c| c.0 == body)
            .cloned()
            .collect::<Vec<_>>()
    };
    let deferred = of("defer-me");
    assert_eq!(deferred.len(), 2, "{calls:?}");
    assert!(deferred[1].3 - deferred[0].3 >= Duration::from_secs(3));
    assert_eq!(
        (deferred[1].1, deferred[1].2),
        (1, 1),
        "a fresh copy: receive count 1, deferred once"
    );
    let early = of("early-copy");
    assert_eq!(
        early.len(),
        1,
        "the early copy was not handed over: {calls:?}"
    );
    assert!(early[0].3 - sent_at >= Duration::from_secs(4));
    assert_eq!(
        (early[0].1, early[0].2),
        (1, 0),
        "an engine hop is no deferral"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    assert_eq!(
        metric(
            "conveyor_messages_deferred_total",
            &[&format!("queue=\"{key}\"")]
        ),
        2.0
    );
}
