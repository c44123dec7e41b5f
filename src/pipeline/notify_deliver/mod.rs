//! The `notify-deliver` pipeline: the notification system's delivery stage, on the `priority`
//! queue. For each RankedNotification v1:
//!
//! 1. `sendAfter` more than `notify.max_defer_secs` ahead → dead-lettered (`holds.rs`). Not
//!    yet due (quiet hours past SQS's 15-minute delay) → deferred until then, without
//!    spending a receive.
//! 2. Claim the (tenant, eventId, channel) row of the delivery record
//!    (`src/notify/deliveries.rs`): already delivered → deleted unsent; another delivery
//!    sending it → waited for; an earlier send in doubt → held until its hold ends.
//! 3. Inside the user's quiet hours as they are *now* (preferences change after ranking) →
//!    held until they end (`holds.rs`).
//! 4. Reserve the next token of the `rateLimitKey`'s bucket, and of the provider's account
//!    bucket (`src/notify/bucket.rs`), from this daemon's lease or in one statement: there →
//!    send now; due later → wait in place when it is due within 2 s, else defer, the
//!    reservation recorded on the delivery record, to come back a second or two before it is
//!    due, wait the rest in place and send without touching the bucket again. Counted, never a
//!    failure.
//! 5. Send through the channel's provider (`src/notify/deliver/`). Accepted → recorded
//!    delivered, with its end-to-end latency from `occurredAt`. Refused or unavailable to
//!    conveyor (credentials, throttling, 5xx) → the provider's breaker, nothing spent.
//!    Unanswered after it went out → in doubt: held `notify.delivery.in_doubt_hold_secs`,
//!    then sent once more. Retryable → backoff with full jitter, 100 ms × 2ⁿ capped at 30 s:
//!    steps under a second in place, longer ones deferred (a channel's retries never spend the
//!    queue's receives, which stay the guard against poison). Permanent, or
//!    `attempts_per_channel` spent → fail over (`failover.rs`): the next channel of `failover`
//!    as a new RankedNotification on the same queue; none left → dead-lettered with every
//!    channel's last error.

mod claim;
mod failover;
mod holds;
mod waits;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use tracing::Instrument;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::breaker::Breakers;
use crate::config::{NotifyConfig, SigningSecrets};
use crate::contract::Contract;
use crate::contract::ranked::RankedNotification;
use crate::fault::Dependency;
use crate::notify::bucket::{Buckets, Reservation, STALE};
use crate::notify::deliver::email::Email;
use crate::notify::deliver::sns::{Push, Sms};
use crate::notify::deliver::webhook::Webhook;
use crate::notify::deliver::{Providers, SendError};
use crate::notify::deliveries::{Claim, Deliveries, Finish, Held};
use crate::notify::outbox::Outbox;
use crate::notify::prefs::PreferenceStore;
use crate::telemetry::{self, otel};
use claim::ClaimGuard;
use waits::{chrono_duration, defer_until, jitter, wait_or_defer};

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "notify-deliver",
    accepts: &[Contract::RankedNotificationV1],
    needs: &[Need::Postgres, Need::Notify],
    timeout_secs: 120,
    build: |shared| {
        Box::pin(async move {
            let notify = shared.notify()?;
            let pool = shared.postgres()?;
            let aws = shared.aws()?;
            let secrets = match &shared.config.secrets.notify_webhook_secrets {
                Some(s) => SigningSecrets::parse(s.expose()).map_err(anyhow::Error::msg)?,
                None => SigningSecrets::default(),
            };
            let sns = aws_sdk_sns::Client::new(aws);
            let providers = Providers {
                email: Box::new(Email::new(
                    aws_sdk_ses::Client::new(aws),
                    notify.email.clone(),
                )),
                sms: Box::new(Sms::new(sns.clone(), notify.sms.clone())),
                push: Box::new(Push::new(sns)),
                webhook: Box::new(Webhook::new(
                    secrets,
                    notify.webhook.allow_private_targets,
                    Duration::from_secs(notify.delivery.send_timeout_secs),
                )?),
            };
            let priority = Outbox::resolve(
                aws_sdk_sqs::Client::new(aws),
                &notify.priority_queue,
                "notify.priority_queue",
            )
            .await?;
            Ok(Arc::new(NotifyDeliver(Arc::new(Deliver {
                deliveries: Deliveries::new(pool.clone()),
                prefs: PreferenceStore::new(pool.clone()),
                buckets: Buckets::new(
                    pool,
                    Duration::from_millis(notify.delivery.rate_limit_lease_ms),
                ),
                providers,
                priority,
                breakers: shared.breakers.clone(),
                config: notify,
            }))) as Arc<dyn Pipeline>)
        })
    },
};

