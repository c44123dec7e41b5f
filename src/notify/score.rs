//! A notification's priority, computed **once per (tenant, eventId)** and stored in PostgreSQL
//! (`notify_scores`): every redelivery, a second drop of the same file, and a ranking racing in
//! another process all use the first stored score, so the model is paid for once and the
//! priority never changes under a notification. Within a process, rankings of one event at
//! once share one computation.
//!
//! Two scorers (`notify.scorer`):
//! - **`rules`**, offline and documented in docs/notifications.md: `base` 2, plus `urgency`
//!   from `content.metadata.urgency` (`critical` +3, `high` +2, `normal` 0, `low` −1), plus
//!   `category` from `content.metadata.category` (`security`, `billing`, `account` +1;
//!   `marketing`, `digest`, `social` −1), plus `segment` +1 for a segment in
//!   `notify.vip_segments`; the sum clamped to 1–5.
//! - **`model`**: the `[extraction]` endpoint (the same client, limiter, `Retry-After` pause
//!   and one re-ask of a malformed reply as extraction) answering a JSON schema: priority 1–5,
//!   a breakdown (urgency, relevance, timeliness, each 0–1) and a short reason, stored with
//!   the score and never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::rank::Score;
use crate::config::Scorer;
use crate::contract::notification::NotificationEvent;
use crate::extract::ExtractError;
use crate::extract::llm::{Llm, Question};
use crate::fault::Dependency;
use crate::fault::PipelineError;
use crate::telemetry;

/// Bump when the instructions or schema change (stored with nothing; documents the prompt).
pub const PROMPT_VERSION: &str = "notification-priority/1";

const INSTRUCTIONS: &str = "You rank one notification for one user of a business application. \
Give its priority from 1 (can wait, informational) to 5 (act now: security, money, an outage \
affecting the user); a breakdown of urgency, relevance to the user's segment and timeliness, \
each from 0 to 1; and a reason of at most one sentence. The notification's fields follow as \
JSON.";

/// How scores are computed.
pub enum Method {
    Rules { vip_segments: Vec<String> },
    Model(Arc<Llm>),
}

impl Method {
    fn scorer(&self) -> Scorer {
        match self {
            Method::Rules { .. } => Scorer::Rules,
            Method::Model(_) => Scorer::Model,
        }
    }
}

type Computation = BoxFuture<'static, Result<Arc<Score>, PipelineError>>;

/// Dead entries are swept when the map of computations in progress reaches this.
const PENDING_SWEEP_AT: usize = 1024;

/// Scores, computed at most once per event.
#[derive(Clone)]
pub struct Scores {
    inner: Arc<Inner>,
}

struct Inner {
    method: Method,
    pool: PgPool,
    /// Computations in progress by (tenant, eventId), held weakly: when every ranking waiting
    /// on one gives up, it is dropped with them.
    pending: Mutex<HashMap<(Uuid, String), WeakShared<Computation>>>,
}

impl Scores {
    pub fn new(method: Method, pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                method,
                pool,
                pending: Mutex::default(),
            }),
        }
    }

    /// Records on the event's score that ranking held it back until `send_after` (quiet
    /// hours in `zone`), for `notify status` to say until when.
    pub async fn held(
        &self,
        tenant: Uuid,
        event_id: &str,
        send_after: chrono::DateTime<chrono::Utc>,
        zone: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notify_scores SET send_after = $3, held_for = 'quiet_hours', held_zone = $4 \
             WHERE tenant_id = $1 AND event_id = $2",
        )
        .bind(tenant)
        .bind(event_id)
        .bind(send_after)
        .bind(zone)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// The event's score: stored, being computed by another ranking, or computed now.
    /// `segment` is the user's (the event's, else their preferences').
    pub async fn get(
        &self,
        event: &NotificationEvent,
        segment: Option<&str>,
    ) -> Result<Arc<Score>, PipelineError> {
        let key = (event.tenant_id, event.event_id.clone());
        let shared: Shared<Computation> = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&key).and_then(WeakShared::upgrade) {
                Some(running) => running,
                None => {
                    let inner = self.inner.clone();
                    let (event, segment) = (event.clone(), segment.map(str::to_owned));
                    let computation: Computation =
                        async move { inner.load_or_compute(&event, segment.as_deref()).await }
                            .boxed();
                    let computation = computation.shared();
                    if pending.len() >= PENDING_SWEEP_AT {
                        pending.retain(|_, weak| weak.upgrade().is_some());
                    }
                    if let Some(weak) = computation.downgrade() {
                        pending.insert(key.clone(), weak);
                    }
                    computation
                }
            }
        };
        let result = shared.clone().await;
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .get(&key)
            .and_then(WeakShared::upgrade)
            .is_none_or(|p| p.ptr_eq(&shared))
        {
            pending.remove(&key);
        }
        result
    }
}

