//! `conveyor publish` end to end: events put on a real EventBridge bus (LocalStack), routed by a
//! rule to a queue, consumed by the daemon with every field intact; invalid input publishes
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A fresh bus with a rule sending everything on it to a fresh queue.
pub(crate) async fn bus_to_queue(label: &str) -> (String, TestQueue) {
    let sdk = aws_sdk().await;
    let (eb, sqs) = (
        aws_sdk_eventbridge::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    );
    let q = queue_with_dlq(&sqs, label, 3).await;
    let bus = unique("it-bus");
    eb.create_event_bus().name(&bus).send().await.unwrap();
    rule_to_queue(&bus, json!({"source": [{"prefix": "com."}]}), &q.url).await;
    (bus, q)
}

async fn capturing_daemon(q: &TestQueue) -> (InProcess, Capture) {
    let capture = Capture::default();
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(capture.clone()));
    let k = format!("p{:08x}", rand::random::<u32>());
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"capture\"]"),
    ));
    (InProcess::start(config, registry).await, capture)
}

fn published(out: &Output) -> Value {
    assert_eq!(out.code, Some(0), "{}", out.all());
    serde_json::from_str(out.stdout.lines().last().expect("one line per event")).unwrap()
}

#[tokio::test]
async fn every_type_is_published_and_consumed_with_its_fields_intact() {
    let _ls = localstack_shared().await;
    let (bus, q) = bus_to_queue("it-publish").await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut lines = Vec::new();
    for kind in [
        "transcript",
        "note",
        "meeting",
        "email",
        "document",
        "batch",
    ] {
        let out = Conveyor::new("")
            .env("MOCK_USER_ID", "auth0|from-env")
            .env_remove("MOCK_TENANT_ID")
            .output(&[
                "publish",
                "--type",
                kind,
                "--sample",
                "--tenant-id",
                &tenant,
                "--account-id",
                "acct_1",
                "--bus",
                &bus,
            ]);
        assert!(
            !out.all().contains("I'll"),
            "content never printed or logged:\n{}",
            out.all()
        );
        lines.push((kind, published(&out)));
    }
    let (daemon, capture) = capturing_daemon(&q).await;
    eventually("six interactions", Duration::from_secs(30), async || {
        capture.0.lock().unwrap().len() == 6
    })
    .await;
    daemon.stop().await;

    let captured = capture.0.lock().unwrap().clone();
    for (kind, line) in lines {
        let id = line["interaction_id"].as_str().unwrap();
        let (key, interaction) = captured
            .iter()
            .find(|(key, _)| key == id)
            .unwrap_or_else(|| panic!("{kind}: interaction {id} not consumed"));
        let i = interaction.as_ref().unwrap();
        assert_eq!(key, id);
        assert_eq!(i.tenant_id.to_string(), tenant, "{kind}");
        assert_eq!(
            i.user_id, "auth0|from-env",
            "{kind}: MOCK_USER_ID used without --user-id"
        );
        assert_eq!(i.account_id.as_deref(), Some("acct_1"), "{kind}");
        assert_eq!(
            i.content.sha256(),
            line["content_sha256"].as_str().unwrap(),
            "{kind}: content intact"
        );
        assert_eq!(
            i.content.len() as u64,
            line["content_length"].as_u64().unwrap()
        );
        let expected_type = if kind == "batch" { "transcript" } else { kind };
        assert_eq!(i.interaction_type.as_str(), expected_type);
        let expected_source = if kind == "email" {
            "com.eq.email-pipeline"
        } else {
            "com.yourapp.transcription"
        };
        assert_eq!(line["source"], expected_source);
    }
}

