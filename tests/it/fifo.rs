//! FIFO queues against LocalStack (which hands out a group's messages in order and holds the
//! group while one of them is in flight, as SQS does), with the daemon as users run it: order
//! within a group with groups side by side, a transient failure holding its group only, a
//! permanent failure dead-lettered into the FIFO DLQ with its group id, shutdown and restart,
//! and the startup check of the DLQ's kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// A metric-label-safe queue key unique to this test.
fn key() -> String {
    format!("f{:08x}", rand::random::<u32>())
}

/// How long the flaky message asks to be left alone after each failure.
const FLAKY_RETRY_AFTER: Duration = Duration::from_secs(3);

/// One handled message: group, sequence number, receive count, when it started and ended, and
/// whether it succeeded.
#[derive(Debug, Clone)]
struct Span {
    group: String,
    seq: u64,
    receive_count: u32,
    started: Instant,
    finished: Instant,
    succeeded: bool,
}

/// A pipeline that records every message it handles (its detail is `{"group", "seq"}`), after
/// sleeping up to `max_sleep_ms`; fails `flaky` retryably on its first two receives and
/// `poison` permanently.
#[derive(Clone, Default)]
struct Sequence {
    spans: Arc<Mutex<Vec<Span>>>,
    max_sleep_ms: u64,
    flaky: Option<(&'static str, u64)>,
    poison: Option<(&'static str, u64)>,
}

impl conveyor::pipeline::Pipeline for Sequence {
    fn name(&self) -> &'static str {
        "sequence"
    }

    fn run(
        &self,
        delivery: Arc<conveyor::pipeline::Delivery>,
    ) -> futures::future::BoxFuture<'static, Result<(), conveyor::pipeline::PipelineError>> {
        use conveyor::pipeline::PipelineError;
        let this = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            let group = delivery.event.payload["group"].as_str().unwrap().to_owned();
            let seq = delivery.event.payload["seq"].as_u64().unwrap();
            if this.max_sleep_ms > 0 {
                let sleep = rand::random_range(0..=this.max_sleep_ms);
                tokio::time::sleep(Duration::from_millis(sleep)).await;
            }
            let me = Some((group.as_str(), seq));
            let result = if me == this.poison {
                Err(PipelineError::Permanent(
                    "sequence: poisoned on purpose".into(),
                ))
            } else if me == this.flaky && delivery.receive_count < 3 {
                // As a dependency answering 429 with Retry-After would: the backoff is at least
                // this long, whatever the jitter draws.
                Err(PipelineError::RetryAfter(
                    "sequence: flaky on purpose".into(),
                    FLAKY_RETRY_AFTER,
                ))
            } else {
                Ok(())
            };
            this.spans.lock().unwrap().push(Span {
                group,
                seq,
                receive_count: delivery.receive_count,
                started,
                finished: Instant::now(),
                succeeded: result.is_ok(),
            });
            result
        })
    }
}

impl Sequence {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn succeeded(&self) -> usize {
        self.spans().iter().filter(|s| s.succeeded).count()
    }

    /// Per group, the sequence numbers that succeeded, in the order they did.
    fn successes(&self) -> HashMap<String, Vec<u64>> {
        let mut by_group: HashMap<String, Vec<u64>> = HashMap::new();
        for span in self.spans().into_iter().filter(|s| s.succeeded) {
            by_group.entry(span.group).or_default().push(span.seq);
        }
        by_group
    }
}

/// `groups` × `per_group` events, interleaved across groups, each group's in sequence order.
fn grouped_events(run: &str, groups: usize, per_group: u64) -> Vec<(String, String)> {
    (0..per_group)
        .flat_map(|seq| {
            (0..groups).map(move |g| {
                let group = format!("g{g}");
                let body = event_body(
                    &format!("{run}-{group}-{seq}"),
                    json!({"group": group, "seq": seq}),
                );
                (group, body)
            })
        })
        .collect()
}

fn config_for(k: &str, url: &str, extra: &str) -> conveyor::config::Config {
    test_config(&queue_toml(
        k,
        url,
        &format!("{extra}\n[[queues.{k}.routes]]\npipelines = [\"sequence\"]"),
    ))
}

