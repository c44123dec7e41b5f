//! FIFO lanes on the in-memory queue, paused clock: order within a group, groups side by side,
//! a failure holding its group (and only its group), dead letters into a FIFO DLQ, shutdown and
//! restart, receive request attempt ids. The same behaviours are proven against LocalStack in
//! `tests/it/fifo.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue};
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{handler, retry, start, until};
use crate::config::{Jitter, QueueConfig};
use crate::engine::memory::MemoryQueues;
use crate::engine::queue::{EntryFailure, QueueApi, ReceiveError, SendError, SendIds};
use crate::engine::{Clock, Consumer, Context, DeadLetterQueue, Outcome};
use crate::ops::Readiness;
use crate::shutdown::Shutdown;
use crate::sqs::{QueueInfo, QueueLookupError};

/// A FIFO queue `<name>.fifo` with FIFO DLQ `<name>-dlq.fifo` after 3 receives (`infra up`'s
/// default), and its config with predictable backoff: 5 s, 10 s, 20 s…
fn setup(name: &str) -> (MemoryQueues, String, String, QueueConfig) {
    let queues = MemoryQueues::new();
    let dlq_name = format!("{name}-dlq.fifo");
    let dlq = queues.create(&dlq_name, None);
    let url = queues.create(&format!("{name}.fifo"), Some((&dlq_name, 3)));
    let mut config = QueueConfig {
        url: Some(url.clone()),
        ..QueueConfig::default()
    };
    config.retry.jitter = Jitter::None;
    (queues, url, dlq, config)
}

/// `groups` × `per_group` messages `"<group>:<seq>"`, sent interleaved across groups.
fn send_groups(queues: &MemoryQueues, url: &str, groups: usize, per_group: usize) {
    for seq in 0..per_group {
        for g in 0..groups {
            queues.push(url, format!("g{g}:{seq}"), Some(&format!("g{g}")));
        }
    }
}

fn parse(body: &str) -> (String, usize) {
    let (group, seq) = body.split_once(':').unwrap();
    (group.to_owned(), seq.parse().unwrap())
}

/// (body, started, finished) of each handled message, in the order they started.
type Spans = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

/// Per group, the sequence numbers of the messages that succeeded, in the order they did.
fn successes(done: &Mutex<Vec<String>>) -> HashMap<String, Vec<usize>> {
    let mut by_group: HashMap<String, Vec<usize>> = HashMap::new();
    for body in done.lock().unwrap().iter() {
        let (group, seq) = parse(body);
        by_group.entry(group).or_default().push(seq);
    }
    by_group
}

#[tokio::test(start_paused = true)]
async fn a_groups_messages_run_one_after_another_in_order_while_groups_run_side_by_side() {
    let (queues, url, dlq, mut config) = setup("order");
    config.max_in_flight = 32;
    send_groups(&queues, &url, 20, 50);
    let spans: Spans = Arc::default();
    let record = spans.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            let record = record.clone();
            Box::pin(async move {
                let started = Instant::now();
                let sleep = rand::random_range(0..=50);
                tokio::time::sleep(Duration::from_millis(sleep)).await;
                record
                    .lock()
                    .unwrap()
                    .push((m.body.clone(), started, Instant::now()));
                Outcome::Success
            })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("all 1000 done", || queues.is_empty(&url)).await;
    running.stop().await;

    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 1000, "each handled once");
    let mut last: HashMap<String, (usize, Instant)> = HashMap::new();
    for (body, started, finished) in &spans {
        let (group, seq) = parse(body);
        if let Some((previous, previous_finished)) = last.get(&group) {
            assert_eq!(seq, previous + 1, "{group} in order");
            assert!(
                started >= previous_finished,
                "{group}:{seq} started before {group}:{previous} finished"
            );
        } else {
            assert_eq!(seq, 0);
        }
        last.insert(group, (seq, *finished));
    }
    // Groups overlapped: at some instant many ran at once, never more than max_in_flight.
    let most = spans
        .iter()
        .map(|(_, at, _)| spans.iter().filter(|(_, s, f)| s <= at && at < f).count())
        .max()
        .unwrap();
    assert!((10..=32).contains(&most), "max concurrency {most}");
    assert!(queues.is_empty(&dlq));
}

