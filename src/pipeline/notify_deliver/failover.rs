//! When a channel gives up: the next channel of the notification's failover, or the dead-letter
//! queue with every channel's last error; and the backoff between a channel's attempts.

use std::time::Duration;

use chrono::Utc;

use super::{ClaimGuard, Deliver};
use crate::contract::ranked::{self, RankedNotification};
use crate::fault::PipelineError;
use crate::notify::deliver::SendError;
use crate::notify::deliveries::Finish;
use crate::telemetry;

impl Deliver {
    /// The channel gives up on the notification: the next channel of its failover gets it, or,
    /// with none left, it is dead-lettered with every channel's last error.
    pub(super) async fn fail_over(
        &self,
        n: &RankedNotification,
        guard: &mut ClaimGuard,
        attempts: u32,
        error: SendError,
        attempted: bool,
    ) -> Result<(), PipelineError> {
        let channel = n.channel;
        let Some((next, rest)) = n.failover.split_first() else {
            guard
                .finish(Finish::Failed {
                    error: error.reason(),
                    attempted,
                })
                .await
                .map_err(|e| self.db_error("recording a failed channel", &e))?;
            let tried = self
                .deliveries
                .of_event(n.tenant_id, &n.event_id)
                .await
                .map_err(|e| self.db_error("reading the delivery record", &e))?;
            let errors = tried
                .iter()
                .map(|c| {
                    format!(
                        "{} ({} attempts): {}",
                        c.channel,
                        c.attempts,
                        c.last_error.as_deref().unwrap_or("no error recorded")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), reason = error.label(), channels = tried.len(), "every channel failed: dead-lettering");
            return Err(PipelineError::Permanent(format!(
                "every channel failed: {errors}"
            )));
        };
        let moved = RankedNotification {
            channel: next.channel,
            delivery: ranked::Delivery {
                address: next.address.clone(),
                provider: None,
                rate_limit_key: ranked::rate_limit_key(next.channel, n.tenant_id),
            },
            failover: rest.to_vec(),
            attempt: n.attempt + attempts,
            send_after: Utc::now(),
            ..n.clone()
        };
        // Sent before the channel is recorded failed: a crash in between sends the failover
        // twice, which its channel's record absorbs; the other order could lose it.
        self.priority
            .send(crate::pipeline::notify_rank::ranked_message(&moved)?, 0)
            .await?;
        guard
            .finish(Finish::Failed {
                error: error.reason(),
                attempted,
            })
            .await
            .map_err(|e| self.db_error("recording a failed channel", &e))?;
        telemetry::notify_failover(channel.as_str(), next.channel.as_str());
        tracing::info!(event_id = %n.event_id, tenant_id = %n.tenant_id, from = channel.as_str(), to = next.channel.as_str(), attempts, reason = error.label(), error = %error, "channel failed: failing over");
        Ok(())
    }

    /// Full jitter: uniform in [0, min(cap, base × 2ⁿ)], n = attempts so far − 1.
    pub(super) fn backoff(&self, attempts: u32) -> Duration {
        let d = &self.config.delivery;
        let exp = attempts.saturating_sub(1).min(30);
        let ceiling_ms = d
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(d.backoff_cap_secs * 1000);
        Duration::from_millis(rand::random_range(0..=ceiling_ms))
    }
}
