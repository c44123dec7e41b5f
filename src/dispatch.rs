//! A queue's handler: resolve a claim check, decode the body in the queue's input format,
//! route each event by `source`, `detail_type` and attributes, validate it against the route's
//! contract, run the route's pipelines concurrently — each in its own task, with its own
//! timeout, so an error, a panic or a hang in one never stops the others — and fold their
//! results into the message's outcome.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::breaker::{Admission, Breakers};
use crate::claim_check::{ClaimCheck, FetchError, Pointer};
use crate::config::{Ack, Config, QueueConfig, Unrouted};
use crate::contract::{Contract, Validated};
use crate::engine::{Handler, Labels, Outcome, Received};
use crate::fault::Dependency;
use crate::input::{self, Decoded, Event, Format};
use crate::ledger::{Claim, Ledger};
use crate::pipeline::{Delivery, Pipeline, PipelineError, Registry};
use crate::telemetry::{self, otel};

/// `*` (anything), `prefix*`, or an exact value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::Exact(exact) => value == exact,
        }
    }
}

/// Pipelines run together, each with its timeout and its metrics. Shared by every delivery
/// of the route.
type Stage = Arc<[Step]>;

struct Step {
    pipeline: Arc<dyn Pipeline>,
    timeout: Duration,
    metrics: Arc<telemetry::PipelineMetrics>,
}

struct Route {
    source: Pattern,
    detail_type: Pattern,
    attributes: Vec<(String, Pattern)>,
    contract: Contract,
    pipelines: Stage,
    /// Run once every pipeline of `pipelines` succeeded.
    after: Stage,
    ack: Ack,
}

/// The handler of one queue: its routes, what to do with unrouted events, and the ledger that
/// makes each pipeline's effect happen once per interaction key.
pub struct Dispatcher {
    queue: String,
    format: Format,
    /// Resolves bodies offloaded to S3; without it a pointer is retried, then dead-lettered.
    claim_check: Option<ClaimCheck>,
    /// The buckets pointers may name (`queues.<key>.claim_check_buckets`).
    claim_check_buckets: Vec<String>,
    routes: Vec<Route>,
    on_unrouted: Unrouted,
    ledger: Ledger,
    breakers: Breakers,
    /// Every dependency of every pipeline the routes name: while one is down, the queue
    /// pauses (a queue mixing routes pauses for any of them — give routes that must not wait
    /// for each other queues of their own).
    needs: Vec<Dependency>,
}

/// A claim outlives its pipeline's timeout by this much, covering the ledger write after it.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// How often a delivery waiting for another delivery's claim asks again.
const BUSY_POLL: Duration = Duration::from_millis(500);

/// One pipeline's result for one delivery.
#[derive(Debug)]
struct PipelineResult {
    pipeline: &'static str,
    result: Result<Ran, Failure>,
}

/// How a pipeline that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// It ran and succeeded.
    Succeeded,
    /// The ledger says it already succeeded for this key.
    Skipped,
}

/// How a pipeline failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Pipeline(PipelineError),
    /// Another delivery of the same key holds the pipeline; it will be done within this.
    Busy(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Pipeline(e) => e.fmt(f),
            Failure::Busy(_) => f.write_str("running for this key in another delivery"),
        }
    }
}

