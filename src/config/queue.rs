//! `[queues.<key>]`: what to consume, how, and where each event goes; `[pipelines.<name>]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Problems, SQS_MAX_BATCH, SQS_MAX_VISIBILITY_SECS, SQS_MAX_WAIT_SECS};

/// One queue to consume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue URL. Either this or `name`.
    pub url: Option<String>,
    /// The queue name, resolved to a URL with GetQueueUrl at startup. Either this or `url`.
    pub name: Option<String>,
    /// How bodies are written: `eventbridge`, `sns`, `s3` or `raw` (see `input`).
    pub format: crate::input::Format,
    /// Buckets that claim-check pointers may name. A pointer to any other bucket is
    /// dead-lettered: a producer cannot make the daemon read what its role can read elsewhere.
    pub claim_check_buckets: Vec<String>,
    /// Concurrent long-pollers for this queue.
    pub pollers: u32,
    /// Messages received but not yet finished, across this queue's pollers.
    pub max_in_flight: u32,
    /// Long-poll wait per ReceiveMessage (0–20 s).
    pub wait_time_secs: u32,
    /// Most messages asked for per ReceiveMessage (1–10); fewer when permits are short.
    pub receive_batch_size: u32,
    /// Lease length: the visibility timeout set on receive and on every extension.
    pub visibility_timeout_secs: u32,
    /// Extend a lease when less than this remains of it. Must be shorter than the lease.
    pub lease_renew_before_secs: u32,
    /// Dead-letter after this many receives when the queue has no RedrivePolicy of its own.
    pub max_receive_count: u32,
    /// DLQ URL override; unset means the queue's RedrivePolicy target.
    pub dlq_url: Option<String>,
    /// Longest wait before pending deletes are sent even if fewer than 10 are queued.
    pub delete_flush_millis: u64,
    /// Backoff for retryable failures.
    pub retry: RetryConfig,
    /// Which pipelines run for which events; the first matching route wins.
    pub routes: Vec<RouteConfig>,
    /// What happens to an event no route matches.
    pub on_unrouted: Unrouted,
    /// Longest a message's whole handling may take — ledger claims and writes, every
    /// pipeline, the `after` stage — before it is given up and retried. Without it, a step
    /// that blocks (a lock on the ledger) would hold the message, its lease extended, for up
    /// to SQS's 12 hours and fill `max_in_flight`.
    pub deadline_secs: u64,
}

/// Routes an event by its `source`, `detail_type` and attributes to pipelines (what those are
/// in each input format: see `input`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// `source` to match: exact, a prefix ending in `*` (`com.yourapp.*`), or `*` for any.
    pub source: String,
    /// `detail_type` to match, same forms (`EnvelopeV1.*`).
    pub detail_type: String,
    /// Attributes that must be present and match, same forms (`{ tenant = "acme-*" }`).
    pub attributes: BTreeMap<String, String>,
    /// What the events must contain: `auto`, `envelope_v1`, `batch_completed_v1` or `json`.
    pub contract: crate::contract::Contract,
    /// Pipelines to run, concurrently, each isolated from the others.
    pub pipelines: Vec<String>,
    /// Pipelines to run once every one of `pipelines` has succeeded (e.g. `announce`).
    pub after: Vec<String>,
    /// `all`: the message succeeds when every pipeline did. `any`: when at least one did —
    /// which drops the failed pipelines' work, so it is opt-in.
    pub ack: Ack,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            source: "*".to_owned(),
            detail_type: "*".to_owned(),
            attributes: BTreeMap::new(),
            contract: crate::contract::Contract::default(),
            pipelines: Vec::new(),
            after: Vec::new(),
            ack: Ack::All,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    All,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// Dead-letter with reason `unrouted`: nothing disappears silently.
    DeadLetter,
    /// Delete it, counted in `conveyor_unrouted_total` and logged.
    Drop,
}

/// The run timeout of most pipelines (a pipeline's work is one event's), and of any named in
/// a `[pipelines.<name>]` table without `timeout_secs`.
pub const DEFAULT_PIPELINE_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// How long one run may take before it counts as a retryable failure.
    pub timeout_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            timeout_secs: DEFAULT_PIPELINE_TIMEOUT_SECS,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            url: None,
            name: None,
            format: crate::input::Format::default(),
            claim_check_buckets: Vec::new(),
            pollers: 2,
            max_in_flight: 100,
            wait_time_secs: SQS_MAX_WAIT_SECS,
            receive_batch_size: SQS_MAX_BATCH,
            visibility_timeout_secs: 60,
            lease_renew_before_secs: 20,
            max_receive_count: 3,
            dlq_url: None,
            delete_flush_millis: 20,
            retry: RetryConfig::default(),
            routes: Vec::new(),
            on_unrouted: Unrouted::DeadLetter,
            deadline_secs: 900,
        }
    }
}

impl QueueConfig {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs.into())
    }

    pub fn lease_renew_before(&self) -> Duration {
        Duration::from_secs(self.lease_renew_before_secs.into())
    }

    pub fn delete_flush(&self) -> Duration {
        Duration::from_millis(self.delete_flush_millis)
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

/// Exponential backoff with full jitter: the delay before receive n+1 is uniform in
/// `[0, min(cap, base * multiplier^(n-1))]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Backoff ceiling after the first failed receive.
    pub base_secs: u32,
    /// Growth per receive.
    pub multiplier: f64,
    /// Largest backoff (≤ 43,200 s, SQS's visibility cap).
    pub cap_secs: u32,
    /// `full`: uniform in [0, ceiling], so failures do not return in bursts. `none`: exactly
    /// the ceiling (predictable; for tests and low-volume queues).
    pub jitter: Jitter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    Full,
    None,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_secs: 5,
            multiplier: 2.0,
            cap_secs: 900,
            jitter: Jitter::Full,
        }
    }
}

