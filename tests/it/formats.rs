//! Input formats, contracts and claim checks against LocalStack's SQS, S3 and SNS: an S3
//! bucket's notifications, a raw JSON queue, bodies offloaded to S3, and the config errors
//! that name a bad format or contract.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor::pipeline::{Delivery, Pipeline, PipelineError, Registry};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// What a pipeline saw of one delivery.
#[derive(Debug, Clone)]
struct Seen {
    source: String,
    detail_type: String,
    contract: &'static str,
    payload: Value,
    content_len: Option<usize>,
}

/// Records every delivery it is given.
#[derive(Clone, Default)]
struct Payloads(Arc<Mutex<Vec<Seen>>>);

impl Payloads {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

impl Pipeline for Payloads {
    fn name(&self) -> &'static str {
        "payloads"
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        self.0.lock().unwrap().push(Seen {
            source: d.event.source.clone(),
            detail_type: d.event.detail_type.clone(),
            contract: d.contract.as_str(),
            payload: d.event.payload.clone(),
            content_len: d.interaction.as_ref().map(|i| i.content.len()),
        });
        Box::pin(async { Ok(()) })
    }
}

fn registry(payloads: &Payloads) -> Registry {
    let mut registry = Registry::built_in();
    registry.add(Arc::new(payloads.clone()));
    registry
}

fn deleted(k: &str) -> f64 {
    metric(
        "conveyor_messages_deleted_total",
        &[&format!("queue=\"{k}\"")],
    )
}

fn key(prefix: &str) -> String {
    unique(prefix).replace('-', "_").to_lowercase()
}

async fn s3() -> aws_sdk_s3::Client {
    conveyor::aws::s3_client(&aws_sdk().await)
}

async fn bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> String {
    let name = unique(prefix).to_lowercase();
    s3.create_bucket().bucket(&name).send().await.unwrap();
    name
}

#[tokio::test]
async fn an_s3_bucket_notifying_a_queue_routes_each_record_and_deletes_the_test_event() {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    let _ls = localstack_shared().await;
    let (sqs, s3) = (sqs_client().await, s3().await);
    let q = queue_with_dlq(&sqs, "it-s3", 3).await;
    let bucket = bucket(&s3, "it-drops").await;
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(
                    QueueConfiguration::builder()
                        .queue_arn(queue_arn(&sqs, &q.url).await)
                        .events(Event::S3ObjectCreated)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let k = key("s3");
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "format = \"s3\"\n[[queues.{k}.routes]]\nsource = \"{bucket}\"\ndetail_type = \"ObjectCreated:*\"\n\
             contract = \"json\"\npipelines = [\"payloads\"]"
        ),
    ));
    let payloads = Payloads::default();
    let daemon = InProcess::start(config, registry(&payloads)).await;

    for (name, size) in [("drops/one file.json", 10), ("drops/two.json", 20)] {
        s3.put_object()
            .bucket(&bucket)
            .key(name)
            .body(vec![b'x'; size].into())
            .send()
            .await
            .unwrap();
    }
    eventually(
        "both records and the test event deleted",
        Duration::from_secs(60),
        async || payloads.seen().len() == 2 && deleted(&k) == 3.0,
    )
    .await;
    let mut seen = payloads.seen();
    seen.sort_by_key(|s| s.payload["key"].as_str().unwrap().to_owned());
    assert_eq!(
        seen[0].payload["key"], "drops/one file.json",
        "keys URL-decoded"
    );
    assert_eq!(seen[0].payload["size"], 10);
    assert_eq!(seen[1].payload["size"], 20);
    assert!(seen.iter().all(|s| s.source == bucket
        && s.detail_type == "ObjectCreated:Put"
        && s.contract == "json"
        && s.payload["etag"].is_string()));
    assert_eq!(
        queue_depth(&sqs, &q.dlq_url).await,
        (0, 0),
        "the test event is not dead-lettered"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_raw_queue_hands_its_json_payload_to_the_pipeline() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-raw", 3).await;
    let k = key("raw");
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "format = \"raw\"\n[[queues.{k}.routes]]\nsource = \"billing\"\ncontract = \"json\"\npipelines = [\"payloads\"]\n\
             [queues.{k}.routes.attributes]\nregion = \"eu-*\""
        ),
    ));
    let payloads = Payloads::default();
    let daemon = InProcess::start(config, registry(&payloads)).await;

    let string = |v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    for (region, body) in [
        ("eu-west-1", r#"{"invoice":7,"lines":[1,2]}"#),
        ("us-east-1", "{}"),
    ] {
        sqs.send_message()
            .queue_url(&q.url)
            .message_body(body)
            .message_attributes("source", string("billing"))
            .message_attributes("type", string("InvoicePaid"))
            .message_attributes("region", string(region))
            .send()
            .await
            .unwrap();
    }
    sqs.send_message()
        .queue_url(&q.url)
        .message_body("not json")
        .send()
        .await
        .unwrap();
    eventually(
        "routed, unrouted and poison messages decided",
        Duration::from_secs(60),
        async || {
            queue_depth(&sqs, &q.url).await == (0, 0) && queue_depth(&sqs, &q.dlq_url).await.0 == 2
        },
    )
    .await;
    let seen = payloads.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the eu message matches the route's attribute"
    );
    assert_eq!(seen[0].payload, json!({"invoice": 7, "lines": [1, 2]}));
    assert_eq!(seen[0].detail_type, "InvoicePaid");
    let dead = drain_queue(&sqs, &q.dlq_url, 2, Duration::from_secs(10)).await;
    let mut reasons: Vec<&str> = dead
        .iter()
        .map(|m| string_attribute(m, "conveyor.error").unwrap())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("poison message: body is not JSON"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("unrouted"), "{reasons:?}");
    daemon.stop().await;
}

