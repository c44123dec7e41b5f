//! What can go wrong outside a message's own data, in words every layer shares: the
//! dependencies conveyor calls ([`Dependency`]), the four classes every dependency error falls
//! in ([`Class`], decided once, in [`classify`]) and a pipeline's failure split by what the
//! message's fate should be ([`PipelineError`]). Pipelines, the extraction and the notification
//! stages return these; the engine alone decides what each means for the message (and tells
//! the circuit breakers). It sits below everything that produces or reads them, so none of
//! them imports another for its error type. The table of which error is which class, and why,
//! is docs/faults.md.

pub mod classify;

use serde::Serialize;

/// What a dependency's error says about who is at fault, and so what it may cost a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The dependency is unavailable: unreachable, timed out, 5xx, throttling the whole
    /// account, a lock wait. Counts toward its breaker; never spends a message's retries.
    Outage,
    /// conveyor is set up wrong for it: credentials, a permission, a missing identity or
    /// resource. Every message that needs it fails alike: its breaker opens at once, `/readyz`
    /// names what to fix, and no message spends its retries on it.
    Configuration,
    /// This message (or its address) can never pass: it is dead-lettered, or its channel
    /// fails over.
    Message,
    /// This call failed and another may pass (a serialization conflict, a 429 for one
    /// receiver, a reply that did not parse): retried with backoff, spending the message's
    /// retries, the guard against poison.
    Transient,
}

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
    /// S3: the notification drops `notify-ingest` reads, claim-checked bodies.
    S3,
    /// SES: the email channel.
    Ses,
    /// SNS: the SMS and push channels.
    Sns,
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
            Dependency::Ses => "ses",
            Dependency::Sns => "sns",
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
    /// A configuration fault of a dependency ([`Class::Configuration`]): credentials or a
    /// permission refused, a missing identity. Opens its breaker at once, names the fix in
    /// `/readyz`, and never spends the message's retries (an outage as far as it is concerned).
    #[error("{1}")]
    Denied(Dependency, String),
    /// Not a failure: not now. The message is handled again no sooner than `until`, without
    /// spending a receive (`engine::Outcome::Defer`): a notification waiting for its
    /// `sendAfter`, a rate-limit token or its next retry.
    #[error("deferred: {reason}")]
    Defer {
        until: std::time::SystemTime,
        reason: String,
    },
}

impl PipelineError {
    /// The error a failed call of `dependency` means, by its [`Class`].
    pub fn classified(dependency: Dependency, class: Class, reason: String) -> Self {
        match class {
            Class::Outage => PipelineError::Unavailable(dependency, reason),
            Class::Configuration => PipelineError::Denied(dependency, reason),
            Class::Message => PipelineError::Permanent(reason),
            Class::Transient => PipelineError::Retryable(reason),
        }
    }

    /// The dependency at fault, for an outage or a configuration fault.
    pub fn dependency(&self) -> Option<Dependency> {
        match self {
            PipelineError::Unavailable(d, _) | PipelineError::Denied(d, _) => Some(*d),
            _ => None,
        }
    }
}
