//! The delivery record: one row per (tenant, eventId, channel) in `notify_deliveries`. It makes
//! delivery **at most once per channel** — a send happens only under a claim on the row, and a
//! row marked `delivered` stops every later send on that channel — and it is what
//! `conveyor notify status` reads.
//!
//! **In doubt.** A send cut short after it went out — it timed out, its run was aborted (a lost
//! lease, the shutdown grace) or its process was killed — may have reached the provider. Its
//! row is then *in doubt*: `sending` with no live claim. Nothing sends on the channel again
//! until `notify.delivery.in_doubt_hold_secs` has passed since then; after it, the next
//! delivery sends once more. Webhooks carry the eventId as `webhook-id`, so receivers drop the
//! repeat; SES and SNS have no lookup of what an account sent, so email, SMS and push are at
//! least once across that one hold. docs/notifications.md has the table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::contract::notification::Channel;

/// What a claim on a channel's row found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Send now; `attempts` failed before. `reserved`: a rate-limit token was reserved for this
    /// send earlier (see `bucket`), due in this many seconds (negative: due that long ago);
    /// the send takes no other unless it is too late to use it.
    Claimed {
        token: Uuid,
        attempts: u32,
        reserved: Option<f64>,
        /// The send before this one was in doubt (and its hold is over): this is its resend.
        in_doubt: bool,
    },
    /// This channel already delivered it.
    Delivered,
    /// This channel gave up on it before (and its failover was sent).
    Failed,
    /// Another delivery holds the claim this much longer.
    Busy(Duration),
    /// An earlier send may have gone out; not sent again for this much longer.
    InDoubt(Duration),
}

/// One channel's row, for `notify status` and the dead letter's reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelState {
    pub tenant_id: Uuid,
    pub channel: String,
    pub state: String,
    pub attempts: i32,
    pub next_at: Option<DateTime<Utc>>,
    /// Why it waits until `next_at` (see [`Held`]).
    pub held_for: Option<String>,
    /// For quiet hours: the user's time zone.
    pub held_zone: Option<String>,
    pub last_error: Option<String>,
    pub provider_id: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Deliveries {
    pool: PgPool,
}

