//! `notify status`: where one notification is — ranked, deferred, delivered on which channel,
//! failed over, or dead-lettered — read from the delivery record and the stage ledgers.

use super::{StatusArgs, notify_config};
use crate::config::{Config, NotifyConfig};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::process::ExitCode;

/// `notify status`: the record of each stage, newest state first in `summary`.
pub(super) async fn status(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let notify = notify_config(config)?;
    let tenant = args
        .tenant_id
        .as_deref()
        .map(|t| {
            uuid::Uuid::parse_str(t).map_err(|_| anyhow::anyhow!("--tenant-id {t:?} is not a UUID"))
        })
        .transpose()?;
    let url = config.secrets.database_url.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "DATABASE_URL is not set: the delivery record lives in PostgreSQL; export it"
        )
    })?;
    let pool = crate::postgres::connect(&config.database, url).await?;
    crate::postgres::migrate(&pool).await?;
    type ScoreRow = (
        uuid::Uuid,
        String,
        i16,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
    );
    let scores: Vec<ScoreRow> = sqlx::query_as(
        "SELECT tenant_id, scorer, priority, created_at, send_after, held_for, held_zone
         FROM notify_scores
         WHERE event_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) ORDER BY created_at",
    )
    .bind(&args.event_id)
    .bind(tenant)
    .fetch_all(&pool)
    .await?;
    let channels = crate::notify::deliveries::Deliveries::new(pool)
        .rows(tenant, &args.event_id)
        .await?;

    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut dead_letters = Vec::new();
    for queue in [&notify.incoming_queue, &notify.priority_queue] {
        let dlq = NotifyConfig::dlq_name(queue);
        let Ok(found) = sqs.get_queue_url().queue_name(&dlq).send().await else {
            continue;
        };
        let dlq_url = found.queue_url.unwrap_or_default();
        let messages = crate::cmd::dlq::receive(
            &sqs,
            &dlq_url,
            args.dlq_scan,
            crate::cmd::dlq::INSPECT_VISIBILITY_SECS,
        )
        .await?;
        crate::cmd::dlq::release(&sqs, &dlq_url, &messages).await?;
        for m in &messages {
            if names_event(m, &args.event_id, tenant) {
                let mut letter = serde_json::to_value(crate::cmd::dlq::DeadLetter::of(m))?;
                letter["dlq"] = json!(dlq);
                dead_letters.push(letter);
            }
        }
    }

    let summary = if let Some(d) = channels.iter().find(|c| c.state == "delivered") {
        format!(
            "delivered on {} at {}",
            d.channel,
            d.delivered_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        )
    } else if let Some(letter) = dead_letters.first() {
        format!(
            "dead-lettered in {}: {}",
            letter["dlq"].as_str().unwrap_or("?"),
            letter["reason"].as_str().unwrap_or("(no reason recorded)")
        )
    } else if let Some(c) = channels.last() {
        match (c.state.as_str(), c.next_at) {
            ("deferred" | "retrying", Some(at)) => format!(
                "{} on {} until {}",
                held(&c.state, c.held_for.as_deref()),
                c.channel,
                until(at, c.held_zone.as_deref())
            ),
            ("sending", Some(at)) if c.held_for.as_deref() == Some("in_doubt") => format!(
                "in doubt on {} (a send that may have gone out) until {}: sent again then",
                c.channel,
                until(at, None)
            ),
            (state, _) => format!("{state} on {}", c.channel),
        }
    } else if let Some((.., Some(at), held_for, zone)) = scores.first()
        && *at > Utc::now()
    {
        format!(
            "ranked; {} until {}, waiting in the priority queue",
            held("deferred", held_for.as_deref()),
            until(*at, zone.as_deref())
        )
    } else if !scores.is_empty() {
        "ranked; not yet handed to a channel (waiting in the priority queue)".to_owned()
    } else {
        "unknown: not ranked yet, or no such eventId (still in the incoming queue, or never sent)"
            .to_owned()
    };
    let found = !scores.is_empty() || !channels.is_empty() || !dead_letters.is_empty();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "eventId": args.event_id,
            "summary": summary,
            "ranked": scores.iter().map(|(t, scorer, priority, at, send_after, held_for, _)| json!({
                "tenantId": t, "scorer": scorer, "priority": priority, "at": at,
                "sendAfter": send_after, "heldFor": held_for,
            })).collect::<Vec<_>>(),
            "channels": channels,
            "deadLetters": dead_letters,
        }))?
    );
    Ok(if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `deferred (quiet hours)`: the state and, when recorded, why.
fn held(state: &str, held_for: Option<&str>) -> String {
    let why = match held_for {
        Some("quiet_hours") => "quiet hours",
        Some("rate_limit") => "rate limit",
        Some("in_doubt") => "in doubt",
        Some("backoff") => "backing off",
        Some("provider") => "provider unavailable",
        Some("aborted") => "its run was cut short",
        _ => return state.to_owned(),
    };
    format!("{state} ({why})")
}

/// `<UTC time> (<local time> <zone>)`, the local part when the zone is known.
fn until(at: DateTime<Utc>, zone: Option<&str>) -> String {
    let utc = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => format!(
            "{utc} ({} {tz})",
            at.with_timezone(&tz).format("%Y-%m-%d %H:%M")
        ),
        None => utc,
    }
}

/// Whether a dead letter of the incoming (an EventBridge event) or priority (a
/// RankedNotification) stage is the notification `event_id` (of `tenant`, when given).
pub(super) fn names_event(
    m: &aws_sdk_sqs::types::Message,
    event_id: &str,
    tenant: Option<uuid::Uuid>,
) -> bool {
    let Some(body) = m.body().and_then(|b| serde_json::from_str::<Value>(b).ok()) else {
        return false;
    };
    let n = if body.get("detail").is_some() {
        &body["detail"]
    } else {
        &body
    };
    n["eventId"].as_str() == Some(event_id)
        && tenant.is_none_or(|t| n["tenantId"].as_str() == Some(t.to_string().as_str()))
}
