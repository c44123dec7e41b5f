//! The `notify-rank` pipeline: the notification system's ranking stage, on the `incoming`
//! queue. For each NotificationEvent v1 it loads the user's preferences (PostgreSQL), gets the
//! event's score (computed once per (tenant, eventId): `src/notify/score.rs`), picks the channel
//! and failover and the time to send (`src/notify/rank.rs`), and sends a RankedNotification v1
//! to `notify.priority_queue`, delayed until its `sendAfter` as far as SQS allows (15 minutes;
//! delivery defers the rest) with the attributes `priority`, `channel` and `eventId`.
//!
//! An event whose `tenantId` its origin is not bound to (`[notify.bindings]`,
//! `src/notify/binding.rs`) is dead-lettered with that reason before anything is read for it.
//! A user without preferences or without a usable channel is dead-lettered with that reason:
//! no retry gives them an address. The ledger runs this pipeline once per (tenant, eventId),
//! so the same event dropped twice, or published again, is ranked once; a crash after the send
//! and before the ledger's record sends it again, which delivery's per-channel record absorbs.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::config::{NotifyConfig, Scorer};
use crate::contract::Contract;
use crate::contract::ranked::RankedNotification;
use crate::fault::Dependency;
use crate::notify::binding::{self, DROP_KEY_ATTRIBUTE, Origin};
use crate::notify::drop::DROP_SOURCE;
use crate::notify::outbox::{Outbox, Outgoing};
use crate::notify::pack::Packer;
use crate::notify::prefs::{PreferenceStore, PrefsError};
use crate::notify::rank;
use crate::notify::score::{Method, Scores};
use crate::telemetry::{self, otel};

/// The `source` and `type` attributes of ranked messages (what the `raw` format routes on).
pub const RANKED_SOURCE: &str = "conveyor.notify.rank";
pub const RANKED_TYPE: &str = "RankedNotification";

/// A RankedNotification as a message on the priority queue — ranking's, and a failover's:
/// its JSON body, the attributes the `raw` format routes on and an operator filters by, and
/// the tenant as its message group (SQS fair queues' key).
pub(super) fn ranked_message(n: &RankedNotification) -> Result<Outgoing, PipelineError> {
    let body = serde_json::to_string(n)
        .map_err(|e| PipelineError::Permanent(format!("serializing: {e}")))?;
    // Content may hold characters SQS refuses (U+FFFF): escaped, never dropped.
    let body = crate::notify::outbox::sqs_safe(&body).into_owned();
    Ok(Outgoing {
        body,
        attributes: vec![
            ("source", RANKED_SOURCE.to_owned()),
            ("type", RANKED_TYPE.to_owned()),
            ("priority", n.priority.to_string()),
            ("channel", n.channel.as_str().to_owned()),
            ("eventId", n.event_id.clone()),
        ],
        group: Some(n.tenant_id.to_string()),
    })
}

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "notify-rank",
    accepts: &[Contract::NotificationEventV1],
    needs: &[Need::Postgres, Need::Notify],
    // One model call (≤ extraction.timeout_secs, 60) with a database read and a send: a run
    // killed with the process holds its event's ledger claim this long (+5 s), so it is kept
    // short enough for a redelivery to wait it out in place.
    timeout_secs: 120,
    build: |shared| {
        Box::pin(async move {
            let notify = shared.notify()?;
            let pool = shared.postgres()?;
            let method = match notify.scorer {
                Scorer::Rules => Method::Rules {
                    vip_segments: notify.vip_segments.clone(),
                },
                Scorer::Model => Method::Model(shared.llm()?),
            };
            let priority = Outbox::resolve(
                aws_sdk_sqs::Client::new(shared.aws()?),
                &notify.priority_queue,
                "notify.priority_queue",
            )
            .await?;
            if notify.bindings.allow_unbound {
                tracing::warn!(
                    sources = notify.bindings.sources.len(),
                    drop_prefixes = notify.bindings.drop_prefixes.len(),
                    "notify.bindings.allow_unbound: events from sources and drop prefixes bound to no tenant are ranked for whatever tenant they name (local environment only)"
                );
            }
            // Notifications due now share messages (batches); later ones go alone, delayed.
            let packer = notify.pack_events.then(|| {
                Packer::new(
                    priority.clone(),
                    std::time::Duration::from_millis(notify.pack_linger_ms),
                )
            });
            Ok(Arc::new(NotifyRank {
                prefs: PreferenceStore::new(pool.clone()),
                scores: Scores::new(method, pool),
                priority,
                packer,
                config: Arc::new(notify),
            }) as Arc<dyn Pipeline>)
        })
    },
};