impl QueueConfig {
    /// Checks the queue `queues.<name>` and its routes.
    pub(super) fn validate(&self, name: &str, problems: &mut Problems) {
        let key = |field: &str| format!("queues.{name}.{field}");
        if let Some(url) = &self.url {
            problems.http_url(&key("url"), url);
        }
        if let Some(url) = &self.dlq_url {
            problems.http_url(&key("dlq_url"), url);
        }
        for bucket in &self.claim_check_buckets {
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !valid {
                problems.bad(
                    &key("claim_check_buckets"),
                    &format!("{bucket:?}"),
                    "not an S3 bucket name (3–63 lowercase letters, digits, '.' or '-'); list bucket names, not ARNs or s3:// URLs",
                );
            }
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            || name.is_empty()
        {
            problems.bad(
                &format!("queues.{name}"),
                &format!("{name:?}"),
                "queue keys must be lowercase letters, digits, '-' or '_' (so CONVEYOR_QUEUES__<KEY>__… can address them)",
            );
        }
        match (&self.url, &self.name) {
            (None, None) => problems.bad(&key("url"), &"(unset)", "set either url or name"),
            (Some(_), Some(_)) => problems.bad(&key("name"), &"(set)", "set url or name, not both"),
            _ => {}
        }
        if self.pollers == 0 {
            problems.bad(&key("pollers"), &0, "must be at least 1");
        }
        if self.max_in_flight == 0 {
            problems.bad(&key("max_in_flight"), &0, "must be at least 1");
        }
        if self.wait_time_secs > SQS_MAX_WAIT_SECS {
            problems.bad(
                &key("wait_time_secs"),
                &self.wait_time_secs,
                "must be 0..=20 (SQS's long-poll maximum)",
            );
        }
        if self.receive_batch_size == 0 || self.receive_batch_size > SQS_MAX_BATCH {
            problems.bad(
                &key("receive_batch_size"),
                &self.receive_batch_size,
                "must be 1..=10 (SQS returns at most 10 messages per receive)",
            );
        }
        if self.visibility_timeout_secs < 2
            || self.visibility_timeout_secs > SQS_MAX_VISIBILITY_SECS
        {
            problems.bad(
                &key("visibility_timeout_secs"),
                &self.visibility_timeout_secs,
                "must be 2..=43200 (SQS's 12-hour visibility cap)",
            );
        }
        if self.lease_renew_before_secs == 0
            || self.lease_renew_before_secs >= self.visibility_timeout_secs
        {
            problems.bad(
                &key("lease_renew_before_secs"),
                &self.lease_renew_before_secs,
                &format!(
                    "must be at least 1 and shorter than visibility_timeout_secs ({}), or every lease would be extended at once and forever",
                    self.visibility_timeout_secs
                ),
            );
        }
        if self.max_receive_count == 0 {
            problems.bad(&key("max_receive_count"), &0, "must be at least 1");
        }
        if self.retry.base_secs == 0 {
            problems.bad(&key("retry.base_secs"), &0, "must be at least 1");
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            problems.bad(
                &key("retry.multiplier"),
                &self.retry.multiplier,
                "must be a number >= 1.0",
            );
        }
        if self.routes.is_empty() {
            problems.bad(
                &key("routes"),
                &"[]",
                "add at least one [[queues.<name>.routes]] with pipelines, or every event would be unrouted",
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let route_key = |field: &str| format!("queues.{name}.routes[{i}].{field}");
            let attributes = route
                .attributes
                .iter()
                .map(|(name, pattern)| (format!("attributes.{name}"), pattern));
            for (field, pattern) in [
                ("source".to_owned(), &route.source),
                ("detail_type".to_owned(), &route.detail_type),
            ]
            .into_iter()
            .chain(attributes)
            {
                if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
                    problems.bad(
                        &route_key(&field),
                        &format!("{pattern:?}"),
                        "use an exact value, a prefix ending in '*', or \"*\"",
                    );
                }
            }
            if route.pipelines.is_empty() {
                problems.bad(&route_key("pipelines"), &"[]", "name at least one pipeline");
            }
        }
        if self.deadline_secs == 0 || self.deadline_secs > u64::from(SQS_MAX_VISIBILITY_SECS) {
            problems.bad(
                &key("deadline_secs"),
                &self.deadline_secs,
                "must be 1..=43200 (no lease outlives SQS's 12-hour visibility cap)",
            );
        }
        if self.retry.cap_secs < self.retry.base_secs
            || self.retry.cap_secs > SQS_MAX_VISIBILITY_SECS
        {
            problems.bad(
                &key("retry.cap_secs"),
                &self.retry.cap_secs,
                &format!(
                    "must be between retry.base_secs ({}) and 43200 (SQS's visibility cap)",
                    self.retry.base_secs
                ),
            );
        }
    }
}

impl PipelineConfig {
    pub(super) fn validate(&self, name: &str, problems: &mut Problems) {
        if self.timeout_secs == 0 {
            problems.bad(
                &format!("pipelines.{name}.timeout_secs"),
                &0,
                "must be at least 1",
            );
        }
    }
}