fn big_envelope(tenant: Uuid, text_bytes: usize, format: &str) -> Value {
    json!({"schema_version":"v1","tenant_id": tenant,"user_id":"u-1",
        "interaction_type":"transcript","content":{"text": "y".repeat(text_bytes),"format": format},
        "timestamp":"2026-11-18T10:30:00Z","source":"upload","interaction_id": Uuid::new_v4()})
}

#[tokio::test]
async fn an_offloaded_envelope_is_fetched_from_s3_and_dead_letters_keep_the_pointer() {
    let _ls = localstack_shared().await;
    let (sqs, s3) = (sqs_client().await, s3().await);
    let q = queue_with_dlq(&sqs, "it-claim", 3).await;
    let bucket = bucket(&s3, "it-claims").await;
    let k = key("claim");
    let routes = format!(
        "claim_check_buckets = [\"{bucket}\"]\n\
         [[queues.{k}.routes]]\ndetail_type = \"EnvelopeV1.*\"\ncontract = \"envelope_v1\"\npipelines = [\"payloads\"]"
    );
    let payloads = Payloads::default();
    let daemon = InProcess::start(
        test_config(&queue_toml(&k, &q.url, &routes)),
        registry(&payloads),
    )
    .await;
    // The CLI validates its config, which knows only the catalog's pipelines.
    let toml = queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"noop\"]"),
    );

    // `conveyor publish --queue --offload-over` writes the pointers, as the extended clients do.
    let publish = |detail: &Value| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), detail.to_string()).unwrap();
        let out = Conveyor::new(&toml).output(&[
            "publish",
            "--type",
            "transcript",
            "--file",
            file.path().to_str().unwrap(),
            "--queue",
            &k,
            "--offload-over",
            "200000",
            "--offload-bucket",
            &bucket,
        ]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        let line: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        line["offloaded_to"].as_str().map(str::to_owned)
    };
    let tenant = Uuid::new_v4();
    let offloaded = publish(&big_envelope(tenant, 900 * 1024, "plain"));
    assert!(offloaded.unwrap().starts_with(&format!("s3://{bucket}/")));
    eventually(
        "the 900 KiB envelope processed",
        Duration::from_secs(60),
        async || deleted(&k) == 1.0,
    )
    .await;
    let seen = payloads.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].content_len, Some(900 * 1024));
    assert_eq!(seen[0].contract, "envelope_v1");

    // Invalid once fetched (publish would refuse it, so offloaded by hand): dead-lettered with
    // the reason, the pointer as its body.
    let invalid = json!({"version":"0","id": Uuid::new_v4(),"detail-type":"EnvelopeV1.transcript",
        "source":"com.yourapp.transcription","detail": big_envelope(tenant, 300 * 1024, "html")});
    let pointer = conveyor::claim_check::ClaimCheck::new(s3.clone())
        .offload(&bucket, invalid.to_string())
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(pointer.to_body())
        .send()
        .await
        .unwrap();
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(60)).await;
    let body = dead[0].body().unwrap();
    assert!(
        body.starts_with("[\"software.amazon.payloadoffloading.PayloadS3Pointer\"")
            && body.len() < 1000,
        "the DLQ holds the pointer, not the payload: {} bytes",
        body.len()
    );
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert!(reason.contains("detail.content.format"), "{reason}");

    // A pointer to a bucket the queue does not list: refused at once, naming the key to set.
    let elsewhere = conveyor::claim_check::Pointer {
        bucket: "someone-elses-bucket".into(),
        key: "secrets.json".into(),
    };
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(elsewhere.to_body())
        .send()
        .await
        .unwrap();
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(30)).await;
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert!(
        reason.contains("\"someone-elses-bucket\" is not in queues.")
            && reason.contains(".claim_check_buckets"),
        "{reason}"
    );
    assert_eq!(
        string_attribute(&dead[0], "conveyor.receive_count"),
        Some("1")
    );

    // A pointer to nothing: retried, then dead-lettered naming bucket and key.
    let missing = conveyor::claim_check::Pointer {
        bucket: bucket.clone(),
        key: "gone/1".into(),
    };
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(missing.to_body())
        .send()
        .await
        .unwrap();
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(90)).await;
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert!(
        reason.starts_with("retries exhausted after 3 receives")
            && reason.contains(&format!("claim check s3://{bucket}/gone/1: no such object")),
        "{reason}"
    );
    daemon.stop().await;
}