fn registry(sequence: &Sequence) -> conveyor::pipeline::Registry {
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(sequence.clone()));
    registry
}

#[tokio::test]
async fn twenty_groups_of_fifty_are_each_handled_in_order_while_groups_overlap() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-fifo-order", 3).await;
    send_grouped(&sqs, &q.url, &grouped_events(&unique("ord"), 20, 50)).await;

    let sequence = Sequence {
        max_sleep_ms: 50,
        ..Sequence::default()
    };
    let k = key();
    let daemon = InProcess::start(
        config_for(&k, &q.url, "max_in_flight = 32"),
        registry(&sequence),
    )
    .await;
    eventually("1000 handled", Duration::from_secs(180), async || {
        sequence.succeeded() == 1000
    })
    .await;
    eventually("the queue empty", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    daemon.stop().await;

    let spans = sequence.spans();
    assert_eq!(spans.len(), 1000, "each handled once, none failed");
    let mut last: HashMap<&str, &Span> = HashMap::new();
    for span in &spans {
        match last.get(span.group.as_str()) {
            Some(previous) => {
                assert_eq!(span.seq, previous.seq + 1, "{} in order", span.group);
                assert!(
                    span.started >= previous.finished,
                    "{}:{} started before {} finished",
                    span.group,
                    span.seq,
                    previous.seq
                );
            }
            None => assert_eq!(span.seq, 0),
        }
        last.insert(&span.group, span);
    }
    let most = spans
        .iter()
        .map(|at| {
            spans
                .iter()
                .filter(|s| s.started <= at.started && at.started < s.finished)
                .count()
        })
        .max()
        .unwrap();
    eprintln!("max groups handled at once: {most}");
    assert!((2..=32).contains(&most), "groups overlapped: {most}");
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_transient_failure_mid_group_holds_that_group_only_and_it_resumes_in_order() {
    // Alone on LocalStack: its FIFO emulation hands a group's later messages out before the
    // retried one when their hand-back lands a second or more after the retry (reproduced by
    // adding 1 s to the hand-back's visibility); under the whole suite's load that happened
    // once in CI. Real SQS blocks the group while the retried message is in flight.
    let _ls = localstack_exclusive().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-fifo-hold", 3).await;
    send_grouped(&sqs, &q.url, &grouped_events(&unique("hold"), 4, 10)).await;

    let sequence = Sequence {
        flaky: Some(("g0", 4)),
        ..Sequence::default()
    };
    let k = key();
    let daemon = InProcess::start(config_for(&k, &q.url, ""), registry(&sequence)).await;
    eventually("40 handled", Duration::from_secs(120), async || {
        sequence.succeeded() == 40
    })
    .await;
    daemon.stop().await;

    for (group, seqs) in sequence.successes() {
        assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "{group}");
    }
    let spans = sequence.spans();
    let tries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.group == "g0" && s.seq == 4)
        .collect();
    assert_eq!(
        tries.iter().map(|s| s.receive_count).collect::<Vec<_>>(),
        [1, 2, 3],
        "failed twice, succeeded on the third receive (maxReceiveCount 3)"
    );
    let next = spans
        .iter()
        .find(|s| s.group == "g0" && s.seq == 5)
        .unwrap();
    assert!(
        next.started >= tries[2].finished,
        "g0:5 waited for g0:4 to succeed"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.group == "g0" && s.seq > 4)
            .count(),
        5,
        "the group's later messages were released unhandled while g0:4 was retried"
    );
    assert!(
        tries[1].started - tries[0].finished >= FLAKY_RETRY_AFTER,
        "came back after its backoff"
    );
    let others_done = spans
        .iter()
        .filter(|s| s.group != "g0")
        .map(|s| s.finished)
        .max()
        .unwrap();
    assert!(
        others_done < tries[1].started,
        "the other groups finished while g0 waited out its backoff"
    );
    assert!(
        metric(
            "conveyor_fifo_released_after_failure_total",
            &[&format!("queue=\"{k}\"")]
        ) >= 5.0
    );
    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_permanent_failure_lands_in_the_fifo_dlq_with_its_reason_and_group_and_the_group_goes_on()
{
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-fifo-dead", 3).await;
    send_grouped(&sqs, &q.url, &grouped_events(&unique("dead"), 2, 5)).await;

    let sequence = Sequence {
        poison: Some(("g1", 2)),
        ..Sequence::default()
    };
    let k = key();
    let daemon = InProcess::start(config_for(&k, &q.url, ""), registry(&sequence)).await;
    eventually("9 handled", Duration::from_secs(60), async || {
        sequence.succeeded() == 9
    })
    .await;
    eventually("the queue empty", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    daemon.stop().await;

    assert_eq!(sequence.successes()["g1"], [0, 1, 3, 4]);
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    let detail = &conveyor::input::eventbridge::decode(dead[0].body().unwrap())
        .unwrap()
        .detail;
    assert_eq!(detail["seq"], 2);
    assert_eq!(
        group_id(&dead[0]),
        Some("g1"),
        "the dead letter keeps its group"
    );
    assert!(
        string_attribute(&dead[0], "conveyor.error")
            .unwrap()
            .contains("poisoned on purpose")
    );
}

#[tokio::test]
async fn shutdown_mid_run_loses_nothing_and_a_restart_keeps_each_groups_order() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-fifo-term", 3).await;
    send_grouped(&sqs, &q.url, &grouped_events(&unique("term"), 5, 20)).await;

    let sequence = Sequence {
        max_sleep_ms: 100,
        ..Sequence::default()
    };
    let k = key();
    let first = InProcess::start(config_for(&k, &q.url, ""), registry(&sequence)).await;
    eventually("30 handled", Duration::from_secs(60), async || {
        sequence.succeeded() >= 30
    })
    .await;
    first.stop().await;
    let before_restart = sequence.succeeded();
    assert!(before_restart < 100, "stopped mid-run: {before_restart}");
    // Nothing lost: every message is done, or back in the queue: hidden until the receives
    // aborted at shutdown have ended on SQS's side, so that none of them takes a group — but
    // one whose answer was on its way when it was aborted holds what it took for the
    // visibility timeout (README, Shutdown), so the restart may wait that out.
    let (visible, in_flight) = queue_depth(&sqs, &q.url).await;
    assert_eq!(
        visible as usize + in_flight as usize + before_restart,
        100,
        "({visible}, {in_flight}) left after {before_restart} done"
    );
    let handed_back = Instant::now();

    let second = InProcess::start(config_for(&k, &q.url, ""), registry(&sequence)).await;
    eventually("all 100 handled", Duration::from_secs(150), async || {
        sequence.succeeded() == 100
    })
    .await;
    second.stop().await;
    eprintln!(
        "the rest handled within {:?} of the restart",
        handed_back.elapsed()
    );
    for (group, seqs) in sequence.successes() {
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "{group}");
    }

    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_fifo_queue_with_a_standard_dlq_fails_startup_naming_both() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = fifo_queue_with_dlq(&sqs, "it-fifo-kind", 3).await;
    let standard = create_queue(&sqs, &unique("it-fifo-plain-dlq")).await;
    let toml = format!(
        "[queues.orders]\nurl = \"{}\"\ndlq_url = \"{standard}\"\n[[queues.orders.routes]]\npipelines = [\"noop\"]\n",
        q.url
    );
    let (run, check) = tokio::task::spawn_blocking(move || {
        (
            Conveyor::new(&toml).output(&["run"]),
            Conveyor::new(&toml).output(&["check"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains(&q.url) && run.stderr.contains(&standard),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("FIFO DLQ"), "{}", run.stderr);
    // `conveyor check` says the same before a deploy.
    assert_eq!(check.code, Some(1), "{}", check.all());
    assert!(
        check.all().contains("is FIFO but its DLQ") && check.all().contains("FIFO DLQ"),
        "{}",
        check.all()
    );
}