impl Dispatcher {
    /// Builds the queue's routes from config. A route naming a pipeline the registry does not
    /// have is an error naming the route.
    pub fn new(
        queue: &str,
        queue_config: &QueueConfig,
        config: &Config,
        registry: &Registry,
        ledger: Ledger,
        breakers: Breakers,
        claim_check: Option<ClaimCheck>,
    ) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (i, route) in queue_config.routes.iter().enumerate() {
            let stage = |field: &str, names: &[String]| {
                names
                    .iter()
                    .map(|name| {
                        let pipeline = registry.get(name).ok_or_else(|| {
                            format!(
                                "queues.{queue}.routes[{i}].{field}: unknown pipeline {name:?}; known: {}",
                                registry.names().join(", ")
                            )
                        })?;
                        Ok(Step {
                            pipeline: pipeline.clone(),
                            timeout: crate::pipeline::catalog::timeout(config, name),
                            metrics: Arc::new(telemetry::PipelineMetrics::new(pipeline.name())),
                        })
                    })
                    .collect::<Result<Vec<Step>, String>>()
                    .map(Stage::from)
            };
            routes.push(Route {
                source: Pattern::parse(&route.source),
                detail_type: Pattern::parse(&route.detail_type),
                attributes: route
                    .attributes
                    .iter()
                    .map(|(name, pattern)| (name.clone(), Pattern::parse(pattern)))
                    .collect(),
                contract: route.contract,
                pipelines: stage("pipelines", &route.pipelines)?,
                after: stage("after", &route.after)?,
                ack: route.ack,
            });
        }
        let mut needs: Vec<Dependency> = routes
            .iter()
            .flat_map(|r| r.pipelines.iter().chain(r.after.iter()))
            .flat_map(|step| step.pipeline.dependencies().iter().copied())
            .collect();
        needs.sort();
        needs.dedup();
        Ok(Self {
            queue: queue.to_owned(),
            format: queue_config.format,
            claim_check,
            claim_check_buckets: queue_config.claim_check_buckets.clone(),
            routes,
            on_unrouted: queue_config.on_unrouted,
            ledger,
            breakers,
            needs,
        })
    }

    fn route(&self, event: &Event) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.source.matches(&event.source)
                && r.detail_type.matches(&event.detail_type)
                && r.attributes.iter().all(|(name, pattern)| {
                    event
                        .attributes
                        .get(name)
                        .is_some_and(|v| pattern.matches(v))
                })
        })
    }

    /// The message's body, fetched from S3 when it is a claim check.
    async fn body<'a>(&self, message: &'a Received) -> Result<std::borrow::Cow<'a, str>, Outcome> {
        let Some(pointer) = Pointer::in_body(&message.body) else {
            return Ok(std::borrow::Cow::Borrowed(&message.body));
        };
        let pointer = pointer.map_err(poison)?;
        if !self.claim_check_buckets.contains(&pointer.bucket) {
            return Err(Outcome::DeadLetter {
                reason: format!(
                    "claim check {pointer}: bucket {} is not in queues.{}.claim_check_buckets; \
                     add it there if this queue's producers offload to it (and s3:GetObject on \
                     it to the task role: `conveyor policy` prints it)",
                    crate::safe::token(&pointer.bucket),
                    self.queue
                ),
                label: "claim_check_refused",
                pipeline: None,
            });
        }
        let retry = |reason: String, outage: bool| Outcome::Retry {
            reason,
            pipeline: None,
            after: None,
            outage,
        };
        let Some(claim_check) = &self.claim_check else {
            return Err(retry(
                format!(
                    "claim check {pointer}: this queue cannot fetch offloaded bodies (no S3 client)"
                ),
                false,
            ));
        };
        match claim_check.fetch(&pointer).await {
            Ok(Ok(body)) => Ok(std::borrow::Cow::Owned(body)),
            Ok(Err(not_text)) => Err(poison(not_text)),
            // Missing: written after its pointer, or deleted; retried up to the queue's
            // maxReceiveCount, then dead-lettered naming the object.
            Err(e @ (FetchError::Missing(_) | FetchError::Failed(..))) => {
                Err(retry(e.to_string(), false))
            }
            // S3 down: sent back as a fresh copy at maxReceiveCount, never dead-lettered.
            Err(e @ FetchError::Unavailable(..)) => Err(retry(e.to_string(), true)),
        }
    }

    /// Routes, validates and runs one event.
    async fn event(&self, message: &Received, event: Event) -> (Outcome, Labels) {
        let mut labels = Labels {
            event_id: event.id.clone(),
            tenant_id: None,
            kind: "-",
        };
        let Some(route) = self.route(&event) else {
            return (self.unrouted(message, &event), labels);
        };
        let contract = route.contract.for_event(&event);
        labels.kind = contract.as_str();
        let validated = match route.contract.validate(&event) {
            Ok(validated) => validated,
            Err(e) => {
                let outcome = Outcome::DeadLetter {
                    reason: format!("invalid event: {e}"),
                    label: "invalid",
                    pipeline: None,
                };
                return (outcome, labels);
            }
        };
        match &validated {
            Validated::Interaction(i) => {
                // The producer's context, when SQS did not carry it (see `otel::process`).
                if let (None, Some(trace_id), true) =
                    (&message.trace_header, &i.trace_id, otel::enabled())
                {
                    otel::link_envelope(trace_id);
                }
                labels.tenant_id = Some(i.tenant_id.to_string());
                labels.kind = i.interaction_type.as_str();
            }
            Validated::Notification(n) => {
                labels.tenant_id = Some(n.tenant_id.to_string());
                labels.event_id = Some(n.event_id.clone());
            }
            Validated::Ranked(r) => {
                labels.tenant_id = Some(r.tenant_id.to_string());
                labels.event_id = Some(r.event_id.clone());
            }
            Validated::Untyped => {}
        }
        let (pipelines, after, ack) = (route.pipelines.clone(), route.after.clone(), route.ack);
        let delivery = Arc::new(Delivery::new(
            message.queue.clone(),
            message.message_id.clone(),
            message.receive_count,
            event,
            contract,
            validated,
        ));
        let mut results = run_stage(pipelines, &delivery, &self.ledger).await;
        // `after` pipelines (an announcement) run only once the work they report is done.
        if !after.is_empty() && results.iter().all(|r| r.result.is_ok()) {
            results.extend(run_stage(after, &delivery, &self.ledger).await);
        }
        (fold(&results, ack), labels)
    }
}