#[tokio::test(start_paused = true)]
async fn a_retried_message_holds_back_its_group_only_and_the_group_resumes_in_order() {
    let (queues, url, dlq, config) = setup("hold");
    send_groups(&queues, &url, 2, 5);
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let handled: Spans = Arc::default();
    let (record, log) = (done.clone(), handled.clone());
    let running = start(
        &queues,
        config,
        handler(move |m| {
            let now = Instant::now();
            log.lock().unwrap().push((m.body.clone(), now, now));
            // g0:2 fails transiently on its first two receives.
            if m.body == "g0:2" && m.receive_count < 3 {
                return Box::pin(async { retry("downstream busy") });
            }
            record.lock().unwrap().push(m.body.clone());
            Box::pin(async { Outcome::Success })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("all done", || queues.is_empty(&url)).await;
    running.stop().await;

    let by_group = successes(&done);
    assert_eq!(by_group["g0"], [0, 1, 2, 3, 4]);
    assert_eq!(by_group["g1"], [0, 1, 2, 3, 4]);
    let handled = handled.lock().unwrap().clone();
    let first = |body: &str| handled.iter().find(|(b, _, _)| b == body).unwrap().1;
    let attempts: Vec<_> = handled.iter().filter(|(b, _, _)| b == "g0:2").collect();
    assert_eq!(attempts.len(), 3, "failed twice, then succeeded");
    let g0_2_succeeded = attempts[2].1;
    // Backoff without jitter: 5 s, then 10 s.
    assert!(g0_2_succeeded - attempts[0].1 >= Duration::from_secs(15));
    assert!(
        first("g0:3") >= g0_2_succeeded,
        "g0:3 waited for g0:2 to succeed"
    );
    assert_eq!(
        handled.iter().filter(|(b, _, _)| b == "g0:3").count(),
        1,
        "released unhandled while g0:2 was retried"
    );
    assert!(
        first("g1:4") < attempts[1].1,
        "group g1 was not held up by g0's retries"
    );
    assert!(queues.is_empty(&dlq));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_goes_to_the_fifo_dlq_with_its_group_and_the_group_goes_on() {
    let (queues, url, dlq, config) = setup("dead");
    send_groups(&queues, &url, 1, 4);
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = done.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            if m.body == "g0:1" {
                return Box::pin(async {
                    Outcome::DeadLetter {
                        reason: "invalid event: detail.x: missing".into(),
                        label: "invalid",
                        pipeline: None,
                    }
                });
            }
            record.lock().unwrap().push(m.body.clone());
            Box::pin(async { Outcome::Success })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("all done", || queues.is_empty(&url)).await;
    running.stop().await;
    assert_eq!(successes(&done)["g0"], [0, 2, 3]);
    let dead = queues.messages(&dlq);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "g0:1");
    assert_eq!(dead[0].group.as_deref(), Some("g0"));
    assert_eq!(
        dead[0].attributes["conveyor.error"],
        "invalid event: detail.x: missing"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_each_groups_current_message_releases_the_rest_and_a_restart_keeps_order()
{
    let (queues, url, dlq, config) = setup("restart");
    send_groups(&queues, &url, 4, 10);
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let slow = |done: Arc<Mutex<Vec<String>>>| {
        handler(move |m| {
            let done = done.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                done.lock().unwrap().push(m.body.clone());
                Outcome::Success
            })
        })
    };
    let first = start(
        &queues,
        config.clone(),
        slow(done.clone()),
        Duration::from_secs(25),
    )
    .await;
    until("some done", || done.lock().unwrap().len() >= 8).await;
    let stopping = Instant::now();
    first.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "each lane finished its current message only: {:?}",
        stopping.elapsed()
    );
    let left = queues.messages(&url);
    assert_eq!(left.len() + done.lock().unwrap().len(), 40, "nothing lost");
    // Handed back hidden until the receives aborted at shutdown are over on SQS's side (their
    // 20 s wait), so none of them can take a group.
    assert!(left.iter().any(|m| m.in_flight), "{left:?}");
    tokio::time::advance(Duration::from_secs(22)).await;
    assert!(
        queues.messages(&url).iter().all(|m| !m.in_flight),
        "{left:?}"
    );

    let second = start(&queues, config, slow(done.clone()), Duration::from_secs(25)).await;
    until("all done", || queues.is_empty(&url)).await;
    second.stop().await;
    let by_group = successes(&done);
    for g in 0..4 {
        assert_eq!(by_group[&format!("g{g}")], (0..10).collect::<Vec<_>>());
    }
    assert!(queues.is_empty(&dlq));
}

#[tokio::test(start_paused = true)]
async fn a_fifo_queue_with_a_standard_dlq_does_not_start_and_the_error_names_both() {
    let queues = MemoryQueues::new();
    let standard = queues.create("plain-dlq", None);
    let fifo = queues.create("orders.fifo", None);
    let context = Context {
        api: Arc::new(queues.clone()),
        shutdown: Shutdown::new(),
        grace: Duration::from_secs(1),
        call_timeout: Duration::from_secs(10),
        readiness: Readiness::default(),
        clock: Clock::tokio(),
    };
    let config = QueueConfig {
        url: Some(fifo.clone()),
        dlq_url: Some(standard.clone()),
        ..QueueConfig::default()
    };
    let never = handler(|_| Box::pin(async { Outcome::Success }));
    let Err(error) = Consumer::start("orders", config, never, &context).await else {
        panic!("started")
    };
    let text = error.to_string();
    assert!(
        text.contains(&fifo) && text.contains(&standard) && text.contains("FIFO"),
        "{text}"
    );
    assert!(error.fix().contains("FIFO DLQ"), "{}", error.fix());
}

/// The in-memory queues, with one receive failing first: either its answer is lost after it
/// took messages (a network error), or it is throttled before taking any. Records the attempt
/// id of every receive.
struct FailingOnce {
    inner: MemoryQueues,
    lose_answer: bool,
    failed: AtomicBool,
    attempts: Mutex<Vec<Option<String>>>,
}

impl QueueApi for FailingOnce {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        config: &'a QueueConfig,
    ) -> BoxFuture<'a, Result<(QueueInfo, Option<DeadLetterQueue>), QueueLookupError>> {
        self.inner.lookup(name, config)
    }

    fn receive<'a>(
        &'a self,
        url: &'a str,
        max: usize,
        wait_secs: u32,
        visibility_secs: u32,
        attempt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Message>, ReceiveError>> {
        Box::pin(async move {
            self.attempts
                .lock()
                .unwrap()
                .push(attempt.map(str::to_owned));
            if self.failed.swap(true, Ordering::SeqCst) {
                return self
                    .inner
                    .receive(url, max, wait_secs, visibility_secs, attempt)
                    .await;
            }
            if self.lose_answer {
                // Wait for the messages, take them, lose the answer.
                let taken = self
                    .inner
                    .receive(url, max, wait_secs, visibility_secs, attempt)
                    .await?;
                assert!(!taken.is_empty());
                return Err(ReceiveError {
                    message: "connection reset".into(),
                    retry_same_attempt: true,
                });
            }
            Err(ReceiveError {
                message: "RequestThrottled".into(),
                retry_same_attempt: false,
            })
        })
    }

    fn delete_batch<'a>(
        &'a self,
        url: &'a str,
        receipts: Vec<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        self.inner.delete_batch(url, receipts)
    }

    fn change_visibility_batch<'a>(
        &'a self,
        url: &'a str,
        entries: Vec<(&'a str, u32)>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        self.inner.change_visibility_batch(url, entries)
    }

    fn send<'a>(
        &'a self,
        url: &'a str,
        body: &'a str,
        attributes: HashMap<String, MessageAttributeValue>,
        trace_header: Option<&'a str>,
        delay_secs: u32,
        ids: SendIds<'a>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        self.inner
            .send(url, body, attributes, trace_header, delay_secs, ids)
    }
}

