//! Pipelines: named units of work run on one delivered event, each saying whether its errors
//! can be retried. The [`catalog`] lists every pipeline a config may name — what contracts it
//! takes, what it needs and how it is built — and holds the config rules that need to know
//! them. Adding a pipeline is its own file plus one line there.

mod announce;
pub mod catalog;
mod chaos;
mod graph;
mod log;
mod notify_deliver;
mod notify_ingest;
mod notify_rank;
mod projection;
mod shared;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::contract::envelope::Interaction;
use crate::contract::notification::NotificationEvent;
use crate::contract::ranked::RankedNotification;
use crate::contract::{Contract, Validated};
use crate::fault::Dependency;
use crate::input::Event;

pub use crate::fault::PipelineError;
pub use announce::{Announce, announcement_id};
pub use catalog::{CATALOG, Descriptor, Need, descriptor};
pub use chaos::Chaos;
pub use graph::{GraphPipeline, References};
pub use notify_rank::{RANKED_SOURCE, RANKED_TYPE};
pub use projection::Projection;
pub use shared::Shared;

/// What a pipeline is given: one delivery of one event.
#[derive(Debug)]
pub struct Delivery {
    /// The configured queue key (`main`).
    pub queue: Arc<str>,
    /// SQS message id.
    pub message_id: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    pub event: Event,
    /// The contract the event was validated against (`auto` resolved).
    pub contract: Contract,
    /// The validated interaction, for the `envelope_v1` and `batch_completed_v1` contracts.
    pub interaction: Option<Interaction>,
    /// The validated notification, for the `notification_event_v1` contract.
    pub notification: Option<Box<NotificationEvent>>,
    /// The ranked notification, for the `ranked_notification_v1` contract.
    pub ranked: Option<Box<RankedNotification>>,
    /// The idempotency key: `interaction_id` when present (a notification's `eventId`), else
    /// the event's id, else the SQS message id. Never used alone: see `tenant`.
    pub key: String,
    /// Whose data this is: the tenant id of an interaction or notification, empty for events
    /// that carry no tenant. Every idempotency lookup (ledger, stored extractions,
    /// single-flight) is keyed by (tenant, key), so two tenants reusing an id never share a
    /// result.
    pub tenant: String,
    /// Dependencies a run called beyond its pipeline's declared ones (a notification's
    /// channel provider): the engine reports a success to their breakers too.
    used: std::sync::Mutex<Vec<Dependency>>,
}

impl Delivery {
    pub fn new(
        queue: Arc<str>,
        message_id: String,
        receive_count: u32,
        event: Event,
        contract: Contract,
        validated: Validated,
    ) -> Self {
        let (mut interaction, mut notification, mut ranked) = (None, None, None);
        let (key, tenant) = match validated {
            Validated::Interaction(i) => {
                let identity = (
                    i.interaction_id.map(|id| id.to_string()),
                    i.tenant_id.to_string(),
                );
                interaction = Some(*i);
                identity
            }
            Validated::Notification(n) => {
                let identity = (Some(n.event_id.clone()), n.tenant_id.to_string());
                notification = Some(n);
                identity
            }
            Validated::Ranked(r) => {
                let identity = (Some(r.event_id.clone()), r.tenant_id.to_string());
                ranked = Some(r);
                identity
            }
            Validated::Untyped => (None, String::new()),
        };
        let key = key
            .or_else(|| event.id.clone())
            .unwrap_or_else(|| message_id.clone());
        Self {
            queue,
            message_id,
            receive_count,
            event,
            contract,
            interaction,
            notification,
            ranked,
            key,
            tenant,
            used: Default::default(),
        }
    }

    /// Records that this run called `dependency` (beyond its pipeline's declared ones).
    pub fn used(&self, dependency: Dependency) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&dependency) {
            used.push(dependency);
        }
    }

    /// What [`Delivery::used`] recorded.
    pub fn used_dependencies(&self) -> Vec<Dependency> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The delivery's interaction, for pipelines that only make sense on one: any other event
/// routed to them is a routing mistake, permanent for this message.
pub(crate) fn require_interaction<'a>(
    delivery: &'a Delivery,
    pipeline: &str,
) -> Result<&'a Interaction, PipelineError> {
    delivery.interaction.as_ref().ok_or_else(|| {
        PipelineError::Permanent(format!(
            "the {pipeline} pipeline needs an EnvelopeV1.* or BatchProcessingCompleted event, not detail-type {:?}; route only those to it",
            delivery.event.detail_type
        ))
    })
}

/// A named unit of work. Implementations must be idempotent per event: delivery is
/// at-least-once.
pub trait Pipeline: Send + Sync + 'static {
    /// Stable name, used in routes, metrics, logs and the ledger.
    fn name(&self) -> &'static str;
    /// Processes one delivery. The future is dropped if its timeout passes or the message's
    /// lease is lost, so it must not leave partial effects that a retry cannot repair.
    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>>;
    /// What it calls: while any of these is down (its circuit breaker open), the queues whose
    /// routes name this pipeline stop receiving.
    fn dependencies(&self) -> &'static [Dependency] {
        &[]
    }
    /// Whether the idempotency ledger guards it (skipped after a success for the key, never run
    /// twice at once). Only a pipeline without effects to repeat may say no.
    fn deduplicated(&self) -> bool {
        true
    }
}

/// Succeeds at once. For smoke tests and benchmarks of the engine itself.
pub struct Noop;

pub(crate) const NOOP: Descriptor = Descriptor {
    name: "noop",
    accepts: &[],
    needs: &[],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |_| Box::pin(async { Ok(Arc::new(Noop) as Arc<dyn Pipeline>) }),
};

impl Pipeline for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn run(&self, _delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        Box::pin(async { Ok(()) })
    }

    fn deduplicated(&self) -> bool {
        false
    }
}

/// The pipelines a daemon routes to, by name: built from the catalog for the routes of its
/// config, plus any a caller adds (tests add their own).
#[derive(Clone, Default)]
pub struct Registry {
    pipelines: BTreeMap<&'static str, Arc<dyn Pipeline>>,
}

impl Registry {
    /// The pipelines that need nothing (`noop`, `chaos`); the daemon builds the others from
    /// the catalog when a route names them.
    pub fn built_in() -> Self {
        let mut registry = Self::default();
        registry.add(Arc::new(Noop));
        registry.add(Arc::new(Chaos));
        registry
    }

    /// Adds (or replaces) a pipeline under its name.
    pub fn add(&mut self, pipeline: Arc<dyn Pipeline>) {
        self.pipelines.insert(pipeline.name(), pipeline);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Pipeline>> {
        self.pipelines.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.pipelines.keys().copied().collect()
    }
}
