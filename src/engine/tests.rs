//! The engine's behaviour on the in-memory queue with tokio's paused clock: minutes of
//! backoff, leases and grace periods in milliseconds of real time. The same behaviours are
//! proven against LocalStack in `tests/it/engine.rs`.

mod fifo;
mod split;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::memory::MemoryQueues;
use super::{Clock, Consumer, Context, Handler, Outcome, Received};
use crate::config::{Jitter, QueueConfig};
use crate::ops::Readiness;
use crate::shutdown::Shutdown;

/// A handler made of a closure.
struct Handle<F>(F);

impl<F> Handler for Handle<F>
where
    F: Fn(Arc<Received>) -> BoxFuture<'static, Outcome> + Send + Sync + 'static,
{
    fn handle(self: Arc<Self>, message: Arc<Received>) -> BoxFuture<'static, Outcome> {
        (self.0)(message)
    }
}

pub(super) fn handler(
    f: impl Fn(Arc<Received>) -> BoxFuture<'static, Outcome> + Send + Sync + 'static,
) -> Arc<dyn Handler> {
    Arc::new(Handle(f))
}

pub(super) fn retry(reason: &str) -> Outcome {
    Outcome::Retry {
        reason: reason.into(),
        pipeline: None,
        after: None,
        outage: false,
    }
}

/// A queue `q` with DLQ `q-dlq` after 3 receives (`infra up`'s default), and its config with
/// predictable backoff: 5 s, 10 s, 20 s…
pub(super) fn setup(name: &str) -> (MemoryQueues, String, String, QueueConfig) {
    let queues = MemoryQueues::new();
    let dlq = queues.create(&format!("{name}-dlq"), None);
    let url = queues.create(name, Some((&format!("{name}-dlq"), 3)));
    let mut config = QueueConfig {
        url: Some(url.clone()),
        ..QueueConfig::default()
    };
    config.retry.jitter = Jitter::None;
    (queues, url, dlq, config)
}

pub(super) struct Running {
    consumer: Consumer,
    shutdown: Shutdown,
}

pub(super) async fn start(
    queues: &MemoryQueues,
    config: QueueConfig,
    handler: Arc<dyn Handler>,
    grace: Duration,
) -> Running {
    let shutdown = Shutdown::new();
    let context = Context {
        api: Arc::new(queues.clone()),
        shutdown: shutdown.clone(),
        grace,
        call_timeout: Duration::from_secs(10),
        readiness: Readiness::default(),
        clock: Clock::tokio(),
    };
    let consumer = Consumer::start("test", config, handler, &context)
        .await
        .unwrap();
    Running { consumer, shutdown }
}

impl Running {
    async fn stop(self) {
        self.shutdown.begin();
        self.consumer.stopped().await;
    }
}

/// Waits (in paused time) until `check` holds.
pub(super) async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn successes_are_deleted_and_the_handler_sees_the_message_as_sent() {
    let (queues, url, _, config) = setup("ok");
    queues.push_many(&url, (0..25).map(|i| format!("body-{i}")));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            record
                .lock()
                .unwrap()
                .push((m.body.clone(), m.receive_count));
            Box::pin(async { Outcome::Success })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("all deleted", || queues.is_empty(&url)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 25);
    assert!(
        seen.iter()
            .all(|(body, count)| body.starts_with("body-") && *count == 1)
    );
    running.stop().await;
}