/// A body that can never be decoded: dead-lettered now, with the reason.
fn poison(e: input::PoisonError) -> Outcome {
    Outcome::DeadLetter {
        reason: format!("poison message: {e}"),
        label: e.label(),
        pipeline: None,
    }
}

/// One outcome for a message that carried several events (an S3 notification's records): any
/// retry retries the message (events already done are skipped by the ledger next time), else
/// any dead letter dead-letters it, else any deferral defers it (until the latest), else it
/// succeeded.
fn combine(outcomes: Vec<Outcome>) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Success => 0,
        Outcome::Defer { .. } => 1,
        Outcome::DeadLetter { .. } => 2,
        Outcome::Retry { .. } => 3,
    };
    let mut combined = Outcome::Success;
    for outcome in outcomes {
        combined = match (&combined, &outcome) {
            (Outcome::Defer { until: a, .. }, Outcome::Defer { until: b, .. }) if b > a => outcome,
            _ if rank(&outcome) > rank(&combined) => outcome,
            _ => combined,
        };
    }
    combined
}

impl Handler for Dispatcher {
    fn admission(&self) -> Admission {
        self.breakers.admission(&self.needs)
    }

    fn handle(self: Arc<Self>, message: Arc<Received>) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let body = match self.body(&message).await {
                Ok(body) => body,
                Err(outcome) => return outcome,
            };
            let events = match input::decode(self.format, &body, &message.attributes) {
                Ok(Decoded::Events(events)) => events,
                Ok(Decoded::Nothing(what)) => {
                    let _ = message.labels.set(Labels {
                        kind: what,
                        ..Labels::NONE
                    });
                    tracing::info!(queue = %self.queue, message_id = %message.message_id, kind = what, "message carries no event: deleted");
                    return Outcome::Success;
                }
                Err(e) => return poison(e),
            };
            drop(body);
            if let [_] = events.as_slice() {
                let event = events.into_iter().next().expect("one event");
                let (outcome, labels) = self.event(&message, event).await;
                let _ = message.labels.set(labels);
                return outcome;
            }
            let runs = events.into_iter().map(|event| self.event(&message, event));
            let (outcomes, labels): (Vec<Outcome>, Vec<Labels>) =
                futures::future::join_all(runs).await.into_iter().unzip();
            if let Some(first) = labels.into_iter().next() {
                let _ = message.labels.set(first);
            }
            combine(outcomes)
        })
    }
}

