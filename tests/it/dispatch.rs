//! Envelopes, routing, fault-isolated fan-out and the idempotency ledger, against LocalStack
//! (events through a real EventBridge rule) and PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor::pipeline::{Delivery, Pipeline, PipelineError};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::helpers::*;

fn key() -> String {
    format!("d{:08x}", rand::random::<u32>())
}

async fn eventbridge() -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&aws_sdk().await)
}

fn documented_envelope() -> Value {
    json!({"schema_version":"v1","tenant_id":"550e8400-e29b-41d4-a716-446655440000",
        "user_id":"auth0|abc123def456","interaction_type":"transcript",
        "content":{"text":"John: Thanks for joining the call today...","format":"diarized"},
        "timestamp":"2025-01-23T10:30:00Z","source":"web-mic",
        "extras":{"opportunity_id":"019c1fa0-4444-7000-8000-000000000005","contact_ids":["contact_sarah_001"]},
        "account_id":"acct_acme_corp_001"})
}

#[tokio::test]
async fn envelopes_through_a_real_eventbridge_rule_reach_pipelines_with_every_field_intact() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-eb", 3).await;
    let source = format!("com.yourapp.transcription.{}", key());
    rule_to_queue("default", json!({"source": [source]}), &q.url).await;

    let batch_id = uuid::Uuid::new_v4().to_string();
    let batch = json!({"version":"1.0","interaction_id": batch_id,
        "tenant_id":"550e8400-e29b-41d4-a716-446655440000","user_id":"auth0|abc","account_id":null,
        "timestamp":"2025-01-23T10:30:00.123Z","status":"completed",
        "data":{"cleaned_transcript":"Clean text","raw_transcript":"raw text"}});
    for (detail_type, detail) in [
        ("EnvelopeV1.transcript", documented_envelope()),
        ("BatchProcessingCompleted", batch.clone()),
    ] {
        put_event(&source, detail_type, &detail).await;
    }

    let capture = Capture::default();
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(capture.clone()));
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "[[queues.{k}.routes]]\nsource = \"{source}\"\ndetail_type = \"*\"\npipelines = [\"capture\"]"
        ),
    ));
    let daemon = InProcess::start(config, registry).await;
    eventually("both events", Duration::from_secs(30), async || {
        capture.0.lock().unwrap().len() == 2
    })
    .await;
    daemon.stop().await;

    let seen = capture.0.lock().unwrap().clone();
    let expect = |detail_type: &str, detail: &Value| {
        let event = conveyor::input::eventbridge::decode(
            &json!({"id": "x", "source": source, "detail-type": detail_type, "detail": detail})
                .to_string(),
        )
        .unwrap();
        conveyor::contract::envelope::parse(&event)
            .unwrap()
            .unwrap()
    };
    let envelope = expect("EnvelopeV1.transcript", &documented_envelope());
    let batch_interaction = expect("BatchProcessingCompleted", &batch);
    assert!(
        seen.iter().any(|(_, i)| i.as_ref() == Some(&envelope)),
        "EnvelopeV1 intact: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(key, i)| i.as_ref() == Some(&batch_interaction) && *key == batch_id),
        "BatchProcessingCompleted intact, keyed by interaction_id"
    );
    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

/// Fails (by error, panic or exceeding its timeout, per `detail.mode`) on the first receive.
#[derive(Clone, Default)]
struct FailOnce(Arc<Mutex<Vec<String>>>);

impl Pipeline for FailOnce {
    fn name(&self) -> &'static str {
        "fail_once"
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        self.0.lock().unwrap().push(d.key.clone());
        Box::pin(async move {
            if d.receive_count > 1 {
                return Ok(());
            }
            match d.event.payload["mode"].as_str() {
                Some("panic") => panic!("fail_once: first receive"),
                Some("timeout") => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                }
                _ => Err(PipelineError::Retryable("fail_once: first receive".into())),
            }
        })
    }
}