#[test]
fn config_errors_name_the_bad_format_contract_and_pipeline() {
    let check = |extra: &str| {
        let out = Conveyor::new(&format!(
            "[queues.main]\nurl = \"http://localhost/q\"\n{extra}\n"
        ))
        .output(&["check", "--no-probe"]);
        assert_eq!(out.code, Some(1), "{}", out.all());
        out.all()
    };
    let out = check("format = \"kafka\"\n[[queues.main.routes]]\npipelines = [\"noop\"]");
    assert!(
        out.contains("queues.main.format") && out.contains("eventbridge") && out.contains("raw"),
        "{out}"
    );
    let out = check("[[queues.main.routes]]\ncontract = \"avro\"\npipelines = [\"noop\"]");
    assert!(
        out.contains("contract") && out.contains("envelope_v1") && out.contains("json"),
        "{out}"
    );
    let out = check(
        "claim_check_buckets = [\"s3://drops\"]\n[[queues.main.routes]]\npipelines = [\"noop\"]",
    );
    assert!(
        out.contains("queues.main.claim_check_buckets = \"s3://drops\"")
            && out.contains("bucket names, not ARNs"),
        "{out}"
    );
    let out = check("[[queues.main.routes]]\ncontract = \"json\"\npipelines = [\"projection\"]");
    assert!(
        out.contains("queues.main.routes[0].contract = \"json\"")
            && out.contains("the projection pipeline cannot take it")
            && out.contains("envelope_v1, batch_completed_v1"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_pipeline_logs_ids_and_the_payload_hash_never_the_payload() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-log", 3).await;
    let k = key("log");
    let toml = queue_toml(
        &k,
        &q.url,
        &format!(
            "format = \"raw\"\n[[queues.{k}.routes]]\ncontract = \"json\"\npipelines = [\"log\"]"
        ),
    );
    let mut daemon = Conveyor::new(&toml).spawn_daemon();
    let body = r#"{"note":"private-words-7f3a"}"#;
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(body)
        .send()
        .await
        .unwrap();
    let line = daemon.wait_for_log("payload_sha256", Duration::from_secs(30));
    assert!(
        line.contains(&format!("payload_bytes={}", body.len())),
        "{line}"
    );
    assert!(
        line.contains("contract=\"json\"") || line.contains("contract=json"),
        "{line}"
    );
    eventually("deleted", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    assert!(
        daemon.logs().iter().all(|l| !l.contains("private-words")),
        "the payload never reaches the log"
    );
}

/// The decoder fuzz target's property (`scripts/fuzz` runs the fuzzer by hand and in
/// `scripts/soak`), shared with it word for word.
mod decode_property {
    include!("../../fuzz/decode_property.rs");
}

/// The fuzz target's seed corpus, each seed whole, cut short at every 16th byte and with one
/// byte flipped there, through the fuzz target's own property: no panic, short reasons.
#[test]
fn the_fuzz_corpus_and_its_cuts_decode_without_panic_and_with_short_reasons() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
        let seed = std::fs::read(entry.expect("a seed").path()).expect("readable");
        decode_property::decode_property(&seed);
        for at in (0..seed.len()).step_by(16) {
            decode_property::decode_property(&seed[..at]);
            let mut flipped = seed.clone();
            flipped[at] ^= 0x5a;
            decode_property::decode_property(&flipped);
        }
        seeds += 1;
    }
    assert!(seeds >= 9, "the seed corpus lost files: {seeds}");
}