/// Runs a stage's pipelines concurrently: one task each, so a slow or failing one never holds
/// up another. Dropping the future (lease lost, grace over) drops the JoinSet, which aborts
/// them all: no pipeline outlives its message.
async fn run_stage(stage: Stage, delivery: &Arc<Delivery>, ledger: &Ledger) -> Vec<PipelineResult> {
    let mut tasks = JoinSet::new();
    let mut steps = HashMap::with_capacity(stage.len());
    for (i, step) in stage.iter().enumerate() {
        let task = tasks.spawn(
            run_once(
                step.pipeline.clone(),
                step.timeout,
                delivery.clone(),
                ledger.clone(),
            )
            .instrument(otel::pipeline(step.pipeline.name())),
        );
        steps.insert(task.id(), (i, Instant::now()));
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            // run_once catches its pipeline's panic; this is one in conveyor's own code.
            Err(e) if e.is_panic() => (
                e.id(),
                Err(Failure::Pipeline(PipelineError::Retryable(
                    "panicked".into(),
                ))),
            ),
            // Cancelled: only when this future is dropped, and then nobody is listening.
            Err(e) => (
                e.id(),
                Err(Failure::Pipeline(PipelineError::Retryable(
                    "cancelled".into(),
                ))),
            ),
        };
        let (i, started) = steps[&id];
        let step = &stage[i];
        let name = step.pipeline.name();
        record(delivery, step, &result, started);
        results.push(PipelineResult {
            pipeline: name,
            result,
        });
    }
    results
}

/// Runs `pipeline` for the delivery unless the ledger says it already succeeded for its key
/// or another delivery is running it. If the ledger itself is unreachable the pipeline runs
/// anyway: its writes are idempotent, so the cost is a possible repeat, never a loss.
async fn run_once(
    pipeline: Arc<dyn Pipeline>,
    timeout: Duration,
    delivery: Arc<Delivery>,
    ledger: Ledger,
) -> Result<Ran, Failure> {
    let name = pipeline.name();
    let hold = timeout + CLAIM_MARGIN;
    // Another delivery of this key running the pipeline is waited for here, with the message
    // still leased: sending it back instead would spend one of its receives, and at the
    // queue's maxReceiveCount would dead-letter a duplicate that has nothing wrong with it.
    // The wait is bounded by one claim's lifetime; past that, give up and retry later.
    let waiting_since = Instant::now();
    let claim = loop {
        if !pipeline.deduplicated() {
            break None;
        }
        match ledger
            .claim(&delivery.tenant, &delivery.key, name, hold)
            .await
        {
            Ok(Claim::AlreadySucceeded) => return Ok(Ran::Skipped),
            Ok(Claim::Claimed(token)) => break Some(token),
            Ok(Claim::Busy(remaining)) => {
                if waiting_since.elapsed() > hold {
                    return Err(Failure::Busy(remaining));
                }
                tokio::time::sleep(remaining.min(BUSY_POLL)).await;
            }
            Err(e) => {
                tracing::warn!(queue = %delivery.queue, message_id = %delivery.message_id, pipeline = name, error = %e, "ledger unavailable: running without deduplication");
                break None;
            }
        }
    };
    let mut guard = claim.map(|token| ClaimGuard {
        ledger: ledger.clone(),
        tenant: delivery.tenant.clone(),
        key: delivery.key.clone(),
        pipeline: name,
        token: Some(token),
    });
    // A panic is caught here, not left to unwind the task, so the claim is released now rather
    // than blocking the key until it expires. The panic hook has already logged it.
    let run = AssertUnwindSafe(pipeline.run(delivery.clone())).catch_unwind();
    let result = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(_panic)) => Err(PipelineError::Retryable("panicked".into())),
        Err(_) => Err(PipelineError::Retryable(format!(
            "timed out after {}s",
            timeout.as_secs()
        ))),
    };
    if let Some(token) = guard.as_mut().and_then(|g| g.token.take()) {
        let recorded = match &result {
            Ok(()) => {
                ledger
                    .succeeded(&delivery.tenant, &delivery.key, name, token)
                    .await
            }
            Err(e) => {
                ledger
                    .failed(&delivery.tenant, &delivery.key, name, token, &e.to_string())
                    .await
            }
        };
        if let Err(e) = recorded {
            // Not recorded: the claim expires by itself and a redelivery runs the pipeline again.
            tracing::warn!(queue = %delivery.queue, message_id = %delivery.message_id, pipeline = name, error = %e, "ledger write failed");
        }
    }
    if result.is_err() {
        otel::failed(&tracing::Span::current());
    }
    result.map(|()| Ran::Succeeded).map_err(Failure::Pipeline)
}

