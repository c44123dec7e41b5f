//! What holds a due notification back at delivery, before its claim is spent on a send: a
//! `sendAfter` too far ahead to be honest (refused), and the user's quiet hours as they are
//! now — preferences may have changed since ranking.

use chrono::{DateTime, Utc};

use super::Deliver;
use crate::contract::ranked::RankedNotification;
use crate::fault::PipelineError;
use crate::notify::prefs::PrefsError;
use crate::notify::rank::quiet_until;
use crate::telemetry::otel;

impl Deliver {
    /// A `sendAfter` more than `notify.max_defer_secs` ahead is the message's own fault
    /// (a producer's mistake, or a year 9999): dead-lettered with the reason.
    pub(super) fn check_send_after(
        &self,
        n: &RankedNotification,
        now: DateTime<Utc>,
    ) -> Result<(), PipelineError> {
        let max = self.config.max_defer_secs;
        let limit = now + chrono::Duration::seconds(i64::try_from(max).unwrap_or(i64::MAX));
        if n.send_after <= limit {
            return Ok(());
        }
        Err(PipelineError::Permanent(format!(
            "sendAfter {} is more than notify.max_defer_secs ({max} s, {:.1} days) ahead: not held that long; send it again with a nearer sendAfter, or raise notify.max_defer_secs",
            n.send_after
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            max as f64 / 86_400.0
        )))
    }

    /// The end of the user's quiet hours if `now` is inside them and the notification's
    /// priority does not bypass them, with the user's zone: read from the preferences as they
    /// are now.
    pub(super) async fn quiet_hours_now(
        &self,
        n: &RankedNotification,
        now: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, &'static str)>, PipelineError> {
        if n.priority >= self.config.quiet_hours_bypass_priority {
            return Ok(None);
        }
        let lookup = self.prefs.get(n.tenant_id, &n.user_id);
        let span = otel::db("postgresql", "select", "notify_preferences");
        let prefs = match otel::traced(span, lookup).await {
            Ok(prefs) => prefs,
            Err(PrefsError::Database(e)) => {
                return Err(self.db_error("reading preferences for quiet hours", &e));
            }
            // Stored preferences that no longer validate: ranking reports them; delivery
            // sends what was ranked rather than guess at quiet hours.
            Err(PrefsError::Stored(_)) => None,
        };
        Ok(prefs
            .and_then(|p| p.quiet_hours)
            .and_then(|q| quiet_until(&q, now).map(|until| (until, q.time_zone.name()))))
    }
}
