//! The notification contracts at the edge (LocalStack): a route declaring
//! `notification_event_v1` hands its pipelines the validated notification, keyed by
//! (tenantId, eventId), and dead-letters an invalid one naming the field, never its content.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// (key, tenant, channels) of a notification.
type Sighting = (String, String, Vec<String>);

/// Each notification it is given.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Sighting>>>);

impl conveyor::pipeline::Pipeline for Seen {
    fn name(&self) -> &'static str {
        "seen"
    }

    fn run(
        &self,
        d: Arc<conveyor::pipeline::Delivery>,
    ) -> futures::future::BoxFuture<'static, Result<(), conveyor::pipeline::PipelineError>> {
        let channels = d
            .notification
            .as_ref()
            .map(|n| {
                n.user
                    .channels
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((d.key.clone(), d.tenant.clone(), channels));
        Box::pin(async { Ok(()) })
    }
}

fn notification_requested(detail: Value) -> String {
    json!({"version": "0", "id": uuid::Uuid::new_v4(), "detail-type": "NotificationRequested",
           "source": "com.yourapp.billing", "account": "000000000000", "time": "2026-11-23T10:00:00Z",
           "region": "us-east-1", "resources": [], "detail": detail})
    .to_string()
}

#[tokio::test]
async fn a_notification_route_takes_valid_events_and_dead_letters_invalid_ones_naming_the_field() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-notify-edge", 3).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let event_id = unique("evt");
    let secret = "Your test results are ready";
    let valid = json!({"eventId": event_id, "source": "billing", "occurredAt": "2026-11-23T10:00:00Z",
        "tenantId": tenant, "user": {"id": "user-1", "channels": ["push", "email"]},
        "content": {"title": secret, "body": secret}});
    let mut invalid = valid.clone();
    invalid["eventId"] = json!(unique("evt"));
    invalid["user"].as_object_mut().unwrap().remove("channels");
    send_all(
        &sqs,
        &q.url,
        &[
            notification_requested(valid),
            notification_requested(invalid),
        ],
    )
    .await;

    let seen = Seen::default();
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(seen.clone()));
    let k = format!("n{:08x}", rand::random::<u32>());
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "[[queues.{k}.routes]]\ndetail_type = \"NotificationRequested\"\n\
             contract = \"notification_event_v1\"\npipelines = [\"seen\"]"
        ),
    ));
    let daemon = InProcess::start(config, registry).await;
    eventually(
        "the invalid one dead-lettered",
        Duration::from_secs(30),
        async || queue_depth(&sqs, &q.dlq_url).await.0 == 1,
    )
    .await;
    eventually("the queue empty", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    daemon.stop().await;

    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            event_id,
            tenant,
            vec!["push".to_owned(), "email".to_owned()]
        )],
        "keyed by (tenantId, eventId), channels in the producer's order"
    );
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(10)).await;
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert_eq!(reason, "invalid event: detail.user.channels: missing");
    assert!(!reason.contains("test results"));
}
