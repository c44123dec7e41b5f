//! The claim a `notify-deliver` run holds on a channel's delivery record, ended on every path.

use chrono::Utc;
use uuid::Uuid;

use crate::contract::ranked::RankedNotification;
use crate::notify::deliveries::{Deliveries, Finish};

/// Ends a claim the run did not finish (its task aborted: a timeout, a lost lease, shutdown),
/// so the next delivery need not wait for it to expire. Best effort: a killed process leaves
/// the claim to expire.
pub(super) struct ClaimGuard {
    deliveries: Deliveries,
    tenant: Uuid,
    event_id: String,
    channel: crate::contract::notification::Channel,
    token: Option<Uuid>,
}

impl ClaimGuard {
    pub(super) fn new(deliveries: &Deliveries, n: &RankedNotification, token: Uuid) -> Self {
        Self {
            deliveries: deliveries.clone(),
            tenant: n.tenant_id,
            event_id: n.event_id.clone(),
            channel: n.channel,
            token: Some(token),
        }
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
        let (deliveries, tenant, event_id, channel) = (
            self.deliveries.clone(),
            self.tenant,
            std::mem::take(&mut self.event_id),
            self.channel,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let until = Utc::now();
                let _ = deliveries
                    .finish(
                        tenant,
                        &event_id,
                        channel,
                        token,
                        Finish::Deferred { until },
                    )
                    .await;
            });
        }
    }
}