/// Slots free one message at a time (each handler takes its own time); a poller waits a moment
/// for a whole batch's worth instead of asking SQS for one or two messages per call. Messages of
/// one receive start at one instant of the paused clock, so the instants count the receives.
#[tokio::test(start_paused = true)]
async fn a_full_queue_is_received_in_whole_batches_as_slots_free_one_by_one() {
    let (queues, url, _, mut config) = setup("batches");
    config.pollers = 1;
    config.max_in_flight = 10;
    // Each delete sent on its own, so each slot frees at its own instant.
    config.delete_flush_millis = 1;
    queues.push_many(&url, (0..200).map(|i| format!("{i}")));
    let started = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let record = started.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            record.lock().unwrap().insert(Instant::now());
            let ms = 1 + m.body.parse::<u64>().unwrap() % 7;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Outcome::Success
            })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("all deleted", || queues.is_empty(&url)).await;
    let receives = started.lock().unwrap().len();
    // 20 receives of 10 would do; taking the slots as each came free, it took 77.
    assert!(receives <= 30, "{receives} receives for 200 messages");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_comes_back_after_its_backoff_and_exhausted_retries_are_dead_lettered_with_the_reason()
 {
    let (queues, url, dlq, config) = setup("retry");
    queues.push(&url, "flaky", None);
    let started = Instant::now();
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = times.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            record
                .lock()
                .unwrap()
                .push((m.receive_count, started.elapsed()));
            Box::pin(async { retry("downstream said no") })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("dead-lettered and deleted", || {
        queues.len(&dlq) == 1 && queues.is_empty(&url)
    })
    .await;
    let times = times.lock().unwrap().clone();
    let counts: Vec<u32> = times.iter().map(|(c, _)| *c).collect();
    assert_eq!(counts, [1, 2, 3]);
    // Backoff without jitter: 5 s after the first receive, 10 s after the second.
    let gap = |i: usize| (times[i + 1].1 - times[i].1).as_secs_f64();
    assert!((gap(0) - 5.0).abs() < 0.5, "{times:?}");
    assert!((gap(1) - 10.0).abs() < 0.5, "{times:?}");
    let dead = &queues.messages(&dlq)[0];
    assert_eq!(dead.body, "flaky");
    assert!(
        dead.attributes["conveyor.error"].starts_with(
            "retries exhausted after 3 receives (maxReceiveCount 3): downstream said no"
        ),
        "{:?}",
        dead.attributes
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn work_longer_than_the_visibility_timeout_keeps_its_lease() {
    let (queues, url, _, config) = setup("lease");
    queues.push(&url, "slow", None);
    let calls = Arc::new(AtomicU32::new(0));
    let count = calls.clone();
    let running = start(
        &queues,
        config, // 60 s visibility, extended when 20 s remain
        handler(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(300)).await;
                Outcome::Success
            })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("done", || queues.is_empty(&url)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "never redelivered while it ran five visibility timeouts long"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_what_fits_in_the_grace_period_and_releases_the_rest() {
    let (queues, url, _, config) = setup("drain");
    queues.push(&url, "quick", None);
    queues.push(&url, "endless", None);
    let running = start(
        &queues,
        config,
        handler(|m| {
            let secs = if m.body == "quick" { 5 } else { 3600 };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Outcome::Success
            })
        }),
        Duration::from_secs(25),
    )
    .await;
    until("both in flight", || {
        queues.messages(&url).iter().all(|m| m.in_flight)
    })
    .await;
    let stopping = Instant::now();
    running.stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(31),
        "the grace period, then release and flush: {took:?}"
    );
    let left = queues.messages(&url);
    assert_eq!(left.len(), 1, "the quick one was finished and deleted");
    assert_eq!(left[0].body, "endless");
    assert!(!left[0].in_flight, "released: visible again at once");
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_dead_lettered_at_once_and_outages_are_requeued_not_dead_lettered() {
    let (queues, url, dlq, config) = setup("fates");
    queues.push(&url, "poison", None);
    queues.push(&url, "outage", None);
    let running = start(
        &queues,
        config,
        handler(|m| {
            Box::pin(async move {
                match m.body.as_str() {
                    "poison" => Outcome::DeadLetter {
                        reason: "invalid event: detail.x: missing".into(),
                        label: "invalid",
                        pipeline: None,
                    },
                    _ => Outcome::Retry {
                        reason: "graph down".into(),
                        pipeline: None,
                        after: None,
                        outage: true,
                    },
                }
            })
        }),
        Duration::from_secs(25),
    )
    .await;
    until(
        "the outage message requeued and its original deleted",
        || {
            let left = queues.messages(&url);
            left.len() == 1 && left[0].attributes.contains_key("conveyor.requeues")
        },
    )
    .await;
    let dead = queues.messages(&dlq);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].receive_count, 0);
    assert_eq!(
        dead[0].attributes["conveyor.error"],
        "invalid event: detail.x: missing"
    );
    let requeued = queues.messages(&url);
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].body, "outage");
    assert_eq!(requeued[0].attributes["conveyor.requeues"], "1");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deferred_message_comes_back_at_its_time_unhandled_in_between_and_without_spending_receives()
 {
    let (queues, url, dlq, config) = setup("defer");
    queues.push(&url, "later", None);
    let clock = Clock::tokio();
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = calls.clone();
    let running = start(
        &queues,
        config,
        handler(move |m| {
            record
                .lock()
                .unwrap()
                .push((m.receive_count, m.deferrals, Instant::now()));
            let outcome = if m.deferrals == 0 {
                // An hour: four times SQS's longest delay.
                Outcome::Defer {
                    until: clock.now() + Duration::from_secs(3600),
                    reason: "quiet hours".into(),
                }
            } else {
                Outcome::Success
            };
            Box::pin(async move { outcome })
        }),
        Duration::from_secs(25),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3000)).await;
    assert_eq!(calls.lock().unwrap().len(), 1, "not before its time");
    until("handled after its deferral", || queues.is_empty(&url)).await;
    running.stop().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "the copies in between were not handed over");
    let waited = calls[1].2 - calls[0].2;
    assert!(
        waited >= Duration::from_secs(3600) && waited < Duration::from_secs(3602),
        "{waited:?}"
    );
    assert_eq!(
        (calls[1].0, calls[1].1),
        (1, 1),
        "a fresh copy (receive count 1), deferred once by the handler"
    );
    assert!(queues.is_empty(&dlq));
}
