//! Many events in one message (`conveyor.batch`), each with its own outcome: a batch of 200
//! ranked notifications in which the receiver refuses one is delivered 199 times once, and the
//! refused one is retried alone, as a message of its own — none of the 199 is sent again.

use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::Value;

use crate::delivery::{Receiver, new_secret};
use crate::helpers::*;
use crate::notifications::{Delivering, Stages, ranked};

/// Sends `notifications` to `url` as one batch message, as ranking packs them.
async fn send_batch(sqs: &aws_sdk_sqs::Client, url: &str, notifications: &[Value]) {
    let string = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    let body = Value::Array(notifications.to_vec()).to_string();
    assert!(body.len() < 256 * 1024, "{} bytes", body.len());
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .message_attributes("source", string("conveyor.notify.rank"))
        .message_attributes("type", string("RankedNotification"))
        .message_attributes("conveyor.batch", string(&notifications.len().to_string()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_of_200_with_one_refused_delivers_199_once_and_retries_the_one_alone() {
    let _ls = localstack_shared().await;
    // The one at /refused answers 503 the first time, asking to come back in 3 s: a
    // retryable refusal, longer than the pipeline waits in place.
    let receiver = Receiver::start_asking_retry_after(
        |path, n| {
            if path.ends_with("refused") && n == 0 {
                503
            } else {
                200
            }
        },
        3,
    )
    .await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-batch",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    let notifications: Vec<Value> = (0..200)
        .map(|i| {
            let path = if i == 137 {
                "refused".to_owned()
            } else {
                format!("ok/{i}")
            };
            let mut n = ranked(
                tenant,
                &format!("{}-{i}", s.prefix),
                "webhook",
                &format!("{}/{path}", receiver.base),
            );
            n["userId"] = Value::String(format!("u-{i}"));
            n
        })
        .collect();
    send_batch(&s.sqs, &s.priority_url, &notifications).await;
    let mut daemon = s.cli("").spawn_daemon();

    eventually("200 delivered", Duration::from_secs(120), async || {
        receiver.delivered().len() == 200
    })
    .await;
    // Settled: the retried one's copy is gone, nothing else comes.
    crate::notifications::settled(&s.sqs, &s.priority_url, Duration::from_secs(60)).await;
    let hits = receiver.hits();
    let delivered = receiver.delivered();
    assert!(
        delivered.values().all(|h| h.len() == 1),
        "each delivered once"
    );
    assert_eq!(
        hits.len(),
        201,
        "199 once, the refused one twice (503, then 200)"
    );
    assert_eq!(
        hits.iter().filter(|h| h.status == 503).count(),
        1,
        "{hits:?}"
    );
    let retried = hits.iter().find(|h| h.status == 503).unwrap().id.clone();
    assert_eq!(
        hits.iter().filter(|h| h.id == retried).count(),
        2,
        "the refused one retried, with its webhook-id"
    );
    let split = daemon.wait_for_log("batch split", Duration::from_secs(5));
    // One part: the refused notification alone, deferred to the time its receiver asked for.
    assert!(
        split.contains("parts=1") && split.contains("backing off"),
        "{split}"
    );
    assert_eq!(queue_depth(&s.sqs, &s.priority_dlq_url).await, (0, 0));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

/// Raw payloads have no id of their own: each element of a batch is still its own event for
/// the idempotency ledger (keyed by its content), never the batch's message id — three
/// elements, three runs of a deduplicated pipeline.
#[tokio::test]
async fn each_raw_element_of_a_batch_is_its_own_event_for_the_ledger() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-batch-raw", 3).await;
    let body = r#"[{"n":1},{"n":2},{"n":3}]"#;
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(body)
        .message_attributes(
            "conveyor.batch",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("3")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let recorder = Recorder::default();
    let k = format!("b{:08x}", rand::random::<u32>());
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("format = \"raw\"\n[[queues.{k}.routes]]\npipelines = [\"recorder\"]"),
    ));
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    eventually("the batch deleted", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 1.0
    })
    .await;
    daemon.stop().await;
    assert_eq!(
        (recorder.distinct(), recorder.deliveries()),
        (3, 3),
        "three events, three keys, each run once"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}
