//! `conveyor dlq`: peek and stats consume nothing; redrive after a fix processes every
//! dead-lettered message, loses none, and strips conveyor's attributes on the way back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use conveyor::pipeline::{Delivery, Pipeline, PipelineError};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::helpers::*;

/// Fails permanently until fixed; then records what it processes.
#[derive(Clone, Default)]
struct Fixable {
    fixed: Arc<AtomicBool>,
    processed: Arc<Mutex<Vec<String>>>,
}

impl Pipeline for Fixable {
    fn name(&self) -> &'static str {
        "fixable"
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let this = self.clone();
        Box::pin(async move {
            if !this.fixed.load(Ordering::SeqCst) {
                return Err(PipelineError::Permanent("broken".into()));
            }
            this.processed.lock().unwrap().push(d.key.clone());
            Ok(())
        })
    }
}

/// Long-poll wait of the test's daemons.
const POLL_SECS: u64 = 2;

async fn daemon(q: &TestQueue, k: &str, fixable: &Fixable) -> InProcess {
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(fixable.clone()));
    // Short polls: a stopped daemon's abandoned long poll stays open at SQS for the rest of
    // its wait and takes messages that arrive meanwhile (README, Shutdown).
    let config = test_config(&queue_toml(
        k,
        &q.url,
        &format!("wait_time_secs = {POLL_SECS}\n[[queues.{k}.routes]]\npipelines = [\"fixable\"]"),
    ));
    InProcess::start(config, registry).await
}

fn lines(out: &Output) -> Vec<Value> {
    assert_eq!(out.code, Some(0), "{}", out.all());
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn redrive_after_a_fix_processes_every_dead_letter_with_attributes_cleaned() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-redrive", 3).await;
    let run = unique("rd");
    let ids: Vec<String> = (0..6).map(|i| format!("{run}-{i}")).collect();
    for id in &ids {
        sqs.send_message()
            .queue_url(&q.url)
            .message_body(event_body(id, json!({"text": "secret body text"})))
            .message_attributes(
                "origin",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("test")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    // A broken pipeline dead-letters all six.
    let fixable = Fixable::default();
    let k = format!("r{:08x}", rand::random::<u32>());
    let broken = daemon(&q, &k, &fixable).await;
    eventually("six dead letters", Duration::from_secs(30), async || {
        metric(
            "conveyor_messages_dead_lettered_total",
            &[&format!("queue=\"{k}\"")],
        ) == 6.0
    })
    .await;
    broken.stop().await;
    // Its aborted polls end at SQS before anything is redriven into the queue.
    tokio::time::sleep(Duration::from_secs(POLL_SECS + 1)).await;

    let cli = || {
        Conveyor::new(&format!(
            "[queues.main]\nurl = \"{}\"\n[[queues.main.routes]]\npipelines = [\"noop\"]\n",
            q.url
        ))
    };
    let peeked = lines(&cli().output(&["dlq", "peek", "--max", "10"]));
    assert_eq!(peeked.len(), 6);
    for p in &peeked {
        assert_eq!(p["reason"], "fixable: broken");
        assert_eq!(p["pipeline"], "fixable");
        assert_eq!(p["receive_count"], "1");
        assert_eq!(p["source_queue"], q.url.as_str());
        assert!(p.get("body").is_none(), "no body without --show-body");
    }
    let stats = cli().output(&["dlq", "stats"]);
    assert_eq!(stats.code, Some(0), "{}", stats.all());
    let stats: Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["by_reason"]["fixable"], 6, "{stats}");
    assert_eq!(stats["sampled"], 6);
    assert!(!stats.to_string().contains("secret body text"));
    eventually(
        "inspection consumed nothing",
        Duration::from_secs(10),
        async || queue_depth(&sqs, &q.dlq_url).await == (6, 0),
    )
    .await;

    // Fix, redrive, and check what went back before the daemon takes it.
    fixable.fixed.store(true, Ordering::SeqCst);
    let out = cli().output(&["dlq", "redrive"]);
    // Not on a terminal: plain progress lines, the last one saying where it ended.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("redriving 6/6 messages, ")),
        "{}",
        out.stderr
    );
    let redriven = lines(&out);
    assert_eq!(redriven.last().unwrap()["redriven"], 6);
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    let mut seen = HashSet::new();
    while seen.len() < 6 {
        let batch = sqs
            .receive_message()
            .queue_url(&q.url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        for m in batch {
            let attributes = m.message_attributes.clone().unwrap_or_default();
            assert!(
                attributes.keys().all(|k| !k.starts_with("conveyor.")),
                "{attributes:?}"
            );
            assert_eq!(
                attributes["origin"].string_value(),
                Some("test"),
                "the message's own attribute survives"
            );
            seen.insert(m.message_id.unwrap());
        }
    }

    let fixed = daemon(&q, &k, &fixable).await;
    eventually("all six processed", Duration::from_secs(30), async || {
        fixable.processed.lock().unwrap().len() == 6
    })
    .await;
    eventually("the queue to empty", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    fixed.stop().await;
    let mut processed = fixable.processed.lock().unwrap().clone();
    processed.sort();
    assert_eq!(
        processed, ids,
        "every dead letter processed, none lost, none twice"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn redrive_into_a_fifo_queue_keeps_each_dead_letters_group_and_order() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-redrive-fifo", 3).await;
    let run = unique("rf");
    let messages: Vec<(String, String)> = (0..3)
        .flat_map(|seq| {
            let run = run.clone();
            (0..2).map(move |g| {
                let id = format!("{run}-g{g}-{seq}");
                (format!("g{g}"), event_body(&id, json!({"seq": seq})))
            })
        })
        .collect();
    send_grouped(&sqs, &q.url, &messages).await;

    let fixable = Fixable::default();
    let k = format!("r{:08x}", rand::random::<u32>());
    let broken = daemon(&q, &k, &fixable).await;
    eventually("all 6 dead-lettered", Duration::from_secs(60), async || {
        queue_depth(&sqs, &q.dlq_url).await.0 == 6
    })
    .await;
    broken.stop().await;
    tokio::time::sleep(Duration::from_secs(POLL_SECS + 1)).await;

    let redriven = lines(
        &Conveyor::new(&format!(
            "[queues.main]\nurl = \"{}\"\n[[queues.main.routes]]\npipelines = [\"noop\"]\n",
            q.url
        ))
        .output(&["dlq", "redrive"]),
    );
    assert_eq!(redriven.last().unwrap()["redriven"], 6);
    // Back with their groups (peeked without consuming: visibility 0 right after).
    let mut groups = HashSet::new();
    for _ in 0..10 {
        let batch = receive_grouped(&sqs, &q.url, 0).await;
        groups.extend(batch.iter().filter_map(|m| Some(group_id(m)?.to_owned())));
        if groups.len() == 2 {
            break;
        }
    }
    assert_eq!(groups, HashSet::from(["g0".to_owned(), "g1".to_owned()]));

    fixable.fixed.store(true, Ordering::SeqCst);
    let fixed = daemon(&q, &k, &fixable).await;
    eventually("all 6 processed", Duration::from_secs(60), async || {
        fixable.processed.lock().unwrap().len() == 6
    })
    .await;
    fixed.stop().await;
    let processed = fixable.processed.lock().unwrap().clone();
    for g in 0..2 {
        let order: Vec<&String> = processed
            .iter()
            .filter(|key| key.contains(&format!("-g{g}-")))
            .collect();
        let expected: Vec<String> = (0..3).map(|seq| format!("{run}-g{g}-{seq}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>(), "g{g} in order");
    }
}
