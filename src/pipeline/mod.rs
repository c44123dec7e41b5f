//! Pipelines: named units of work run on one delivered event, each saying whether its errors
//! can be retried. [`CATALOG`] lists every pipeline a config may name — what contracts it
//! takes, what it needs and how it is built — and is what config validation, the daemon's
//! wiring and `conveyor check` read. Adding a pipeline is its own file plus one line there.

mod announce;
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

use crate::breaker::Dependency;
use crate::contract::{Contract, Validated};
use crate::envelope::Interaction;
use crate::input::Event;
use crate::notify::event::NotificationEvent;
use crate::notify::ranked::RankedNotification;

pub use announce::{Announce, announcement_id};
pub use chaos::Chaos;
pub use graph::{GraphPipeline, References};
pub use notify_rank::{RANKED_SOURCE, RANKED_TYPE};
pub use projection::Projection;
pub use shared::Shared;

/// Every pipeline a route may name.
pub const CATALOG: &[Descriptor] = &[
    graph::DESCRIPTOR,
    projection::DESCRIPTOR,
    announce::DESCRIPTOR,
    NOOP,
    chaos::DESCRIPTOR,
    log::DESCRIPTOR,
    notify_ingest::DESCRIPTOR,
    notify_rank::DESCRIPTOR,
    notify_deliver::DESCRIPTOR,
];

/// What config validation, the daemon and `conveyor check` know of a pipeline before it exists.
pub struct Descriptor {
    pub name: &'static str,
    /// The route contracts it can take; empty: any (it reads only ids, or the raw payload).
    /// An `auto` route is accepted by any pipeline and checked per event.
    pub accepts: &'static [Contract],
    /// What it calls: checked at startup (secrets, URLs) and probed by `conveyor check`.
    pub needs: &'static [Need],
    /// How long one run may take unless `pipelines.<name>.timeout_secs` says otherwise.
    pub timeout_secs: u64,
    /// Builds it from the daemon's shared clients.
    pub build: Build,
}

/// The run timeout of most pipelines: a pipeline's work is one event's.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// How a [`Descriptor`] builds its pipeline.
pub type Build = fn(&Shared) -> BoxFuture<'_, anyhow::Result<Arc<dyn Pipeline>>>;

/// A dependency a pipeline needs configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `DATABASE_URL`.
    Postgres,
    /// `graph.uri` and `NEO4J_PASSWORD`.
    Graph,
    /// The `[extraction]` model (an OpenAI-compatible endpoint, or offline patterns).
    Model,
    /// EventBridge, through the AWS credential chain.
    EventBridge,
    /// The `[notify]` section: the notification stages' bucket and queues.
    Notify,
}

/// The catalog entry named `name`.
pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    CATALOG.iter().find(|d| d.name == name)
}

/// Names in the catalog, for error messages.
pub fn catalog_names() -> String {
    CATALOG
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

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
        }
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

/// A pipeline's failure, split by what the message's fate should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// May succeed later (a dependency is down, a rate limit, a timeout).
    #[error("{0}")]
    Retryable(String),
    /// May succeed later, and the dependency asked not to be called again for this long
    /// (`Retry-After`): the message comes back no sooner.
    #[error("{0} (retry after {1:?})")]
    RetryAfter(String, std::time::Duration),
    /// Can never succeed for this input (it is invalid for this pipeline).
    #[error("{0}")]
    Permanent(String),
    /// A dependency is down or refuses conveyor (connection refused, timeouts, 5xx, rejected
    /// credentials): nothing is wrong with the message. Counts toward the dependency's circuit
    /// breaker, and never dead-letters the message (see `engine::Outcome::Retry::outage`).
    #[error("{1}")]
    Unavailable(Dependency, String),
    /// Not a failure: not now. The message is handled again no sooner than `until`, without
    /// spending a receive (`engine::Outcome::Defer`): a notification waiting for its
    /// `sendAfter`, a rate-limit token or its next retry.
    #[error("deferred: {reason}")]
    Defer {
        until: std::time::SystemTime,
        reason: String,
    },
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

const NOOP: Descriptor = Descriptor {
    name: "noop",
    accepts: &[],
    needs: &[],
    timeout_secs: DEFAULT_TIMEOUT_SECS,
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