impl Inner {
    async fn load_or_compute(
        &self,
        event: &NotificationEvent,
        segment: Option<&str>,
    ) -> Result<Arc<Score>, PipelineError> {
        if let Some(stored) = self.load(event).await? {
            telemetry::notify_scored("stored");
            return Ok(Arc::new(stored));
        }
        let score = match &self.method {
            Method::Rules { vip_segments } => rules(event, segment, vip_segments),
            Method::Model(llm) => match ask_model(llm, event, segment).await {
                Ok(score) => score,
                Err(e) => {
                    telemetry::notify_scored("failed");
                    return Err(scoring_error(e));
                }
            },
        };
        telemetry::notify_scored(self.method.scorer().as_str());
        self.save(event, score).await.map(Arc::new)
    }

    async fn load(&self, event: &NotificationEvent) -> Result<Option<Score>, PipelineError> {
        type Row = (
            String,
            i16,
            sqlx::types::Json<Map<String, Value>>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT scorer, priority, score_breakdown, reason FROM notify_scores \
                 WHERE tenant_id = $1 AND event_id = $2",
        )
        .bind(event.tenant_id)
        .bind(&event.event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| crate::fault::classify::postgres_failure("reading the stored score", &e))?;
        Ok(row.map(|(scorer, priority, breakdown, reason)| Score {
            priority: priority.clamp(1, 5) as u8,
            breakdown: breakdown.0,
            scorer: if scorer == "model" {
                Scorer::Model
            } else {
                Scorer::Rules
            },
            reason,
        }))
    }