/// Waits shorter than this happen in place; longer ones defer the message.
const IN_PLACE: Duration = Duration::from_secs(1);
/// A reserved token due within this is waited for in place. A later one defers the message to
/// come back in the whole seconds before it is due, less one: SQS delays are whole seconds and
/// a delayed message may come back up to a second late, and messages back after their tokens
/// were due would all send at once.
const RESERVED_IN_PLACE: Duration = Duration::from_secs(2);
/// A claim outlives the send it covers by this much (the record written after it).
const CLAIM_MARGIN: Duration = Duration::from_secs(20);

pub struct NotifyDeliver(Arc<Deliver>);

struct Deliver {
    deliveries: Deliveries,
    prefs: PreferenceStore,
    buckets: Buckets,
    providers: Providers,
    priority: Outbox,
    breakers: Breakers,
    config: NotifyConfig,
}

impl Pipeline for NotifyDeliver {
    fn name(&self) -> &'static str {
        "notify-deliver"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::Postgres, Dependency::Sqs]
    }

    /// The delivery record is this pipeline's ledger, per channel: the engine's ledger (per
    /// eventId) would skip a failover, which carries the same eventId.
    fn deduplicated(&self) -> bool {
        false
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let deliver = self.0.clone();
        Box::pin(async move {
            let Some(n) = delivery.ranked.as_deref() else {
                return Err(PipelineError::Permanent(format!(
                    "the notify-deliver pipeline needs a RankedNotification v1, not {:?}; route only the priority queue's messages to it",
                    delivery.event.detail_type
                )));
            };
            deliver.deliver(n, &delivery).await
        })
    }
}