#[tokio::test]
async fn a_failing_pipeline_does_not_stop_the_other_and_only_it_runs_again() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-isolate", 3).await;
    let run = key();
    let bodies: Vec<String> = ["error", "panic", "timeout"]
        .iter()
        .map(|mode| event_body(&format!("{run}-{mode}"), json!({"mode": mode})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;

    let recorder = Recorder::default();
    let fail_once = FailOnce::default();
    let mut registry = registry_with(&recorder);
    registry.add(Arc::new(fail_once.clone()));
    let k = key();
    let config = test_config(&format!(
        "[pipelines.fail_once]\ntimeout_secs = 2\n{}",
        queue_toml(
            &k,
            &q.url,
            &format!(
                "wait_time_secs = 1\n[queues.{k}.retry]\nbase_secs = 1\njitter = \"none\"\n\
                 [[queues.{k}.routes]]\npipelines = [\"recorder\", \"fail_once\"]"
            ),
        )
    ));
    let daemon = InProcess::start(config, registry).await;
    eventually("all three deleted", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 3.0
    })
    .await;
    daemon.stop().await;

    for mode in ["error", "panic", "timeout"] {
        let id = format!("{run}-{mode}");
        let recorded = recorder.seen.lock().unwrap()[&id].len();
        assert_eq!(
            recorded, 1,
            "{mode}: the succeeding pipeline ran once, skipped on redelivery"
        );
        let failing = fail_once
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|k| **k == id)
            .count();
        assert_eq!(failing, 2, "{mode}: the failed pipeline ran again");
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT pipeline, status, attempts FROM pipeline_ledger WHERE key = $1 ORDER BY pipeline",
        )
        .bind(&id)
        .fetch_all(&pg().await)
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                ("fail_once".to_owned(), "succeeded".to_owned(), 2),
                ("recorder".to_owned(), "succeeded".to_owned(), 1)
            ],
            "{mode}"
        );
    }
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn one_event_delivered_twice_concurrently_to_two_daemons_has_its_effect_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-dup", 3).await;
    let id = format!("dup-{}", key());
    let body = event_body(&id, json!({}));
    // A duplicate send: two SQS messages, one event.
    send_all(&sqs, &q.url, &[body.clone(), body]).await;

    let recorder = Recorder {
        sleep: Duration::from_secs(2),
        ..Default::default()
    };
    let k = key();
    let toml = format!(
        "[pipelines.recorder]\ntimeout_secs = 5\n{}",
        queue_toml(
            &k,
            &q.url,
            &format!(
                "pollers = 1\nmax_in_flight = 1\nwait_time_secs = 1\n[[queues.{k}.routes]]\npipelines = [\"recorder\"]"
            )
        )
    );
    let a = InProcess::start(test_config(&toml), registry_with(&recorder)).await;
    let b = InProcess::start(test_config(&toml), registry_with(&recorder)).await;
    eventually("both copies deleted", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 2.0
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert_eq!(
        recorder.seen.lock().unwrap()[&id].len(),
        1,
        "the effect happened once"
    );
    assert!(
        metric(
            "conveyor_pipeline_skipped_total",
            &["pipeline=\"recorder\""]
        ) >= 1.0
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn invalid_envelopes_are_dead_lettered_naming_the_field_and_unrouted_events_as_unrouted() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-invalid", 3).await;
    let wrap = |id: &str, source: &str, detail_type: &str, detail: Value| {
        json!({"version":"0","id":id,"source":source,"detail-type":detail_type,"detail":detail})
            .to_string()
    };
    let mut bad_format = documented_envelope();
    bad_format["content"]["format"] = json!("html");
    let mut no_tenant = documented_envelope();
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    let mut bad_timestamp = documented_envelope();
    bad_timestamp["timestamp"] = json!("yesterday");
    let cases = [
        (
            wrap(
                "i1",
                "com.yourapp.transcription",
                "EnvelopeV1.transcript",
                bad_format,
            ),
            "detail.content.format: unknown variant \"html\", expected one of plain, markdown, diarized, email",
        ),
        (
            wrap(
                "i2",
                "com.yourapp.transcription",
                "EnvelopeV1.transcript",
                no_tenant,
            ),
            "detail.tenant_id: missing",
        ),
        (
            wrap(
                "i3",
                "com.yourapp.transcription",
                "EnvelopeV1.transcript",
                bad_timestamp,
            ),
            "detail.timestamp: not an ISO 8601 / RFC 3339 timestamp",
        ),
        (
            wrap("u1", "com.somebody.else", "Other.thing", json!({})),
            "unrouted",
        ),
    ];
    let bodies: Vec<String> = cases.iter().map(|(b, _)| b.clone()).collect();
    send_all(&sqs, &q.url, &bodies).await;
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\nsource = \"com.yourapp.*\"\npipelines = [\"noop\"]"),
    ));
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;
    let dead = drain_queue(&sqs, &q.dlq_url, cases.len(), Duration::from_secs(30)).await;
    daemon.stop().await;
    assert_eq!(dead.len(), cases.len());
    for (body, reason) in &cases {
        let m = dead
            .iter()
            .find(|m| m.body() == Some(body.as_str()))
            .unwrap();
        let error = string_attribute(m, "conveyor.error").unwrap();
        assert!(error.contains(reason), "expected {reason:?} in {error:?}");
        assert!(
            !error.contains("Thanks for joining"),
            "no content in reasons"
        );
    }
}

