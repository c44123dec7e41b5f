//! A queue's handler: resolve a claim check, decode the body in the queue's input format,
//! route each event by `source`, `detail_type` and attributes, validate it against the route's
//! contract, run the route's pipelines concurrently — each in its own task, with its own
//! timeout, so an error, a panic or a hang in one never stops the others — and fold their
//! results into the message's outcome.

pub mod fair;
mod fold;
mod run;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sha2::Digest;

use crate::breaker::{Admission, Breakers};
use crate::claim_check::{ClaimCheck, FetchError, Pointer};
use crate::config::{Ack, Config, QueueConfig, Unrouted};
use crate::contract::{Contract, Validated};
use crate::engine::{BATCH_ATTRIBUTE, BATCH_ID_ATTRIBUTE, Handler, Labels, Outcome, Received};
use crate::fault::Dependency;
use crate::input::{self, Decoded, Event, Format};
use crate::ledger::Ledger;
use crate::pipeline::{Delivery, Pipeline, Registry};
use crate::telemetry::{self, otel};
use fold::{combine, fold};
use run::run_stage;

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
    /// Tenant-fair turns at the handlers (`fair`); none on FIFO queues, whose groups already
    /// take turns, or with `fairness.lookahead_percent = 0`.
    fair: Option<Arc<fair::Fair>>,
    /// The events of batches run at once, across the queue's messages: its `max_in_flight`.
    batch_runs: tokio::sync::Semaphore,
    /// `queues.<key>.deadline_secs`: an event of a batch not started within half of it goes
    /// back unattempted, so a slow stage never costs a batch its receives.
    deadline: Duration,
    fifo: bool,
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
        let fifo = queue_config
            .url
            .as_deref()
            .or(queue_config.name.as_deref())
            .is_some_and(|q| q.ends_with(".fifo"));
        let running = config.fairness.running(queue_config.max_in_flight);
        let fair = (!fifo && running < queue_config.max_in_flight as usize)
            .then(|| fair::Fair::new(running, config.fairness.weights.clone()));
        Ok(Self {
            fair,
            batch_runs: tokio::sync::Semaphore::new(queue_config.max_in_flight as usize),
            deadline: queue_config.deadline(),
            fifo,
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

    /// Routes, validates and runs one event. `element` identifies an event of a batch that
    /// has no id of its own (see [`Dispatcher::batch`]).
    async fn event(
        &self,
        message: &Received,
        event: Event,
        element: Option<&str>,
    ) -> (Outcome, Labels) {
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
        // The tenant's turn at a handler (an event without a tenant queues as tenant "").
        let turn = match &self.fair {
            Some(fair) => Some(fair.turn(labels.tenant_id.as_deref().unwrap_or("")).await),
            None => None,
        };
        if turn.as_ref().is_some_and(|t| t.waited) {
            telemetry::tenant_turn_waited(&self.queue);
        }
        let (pipelines, after, ack) = (route.pipelines.clone(), route.after.clone(), route.ack);
        let delivery = Arc::new(Delivery::new(
            message.queue.clone(),
            element.map_or_else(|| message.message_id.clone(), str::to_owned),
            message.receive_count,
            event,
            contract,
            validated,
        ));
        let mut results = run_stage(pipelines, &delivery, &self.ledger, &self.breakers).await;
        // `after` pipelines (an announcement) run only once the work they report is done.
        if !after.is_empty() && results.iter().all(|r| r.result.is_ok()) {
            results.extend(run_stage(after, &delivery, &self.ledger, &self.breakers).await);
        }
        drop(turn);
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

impl Handler for Dispatcher {
    fn admission(&self) -> Admission {
        self.breakers.admission(&self.needs)
    }

    fn handle(self: Arc<Self>, message: Arc<Received>) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            // Received by a long poll sent before a dependency's breaker opened: not worth a
            // call before its cooldown ends, and costs the message nothing (an outage).
            if let Some((dependency, remaining)) = self.breakers.open_for(&self.needs) {
                return Outcome::Retry {
                    reason: format!("{dependency} unavailable (circuit open): not tried"),
                    pipeline: None,
                    after: Some(remaining),
                    outage: true,
                };
            }
            let body = match self.body(&message).await {
                Ok(body) => body,
                Err(outcome) => return outcome,
            };
            if message.attributes.contains_key(BATCH_ATTRIBUTE) {
                return self.batch(&message, &body).await;
            }
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
                let (outcome, labels) = self.event(&message, event, None).await;
                let _ = message.labels.set(labels);
                return outcome;
            }
            let runs = events
                .into_iter()
                .map(|event| self.event(&message, event, None));
            let (outcomes, labels): (Vec<Outcome>, Vec<Labels>) =
                futures::future::join_all(runs).await.into_iter().unzip();
            if let Some(first) = labels.into_iter().next() {
                let _ = message.labels.set(first);
            }
            combine(outcomes)
        })
    }
}