    /// Stores the score unless one is stored already, and returns the stored one.
    async fn save(&self, event: &NotificationEvent, score: Score) -> Result<Score, PipelineError> {
        let inserted = sqlx::query(
            "INSERT INTO notify_scores (tenant_id, event_id, scorer, priority, score_breakdown, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
        .bind(event.tenant_id)
        .bind(&event.event_id)
        .bind(score.scorer.as_str())
        .bind(i16::from(score.priority))
        .bind(sqlx::types::Json(&score.breakdown))
        .bind(&score.reason)
        .execute(&self.pool)
        .await
        .map_err(|e| crate::fault::classify::postgres_failure("storing the score", &e))?;
        if inserted.rows_affected() == 1 {
            return Ok(score);
        }
        // Another process stored one first: use that one.
        Ok(self.load(event).await?.unwrap_or(score))
    }
}

fn scoring_error(e: ExtractError) -> PipelineError {
    match e {
        ExtractError::Retryable {
            reason,
            retry_after: Some(after),
        } => PipelineError::RetryAfter(format!("scoring: {reason}"), after),
        ExtractError::Retryable { reason, .. } => {
            PipelineError::Retryable(format!("scoring: {reason}"))
        }
        ExtractError::Permanent(reason) => PipelineError::Permanent(format!("scoring: {reason}")),
        ExtractError::Unavailable { reason, .. } => {
            PipelineError::Unavailable(Dependency::Model, format!("scoring: {reason}"))
        }
        ExtractError::Denied(reason) => {
            PipelineError::Denied(Dependency::Model, format!("scoring: {reason}"))
        }
    }
}

/// The offline scorer (rules in the module's documentation).
pub fn rules(event: &NotificationEvent, segment: Option<&str>, vip_segments: &[String]) -> Score {
    let metadata = &event.content.metadata;
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    let urgency: i64 = match text("urgency").as_deref() {
        Some("critical") => 3,
        Some("high") => 2,
        Some("low") => -1,
        _ => 0,
    };
    let category: i64 = match text("category").as_deref() {
        Some("security" | "billing" | "account") => 1,
        Some("marketing" | "digest" | "social") => -1,
        _ => 0,
    };
    let vip = i64::from(segment.is_some_and(|s| vip_segments.iter().any(|v| v == s)));
    let base = 2;
    let priority = (base + urgency + category + vip).clamp(1, 5) as u8;
    let breakdown = json!({"base": base, "urgency": urgency, "category": category, "segment": vip});
    Score {
        priority,
        breakdown: breakdown.as_object().cloned().unwrap_or_default(),
        scorer: Scorer::Rules,
        reason: None,
    }
}

/// The model's answer, as the schema asks for it.
#[derive(Deserialize)]
struct Answer {
    priority: i64,
    score_breakdown: Breakdown,
    reason: String,
}

#[derive(Deserialize)]
struct Breakdown {
    urgency: f64,
    relevance: f64,
    timeliness: f64,
}

async fn ask_model(
    llm: &Llm,
    event: &NotificationEvent,
    segment: Option<&str>,
) -> Result<Score, ExtractError> {
    let content = &event.content;
    let user = json!({
        "source": event.source,
        "occurredAt": event.occurred_at,
        "segment": segment,
        "channels": event.user.channels,
        "title": content.title,
        "body": content.body,
        "callToAction": content.cta.as_ref().map(|c| &c.label),
        "metadata": content.metadata,
    })
    .to_string();
    let answer: Answer = llm
        .answer(&Question {
            name: "notification_priority",
            description: "The notification's priority and how it came about",
            schema: schema(),
            system: INSTRUCTIONS,
            user: &user,
        })
        .await?;
    if !(1..=5).contains(&answer.priority) {
        return Err(ExtractError::retryable(format!(
            "the model answered priority {}, outside 1–5",
            answer.priority
        )));
    }
    let b = &answer.score_breakdown;
    let unit = |x: f64| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let breakdown = json!({
        "urgency": unit(b.urgency),
        "relevance": unit(b.relevance),
        "timeliness": unit(b.timeliness),
    });
    Ok(Score {
        priority: answer.priority as u8,
        breakdown: breakdown.as_object().cloned().unwrap_or_default(),
        scorer: Scorer::Model,
        reason: Some(answer.reason.chars().take(500).collect()),
    })
}

/// The reply's JSON schema (strict: every property required).
fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["priority", "score_breakdown", "reason"],
        "properties": {
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "score_breakdown": {
                "type": "object",
                "additionalProperties": false,
                "required": ["urgency", "relevance", "timeliness"],
                "properties": {
                    "urgency": {"type": "number", "minimum": 0, "maximum": 1},
                    "relevance": {"type": "number", "minimum": 0, "maximum": 1},
                    "timeliness": {"type": "number", "minimum": 0, "maximum": 1}
                }
            },
            "reason": {"type": "string", "description": "one sentence"}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::notification::User;
    use crate::contract::notification::{Channel, Content};

    fn event(metadata: Value) -> NotificationEvent {
        NotificationEvent {
            event_id: "e".into(),
            source: "s".into(),
            occurred_at: chrono::Utc::now(),
            tenant_id: Uuid::nil(),
            user: User {
                id: "u".into(),
                segment: None,
                channels: vec![Channel::Email],
            },
            content: Content {
                title: "t".into(),
                body: "b".into(),
                cta: None,
                metadata: metadata.as_object().cloned().unwrap(),
            },
        }
    }

    #[test]
    fn the_rules_add_up_as_documented_and_stay_within_one_to_five() {
        let vip = vec!["vip".to_owned()];
        let p = |m: Value, segment| rules(&event(m), segment, &vip).priority;
        assert_eq!(p(json!({}), None), 2);
        assert_eq!(p(json!({"urgency": "critical"}), None), 5);
        assert_eq!(
            p(json!({"urgency": "High", "category": "security"}), None),
            5
        );
        assert_eq!(p(json!({"urgency": "high"}), Some("vip")), 5);
        assert_eq!(
            p(json!({"category": "marketing", "urgency": "low"}), None),
            1
        );
        assert_eq!(p(json!({"category": "billing"}), Some("free")), 3);
        let s = rules(&event(json!({"urgency": "high"})), Some("vip"), &vip);
        assert_eq!(
            Value::Object(s.breakdown),
            json!({"base": 2, "urgency": 2, "category": 0, "segment": 1})
        );
    }
}