pub struct NotifyRank {
    prefs: PreferenceStore,
    scores: Scores,
    priority: Outbox,
    /// Packs notifications due now into batches (`notify.pack_events`).
    packer: Option<Packer>,
    config: Arc<NotifyConfig>,
}

impl Pipeline for NotifyRank {
    fn name(&self) -> &'static str {
        "notify-rank"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        match self.config.scorer {
            Scorer::Rules => &[Dependency::Postgres, Dependency::Sqs],
            Scorer::Model => &[Dependency::Postgres, Dependency::Model, Dependency::Sqs],
        }
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let (prefs, scores, priority, packer, config) = (
            self.prefs.clone(),
            self.scores.clone(),
            self.priority.clone(),
            self.packer.clone(),
            self.config.clone(),
        );
        Box::pin(async move {
            let started = Instant::now();
            let Some(event) = delivery.notification.as_deref() else {
                return Err(PipelineError::Permanent(format!(
                    "the notify-rank pipeline needs a NotificationEvent v1 (detail-type NotificationRequested), not {:?}; route only those to it",
                    delivery.event.detail_type
                )));
            };
            // The tenant is the producer's word: believed only from an origin bound to it.
            let origin = if delivery.event.source == DROP_SOURCE {
                Origin::Drop(
                    delivery
                        .event
                        .attributes
                        .get(DROP_KEY_ATTRIBUTE)
                        .map(String::as_str),
                )
            } else {
                Origin::Source(&delivery.event.source)
            };
            binding::check(&config.bindings, origin, &delivery.queue, event.tenant_id)
                .map_err(PipelineError::Permanent)?;
            let lookup = prefs.get(event.tenant_id, &event.user.id);
            let span = otel::db("postgresql", "select", "notify_preferences");
            let preferences = match otel::traced(span, lookup).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    return Err(PipelineError::Permanent(format!(
                        "no usable channel for user {}: no preferences stored for them in this tenant (set them with `conveyor notify prefs set`, then redrive)",
                        crate::safe::token(&event.user.id)
                    )));
                }
                Err(PrefsError::Database(e)) => {
                    return Err(crate::fault::classify::postgres_failure(
                        "reading preferences",
                        &e,
                    ));
                }
                Err(e @ PrefsError::Stored(_)) => {
                    return Err(PipelineError::Permanent(e.to_string()));
                }
            };
            let segment = event
                .user
                .segment
                .as_deref()
                .or(preferences.segment.as_deref());
            let score = scores.get(event, segment).await?;
            let now = chrono::Utc::now();
            let ranked = rank::rank(event, &preferences, (*score).clone(), &config, now)
                .map_err(|e| PipelineError::Permanent(e.to_string()))?;
            let n = &ranked.notification;
            // Rounded up: the message becomes visible no sooner than its sendAfter.
            let wait = ((n.send_after - now).num_milliseconds().max(0) as u64).div_ceil(1000);
            let wait = u32::try_from(wait).unwrap_or(u32::MAX);
            match &packer {
                Some(packer) if wait == 0 => packer.send(ranked_message(n)?).await?,
                _ => priority.send(ranked_message(n)?, wait).await?,
            }
            telemetry::notify_ranked(n.channel.as_str(), n.priority);
            if let Some(zone) = ranked.quiet_hours {
                telemetry::notify_deferred("quiet_hours");
                // For `notify status` only: a failure here loses no notification.
                if let Err(e) = scores
                    .held(n.tenant_id, &n.event_id, n.send_after, Some(zone))
                    .await
                {
                    tracing::warn!(event_id = %n.event_id, error = %crate::safe::error_chain(&e), "ranked and held for quiet hours, but the hold was not recorded for notify status");
                }
            }
            tracing::info!(
                event_id = %n.event_id,
                tenant_id = %n.tenant_id,
                user_id = %crate::safe::token(&n.user_id),
                channel = n.channel.as_str(),
                failover = n.failover.len(),
                priority = n.priority,
                scorer = %n.scorer,
                send_after = %n.send_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                quiet_hours = ranked.quiet_hours.is_some(),
                latency_ms = started.elapsed().as_millis() as u64,
                "notification ranked"
            );
            Ok(())
        })
    }
}