impl Dispatcher {
    /// A batch (`conveyor.batch`): a JSON array of bodies in the queue's format, each decoded
    /// and run on its own — at most `max_in_flight` of the queue's events at once, whatever
    /// the batches; one that cannot start within half the deadline goes back unattempted —
    /// with its own outcome; the batch's is [`fold::split`] of theirs. An element without an
    /// id of its own is identified by its batch and content (two identical ones in one batch
    /// are one). A FIFO
    /// queue's batch is never split (its parts would fall behind the group's later messages):
    /// it takes its most serious element's outcome.
    async fn batch(&self, message: &Received, body: &str) -> Outcome {
        let elements: Vec<&serde_json::value::RawValue> = match serde_json::from_str(body) {
            Ok(elements) => elements,
            Err(e) => {
                return poison(input::PoisonError::WrongFormat(format!(
                    "a batch ({BATCH_ATTRIBUTE}) is a JSON array of bodies: {}",
                    crate::safe::json_error(&e)
                )));
            }
        };
        let cutoff = tokio::time::Instant::now() + self.deadline / 2;
        // The batch this one came from (a part split off it), else this one.
        let batch_id = message
            .attributes
            .get(BATCH_ID_ATTRIBUTE)
            .map_or(message.message_id.as_str(), String::as_str);
        let runs = elements.iter().map(|element| async move {
            let text = element.get();
            let Ok(_permit) = tokio::time::timeout_at(cutoff, self.batch_runs.acquire()).await
            else {
                // Its turn did not come in time: back unattempted, its receive not counted.
                let outcome = Outcome::Retry {
                    reason: format!(
                        "not started within half of queues.{}.deadline_secs: sent back unattempted",
                        self.queue
                    ),
                    pipeline: None,
                    after: None,
                    outage: true,
                };
                return (text.to_owned(), outcome);
            };
            // An element without an id of its own (a raw payload) is identified by its batch
            // and its content, never by the message id alone: the same across redeliveries
            // and splits, and distinct from the same payload in another batch.
            let element = {
                let mut hash = sha2::Sha256::new();
                hash.update(batch_id.as_bytes());
                hash.update([0]);
                hash.update(text.as_bytes());
                format!("{batch_id}#{}", hex::encode(&hash.finalize()[..8]))
            };
            let outcome = match input::decode(self.format, text, &message.attributes) {
                Ok(Decoded::Events(events)) => {
                    let mut outcomes = Vec::with_capacity(events.len());
                    let mut first = None;
                    for event in events {
                        let (outcome, labels) = self.event(message, event, Some(&element)).await;
                        first.get_or_insert(labels);
                        outcomes.push(outcome);
                    }
                    if let Some(labels) = first {
                        let _ = message.labels.set(labels);
                    }
                    combine(outcomes)
                }
                Ok(Decoded::Nothing(_)) => Outcome::Success,
                Err(e) => poison(e),
            };
            (text.to_owned(), outcome)
        });
        let results = futures::future::join_all(runs).await;
        if self.fifo {
            return combine(results.into_iter().map(|(_, outcome)| outcome).collect());
        }
        fold::split(results)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(Pattern::parse("*").matches("anything"));
        assert!(Pattern::parse("EnvelopeV1.*").matches("EnvelopeV1.transcript"));
        assert!(!Pattern::parse("EnvelopeV1.*").matches("BatchProcessingCompleted"));
        assert!(Pattern::parse("BatchProcessingCompleted").matches("BatchProcessingCompleted"));
        assert!(!Pattern::parse("Batch").matches("BatchProcessingCompleted"));
    }
}