async fn receive_through(lose_answer: bool) -> (Vec<Option<String>>, Duration) {
    let (queues, url, _, mut config) = setup(if lose_answer { "lost" } else { "throttled" });
    config.pollers = 1;
    send_groups(&queues, &url, 3, 2);
    let api = Arc::new(FailingOnce {
        inner: queues.clone(),
        lose_answer,
        failed: AtomicBool::new(false),
        attempts: Mutex::default(),
    });
    let shutdown = Shutdown::new();
    let context = Context {
        api: api.clone(),
        shutdown: shutdown.clone(),
        grace: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        readiness: Readiness::default(),
        clock: Clock::tokio(),
    };
    let handled = Arc::new(AtomicU32::new(0));
    let count = handled.clone();
    let begun = Instant::now();
    let consumer = Consumer::start(
        "attempts",
        config,
        handler(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Outcome::Success })
        }),
        &context,
    )
    .await
    .unwrap();
    until("all done", || queues.is_empty(&url)).await;
    let took = begun.elapsed();
    shutdown.begin();
    consumer.stopped().await;
    assert_eq!(handled.load(Ordering::SeqCst), 6);
    let attempts = api.attempts.lock().unwrap().clone();
    (attempts, took)
}

#[tokio::test(start_paused = true)]
async fn a_receive_whose_answer_was_lost_is_retried_with_its_attempt_id_and_gets_its_messages_back()
{
    let (attempts, took) = receive_through(true).await;
    assert!(attempts[0].is_some(), "FIFO receives carry an attempt id");
    assert_eq!(attempts[0], attempts[1], "the retry reused it");
    assert_ne!(attempts[1], attempts[2], "the next receive has its own");
    // Without the same id the taken messages would stay hidden for the visibility timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_receive_is_retried_with_a_new_attempt_id() {
    let (attempts, _) = receive_through(false).await;
    assert!(attempts[0].is_some() && attempts[1].is_some());
    assert_ne!(attempts[0], attempts[1]);
}

#[tokio::test(start_paused = true)]
async fn a_deferral_on_a_fifo_queue_hides_the_message_and_holds_its_group() {
    let (queues, url, _, config) = setup("later");
    send_groups(&queues, &url, 1, 2);
    let clock = Clock::tokio();
    let handled: Spans = Arc::default();
    let log = handled.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            let now = Instant::now();
            log.lock().unwrap().push((m.body.clone(), now, now));
            let outcome = if m.body == "g0:0" && m.receive_count == 1 {
                Outcome::Defer {
                    until: clock.now() + Duration::from_secs(30),
                    reason: "not yet".into(),
                }
            } else {
                Outcome::Success
            };
            Box::pin(async move { outcome })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("both done", || queues.is_empty(&url)).await;
    running.stop().await;
    let handled = handled.lock().unwrap().clone();
    let bodies: Vec<&str> = handled.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["g0:0", "g0:0", "g0:1"],
        "the group waited behind it"
    );
    let waited = handled[1].1 - handled[0].1;
    assert!(waited >= Duration::from_secs(30), "{waited:?}");
}