impl Deliveries {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Claims the channel's send for `hold` unless it is delivered, failed, claimed by a
    /// delivery whose claim has not expired, or in doubt for less than `in_doubt_hold`.
    ///
    /// A claim that expired unfinished (its process was killed) is in doubt from its expiry:
    /// the send may have gone out just before.
    pub async fn claim(
        &self,
        tenant: Uuid,
        event_id: &str,
        channel: Channel,
        hold: Duration,
        in_doubt_hold: Duration,
    ) -> Result<Claim, sqlx::Error> {
        let token = Uuid::new_v4();
        let claimed: Option<(i32, Option<f64>, bool)> = sqlx::query_as(
            r#"
            WITH before AS (
                SELECT state FROM notify_deliveries
                WHERE tenant_id = $1 AND event_id = $2 AND channel = $3
            )
            INSERT INTO notify_deliveries AS d (tenant_id, event_id, channel, state, claim, claimed_until)
            VALUES ($1, $2, $3, 'sending', $4, clock_timestamp() + make_interval(secs => $5))
            ON CONFLICT (tenant_id, event_id, channel) DO UPDATE
            SET state = 'sending', claim = EXCLUDED.claim, claimed_until = EXCLUDED.claimed_until,
                updated_at = clock_timestamp()
            WHERE d.state NOT IN ('delivered', 'failed')
              AND (d.claimed_until IS NULL OR d.claimed_until < clock_timestamp())
              AND NOT (d.state = 'sending' AND d.claim IS NOT NULL
                       AND d.claimed_until + make_interval(secs => $6) > clock_timestamp())
            RETURNING d.attempts, EXTRACT(EPOCH FROM (d.reserved_at - clock_timestamp()))::float8,
                      COALESCE((SELECT state = 'sending' FROM before), false)
            "#,
        )
        .bind(tenant)
        .bind(event_id)
        .bind(channel.as_str())
        .bind(token)
        .bind(hold.as_secs_f64())
        .bind(in_doubt_hold.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        if let Some((attempts, reserved, in_doubt)) = claimed {
            return Ok(Claim::Claimed {
                token,
                attempts: attempts.max(0) as u32,
                reserved: reserved.map(|secs| secs.min(1e9)),
                in_doubt,
            });
        }
        let (state, claimed, remaining): (String, bool, Option<f64>) = sqlx::query_as(
            r#"
            SELECT state, claim IS NOT NULL,
                   EXTRACT(EPOCH FROM (claimed_until - clock_timestamp()))::float8
            FROM notify_deliveries WHERE tenant_id = $1 AND event_id = $2 AND channel = $3
            "#,
        )
        .bind(tenant)
        .bind(event_id)
        .bind(channel.as_str())
        .fetch_one(&self.pool)
        .await?;
        let remaining = remaining.unwrap_or(0.0);
        let wait = |secs: f64| Duration::from_secs_f64(secs.clamp(0.1, 86_400.0));
        Ok(match state.as_str() {
            "delivered" => Claim::Delivered,
            "failed" => Claim::Failed,
            "sending" if !claimed => Claim::InDoubt(wait(remaining)),
            // A claim that expired unfinished: in doubt from its expiry.
            "sending" if remaining <= 0.0 => {
                Claim::InDoubt(wait(remaining + in_doubt_hold.as_secs_f64()))
            }
            _ => Claim::Busy(wait(remaining)),
        })
    }

    /// Opens a failed channel again for a new round of attempts: a dead-lettered notification
    /// that an operator redrives. Returns whether the row was failed.
    pub async fn reopen(
        &self,
        tenant: Uuid,
        event_id: &str,
        channel: Channel,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            r#"
            UPDATE notify_deliveries SET state = 'retrying', attempts = 0, next_at = NULL,
                updated_at = clock_timestamp()
            WHERE tenant_id = $1 AND event_id = $2 AND channel = $3 AND state = 'failed'
            "#,
        )
        .bind(tenant)
        .bind(event_id)
        .bind(channel.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The send under `token` was accepted by the provider.
    pub async fn delivered(
        &self,
        tenant: Uuid,
        event_id: &str,
        channel: Channel,
        token: Uuid,
        provider_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        self.finish(
            tenant,
            event_id,
            channel,
            token,
            Finish::Delivered { provider_id },
        )
        .await
    }

    /// Ends `token`'s claim: see [`Finish`]. A token that no longer holds the claim changes
    /// nothing (its claim expired and another delivery owns the row now).
    pub async fn finish(
        &self,
        tenant: Uuid,
        event_id: &str,
        channel: Channel,
        token: Uuid,
        finish: Finish<'_>,
    ) -> Result<(), sqlx::Error> {
        // A reservation is kept by a plain deferral (it is still this send's token), set by a
        // reserving one, and spent by anything that sent or gave up.
        let (state, error, next_at, provider_id, failed_attempt) = match finish {
            Finish::Delivered { provider_id } => ("delivered", None, None, provider_id, false),
            Finish::Retrying { error, next_at } => {
                ("retrying", Some(error), Some(next_at), None, true)
            }
            Finish::Deferred { until, .. } | Finish::Reserved { until, .. } => {
                ("deferred", None, Some(until), None, false)
            }
            Finish::InDoubt { error, until } => ("sending", Some(error), Some(until), None, true),
            Finish::Failed { error, attempted } => ("failed", Some(error), None, None, attempted),
        };
        let (keep_reservation, reserve_in) = match finish {
            Finish::Deferred { held, .. } => (!matches!(held, Held::QuietHours(_)), None),
            Finish::Reserved { due_in, .. } => (false, Some(due_in.as_secs_f64())),
            _ => (false, None),
        };
        let (held_for, held_zone) = match finish {
            Finish::Deferred { held, .. } => (Some(held.as_str()), held.zone()),
            Finish::Reserved { .. } => (Some(Held::RateLimit.as_str()), None),
            Finish::Retrying { .. } => (Some(Held::Backoff.as_str()), None),
            Finish::InDoubt { .. } => (Some(Held::InDoubt.as_str()), None),
            Finish::Delivered { .. } | Finish::Failed { .. } => (None, None),
        };
        // In doubt: `sending` without a claim, `claimed_until` the end of its hold (which an
        // old daemon, unaware of doubt, waits for too).
        let in_doubt_until = match finish {
            Finish::InDoubt { until, .. } => Some(until),
            _ => None,
        };
        sqlx::query(
            r#"
            UPDATE notify_deliveries
            SET state = $5,
                last_error = COALESCE($6, last_error),
                next_at = $7,
                provider_id = COALESCE($8, provider_id),
                delivered_at = CASE WHEN $5 = 'delivered' THEN clock_timestamp() ELSE delivered_at END,
                attempts = attempts + CASE WHEN $9 THEN 1 ELSE 0 END,
                reserved_at = CASE
                    WHEN $11::float8 IS NOT NULL THEN clock_timestamp() + make_interval(secs => $11)
                    WHEN $10 THEN reserved_at
                END,
                held_for = $12, held_zone = $13,
                claim = NULL, claimed_until = $14, updated_at = clock_timestamp()
            WHERE tenant_id = $1 AND event_id = $2 AND channel = $3 AND claim = $4
            "#,
        )
        .bind(tenant)
        .bind(event_id)
        .bind(channel.as_str())
        .bind(token)
        .bind(state)
        .bind(error)
        .bind(next_at)
        .bind(provider_id)
        .bind(failed_attempt)
        .bind(keep_reservation)
        .bind(reserve_in)
        .bind(held_for)
        .bind(held_zone)
        .bind(in_doubt_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every channel's row for one notification, in the order they were first tried.
    pub async fn of_event(
        &self,
        tenant: Uuid,
        event_id: &str,
    ) -> Result<Vec<ChannelState>, sqlx::Error> {
        self.rows(Some(tenant), event_id).await
    }

    /// Every tenant's rows for an eventId (an operator's `notify status` without `--tenant`).
    pub async fn rows(
        &self,
        tenant: Option<Uuid>,
        event_id: &str,
    ) -> Result<Vec<ChannelState>, sqlx::Error> {
        let rows: Vec<ChannelRow> = sqlx::query_as(
            r#"
            SELECT tenant_id, channel, state, attempts, next_at, held_for, held_zone, last_error,
                   provider_id, delivered_at, updated_at
            FROM notify_deliveries
            WHERE event_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
            ORDER BY tenant_id, created_at, channel
            "#,
        )
        .bind(event_id)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ChannelState::from).collect())
    }

    /// Deletes rows untouched for `older_than`: past every queue's retention, no delivery can
    /// need them. Returns how many.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM notify_deliveries WHERE updated_at < clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// How a claim ends.
#[derive(Debug, Clone, Copy)]
pub enum Finish<'a> {
    Delivered {
        provider_id: Option<&'a str>,
    },
    /// A retryable failure (counted as an attempt); tried again no sooner than `next_at`.
    Retrying {
        error: &'a str,
        next_at: DateTime<Utc>,
    },
    /// Not sent, not failed: waiting until `until`, for the reason `held`. A token reserved
    /// for the send stays reserved, except through quiet hours (they outlast it).
    Deferred {
        until: DateTime<Utc>,
        held: Held<'a>,
    },
    /// Not sent: a rate-limit token is reserved for the send, due in `due_in` (the database's
    /// clock, from now); back at `until` (no later), it sends without taking another.
    Reserved {
        until: DateTime<Utc>,
        due_in: Duration,
    },
    /// The send went out and its outcome is unknown (it timed out, or its run was aborted):
    /// counted as an attempt, and not sent again before `until` (see the module's doc).
    InDoubt {
        error: &'a str,
        until: DateTime<Utc>,
    },
    /// The channel gives up; `attempted`: this claim's send failed (counted as an attempt).
    Failed {
        error: &'a str,
        attempted: bool,
    },
}

/// Why a channel's send waits (`held_for` on its row, which `notify status` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    /// The user's quiet hours, in this IANA time zone.
    QuietHours(&'a str),
    /// Its rate-limit token is reserved ahead.
    RateLimit,
    /// An earlier send may have gone out.
    InDoubt,
    /// Backing off after a failed attempt.
    Backoff,
    /// The provider is unavailable to conveyor (its breaker is open, it throttles).
    Provider,
    /// Its run ended before the send (aborted: a lost lease, shutdown).
    Aborted,
}

impl<'a> Held<'a> {
    pub fn as_str(&self) -> &'static str {
        match self {
            Held::QuietHours(_) => "quiet_hours",
            Held::RateLimit => "rate_limit",
            Held::InDoubt => "in_doubt",
            Held::Backoff => "backoff",
            Held::Provider => "provider",
            Held::Aborted => "aborted",
        }
    }

    fn zone(self) -> Option<&'a str> {
        match self {
            Held::QuietHours(zone) => Some(zone),
            _ => None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    tenant_id: Uuid,
    channel: String,
    state: String,
    attempts: i32,
    next_at: Option<DateTime<Utc>>,
    held_for: Option<String>,
    held_zone: Option<String>,
    last_error: Option<String>,
    provider_id: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl From<ChannelRow> for ChannelState {
    fn from(r: ChannelRow) -> Self {
        Self {
            tenant_id: r.tenant_id,
            channel: r.channel,
            state: r.state,
            attempts: r.attempts,
            next_at: r.next_at,
            held_for: r.held_for,
            held_zone: r.held_zone,
            last_error: r.last_error,
            provider_id: r.provider_id,
            delivered_at: r.delivered_at,
            updated_at: r.updated_at,
        }
    }
}
