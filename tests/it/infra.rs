//! `conveyor infra up|down|verify` against LocalStack. Each test has its own event bus, queue
//! and rule names, so rules cannot deliver one test's events to another's queue.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName as Q;
use serde_json::Value;

use crate::helpers::*;

struct Names {
    queue: String,
    rule: String,
    bus: String,
}

fn names() -> Names {
    Names {
        queue: unique("it-infra"),
        rule: unique("it-infra-rule"),
        bus: unique("it-infra-bus"),
    }
}

fn infra(n: &Names) -> Conveyor {
    Conveyor::new(&format!(
        "[eventbridge]\nbus_name = \"{}\"\n[infra]\nqueue_name = \"{}\"\nrule_name = \"{}\"\n",
        n.bus, n.queue, n.rule
    ))
}

async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Option<String> {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url)
}

async fn attribute(sqs: &aws_sdk_sqs::Client, url: &str, name: Q) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&name]
        .clone()
}

#[tokio::test]
async fn up_is_idempotent_reports_and_fixes_drift_and_dry_run_changes_nothing() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let n = names();

    let plan = infra(&n).output(&["infra", "up", "--dry-run"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert_eq!(
        plan.stdout.matches("would create").count(),
        6,
        "bus, dlq, queue, rule, target, policy:\n{}",
        plan.stdout
    );
    assert_eq!(
        queue_url(&sqs, &n.queue).await,
        None,
        "--dry-run created nothing"
    );

    let first = infra(&n).output(&["infra", "up"]);
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert_eq!(
        first.stdout.matches("created").count(),
        6,
        "{}",
        first.stdout
    );
    let url = queue_url(&sqs, &n.queue).await.expect("queue created");
    assert_eq!(attribute(&sqs, &url, Q::VisibilityTimeout).await, "720");
    assert_eq!(
        attribute(&sqs, &url, Q::MessageRetentionPeriod).await,
        "1209600"
    );
    let redrive: Value =
        serde_json::from_str(&attribute(&sqs, &url, Q::RedrivePolicy).await).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    let policy: Value = serde_json::from_str(&attribute(&sqs, &url, Q::Policy).await).unwrap();
    assert_eq!(
        policy["Statement"][0]["Principal"]["Service"],
        "events.amazonaws.com"
    );
    assert!(
        policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
            .as_str()
            .unwrap()
            .ends_with(&n.rule)
    );

    let second = infra(&n).output(&["infra", "up", "--output", "json"]);
    assert_eq!(second.code, Some(0), "{}", second.all());
    let second: Value = serde_json::from_str(second.stdout.trim()).unwrap();
    assert!(
        second["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "exists"),
        "{second}"
    );
    assert_eq!(second["queue_url"], url.as_str());

    // Drift by hand: reported by --dry-run (and left alone), then fixed by up.
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(Q::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap();
    let plan = infra(&n).output(&["infra", "up", "--dry-run"]);
    assert!(
        plan.stdout.contains("would update queue")
            && plan.stdout.contains("VisibilityTimeout: 30 → 720"),
        "{}",
        plan.stdout
    );
    assert_eq!(attribute(&sqs, &url, Q::VisibilityTimeout).await, "30");
    let fix = infra(&n).output(&["infra", "up"]);
    assert!(
        fix.stdout.contains("updated") && fix.stdout.contains("VisibilityTimeout: 30 → 720"),
        "{}",
        fix.stdout
    );
    assert_eq!(attribute(&sqs, &url, Q::VisibilityTimeout).await, "720");

    let unconfirmed = infra(&n).output(&["infra", "down"]);
    assert_ne!(unconfirmed.code, Some(0));
    assert!(
        queue_url(&sqs, &n.queue).await.is_some(),
        "nothing removed without --yes"
    );
    let down = infra(&n).output(&["infra", "down", "--yes"]);
    assert_eq!(down.code, Some(0), "{}", down.all());
    assert_eq!(queue_url(&sqs, &n.queue).await, None);
    assert_eq!(queue_url(&sqs, &format!("{}-dlq", n.queue)).await, None);
}

#[tokio::test]
async fn verify_proves_the_flow_without_stealing_from_a_daemon_and_names_each_failure() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let eb = aws_sdk_eventbridge::Client::new(&aws_sdk().await);
    let n = names();
    assert_eq!(infra(&n).output(&["infra", "up"]).code, Some(0));
    let url = queue_url(&sqs, &n.queue).await.unwrap();

    // A daemon consumes the queue meanwhile; it still gets the event.
    let k = format!("v{:08x}", rand::random::<u32>());
    let config = test_config(&queue_toml(
        &k,
        &url,
        &format!("wait_time_secs = 1\n[[queues.{k}.routes]]\npipelines = [\"noop\"]"),
    ));
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;
    let ok = infra(&n).output(&["infra", "verify"]);
    assert_eq!(ok.code, Some(0), "{}", ok.all());
    assert!(ok.stdout.contains("structure intact"), "{}", ok.stdout);
    eventually(
        "the daemon to get the test event too",
        Duration::from_secs(20),
        async || {
            metric(
                "conveyor_messages_deleted_total",
                &[&format!("queue=\"{k}\"")],
            ) >= 1.0
        },
    )
    .await;
    daemon.stop().await;
    let targets = eb
        .list_targets_by_rule()
        .rule(&n.rule)
        .event_bus_name(&n.bus)
        .send()
        .await
        .unwrap()
        .targets
        .unwrap();
    assert_eq!(
        targets.len(),
        1,
        "the verification target was removed: {targets:?}"
    );

    // Target removed by hand → 1.
    eb.remove_targets()
        .rule(&n.rule)
        .event_bus_name(&n.bus)
        .ids("conveyor-queue")
        .send()
        .await
        .unwrap();
    let no_target = infra(&n).output(&["infra", "verify"]);
    assert_eq!(no_target.code, Some(1), "{}", no_target.all());
    assert!(
        no_target.stderr.contains("no target for queue"),
        "{}",
        no_target.stderr
    );

    // Rule deleted → 3.
    eb.delete_rule()
        .name(&n.rule)
        .event_bus_name(&n.bus)
        .send()
        .await
        .unwrap();
    let no_rule = infra(&n).output(&["infra", "verify"]);
    assert_eq!(no_rule.code, Some(3), "{}", no_rule.all());
    assert!(
        no_rule.stderr.contains("does not exist") && no_rule.stderr.contains("conveyor infra up"),
        "{}",
        no_rule.stderr
    );

    // LocalStack accepts any credentials, so the substitute for wrong ones is none at all: the
    // SDK's credential chain comes up empty, which is the same error class (exit 2).
    let no_credentials = infra(&n)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output(&["infra", "verify"]);
    assert_eq!(no_credentials.code, Some(2), "{}", no_credentials.all());
    assert!(
        no_credentials.stderr.contains("credentials"),
        "{}",
        no_credentials.stderr
    );

    assert_eq!(infra(&n).output(&["infra", "down", "--yes"]).code, Some(0));
}

#[tokio::test]
async fn policy_names_the_configured_queue_its_dlq_and_the_bus_with_the_real_account() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-policy", 3).await;
    // An SSE-KMS queue: the run role must be able to decrypt what it receives.
    let key = "1234abcd-12ab-34cd-56ef-1234567890ab";
    sqs.set_queue_attributes()
        .queue_url(&q.url)
        .attributes(Q::KmsMasterKeyId, key)
        .send()
        .await
        .unwrap();
    let toml = format!(
        "[announce]\nbus_name = \"results\"\n[queues.main]\nurl = \"{}\"\n\
         [[queues.main.routes]]\npipelines = [\"noop\"]\nafter = [\"announce\"]\n",
        q.url
    );
    let policy = |role: &str| -> Value {
        let out = Conveyor::new(&toml).output(&["policy", "--role", role]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str(&out.stdout).unwrap()
    };
    let sid = |doc: &Value, s: &str| {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["Sid"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("no {s} in {doc}"))
    };
    let actions = |doc: &Value| -> Vec<String> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let (run, publish, infra) = (policy("run"), policy("publish"), policy("infra"));
    // LocalStack's account id, read from the queue's ARN rather than assumed.
    assert_eq!(
        sid(&run, "RunConsume")["Resource"][0],
        format!("arn:aws:sqs:us-east-1:000000000000:{}", q.name)
    );
    assert_eq!(
        sid(&run, "RunDeadLetter")["Resource"][0],
        format!("arn:aws:sqs:us-east-1:000000000000:{}-dlq", q.name)
    );
    assert_eq!(
        sid(&run, "RunAnnounce")["Resource"][0],
        "arn:aws:events:us-east-1:000000000000:event-bus/results",
        "announce's own bus, not eventbridge.bus_name"
    );
    assert_eq!(
        sid(&run, "RunQueueKeys")["Resource"][0],
        format!("arn:aws:kms:us-east-1:000000000000:key/{key}")
    );
    assert_eq!(
        sid(&publish, "Publish")["Resource"][0],
        "arn:aws:events:us-east-1:000000000000:event-bus/default"
    );
    assert!(actions(&infra).contains(&"events:PutRule".to_owned()));
    let run_actions = actions(&run);
    for action in [
        "sqs:CreateQueue",
        "sqs:DeleteQueue",
        "sqs:SetQueueAttributes",
        "events:PutRule",
        "events:PutTargets",
        "events:DeleteRule",
        "events:RemoveTargets",
        "events:DescribeRule",
        "events:ListTargetsByRule",
        "events:CreateEventBus",
        "events:DescribeEventBus",
    ] {
        assert!(
            actions(&infra).contains(&action.to_owned()) || action.ends_with("EventBus"),
            "{action} is infra's"
        );
        assert!(
            !run_actions.contains(&action.to_owned()),
            "the run role holds {action}"
        );
    }

    // A real policy linter: every action, resource and condition is one IAM knows.
    for (role, doc) in [("run", &run), ("publish", &publish), ("infra", &infra)] {
        assert_parliament_clean(role, doc);
    }
}

#[tokio::test]
async fn up_with_fifo_creates_fifo_queue_and_dlq_and_events_arrive_with_the_group_id() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let n = Names {
        queue: format!("{}.fifo", unique("it-infra-fifo")),
        ..names()
    };
    let fifo = || {
        Conveyor::new(&format!(
            "[eventbridge]\nbus_name = \"{}\"\n[infra]\nqueue_name = \"{}\"\nrule_name = \"{}\"\n\
             sources = [\"conveyor.tests.fifo\"]\nfifo = true\nfifo_group_id = \"all-events\"\n",
            n.bus, n.queue, n.rule
        ))
    };
    let up = fifo().output(&["infra", "up"]);
    assert_eq!(up.code, Some(0), "{}", up.all());
    let url = queue_url(&sqs, &n.queue).await.expect("queue created");
    let base = n.queue.trim_end_matches(".fifo");
    let dlq = queue_url(&sqs, &format!("{base}-dlq.fifo"))
        .await
        .expect("FIFO DLQ created");
    for queue in [&url, &dlq] {
        assert_eq!(attribute(&sqs, queue, Q::FifoQueue).await, "true");
        assert_eq!(
            attribute(&sqs, queue, Q::ContentBasedDeduplication).await,
            "true"
        );
    }
    let redrive: Value =
        serde_json::from_str(&attribute(&sqs, &url, Q::RedrivePolicy).await).unwrap();
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with("-dlq.fifo")
    );
    let again = fifo().output(&["infra", "up", "--output", "json"]);
    let again: Value = serde_json::from_str(again.stdout.trim()).unwrap();
    assert!(
        again["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "exists"),
        "idempotent: {again}"
    );

    let eb = aws_sdk_eventbridge::Client::new(&aws_sdk().await);
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(&n.bus)
        .source("conveyor.tests.fifo")
        .detail_type("Test.event")
        .detail(r#"{"n": 1}"#)
        .build();
    let out = eb.put_events().entries(entry).send().await.unwrap();
    assert_eq!(out.failed_entry_count, 0);
    let mut got = Vec::new();
    for _ in 0..20 {
        got = receive_grouped(&sqs, &url, 30).await;
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1, "the event reached the FIFO queue");
    assert_eq!(group_id(&got[0]), Some("all-events"));

    let down = fifo().output(&["infra", "down", "--yes"]);
    assert_eq!(down.code, Some(0), "{}", down.all());
    assert_eq!(queue_url(&sqs, &n.queue).await, None);
}

#[test]
fn fifo_settings_that_cannot_work_name_the_key_and_the_fix() {
    let out = Conveyor::new("[infra]\nqueue_name = \"orders\"\nfifo = true\n").output(&["check"]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("infra.queue_name") && out.all().contains("end in .fifo"),
        "{}",
        out.all()
    );
    let out = Conveyor::new("[infra]\nqueue_name = \"orders.fifo\"\n").output(&["check"]);
    assert!(
        out.all().contains("infra.queue_name") && out.all().contains("set infra.fifo = true"),
        "{}",
        out.all()
    );
}