#[tokio::test]
async fn invalid_input_fails_clearly_and_publishes_nothing() {
    let _ls = localstack_shared().await;
    let (bus, q) = bus_to_queue("it-publish-bad").await;
    let dir = tempfile::tempdir().unwrap();
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, "{\"content\": ").unwrap();
    let wrong_format = dir.path().join("wrong-format.json");
    std::fs::write(
        &wrong_format,
        json!({"interaction_type": "note", "content": {"text": "x", "format": "html"},
               "timestamp": "2025-01-23T10:30:00Z", "source": "api"})
        .to_string(),
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--type",
                "note",
                "--tenant-id",
                "not-a-uuid",
                "--no-identity-fallback",
            ],
            "--tenant-id = \"not-a-uuid\" is not a UUID v4",
        ),
        (
            vec!["--type", "podcast"],
            "invalid value 'podcast' for '--type",
        ),
        (
            vec!["--type", "note", "--file", malformed.to_str().unwrap()],
            "malformed.json: not JSON",
        ),
        (
            vec!["--type", "note", "--file", wrong_format.to_str().unwrap()],
            "detail.content.format: unknown variant \"html\"",
        ),
    ];
    for (args, expected) in &cases {
        let mut argv = vec!["publish", "--bus", &bus];
        argv.extend(args);
        let out = Conveyor::new("").env_remove("MOCK_TENANT_ID").output(&argv);
        assert_ne!(out.code, Some(0), "{args:?} should fail");
        assert!(
            out.stderr.contains(expected),
            "{args:?}: expected {expected:?} in\n{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing published");
    }
    // A marker sent afterwards arrives alone: none of the invalid attempts reached the bus.
    let marker =
        published(&Conveyor::new("").output(&["publish", "--type", "note", "--bus", &bus]));
    let (daemon, capture) = capturing_daemon(&q).await;
    eventually("the marker", Duration::from_secs(30), async || {
        !capture.0.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    let captured = capture.0.lock().unwrap().clone();
    assert_eq!(captured.len(), 1, "only the marker: {captured:?}");
    assert_eq!(captured[0].0, marker["interaction_id"].as_str().unwrap());
}

#[tokio::test]
async fn an_invalid_mock_tenant_is_replaced_with_a_warning_naming_it() {
    let _ls = localstack_shared().await;
    // The identity is resolved (and the warning logged) before anything is sent, so the bus
    // need not exist for this test.
    let out = Conveyor::new("")
        .env("MOCK_TENANT_ID", "tenant-123")
        .output(&[
            "publish",
            "--type",
            "note",
            "--bus",
            "no-such-bus-for-this-test",
        ]);
    assert!(
        out.stderr.contains(
            "MOCK_TENANT_ID = \"tenant-123\" is not a UUID v4; using a generated tenant id"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn publish_to_a_fifo_queue_needs_a_group_id_and_sends_with_it() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let fifo = fifo_queue_with_dlq(&sqs, "it-publish-fifo", 3).await;
    let standard = queue_with_dlq(&sqs, "it-publish-std", 3).await;
    let cli = || {
        Conveyor::new(&format!(
            "[queues.orders]\nurl = \"{}\"\n[[queues.orders.routes]]\npipelines = [\"noop\"]\n\
             [queues.plain]\nurl = \"{}\"\n[[queues.plain.routes]]\npipelines = [\"noop\"]\n",
            fifo.url, standard.url
        ))
    };
    let base = ["publish", "--type", "transcript", "--sample"];

    let missing = cli().output(&[&base[..], &["--queue", "orders"]].concat());
    assert_ne!(missing.code, Some(0));
    assert!(
        missing
            .all()
            .contains("queues.orders is a FIFO queue: pass --group-id"),
        "{}",
        missing.all()
    );
    let wrong = cli().output(&[&base[..], &["--queue", "plain", "--group-id", "t1"]].concat());
    assert_ne!(wrong.code, Some(0));
    assert!(
        wrong.all().contains("--group-id is for FIFO queues only"),
        "{}",
        wrong.all()
    );
    assert_eq!(queue_depth(&sqs, &standard.url).await, (0, 0));

    let sent = cli().output(
        &[
            &base[..],
            &[
                "--queue",
                "orders",
                "--group-id",
                "tenant-a",
                "--count",
                "3",
            ],
        ]
        .concat(),
    );
    assert_eq!(sent.code, Some(0), "{}", sent.all());
    let ids: Vec<String> = sent
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let got = receive_grouped(&sqs, &fifo.url, 30).await;
    let received: Vec<String> = got
        .iter()
        .map(|m| {
            assert_eq!(group_id(m), Some("tenant-a"));
            conveyor::input::eventbridge::decode(m.body().unwrap())
                .unwrap()
                .id
                .unwrap()
        })
        .collect();
    assert_eq!(received, ids, "all three, in the order published");
}

#[tokio::test]
async fn publish_count_shows_progress_as_plain_lines_off_a_terminal() {
    let _ls = localstack_shared().await;
    let (bus, q) = bus_to_queue("it-publish-count").await;
    let out = Conveyor::new("").output(&[
        "publish", "--type", "note", "--sample", "--count", "25", "--bus", &bus,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.stdout.lines().count(), 25, "one line per event");
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("publishing "))
        .collect();
    assert!(
        progress
            .last()
            .is_some_and(|l| l.starts_with("publishing 25/25 events, ")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'), "no escape codes in a pipe");
    eventually("all 25 on the queue", Duration::from_secs(30), async || {
        queue_depth(&sqs_client().await, &q.url).await.0 == 25
    })
    .await;
}
