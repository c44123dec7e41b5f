//! What can go wrong outside a message's own data, in words every layer shares: the
//! dependencies conveyor calls ([`Dependency`]) and a pipeline's failure split by what the
//! message's fate should be ([`PipelineError`]). Pipelines, the extraction and the notification
//! stages return these; the engine alone decides what each means for the message. It sits
//! below everything that produces or reads them, so none of them imports another for its
//! error type.

use serde::Serialize;

/// Something outside conveyor that pipelines need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    Postgres,
    Graph,
    Model,
    EventBridge,
    /// SQS as a destination: the notification stages sending to the next stage's queue.
    Sqs,
    /// S3: the notification drops `notify-ingest` reads.
    S3,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Graph => "graph",
            Dependency::Model => "model",
            Dependency::EventBridge => "eventbridge",
            Dependency::Sqs => "sqs",
            Dependency::S3 => "s3",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
