//! Running one stage of a route: every pipeline of the stage at once, each under its own
//! timeout and its idempotency-ledger claim, a panic caught as that pipeline's failure; and
//! what each run reports (metrics, the pipeline span, and the circuit breakers: the engine,
//! not the pipeline, tells them — see [`feedback`]).

use super::{Stage, Step};
use crate::breaker::Breakers;
use crate::fault::Dependency;
use crate::ledger::{Claim, Ledger};
use crate::pipeline::{Delivery, Pipeline, PipelineError};
use crate::telemetry::{self, otel};
use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

/// A claim outlives its pipeline's timeout by this much, covering the ledger write after it.
pub(super) const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// How often a delivery waiting for another delivery's claim asks again.
pub(super) const BUSY_POLL: Duration = Duration::from_millis(500);

/// One pipeline's result for one delivery.
#[derive(Debug)]
pub(super) struct PipelineResult {
    pub(super) pipeline: &'static str,
    pub(super) result: Result<Ran, Failure>,
}

/// How a pipeline that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// It ran and succeeded.
    Succeeded,
    /// The ledger says it already succeeded for this key.
    Skipped,
}

/// How a pipeline failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
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

/// Runs a stage's pipelines concurrently: one task each, so a slow or failing one never holds
/// up another. Dropping the future (lease lost, grace over) drops the JoinSet, which aborts
/// them all: no pipeline outlives its message. A stage of one pipeline (the common case) runs
/// in the message's own task: there is no other pipeline for it to hold up, a panic is caught
/// the same way, and dropping the future drops it just the same.
pub(super) async fn run_stage(
    stage: Stage,
    delivery: &Arc<Delivery>,
    ledger: &Ledger,
    breakers: &Breakers,
) -> Vec<PipelineResult> {
    if let [step] = &*stage {
        let started = Instant::now();
        let run = run_once(
            step.pipeline.clone(),
            step.timeout,
            delivery.clone(),
            ledger.clone(),
        )
        .instrument(otel::pipeline(step.pipeline.name()));
        let result = AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .unwrap_or_else(|_panic| Err(panicked()));
        return vec![finished(breakers, delivery, step, result, started)];
    }
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
            Err(e) if e.is_panic() => (e.id(), Err(panicked())),
            // Cancelled: only when this future is dropped, and then nobody is listening.
            Err(e) => (
                e.id(),
                Err(Failure::Pipeline(PipelineError::Retryable(
                    "cancelled".into(),
                ))),
            ),
        };
        let (i, started) = steps[&id];
        results.push(finished(breakers, delivery, &stage[i], result, started));
    }
    results
}

/// A panic in conveyor's own code around a pipeline (`run_once` catches the pipeline's).
fn panicked() -> Failure {
    Failure::Pipeline(PipelineError::Retryable("panicked".into()))
}

/// One run's result, told to the breakers, logged and counted.
fn finished(
    breakers: &Breakers,
    delivery: &Delivery,
    step: &Step,
    result: Result<Ran, Failure>,
    started: Instant,
) -> PipelineResult {
    let result = feedback(breakers, step.pipeline.dependencies(), delivery, result);
    record(delivery, step, &result, started);
    PipelineResult {
        pipeline: step.pipeline.name(),
        result,
    }
}