impl Dispatcher {
    fn unrouted(&self, message: &Received, event: &Event) -> Outcome {
        telemetry::unrouted(&self.queue);
        match self.on_unrouted {
            Unrouted::Drop => {
                tracing::info!(queue = %self.queue, message_id = %message.message_id, event_id = event.id.as_deref().unwrap_or("-"), source = %crate::safe::token(&event.source), detail_type = %crate::safe::token(&event.detail_type), "unrouted event dropped (on_unrouted = \"drop\")");
                Outcome::Success
            }
            Unrouted::DeadLetter => Outcome::DeadLetter {
                reason: format!(
                    "unrouted: no route for source {:?} and detail-type {:?}",
                    event.source, event.detail_type
                ),
                label: "unrouted",
                pipeline: None,
            },
        }
    }
}

/// Releases a claim whose run was abandoned (its task aborted because the message's lease was
/// lost or shutdown's grace period ended), so the next delivery need not wait for the claim
/// to expire. Best effort: a process killed outright leaves the claim to expire by itself.
struct ClaimGuard {
    ledger: Ledger,
    tenant: String,
    key: String,
    pipeline: &'static str,
    /// Taken when the run's result is recorded normally.
    token: Option<uuid::Uuid>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let (ledger, tenant, key, pipeline) = (
            self.ledger.clone(),
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.key),
            self.pipeline,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = ledger
                    .failed(&tenant, &key, pipeline, token, "abandoned")
                    .await;
            });
        }
    }
}

/// Logs and counts one pipeline run.
fn record(delivery: &Delivery, step: &Step, result: &Result<Ran, Failure>, started: Instant) {
    let name = step.pipeline.name();
    let outcome = match result {
        Ok(Ran::Succeeded) => "success",
        Ok(Ran::Skipped) => {
            telemetry::pipeline_skipped(name);
            tracing::debug!(queue = %delivery.queue, message_id = %delivery.message_id, key = %delivery.key, pipeline = name, "pipeline already succeeded for this key: skipped");
            return;
        }
        Err(Failure::Busy(_)) => "busy",
        Err(Failure::Pipeline(PipelineError::Retryable(_) | PipelineError::RetryAfter(..))) => {
            "retryable_error"
        }
        Err(Failure::Pipeline(PipelineError::Permanent(_))) => "permanent_error",
        Err(Failure::Pipeline(PipelineError::Unavailable(..))) => "unavailable",
        Err(Failure::Pipeline(PipelineError::Defer { .. })) => "deferred",
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    step.metrics
        .finished(outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            tracing::debug!(queue = %delivery.queue, message_id = %delivery.message_id, key = %delivery.key, pipeline = name, outcome, duration_ms, receive_count = delivery.receive_count, "pipeline finished")
        }
        Err(Failure::Pipeline(PipelineError::Defer { reason, .. })) => {
            tracing::debug!(queue = %delivery.queue, message_id = %delivery.message_id, key = %delivery.key, pipeline = name, outcome, duration_ms, receive_count = delivery.receive_count, reason = %reason, "pipeline deferred the message")
        }
        Err(e) => {
            tracing::warn!(queue = %delivery.queue, message_id = %delivery.message_id, key = %delivery.key, pipeline = name, outcome, duration_ms, receive_count = delivery.receive_count, error = %e, "pipeline failed")
        }
    }
}

