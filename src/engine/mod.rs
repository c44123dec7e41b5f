//! The SQS engine: per queue, pollers that long-poll within a bound on messages in flight, a
//! lease keeper, a batcher for deletes and visibility changes, and the shutdown sequence.
//! A message's own life — lease, decide, apply — reads top to bottom in [`message`]; on a FIFO
//! queue, [`fifo`] runs each message group's messages one after another.
//!
//! Shutdown, in order: stop receiving (a long poll in flight is aborted, so an idle daemon
//! exits at once); let in-flight work finish until the grace period ends; release what is
//! still unfinished (visibility 0, so another instance takes it now); flush pending deletes;
//! stop the lease keeper.

pub mod backoff;
mod batch;
mod dead_letter;
mod fifo;
mod lease;
pub mod memory;
mod message;
mod poll;
pub use poll::awaiting_first_receive;
pub mod queue;
mod settle;
mod split;
pub use settle::{ATTEMPTS_ATTRIBUTE, BATCH_ATTRIBUTE, BATCH_ID_ATTRIBUTE, ENGINE_ATTRIBUTES};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::Admission;
use crate::config::QueueConfig;
use crate::ops::Readiness;
use crate::shutdown::Shutdown;
use crate::sqs::QueueLookupError;
use crate::telemetry::{self};
use backoff::CallBackoff;
use batch::Batcher;
use lease::Leases;
use queue::QueueApi;

/// A received message's receipt handle, shared by its lease, its outcome and the batcher
/// without a copy each.
type Receipt = Arc<str>;

/// What a handler decided for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: delete the message.
    Success,
    /// Failed in a way that may pass: receive again after a backoff (or dead-letter once the
    /// queue's maxReceiveCount is reached).
    Retry {
        reason: String,
        pipeline: Option<String>,
        /// Come back no sooner than this, even if the backoff is shorter (another delivery
        /// holds the work until then, or a dependency asked with `Retry-After`).
        after: Option<Duration>,
        /// Failed only because a dependency is down: nothing is wrong with the message, so
        /// at the queue's maxReceiveCount it is sent back to the queue as a fresh copy
        /// instead of being dead-lettered (its queue pauses meanwhile; see `breaker`).
        outage: bool,
    },
    /// Not now: handle it again no sooner than `until`, without spending a receive. The engine
    /// sends a copy delayed by at most SQS's 15 minutes (again and again for a later `until`,
    /// without handing it to the handler in between) and deletes the original, so a message may
    /// wait hours — for a user's quiet hours, a rate limit — and never near the DLQ. On a FIFO
    /// queue, which takes no per-message delay, the message is made visible again at `until`
    /// instead (at most 12 hours), which does count a receive.
    Defer {
        until: std::time::SystemTime,
        reason: String,
    },
    /// Can never succeed: dead-letter now with the reason.
    DeadLetter {
        reason: String,
        /// Short stable label for metrics (`permanent`, `unrouted`, …).
        label: &'static str,
        pipeline: Option<String>,
    },
    /// A message of several events (a batch) whose events ended differently: the events that
    /// succeeded are done, and each part holding the others goes on as a message of its own —
    /// retried after the backoff with its receives counted (`conveyor.attempts`), requeued,
    /// deferred, or dead-lettered with its reason — then the original is deleted. Nothing
    /// that succeeded is handled again. See [`split`].
    Split(Vec<Part>),
}

/// Events of a split message that ended alike, as the body of a message of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub body: String,
    /// How many events the body holds: above 1 it is a batch (`conveyor.batch`).
    pub events: usize,
    /// What became of them: a retry, a deferral or a dead letter (never a success or a split).
    pub outcome: Outcome,
}

/// One message as SQS delivered it: all a handler gets, and all the engine knows of it.
#[derive(Debug)]
pub struct Received {
    /// The configured queue key (`main`).
    pub queue: Arc<str>,
    pub message_id: String,
    pub body: String,
    /// Message attributes with a string value (`String`, `Number`); binary ones are left out.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// `AWSTraceHeader`: the producer's X-Ray trace, when it was propagated.
    pub trace_header: Option<String>,
    /// `MessageGroupId`, on FIFO queues.
    pub group_id: Option<String>,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// How often a handler deferred this message before ([`Outcome::Defer`]); 0 at first.
    pub deferrals: u32,
    /// What the handler found out about the message, for the engine's log line about it.
    pub labels: std::sync::OnceLock<Labels>,
}