/// Runs `pipeline` for the delivery unless the ledger says it already succeeded for its key
/// or another delivery is running it. If the ledger itself is unreachable the pipeline runs
/// anyway: its writes are idempotent, so the cost is a possible repeat, never a loss.
pub(super) async fn run_once(
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

/// Releases a claim whose run was abandoned (its task aborted because the message's lease was
/// lost or shutdown's grace period ended), so the next delivery need not wait for the claim
/// to expire. Best effort: a process killed outright leaves the claim to expire by itself.
pub(super) struct ClaimGuard {
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

/// Tells the circuit breakers what one run says about its dependencies, and returns its
/// result as the message should see it:
/// - a success reports a success for every dependency the pipeline declares and every one the
///   run used (a channel's provider), so a half-open breaker closes on the first one whatever
///   the pipeline (a pipeline never reports for itself);
/// - an outage counts toward its dependency's breaker; a configuration fault opens it at once;
/// - any other failure while a declared dependency's breaker is not closed (a timeout, a
///   dropped connection mid-statement) is that dependency's outage too: the message spends
///   no retries on it, and the breaker hears nothing more than it already knows.
pub(super) fn feedback(
    breakers: &Breakers,
    declared: &[Dependency],
    delivery: &Delivery,
    result: Result<Ran, Failure>,
) -> Result<Ran, Failure> {
    match result {
        Ok(Ran::Succeeded) => {
            for dependency in declared.iter().copied().chain(delivery.used_dependencies()) {
                breakers.success(dependency);
            }
            Ok(Ran::Succeeded)
        }
        Err(Failure::Pipeline(PipelineError::Unavailable(dependency, reason))) => {
            breakers.failure(dependency, &reason);
            Err(Failure::Pipeline(PipelineError::Unavailable(
                dependency, reason,
            )))
        }
        Err(Failure::Pipeline(PipelineError::Denied(dependency, reason))) => {
            breakers.denied(dependency, &reason);
            Err(Failure::Pipeline(PipelineError::Denied(dependency, reason)))
        }
        Err(Failure::Pipeline(
            error @ (PipelineError::Retryable(_) | PipelineError::RetryAfter(..)),
        )) => match breakers.first_unavailable(declared) {
            Some(dependency) => Err(Failure::Pipeline(PipelineError::Unavailable(
                dependency,
                format!("{error} (while {dependency} is unavailable)"),
            ))),
            None => Err(Failure::Pipeline(error)),
        },
        other => other,
    }
}

/// Logs and counts one pipeline run.
pub(super) fn record(
    delivery: &Delivery,
    step: &Step,
    result: &Result<Ran, Failure>,
    started: Instant,
) {
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
        Err(Failure::Pipeline(PipelineError::Denied(..))) => "denied",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Admission;
    use crate::config::BreakerConfig;
    use crate::contract::{Contract, Validated};
    use crate::input::Event;
    use crate::ops::Readiness;

    fn delivery() -> Delivery {
        let event = Event {
            id: Some("e-1".into()),
            source: "test".into(),
            detail_type: "Test".into(),
            time: None,
            payload: serde_json::json!({}),
            payload_path: "detail",
            attributes: Default::default(),
        };
        Delivery::new(
            "q".into(),
            "m-1".into(),
            1,
            event,
            Contract::Json,
            Validated::Untyped,
        )
    }

    fn open(dependencies: &[Dependency]) -> Breakers {
        let breakers = Breakers::new(
            BreakerConfig {
                failures_to_open: 3,
                cooldown_secs: 10,
            },
            Readiness::default(),
        );
        for dependency in dependencies {
            for _ in 0..3 {
                breakers.failure(*dependency, "refused");
            }
        }
        breakers
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipelines_success_closes_every_breaker_it_declares_or_used() {
        // notify-deliver declares PostgreSQL and SQS, and used SNS for this one.
        let declared = [Dependency::Postgres, Dependency::Sqs];
        let breakers = open(&[Dependency::Postgres, Dependency::Sqs, Dependency::Sns]);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(breakers.admission(&declared), Admission::Trial));
        let d = delivery();
        d.used(Dependency::Sns);
        let result = feedback(&breakers, &declared, &d, Ok(Ran::Succeeded));
        assert_eq!(result, Ok(Ran::Succeeded));
        assert!(matches!(breakers.admission(&declared), Admission::Go));
        assert!(breakers.call_at(Dependency::Sns).is_ok());
        assert!(!breakers.any_unavailable(&[Dependency::Graph]));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_reach_the_breaker_by_class_and_cost_nothing_while_it_is_open() {
        let breakers = open(&[]);
        let d = delivery();
        let denied = Err(Failure::Pipeline(PipelineError::Denied(
            Dependency::S3,
            "s3:GetObject on b/k denied (AccessDenied)".into(),
        )));
        let _ = feedback(&breakers, &[Dependency::S3], &d, denied);
        assert!(
            breakers.any_unavailable(&[Dependency::S3]),
            "one configuration fault opens it"
        );
        // A timeout of a pipeline whose dependency is open is that dependency's outage.
        let timed_out = Err(Failure::Pipeline(PipelineError::Retryable(
            "timed out after 60s".into(),
        )));
        let result = feedback(&breakers, &[Dependency::S3], &d, timed_out);
        assert!(matches!(
            result,
            Err(Failure::Pipeline(PipelineError::Unavailable(
                Dependency::S3,
                _
            )))
        ));
        // The same failure with every dependency closed spends a retry as usual.
        let closed = open(&[]);
        let result = feedback(
            &closed,
            &[Dependency::Postgres],
            &d,
            Err(Failure::Pipeline(PipelineError::Retryable("x".into()))),
        );
        assert!(matches!(
            result,
            Err(Failure::Pipeline(PipelineError::Retryable(_)))
        ));
        // Outages count toward opening.
        for _ in 0..3 {
            let _ = feedback(
                &closed,
                &[Dependency::Postgres],
                &d,
                Err(Failure::Pipeline(PipelineError::Unavailable(
                    Dependency::Postgres,
                    "55P03".into(),
                ))),
            );
        }
        assert!(closed.any_unavailable(&[Dependency::Postgres]));
    }
}