/// All succeeded (or were skipped) → Success; any retryable failure → Retry; only permanent
/// failures → DeadLetter naming them; only deferrals → Defer until the latest. With
/// `ack = any`, one success is enough. When the only thing to wait for is another delivery's
/// run, come back when it will be done.
fn fold(results: &[PipelineResult], ack: Ack) -> Outcome {
    let failed: Vec<&PipelineResult> = results.iter().filter(|r| r.result.is_err()).collect();
    if failed.is_empty() || (ack == Ack::Any && failed.len() < results.len()) {
        return Outcome::Success;
    }
    let deferred_until = |r: &&PipelineResult| match &r.result {
        Err(Failure::Pipeline(PipelineError::Defer { until, .. })) => Some(*until),
        _ => None,
    };
    if failed.iter().all(|r| deferred_until(r).is_some()) {
        let until = failed.iter().filter_map(deferred_until).max();
        let reason = failed
            .iter()
            .map(|r| format!("{}: {}", r.pipeline, r.result.as_ref().unwrap_err()))
            .collect::<Vec<_>>()
            .join("; ");
        return Outcome::Defer {
            until: until.expect("every failure is a deferral"),
            reason,
        };
    }
    let names = failed
        .iter()
        .map(|r| r.pipeline)
        .collect::<Vec<_>>()
        .join(",");
    let reasons = failed
        .iter()
        .map(|r| format!("{}: {}", r.pipeline, r.result.as_ref().unwrap_err()))
        .collect::<Vec<_>>()
        .join("; ");
    let permanent = |r: &&PipelineResult| {
        matches!(
            r.result,
            Err(Failure::Pipeline(PipelineError::Permanent(_)))
        )
    };
    if failed.iter().all(permanent) {
        return Outcome::DeadLetter {
            reason: reasons,
            label: "permanent",
            pipeline: Some(names),
        };
    }
    // Come back no sooner than another delivery's run will be done, or than a dependency
    // asked (Retry-After); the engine takes the longer of this and the backoff.
    // A deferral among other failures: the message is retried, and no sooner than it asked.
    let after = failed
        .iter()
        .filter_map(|r| match &r.result {
            Err(Failure::Busy(d)) | Err(Failure::Pipeline(PipelineError::RetryAfter(_, d))) => {
                Some(*d)
            }
            Err(Failure::Pipeline(PipelineError::Defer { until, .. })) => Some(
                until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
            ),
            _ => None,
        })
        .max();
    // Only dependency outages: nothing is wrong with the message.
    let outage = failed.iter().all(|r| {
        matches!(
            r.result,
            Err(Failure::Pipeline(PipelineError::Unavailable(..)))
        )
    });
    Outcome::Retry {
        reason: reasons,
        pipeline: Some(names),
        after,
        outage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pipeline: &'static str, result: Result<Ran, Failure>) -> PipelineResult {
        PipelineResult { pipeline, result }
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("*").matches("anything"));
        assert!(Pattern::parse("EnvelopeV1.*").matches("EnvelopeV1.transcript"));
        assert!(!Pattern::parse("EnvelopeV1.*").matches("BatchProcessingCompleted"));
        assert!(Pattern::parse("BatchProcessingCompleted").matches("BatchProcessingCompleted"));
        assert!(!Pattern::parse("Batch").matches("BatchProcessingCompleted"));
    }

    #[test]
    fn a_message_of_several_events_takes_its_most_serious_outcome() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let defer = |secs| Outcome::Defer {
            until: at(secs),
            reason: "later".into(),
        };
        let dead = || Outcome::DeadLetter {
            reason: "bad".into(),
            label: "permanent",
            pipeline: None,
        };
        let retry = || Outcome::Retry {
            reason: "down".into(),
            pipeline: None,
            after: None,
            outage: false,
        };
        assert_eq!(combine(vec![]), Outcome::Success);
        assert_eq!(combine(vec![Outcome::Success, defer(5)]), defer(5));
        assert_eq!(combine(vec![defer(5), Outcome::Success]), defer(5));
        assert_eq!(combine(vec![defer(5), defer(9), defer(7)]), defer(9));
        assert_eq!(combine(vec![defer(5), dead(), Outcome::Success]), dead());
        assert_eq!(combine(vec![dead(), retry(), defer(5)]), retry());
    }

    #[test]
    fn deferrals_fold_into_a_deferral_until_the_latest_unless_something_failed() {
        let at = |secs| std::time::SystemTime::now() + Duration::from_secs(secs);
        let (soon, later) = (at(60), at(600));
        let defer = |until| {
            Err(Failure::Pipeline(PipelineError::Defer {
                until,
                reason: "rate limited".into(),
            }))
        };
        assert!(
            matches!(fold(&[r("a", defer(soon)), r("b", defer(later))], Ack::All), Outcome::Defer { until, .. } if until == later)
        );
        assert!(
            matches!(fold(&[r("a", Ok(Ran::Succeeded)), r("b", defer(soon))], Ack::All), Outcome::Defer { until, .. } if until == soon)
        );
        let retried = fold(
            &[
                r("a", defer(later)),
                r(
                    "b",
                    Err(Failure::Pipeline(PipelineError::Retryable("down".into()))),
                ),
            ],
            Ack::All,
        );
        assert!(
            matches!(retried, Outcome::Retry { after: Some(d), outage: false, .. } if d > Duration::from_secs(590)),
            "{retried:?}"
        );
    }

    #[test]
    fn outcome_folding() {
        let ok = || Ok(Ran::Succeeded);
        let retry = || Err(Failure::Pipeline(PipelineError::Retryable("down".into())));
        let perm = || Err(Failure::Pipeline(PipelineError::Permanent("bad".into())));
        let busy = |s| Err(Failure::Busy(Duration::from_secs(s)));
        assert_eq!(
            fold(&[r("a", Ok(Ran::Skipped)), r("b", ok())], Ack::All),
            Outcome::Success
        );
        assert!(
            matches!(fold(&[r("a", ok()), r("b", busy(7)), r("c", busy(9))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(9))
        );
        assert!(
            matches!(fold(&[r("a", retry()), r("b", busy(7))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7))
        );
        assert!(matches!(
            fold(&[r("a", retry()), r("b", ok())], Ack::All),
            Outcome::Retry { after: None, .. }
        ));
        let throttled = Err(Failure::Pipeline(PipelineError::RetryAfter(
            "429".into(),
            Duration::from_secs(30),
        )));
        assert!(
            matches!(fold(&[r("a", throttled), r("b", busy(7))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(30))
        );
        assert_eq!(
            fold(&[r("a", ok()), r("b", ok())], Ack::All),
            Outcome::Success
        );
        assert!(
            matches!(fold(&[r("a", ok()), r("b", retry())], Ack::All), Outcome::Retry { pipeline: Some(p), .. } if p == "b")
        );
        assert!(matches!(
            fold(&[r("a", perm()), r("b", retry())], Ack::All),
            Outcome::Retry { .. }
        ));
        assert!(
            matches!(fold(&[r("a", ok()), r("b", perm())], Ack::All), Outcome::DeadLetter { pipeline: Some(p), .. } if p == "b")
        );
        assert_eq!(
            fold(&[r("a", ok()), r("b", perm())], Ack::Any),
            Outcome::Success
        );
        assert!(matches!(
            fold(&[r("a", perm()), r("b", perm())], Ack::Any),
            Outcome::DeadLetter { .. }
        ));
        let down = |d| {
            Err(Failure::Pipeline(PipelineError::Unavailable(
                d,
                "down".into(),
            )))
        };
        assert!(matches!(
            fold(&[r("a", down(Dependency::Graph)), r("b", ok())], Ack::All),
            Outcome::Retry { outage: true, .. }
        ));
        assert!(
            matches!(
                fold(
                    &[r("a", down(Dependency::Graph)), r("b", retry())],
                    Ack::All
                ),
                Outcome::Retry { outage: false, .. }
            ),
            "a failure that is not an outage spends the retry budget as usual"
        );
        assert!(matches!(
            fold(&[r("a", down(Dependency::Graph)), r("b", perm())], Ack::All),
            Outcome::Retry { outage: false, .. }
        ));
    }
}