/// Ids a message's log line carries — never content.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// The producer's event id.
    pub event_id: Option<String>,
    pub tenant_id: Option<String>,
    /// What kind of event it is (an interaction type, a contract name).
    pub kind: &'static str,
}

impl Labels {
    pub const NONE: Labels = Labels {
        event_id: None,
        tenant_id: None,
        kind: "-",
    };
}

/// Decides the outcome of one message. The future is dropped if the message's lease is lost,
/// its deadline passes or shutdown's grace period ends first.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, message: Arc<Received>) -> BoxFuture<'static, Outcome>;
    /// Whether the queue may receive now: a handler whose dependencies are down pauses its
    /// queue instead of receiving messages it can only fail.
    fn admission(&self) -> Admission {
        Admission::Go
    }
}

/// What every consumer of a daemon shares.
#[derive(Clone)]
pub struct Context {
    /// SQS ([`queue::Sqs`]), or [`memory::MemoryQueues`] in the engine's own tests.
    pub api: Arc<dyn QueueApi>,
    pub shutdown: Shutdown,
    /// How long in-flight work may run after shutdown begins.
    pub grace: Duration,
    /// How long a non-polling SQS call may go unanswered before SQS counts as unresponsive.
    pub call_timeout: Duration,
    pub readiness: Readiness,
    /// Wall-clock time, for deferrals ([`Outcome::Defer`]).
    pub clock: Clock,
}

/// Wall-clock time as the engine reads it: the system's; in tests on tokio's paused clock, one
/// that moves with it.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    #[default]
    System,
    /// `wall` at tokio's `at`, moving with tokio's clock.
    Tokio {
        wall: std::time::SystemTime,
        at: Instant,
    },
}

impl Clock {
    /// A clock that moves with tokio's, starting at the system's time now.
    pub fn tokio() -> Self {
        Clock::Tokio {
            wall: std::time::SystemTime::now(),
            at: Instant::now(),
        }
    }

    pub fn now(&self) -> std::time::SystemTime {
        match self {
            Clock::System => std::time::SystemTime::now(),
            Clock::Tokio { wall, at } => *wall + at.elapsed(),
        }
    }
}

/// How a queue's tasks reach SQS and report on it.
#[derive(Clone)]
struct Endpoint {
    api: Arc<dyn QueueApi>,
    queue: Arc<str>,
    url: String,
    readiness: Readiness,
    /// The readiness component tracking this queue's SQS calls (`sqs:<queue>:calls`).
    calls_component: Arc<str>,
    call_timeout: Duration,
    metrics: telemetry::QueueMetrics,
}

impl Endpoint {
    /// Tracks one call that should answer within `answer_within` (see [`Readiness::call`]).
    fn call(&self, answer_within: Duration) -> crate::ops::CallGuard {
        self.readiness.call(&self.calls_component, answer_within)
    }
}

/// Where dead letters go (a FIFO queue's DLQ is FIFO too: checked at lookup).
pub struct DeadLetterQueue {
    pub url: String,
    /// The DLQ's MaximumMessageSize: body plus attributes must fit.
    pub max_message_bytes: usize,
}

/// One queue's shared state, held by its pollers and message tasks.
struct Queue {
    name: Arc<str>,
    url: String,
    api: Arc<dyn QueueApi>,
    endpoint: Endpoint,
    config: QueueConfig,
    dlq: Option<DeadLetterQueue>,
    /// From the queue's RedrivePolicy, else the configured fallback.
    max_receive_count: u32,
    handler: Arc<dyn Handler>,
    batcher: Batcher,
    leases: Leases,
    /// Cancelled when the grace period is over: unfinished work is released.
    abandon: CancellationToken,
    /// Receiving is paused because a dependency the handler needs is down.
    paused: std::sync::atomic::AtomicBool,
    /// A FIFO queue: messages are ordered per group, sends carry group and deduplication ids.
    fifo: bool,
    /// FIFO queues only: the lanes of the message groups being handled.
    lanes: Option<fifo::Lanes>,
    /// Cancelled when shutdown begins.
    draining: CancellationToken,
    clock: Clock,
    /// Per poller, until when its receive in flight may take messages on SQS's side (`None`
    /// when it has none): a receive aborted at shutdown goes on there for the rest of its wait.
    open_receives: Mutex<Vec<Option<Instant>>>,
}