impl Deliver {
    async fn deliver(
        &self,
        n: &RankedNotification,
        delivery: &Delivery,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let now = Utc::now();
        self.check_send_after(n, now)?;
        if n.send_after > now {
            telemetry::notify_deferred("not_due");
            return Err(defer_until(
                n.send_after,
                "not due before its sendAfter".into(),
            ));
        }
        let channel = n.channel;
        let send_timeout = Duration::from_secs(self.config.delivery.send_timeout_secs);
        let hold = send_timeout + CLAIM_MARGIN;
        let in_doubt_hold = Duration::from_secs(self.config.delivery.in_doubt_hold_secs);
        let (mut reopened, busy_since) = (false, Instant::now());
        loop {
            let claim =
                self.deliveries
                    .claim(n.tenant_id, &n.event_id, channel, hold, in_doubt_hold);
            let claim = otel::traced(otel::db("postgresql", "claim", "notify_deliveries"), claim)
                .await
                .map_err(|e| self.db_error("claiming the delivery record", &e))?;
            let (token, attempts, reserved, resend) = match claim {
                Claim::Delivered => {
                    telemetry::notify_duplicate_skipped(channel.as_str());
                    tracing::info!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), "already delivered on this channel: not sent again");
                    return Ok(());
                }
                // The channel gave up earlier and its failover was sent then.
                Claim::Failed if !n.failover.is_empty() || reopened => return Ok(()),
                // The last channel gave up and the notification was dead-lettered: this is it
                // coming back (`conveyor dlq redrive`), so the channel gets a new round.
                Claim::Failed => {
                    self.deliveries
                        .reopen(n.tenant_id, &n.event_id, channel)
                        .await
                        .map_err(|e| self.db_error("reopening a failed channel", &e))?;
                    reopened = true;
                    tracing::info!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), "a dead-lettered notification is back (redriven): trying its channel again");
                    continue;
                }
                Claim::Busy(remaining) => {
                    if busy_since.elapsed() > hold {
                        return Err(PipelineError::RetryAfter(
                            "another delivery is sending this notification on this channel".into(),
                            remaining,
                        ));
                    }
                    tokio::time::sleep(remaining.min(Duration::from_millis(500))).await;
                    continue;
                }
                // An earlier send may have gone out: nothing goes out again before its hold.
                Claim::InDoubt(remaining) => {
                    telemetry::notify_deferred("in_doubt");
                    return Err(defer_until(
                        Utc::now() + chrono_duration(remaining),
                        format!(
                            "an earlier send on {} may have gone out: held until its in-doubt hold (notify.delivery.in_doubt_hold_secs) ends",
                            channel.as_str()
                        ),
                    ));
                }
                Claim::Claimed {
                    token,
                    attempts,
                    reserved,
                    in_doubt,
                } => (token, attempts, reserved, in_doubt),
            };
            let mut guard = ClaimGuard::new(&self.deliveries, n, token, in_doubt_hold);
            if attempts >= self.config.delivery.attempts_per_channel {
                // Its attempts were spent before, and the failover did not go out then.
                let error = SendError::permanent(
                    "exhausted",
                    format!("{attempts} attempts spent on this channel"),
                );
                return self.fail_over(n, &mut guard, attempts, error, false).await;
            }
            // Quiet hours as the user has them now (they may have set them after ranking).
            if let Some((until, zone)) = self.quiet_hours_now(n, Utc::now()).await? {
                guard
                    .finish(Finish::Deferred {
                        until,
                        held: Held::QuietHours(zone),
                    })
                    .await
                    .map_err(|e| self.db_error("recording a quiet-hours hold", &e))?;
                telemetry::notify_deferred("quiet_hours_at_delivery");
                return Err(defer_until(
                    until,
                    "the user's quiet hours (as set now): held until they end".into(),
                ));
            }
            // A channel whose provider refuses conveyor (its breaker open: a permission, the
            // credentials, throttling, 5xx) waits for it, deferred without a call and without
            // spending an attempt (a token reserved for the send stays reserved); one send per
            // cooldown goes out as the trial.
            let provider_dependency = provider_dependency(channel);
            if let Some(dependency) = provider_dependency
                && let Err(at) = self.breakers.call_at(dependency)
            {
                let wait = at.saturating_duration_since(tokio::time::Instant::now());
                let until = Utc::now() + chrono_duration(wait + jitter(Duration::from_secs(1)));
                guard
                    .finish(Finish::Deferred {
                        until,
                        held: Held::Provider,
                    })
                    .await
                    .map_err(|e| self.db_error("recording a deferral", &e))?;
                telemetry::notify_deferred("provider_unavailable");
                return Err(defer_until(
                    until,
                    format!("{dependency} is unavailable to conveyor (its circuit is open)"),
                ));
            }
            let reused = reserved.filter(|secs| *secs >= -STALE.as_secs_f64());
            if let Some(secs) = reserved.filter(|_| reused.is_none()) {
                tracing::debug!(event_id = %n.event_id, late_ms = (-secs * 1000.0) as u64, "back too late for its reserved token: reserving anew");
            }
            let due_in = match reused {
                // Reserved when this notification was deferred for it: no second decision.
                Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
                // None, or back too late to use it (the daemon was behind): a token spent long
                // after it was due would send beside the tokens due now, over the bucket.
                // Reserved anew, like a lease's stale token.
                None => self.reserve(n).await?,
            };
            if due_in >= RESERVED_IN_PLACE {
                // Not sending now: a breaker trial this send was granted goes to the next one.
                if let Some(dependency) = provider_dependency {
                    self.breakers.release_trial(dependency);
                }
                let back_in = Duration::from_secs(due_in.as_secs() - 1);
                let until = Utc::now() + chrono_duration(back_in);
                guard
                    .finish(Finish::Reserved { until, due_in })
                    .await
                    .map_err(|e| self.db_error("recording a rate-limit reservation", &e))?;
                // Back before its token for another reason than its own deferral (a redrive):
                // deferred again to it, still without a bucket decision.
                let label = if reused.is_some() {
                    "reservation_early"
                } else {
                    "rate_limited"
                };
                telemetry::notify_deferred(label);
                return Err(defer_until(
                    until,
                    format!(
                        "rate limited: a token of bucket {} is reserved, due in {} ms",
                        n.delivery.rate_limit_key,
                        due_in.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(due_in).await;
            if let Some(dependency) = provider_dependency {
                delivery.used(dependency);
            }
            if resend {
                telemetry::notify_in_doubt(channel.as_str(), "resent");
                tracing::info!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), "an in-doubt send's hold is over: sending it again (a webhook with the same webhook-id)");
            }
            let provider = self.providers.get(channel);
            let send = tokio::time::timeout(send_timeout, provider.send(n, &n.delivery.address));
            let span = otel::deliver(channel.as_str());
            guard.sending();
            let sent = match send.instrument(span.clone()).await {
                Ok(sent) => sent,
                Err(_) => Err(SendError::InDoubt {
                    label: "timeout",
                    reason: format!(
                        "{} did not answer within {}s",
                        channel.as_str(),
                        send_timeout.as_secs()
                    ),
                }),
            };
            if sent.is_err() {
                otel::failed(&span);
            }
            match sent {
                Ok(provider_id) => {
                    let recorded = guard
                        .finish(Finish::Delivered {
                            provider_id: provider_id.as_deref(),
                        })
                        .await;
                    let latency =
                        (Utc::now() - n.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
                    telemetry::notify_delivered(channel.as_str(), latency);
                    tracing::info!(
                        event_id = %n.event_id,
                        tenant_id = %n.tenant_id,
                        user_id = %crate::safe::token(&n.user_id),
                        channel = channel.as_str(),
                        priority = n.priority,
                        attempts = attempts + 1,
                        latency_ms = (latency * 1000.0) as u64,
                        send_ms = started.elapsed().as_millis() as u64,
                        "notification delivered"
                    );
                    if let Err(e) = recorded {
                        // Sent but not recorded: the claim expires unfinished, and the channel
                        // is in doubt until its hold ends (the documented window).
                        tracing::warn!(event_id = %n.event_id, channel = channel.as_str(), error = %crate::safe::error_chain(&e), "delivered, but the delivery record was not written");
                    }
                    return Ok(());
                }
                // The provider refusing conveyor itself (a configuration fault: its breaker
                // opens at once), or unavailable to it (throttling the account, 5xx: an
                // outage, the breaker opens after `failures_to_open`); only AWS providers say
                // so. Not this notification's fault: the claim goes back unspent, with its
                // reservation (nothing went out), and the engine retries the message without
                // spending its receives; while the breaker is open, the channel's sends wait
                // for it (above).
                Err(error @ (SendError::Denied { .. } | SendError::Unavailable { .. }))
                    if provider_dependency.is_some() =>
                {
                    telemetry::notify_failed(channel.as_str(), error.label());
                    guard
                        .finish(Finish::Deferred {
                            until: Utc::now(),
                            held: Held::Provider,
                        })
                        .await
                        .map_err(|e| self.db_error("releasing the delivery record", &e))?;
                    let dependency = provider_dependency.expect("checked by the guard");
                    return Err(match error {
                        SendError::Denied { reason } => PipelineError::Denied(dependency, reason),
                        other => PipelineError::Unavailable(dependency, other.reason().to_owned()),
                    });
                }
                // Sent and unanswered: the provider may have it. Held in doubt, not retried
                // now; after the hold it is sent once more (an attempt spent).
                Err(error @ SendError::InDoubt { .. }) => {
                    telemetry::notify_failed(channel.as_str(), error.label());
                    telemetry::notify_in_doubt(channel.as_str(), "held");
                    telemetry::notify_deferred("in_doubt");
                    let until = Utc::now() + chrono_duration(in_doubt_hold);
                    tracing::warn!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), reason = error.label(), hold_secs = in_doubt_hold.as_secs(), "send unanswered after it went out: in doubt, held before it is sent again");
                    guard
                        .finish(Finish::InDoubt {
                            error: error.reason(),
                            until,
                        })
                        .await
                        .map_err(|e| self.db_error("recording an in-doubt send", &e))?;
                    return Err(defer_until(
                        until,
                        format!(
                            "{} send in doubt ({}): held before it is sent again",
                            channel.as_str(),
                            error.label()
                        ),
                    ));
                }
                Err(error) => {
                    telemetry::notify_failed(channel.as_str(), error.label());
                    let attempts = attempts + 1;
                    let retry_after = match &error {
                        SendError::Retryable { after, .. }
                            if attempts < self.config.delivery.attempts_per_channel =>
                        {
                            Some(*after)
                        }
                        _ => None,
                    };
                    let Some(after) = retry_after else {
                        return self.fail_over(n, &mut guard, attempts, error, true).await;
                    };
                    let delay = self.backoff(attempts).max(after.unwrap_or_default());
                    let next_at = Utc::now() + chrono_duration(delay);
                    tracing::info!(event_id = %n.event_id, tenant_id = %n.tenant_id, channel = channel.as_str(), attempts, reason = error.label(), error = %error, retry_in_ms = delay.as_millis() as u64, "send failed: retrying");
                    guard
                        .finish(Finish::Retrying {
                            error: error.reason(),
                            next_at,
                        })
                        .await
                        .map_err(|e| self.db_error("recording a failed attempt", &e))?;
                    wait_or_defer(delay < IN_PLACE, delay, next_at, "backoff", || {
                        format!(
                            "{} attempt {attempts} failed ({}): backing off",
                            channel.as_str(),
                            error.label()
                        )
                    })
                    .await?;
                    continue;
                }
            }
        }
    }

    /// Reserves the send's token of its tenant's bucket, and of its provider's account bucket
    /// when `notify.provider_rate_limits` sets one, from this daemon's leases or in one
    /// statement. How long until both are due.
    async fn reserve(&self, n: &RankedNotification) -> Result<Duration, PipelineError> {
        let tenant_bucket = (
            n.tenant_id,
            n.delivery.rate_limit_key.as_str(),
            self.config.limit(n.tenant_id, n.channel),
        );
        let provider_bucket = self
            .config
            .provider_rate_limits
            .get(n.channel)
            .map(|(key, limit)| (uuid::Uuid::nil(), key, limit));
        let buckets: Vec<_> = std::iter::once(tenant_bucket)
            .chain(provider_bucket)
            .collect();
        let grant = self
            .buckets
            .reserve(&buckets)
            .await
            .map_err(|e| self.db_error("reserving a rate-limit token", &e))?;
        if grant.statement {
            telemetry::notify_bucket_decision(n.channel.as_str());
        }
        Ok(match grant.reservation {
            Reservation::Now => Duration::ZERO,
            Reservation::Ahead(due_in) => {
                telemetry::notify_rate_limited(n.channel.as_str());
                due_in
            }
        })
    }

    fn db_error(&self, what: &str, e: &sqlx::Error) -> PipelineError {
        crate::fault::classify::postgres_failure(what, e)
    }
}

/// The AWS service behind a channel, whose breaker its sends obey. Webhook receivers are the
/// tenants' own, one of many: none of them is conveyor's dependency.
fn provider_dependency(channel: crate::contract::notification::Channel) -> Option<Dependency> {
    use crate::contract::notification::Channel;
    match channel {
        Channel::Email => Some(Dependency::Ses),
        Channel::Sms | Channel::Push => Some(Dependency::Sns),
        Channel::Webhook => None,
    }
}
