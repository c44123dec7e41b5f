//! How `notify-deliver` waits: in place for a short while (the lease is kept), or by deferring
//! the notification (`PipelineError::Defer`: a delayed copy, no receive spent).

use std::time::{Duration, SystemTime};

use chrono::Utc;

use crate::fault::PipelineError;
use crate::telemetry;

/// A wait for a retry: held here when `in_place` (short; the lease is kept), else
/// the notification is deferred until `until` and counted as deferred for `label`.
pub(super) async fn wait_or_defer(
    in_place: bool,
    wait: Duration,
    until: chrono::DateTime<Utc>,
    label: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), PipelineError> {
    if in_place {
        tokio::time::sleep(wait).await;
        return Ok(());
    }
    telemetry::notify_deferred(label);
    Err(defer_until(until, reason()))
}

pub(super) fn defer_until(until: chrono::DateTime<Utc>, reason: String) -> PipelineError {
    PipelineError::Defer {
        until: SystemTime::from(until),
        reason,
    }
}

pub(super) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Up to `spread` more, so waiters on one breaker do not all come back at once.
pub(super) fn jitter(spread: Duration) -> Duration {
    Duration::from_micros(rand::random_range(
        0..=spread.as_micros().min(u64::MAX as u128) as u64,
    ))
}