impl Queue {
    /// The visibility a message handed back at shutdown gets. On a FIFO queue it stays hidden
    /// until the receives aborted at shutdown have ended on SQS's side: one of them taking it
    /// would hold its whole group for the visibility timeout, and count a receive of each of
    /// the group's messages it took. Otherwise 0: another consumer takes it at once.
    fn release_visibility_secs(&self) -> u32 {
        if !self.fifo || !self.draining.is_cancelled() {
            return 0;
        }
        let now = Instant::now();
        let open = self.open_receives.lock().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .flatten()
            .filter(|until| **until > now)
            .map(|until| (*until - now).as_secs_f64().ceil() as u32)
            .max()
            .unwrap_or(0)
    }

    fn receive_open(&self, poller: usize, until: Option<Instant>) {
        let mut open = self.open_receives.lock().unwrap_or_else(|e| e.into_inner());
        open[poller] = until;
    }
}

/// A running consumer of one queue.
pub struct Consumer {
    pub name: Arc<str>,
    pub queue_url: String,
    done: JoinHandle<()>,
}

impl Consumer {
    /// Resolves the queue, reads its redrive policy and starts consuming. Stops on `shutdown`,
    /// finishing or releasing in-flight work within `grace`.
    ///
    /// SQS unreachable at startup (network errors, timeouts, throttling, 5xx) is waited out
    /// with the same backoff as a failing receive, `/readyz` naming the queue meanwhile, so an
    /// SQS or network blip during a deploy is not a crash loop. Only answers no retry changes
    /// (no such queue, access denied) are errors — and shutdown while waiting.
    pub async fn start(
        name: &str,
        config: QueueConfig,
        handler: Arc<dyn Handler>,
        context: &Context,
    ) -> Result<Consumer, QueueLookupError> {
        let api = context.api.clone();
        let readiness_key = format!("sqs:{name}:startup");
        let mut backoff = CallBackoff::default();
        let (info, dlq) = loop {
            match api.lookup(name, &config).await {
                Ok(found) => break found,
                Err(e) if e.is_transient() => {
                    context.readiness.set(readiness_key.clone(), false);
                    let delay = backoff.next_delay(&mut rand::rng());
                    tracing::warn!(queue = name, error = %crate::safe::error_chain(&e), failures = backoff.failures(), retry_in_ms = delay.as_millis() as u64, "SQS unreachable at startup; retrying");
                    tokio::select! {
                        () = context.shutdown.graceful.cancelled() => return Err(QueueLookupError::Stopped),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if backoff.failures() > 0 {
            tracing::info!(queue = name, "SQS reachable");
        }
        context.readiness.set(readiness_key, true);
        if dlq.is_none() {
            tracing::error!(
                queue = name,
                url = %info.url,
                "NO DEAD-LETTER QUEUE: the queue has no RedrivePolicy and queues.{name}.dlq_url is unset; \
                 failing messages will be retried with backoff forever"
            );
        }
        let max_receive_count = info
            .redrive
            .as_ref()
            .map_or(config.max_receive_count, |r| r.max_receive_count);
        tracing::info!(
            queue = name,
            url = %info.url,
            fifo = info.fifo,
            dlq = dlq.as_ref().map_or("none", |d| d.url.as_str()),
            max_receive_count,
            pollers = config.pollers,
            max_in_flight = config.max_in_flight,
            "consuming queue"
        );

        let name: Arc<str> = Arc::from(name);
        let endpoint = Endpoint {
            api: api.clone(),
            queue: name.clone(),
            url: info.url.clone(),
            readiness: context.readiness.clone(),
            calls_component: Arc::from(format!("sqs:{name}:calls")),
            call_timeout: context.call_timeout,
            metrics: telemetry::QueueMetrics::new(&name),
        };
        let (batcher, batcher_task) = Batcher::spawn(endpoint.clone(), config.delete_flush());
        let leases = Leases::new(config.visibility_timeout(), config.lease_renew_before());
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(lease::keep(
            leases.clone(),
            endpoint.clone(),
            keeper_stop.clone(),
        ));
        let permits = Arc::new(Semaphore::new(config.max_in_flight as usize));
        let queue = Arc::new(Queue {
            name: name.clone(),
            url: info.url.clone(),
            api,
            dlq,
            max_receive_count,
            handler,
            batcher,
            leases,
            abandon: CancellationToken::new(),
            paused: std::sync::atomic::AtomicBool::new(false),
            fifo: info.fifo,
            lanes: info.fifo.then(|| fifo::Lanes::new(&name)),
            draining: context.shutdown.graceful.clone(),
            clock: context.clock,
            open_receives: Mutex::new(vec![None; config.pollers as usize]),
            endpoint,
            config,
        });

        let pollers = TaskTracker::new();
        let work = TaskTracker::new();
        for index in 0..queue.config.pollers as usize {
            pollers.spawn(poll::poll(
                index,
                queue.clone(),
                permits.clone(),
                work.clone(),
                context.shutdown.clone(),
                context.readiness.clone(),
            ));
        }
        let done = tokio::spawn(drain_on_shutdown(
            queue,
            pollers,
            work,
            context.shutdown.clone(),
            context.grace,
            batcher_task,
            keeper,
            keeper_stop,
        ));
        Ok(Consumer {
            name,
            queue_url: info.url,
            done,
        })
    }

    /// Resolves when the consumer has stopped and every outcome has been applied.
    pub async fn stopped(self) {
        if let Err(e) = self.done.await {
            tracing::error!(queue = %self.name, error = %e, "consumer task failed");
        }
    }
}

/// Waits for shutdown, then stops the queue's consumer in order (see the module comment).
#[allow(clippy::too_many_arguments)]
async fn drain_on_shutdown(
    queue: Arc<Queue>,
    pollers: TaskTracker,
    work: TaskTracker,
    shutdown: Shutdown,
    grace: Duration,
    batcher_task: JoinHandle<()>,
    keeper: JoinHandle<()>,
    keeper_stop: CancellationToken,
) {
    shutdown.graceful.cancelled().await;
    let deadline = Instant::now() + grace;
    tracing::info!(queue = %queue.name, in_flight = queue.leases.count(), grace_secs = grace.as_secs(), "stopping: no new receives, finishing in-flight work");

    // Pollers first (a receive in flight may still hand over messages), then the work; both
    // within the one grace period, so a long poll cannot outlast it.
    pollers.close();
    let finished = async {
        pollers.wait().await;
        work.close();
        work.wait().await;
    };
    tokio::select! {
        () = finished => {}
        () = tokio::time::sleep_until(deadline) => {}
        () = shutdown.immediate.cancelled() => {}
    }
    let name = queue.name.clone();
    let unfinished = !(pollers.is_empty() && work.is_empty());
    let release_and_flush = async {
        if unfinished {
            tracing::warn!(queue = %queue.name, unfinished = work.len(), "grace period over: releasing unfinished messages");
            // Stops receives still in flight, cancels DLQ and requeue sends under way, and
            // releases every unfinished message.
            queue.abandon.cancel();
            pollers.wait().await;
            work.close();
            work.wait().await;
        }
        // The last handle on the batcher goes with the queue: it sends what is pending and stops.
        drop(queue);
        let _ = batcher_task.await;
    };
    // Releasing and flushing after the grace period must not outlast the platform's stop
    // timeout either (SQS down at that moment would otherwise retry each batch for ~30 s).
    // What is cut off is not lost: unflushed deletes and releases leave their messages to
    // reappear when their visibility runs out, and nothing was deleted without its effect.
    if tokio::time::timeout(FLUSH_BOUND, release_and_flush)
        .await
        .is_err()
    {
        tracing::error!(queue = %name, bound_secs = FLUSH_BOUND.as_secs(), "releasing and flushing did not finish in time; the messages concerned reappear after their visibility timeout");
    }
    keeper_stop.cancel();
    let _ = keeper.await;
}

/// How long releasing unfinished messages and flushing pending deletes may take after the
/// grace period (or a second signal).
const FLUSH_BOUND: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