#[test]
fn check_reports_an_unknown_pipeline_naming_the_route() {
    let out = Conveyor::new(
        "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\npipelines = [\"noop\", \"grpah\"]\n",
    )
    .output(&["check", "--no-probe"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("queues.main.routes[0].pipelines = \"grpah\": unknown pipeline"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn announce_publishes_ids_after_the_route_succeeds_and_nothing_when_it_fails() {
    let _ls = localstack_shared().await;
    let (sqs, eb) = (sqs_client().await, eventbridge().await);
    let q = queue_with_dlq(&sqs, "it-announce", 3).await;
    // Announcements land on their own bus, routed to a queue the test reads.
    let (bus, source) = (unique("it-announce-bus"), format!("conveyor.{}", key()));
    eb.create_event_bus().name(&bus).send().await.unwrap();
    let listen = create_queue(&sqs, &unique("it-announced")).await;
    rule_to_queue(&bus, json!({"source": [source]}), &listen).await;

    let (good, bad) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let mut good_detail = documented_envelope();
    good_detail["interaction_id"] = json!(good);
    let mut bad_detail = documented_envelope();
    bad_detail["interaction_id"] = json!(bad);
    bad_detail["extras"]["chaos"] = json!({"permanent": true});
    let wrap = |detail: Value| {
        json!({"id": key(), "source": "com.yourapp.transcription", "detail-type": "EnvelopeV1.transcript", "detail": detail}).to_string()
    };
    send_all(&sqs, &q.url, &[wrap(good_detail), wrap(bad_detail)]).await;

    let k = key();
    let config = test_config(&format!(
        "[announce]\nbus_name = \"{bus}\"\nsource = \"{source}\"\n{}",
        queue_toml(
            &k,
            &q.url,
            &format!("[[queues.{k}.routes]]\npipelines = [\"chaos\"]\nafter = [\"announce\"]")
        )
    ));
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;
    let announced = drain_queue(&sqs, &listen, 1, Duration::from_secs(30)).await;
    eventually(
        "the failing one dead-lettered",
        Duration::from_secs(30),
        async || queue_depth(&sqs, &q.dlq_url).await.0 == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    let more = drain_queue(&sqs, &listen, 1, Duration::from_secs(2)).await;

    assert_eq!(announced.len(), 1);
    assert!(
        more.is_empty(),
        "nothing announced for the failed interaction"
    );
    let body = announced[0].body().unwrap();
    assert!(
        !body.contains("Thanks for joining"),
        "no content in announcements"
    );
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["detail-type"], "InteractionProcessed");
    assert_eq!(event["detail"]["interaction_key"], good.as_str());
    assert_eq!(
        event["detail"]["tenant_id"],
        "550e8400-e29b-41d4-a716-446655440000"
    );
    assert_eq!(event["detail"]["content_length"], 42);
    assert_eq!(
        event["detail"]["announcement_id"],
        conveyor::pipeline::announcement_id("550e8400-e29b-41d4-a716-446655440000", &good),
        "a stable id consumers deduplicate on"
    );
}
