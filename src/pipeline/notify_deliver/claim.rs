//! The claim a `notify-deliver` run holds on a channel's delivery record, ended on every path.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::contract::ranked::RankedNotification;
use crate::notify::deliveries::{Deliveries, Finish, Held};
use crate::telemetry;

/// Ends a claim the run did not finish (its task aborted: a timeout, a lost lease, shutdown),
/// so the next delivery need not wait for it to expire: released when the send had not gone
/// out, in doubt for `in_doubt_hold` when it had. Best effort: a killed process leaves the
/// claim to expire, and the record treats an expired claim as in doubt.
pub(super) struct ClaimGuard {
    deliveries: Deliveries,
    tenant: Uuid,
    event_id: String,
    channel: crate::contract::notification::Channel,
    token: Option<Uuid>,
    in_doubt_hold: Duration,
    sending: bool,
}

impl ClaimGuard {
    pub(super) fn new(
        deliveries: &Deliveries,
        n: &RankedNotification,
        token: Uuid,
        in_doubt_hold: Duration,
    ) -> Self {
        Self {
            deliveries: deliveries.clone(),
            tenant: n.tenant_id,
            event_id: n.event_id.clone(),
            channel: n.channel,
            token: Some(token),
            in_doubt_hold,
            sending: false,
        }
    }

    /// The provider call starts: from here, a run cut short leaves the channel in doubt.
    pub(super) fn sending(&mut self) {
        self.sending = true;
    }

    pub(super) async fn finish(&mut self, finish: Finish<'_>) -> Result<(), sqlx::Error> {
        let Some(token) = self.token.take() else {
            return Ok(());
        };
        self.deliveries
            .finish(self.tenant, &self.event_id, self.channel, token, finish)
            .await
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let (deliveries, tenant, event_id, channel, sending) = (
            self.deliveries.clone(),
            self.tenant,
            std::mem::take(&mut self.event_id),
            self.channel,
            self.sending,
        );
        let in_doubt_until = Utc::now()
            + chrono::Duration::from_std(self.in_doubt_hold).unwrap_or(chrono::Duration::MAX);
        if sending {
            telemetry::notify_in_doubt(channel.as_str(), "held");
            tracing::warn!(event_id = %event_id, tenant_id = %tenant, channel = channel.as_str(), hold_secs = self.in_doubt_hold.as_secs(), "a send was cut short after it went out: in doubt, not sent again before its hold ends");
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let finish = if sending {
                    Finish::InDoubt {
                        error: "the send was cut short after it went out (its run was aborted)",
                        until: in_doubt_until,
                    }
                } else {
                    Finish::Deferred {
                        until: Utc::now(),
                        held: Held::Aborted,
                    }
                };
                let _ = deliveries
                    .finish(tenant, &event_id, channel, token, finish)
                    .await;
            });
        }
    }
}
