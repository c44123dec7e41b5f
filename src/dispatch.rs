//! Routing and fan-out: pick the pipelines for an event by `source` and `detail-type`, run them
//! concurrently — each in its own task, with its own timeout, so an error, a panic or a hang in
//! one never stops the others — and fold their results into the message's outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Ack, Config, QueueConfig, Unrouted};
use crate::engine::{Handler, Outcome};
use crate::pipeline::{Delivery, Pipeline, PipelineError, Registry};
use crate::telemetry;

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

struct Route {
    source: Pattern,
    detail_type: Pattern,
    pipelines: Vec<(Arc<dyn Pipeline>, Duration)>,
    ack: Ack,
}

/// The handler of one queue: its routes and what to do with unrouted events.
pub struct Dispatcher {
    queue: String,
    routes: Vec<Route>,
    on_unrouted: Unrouted,
}

/// One pipeline's result for one delivery.
#[derive(Debug)]
struct PipelineResult {
    pipeline: &'static str,
    result: Result<(), PipelineError>,
}

impl Dispatcher {
    /// Builds the queue's routes from config. A route naming a pipeline the registry does not
    /// have is an error naming the route.
    pub fn new(
        queue: &str,
        queue_config: &QueueConfig,
        config: &Config,
        registry: &Registry,
    ) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (i, route) in queue_config.routes.iter().enumerate() {
            let mut pipelines = Vec::new();
            for name in &route.pipelines {
                let pipeline = registry.get(name).ok_or_else(|| {
                    format!(
                        "queues.{queue}.routes[{i}].pipelines: unknown pipeline {name:?}; known: {}",
                        registry.names().join(", ")
                    )
                })?;
                pipelines.push((pipeline.clone(), config.pipeline_timeout(name)));
            }
            routes.push(Route {
                source: Pattern::parse(&route.source),
                detail_type: Pattern::parse(&route.detail_type),
                pipelines,
                ack: route.ack,
            });
        }
        Ok(Self {
            queue: queue.to_owned(),
            routes,
            on_unrouted: queue_config.on_unrouted,
        })
    }

    fn route(&self, delivery: &Delivery) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.source.matches(&delivery.event.source)
                && r.detail_type.matches(&delivery.event.detail_type)
        })
    }
}

impl Handler for Dispatcher {
    fn handle(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Outcome> {
        let Some(route) = self.route(&delivery) else {
            return Box::pin(std::future::ready(self.unrouted(&delivery)));
        };
        let pipelines = route.pipelines.clone();
        let ack = route.ack;
        Box::pin(async move {
            // One task per pipeline: a panic unwinds only its task. Dropping the JoinSet (lease
            // lost, grace over) aborts them all, so no pipeline outlives its message.
            let mut tasks = JoinSet::new();
            let mut names = HashMap::new();
            for (pipeline, timeout) in pipelines {
                let delivery = delivery.clone();
                let name = pipeline.name();
                let task = tasks.spawn(async move {
                    match tokio::time::timeout(timeout, pipeline.run(delivery)).await {
                        Ok(result) => result,
                        Err(_) => Err(PipelineError::Retryable(format!(
                            "timed out after {}s",
                            timeout.as_secs()
                        ))),
                    }
                });
                names.insert(task.id(), (name, Instant::now()));
            }
            let mut results = Vec::new();
            while let Some(joined) = tasks.join_next_with_id().await {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    Err(e) if e.is_panic() => {
                        (e.id(), Err(PipelineError::Retryable("panicked".into())))
                    }
                    // Cancelled: only when this future is dropped, and then nobody is listening.
                    Err(e) => (e.id(), Err(PipelineError::Retryable("cancelled".into()))),
                };
                let (name, started) = names[&id];
                record(&delivery, name, &result, started);
                results.push(PipelineResult {
                    pipeline: name,
                    result,
                });
            }
            fold(&results, ack)
        })
    }
}

impl Dispatcher {
    fn unrouted(&self, delivery: &Delivery) -> Outcome {
        telemetry::unrouted(&self.queue);
        match self.on_unrouted {
            Unrouted::Drop => {
                tracing::info!(queue = %self.queue, message_id = %delivery.message_id, event_id = %delivery.event.id, source = %delivery.event.source, detail_type = %delivery.event.detail_type, "unrouted event dropped (on_unrouted = \"drop\")");
                Outcome::Success
            }
            Unrouted::DeadLetter => Outcome::DeadLetter {
                reason: format!(
                    "unrouted: no route for source {:?} and detail-type {:?}",
                    delivery.event.source, delivery.event.detail_type
                ),
                label: "unrouted",
                pipeline: None,
            },
        }
    }
}

/// Logs and counts one pipeline run.
fn record(
    delivery: &Delivery,
    name: &'static str,
    result: &Result<(), PipelineError>,
    started: Instant,
) {
    let outcome = match result {
        Ok(()) => "success",
        Err(PipelineError::Retryable(_)) => "retryable_error",
        Err(PipelineError::Permanent(_)) => "permanent_error",
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    telemetry::pipeline_finished(name, outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            tracing::debug!(queue = %delivery.queue, message_id = %delivery.message_id, event_id = %delivery.event.id, pipeline = name, outcome, duration_ms, receive_count = delivery.receive_count, "pipeline finished")
        }
        Err(e) => {
            tracing::warn!(queue = %delivery.queue, message_id = %delivery.message_id, event_id = %delivery.event.id, pipeline = name, outcome, duration_ms, receive_count = delivery.receive_count, error = %e, "pipeline failed")
        }
    }
}

/// All succeeded → Success; any retryable failure → Retry; only permanent failures →
/// DeadLetter naming them. With `ack = any`, one success is enough.
fn fold(results: &[PipelineResult], ack: Ack) -> Outcome {
    let failed: Vec<&PipelineResult> = results.iter().filter(|r| r.result.is_err()).collect();
    if failed.is_empty() || (ack == Ack::Any && failed.len() < results.len()) {
        return Outcome::Success;
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
    if failed
        .iter()
        .any(|r| matches!(r.result, Err(PipelineError::Retryable(_))))
    {
        Outcome::Retry {
            reason: reasons,
            pipeline: Some(names),
        }
    } else {
        Outcome::DeadLetter {
            reason: reasons,
            label: "permanent",
            pipeline: Some(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pipeline: &'static str, result: Result<(), PipelineError>) -> PipelineResult {
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
    fn outcome_folding() {
        let ok = || Ok(());
        let retry = || Err(PipelineError::Retryable("down".into()));
        let perm = || Err(PipelineError::Permanent("bad".into()));
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
    }
}
