//! EventBridge, the `announce` pipeline's bus, and what `conveyor infra` provisions.

use serde::{Deserialize, Serialize};

use super::{Problems, SQS_MAX_RETENTION_SECS, SQS_MAX_VISIBILITY_SECS};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventBridgeConfig {
    /// The event bus `conveyor publish` puts events on.
    pub bus_name: String,
}

impl Default for EventBridgeConfig {
    fn default() -> Self {
        Self {
            bus_name: "default".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The bus the `announce` pipeline publishes to.
    pub bus_name: String,
    /// The announcement's `source`.
    pub source: String,
    /// The announcement's `detail-type`.
    pub detail_type: String,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            bus_name: "default".to_owned(),
            source: "conveyor".to_owned(),
            detail_type: "InteractionProcessed".to_owned(),
        }
    }
}

/// The resources `conveyor infra` manages: a DLQ, a queue redriving to it, an EventBridge rule
/// on `eventbridge.bus_name` with the queue as its target, and the queue policy letting only
/// that rule send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfraConfig {
    /// The queue to create (point `queues.<key>.name` at it to consume it).
    pub queue_name: String,
    /// The DLQ; unset = `<queue_name>-dlq`.
    pub dlq_name: Option<String>,
    /// The queue's default visibility timeout (SQS attribute; conveyor's leases override it).
    pub visibility_timeout_secs: u32,
    /// How long the queue and the DLQ keep messages (14 days is SQS's maximum).
    pub retention_secs: u32,
    /// Native redrive to the DLQ after this many receives (conveyor dead-letters explicitly
    /// first; this is the backstop).
    pub max_receive_count: u32,
    /// The EventBridge rule.
    pub rule_name: String,
    /// Event sources the rule matches.
    pub sources: Vec<String>,
    /// Detail-types the rule matches; empty = any.
    pub detail_types: Vec<String>,
    /// Create a FIFO queue and a FIFO DLQ (names ending in `.fifo`, content-based
    /// deduplication) and give the rule's target a message group id.
    pub fifo: bool,
    /// With `fifo`: the MessageGroupId EventBridge sends every event with. A rule target takes
    /// one fixed id, so all of the rule's events form one group, handled one at a time in
    /// order; producers that want a group per tenant (say) send to the queue directly with
    /// their own group ids.
    pub fifo_group_id: String,
}

impl Default for InfraConfig {
    fn default() -> Self {
        Self {
            queue_name: "conveyor-events".to_owned(),
            dlq_name: None,
            visibility_timeout_secs: 720,
            retention_secs: 1_209_600,
            max_receive_count: 3,
            rule_name: "conveyor-events".to_owned(),
            sources: vec![
                "com.yourapp.transcription".to_owned(),
                "com.eq.email-pipeline".to_owned(),
            ],
            detail_types: Vec::new(),
            fifo: false,
            fifo_group_id: "conveyor-events".to_owned(),
        }
    }
}

impl InfraConfig {
    /// `<queue_name>-dlq`, or for a FIFO queue `<name>-dlq.fifo`.
    pub fn dlq_name(&self) -> String {
        self.dlq_name
            .clone()
            .unwrap_or_else(|| match self.queue_name.strip_suffix(".fifo") {
                Some(base) => format!("{base}-dlq.fifo"),
                None => format!("{}-dlq", self.queue_name),
            })
    }
}

impl EventBridgeConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.bus_name.trim().is_empty() {
            problems.bad(
                "eventbridge.bus_name",
                &"\"\"",
                "name an event bus (\"default\" is the account's default bus)",
            );
        }
    }
}

impl InfraConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if !(60..=SQS_MAX_RETENTION_SECS).contains(&self.retention_secs) {
            problems.bad(
                "infra.retention_secs",
                &self.retention_secs,
                "must be 60..=1209600 (SQS keeps messages 1 minute to 14 days)",
            );
        }
        if self.visibility_timeout_secs > SQS_MAX_VISIBILITY_SECS {
            problems.bad(
                "infra.visibility_timeout_secs",
                &self.visibility_timeout_secs,
                "must be 0..=43200 (SQS's 12-hour cap)",
            );
        }
        if !(1..=1000).contains(&self.max_receive_count) {
            problems.bad(
                "infra.max_receive_count",
                &self.max_receive_count,
                "must be 1..=1000 (SQS RedrivePolicy range)",
            );
        }
        if self.sources.is_empty() {
            problems.bad(
                "infra.sources",
                &"[]",
                "name at least one event source for the rule to match",
            );
        }
        let fifo_name = self.queue_name.ends_with(".fifo");
        if self.fifo && !fifo_name {
            problems.bad(
                "infra.queue_name",
                &self.queue_name,
                "with infra.fifo = true the queue is FIFO, and SQS requires its name to end in \
                 .fifo (e.g. \"conveyor-events.fifo\")",
            );
        }
        if !self.fifo && fifo_name {
            problems.bad(
                "infra.queue_name",
                &self.queue_name,
                "a name ending in .fifo is a FIFO queue: set infra.fifo = true, or drop the suffix",
            );
        }
        if let Some(dlq) = &self.dlq_name
            && dlq.ends_with(".fifo") != self.fifo
        {
            problems.bad(
                "infra.dlq_name",
                dlq,
                if self.fifo {
                    "a FIFO queue's DLQ is FIFO too: its name must end in .fifo"
                } else {
                    "a standard queue's DLQ is a standard queue: drop the .fifo suffix"
                },
            );
        }
        if self.fifo
            && (self.fifo_group_id.is_empty()
                || self.fifo_group_id.len() > 128
                || !self.fifo_group_id.chars().all(|c| c.is_ascii_graphic()))
        {
            problems.bad(
                "infra.fifo_group_id",
                &self.fifo_group_id,
                "1 to 128 printable ASCII characters without spaces (SQS's MessageGroupId)",
            );
        }
    }
}
