//! `conveyor notify send|drop|prefs|status`: the notification system's operator commands —
//! publish one NotificationEvent, upload a JSON-lines drop, read or write users' preferences,
//! and find out where one notification is.
//! Output is ids and counts; content and addresses are printed only by `prefs get`, which an
//! operator asks for by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value, json};
use tokio::io::AsyncReadExt;

use super::progress::{Progress, Unit};
use super::publish::{IdentityInputs, resolve_identity};
use crate::config::{Config, NotifyConfig};
use crate::contract::notification::{NOTIFICATION_REQUESTED, NotificationEvent};
use crate::notify::prefs::{PreferenceStore, Preferences};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// Publish one NotificationEvent v1 (`NotificationRequested`) to EventBridge, validated
    /// first; from --file, or built from the flags. Prints its ids.
    Send(Box<SendArgs>),
    /// Upload a JSON-lines file of NotificationEvents to notify.bucket, where its upload
    /// notification starts ingestion. Shows progress on a terminal.
    Drop(DropArgs),
    /// Read or write users' notification preferences (PostgreSQL, DATABASE_URL).
    #[command(subcommand)]
    Prefs(PrefsCommand),
    /// Where one notification is: its score, each channel's state (deferred until, retrying,
    /// delivered at, failed with), and any dead letter of it in the stages' DLQs with its
    /// reason. Reads PostgreSQL (DATABASE_URL) and peeks at the DLQs (nothing is consumed).
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The notification's eventId.
    pub event_id: String,
    /// Only this tenant's notification of that id (default: every tenant's).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Most messages to look at in each DLQ.
    #[arg(long, default_value_t = 1000)]
    pub dlq_scan: usize,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// A NotificationEvent v1 (JSON object); `-` reads stdin. Without it, the flags build one.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Tenant (UUID v4). Falls back to MOCK_TENANT_ID, then a generated one.
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// The user to notify. Falls back to MOCK_USER_ID, then `system`.
    #[arg(long)]
    pub user_id: Option<String>,
    /// Fail on a missing or invalid tenant instead of generating one.
    #[arg(long)]
    pub no_identity_fallback: bool,
    /// The event id; default: a new UUID.
    #[arg(long)]
    pub event_id: Option<String>,
    /// The event's `source` (also its EventBridge source).
    #[arg(long, default_value = "conveyor.cli")]
    pub source: String,
    /// Channels the notification may use, in order (email, sms, push, webhook).
    #[arg(long, value_delimiter = ',', default_value = "email")]
    pub channels: Vec<String>,
    #[arg(long)]
    pub segment: Option<String>,
    #[arg(long, default_value = "Test notification")]
    pub title: String,
    #[arg(long, default_value = "Sent with conveyor notify send.")]
    pub body: String,
    /// `content.metadata` entries the scorers read (`urgency=high`, `category=security`).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Event bus; default: eventbridge.bus_name.
    #[arg(long)]
    pub bus: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DropArgs {
    /// The JSON-lines file to upload.
    pub file: PathBuf,
    /// The object key; default `drops/<file name>`.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PrefsCommand {
    /// Print one user's preferences (JSON; addresses included). Exit 1 when none are stored.
    Get {
        #[arg(long)]
        tenant_id: String,
        #[arg(long)]
        user_id: String,
    },
    /// Store (replace) one user's preferences from flags.
    Set(Box<SetArgs>),
    /// Store every preferences document of a JSON-lines file, in one transaction: a file with
    /// any invalid line is not imported at all, and every invalid line is listed.
    Import { file: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[arg(long)]
    pub tenant_id: String,
    #[arg(long)]
    pub user_id: String,
    #[arg(long)]
    pub segment: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// E.164 (`+4915112345678`).
    #[arg(long)]
    pub sms: Option<String>,
    /// An SNS platform endpoint ARN.
    #[arg(long)]
    pub push: Option<String>,
    #[arg(long)]
    pub webhook: Option<String>,
    /// Channels turned off (their address is kept).
    #[arg(long, value_delimiter = ',')]
    pub opt_out: Vec<String>,
    /// The order channels are tried in (the configured policy when empty).
    #[arg(long, value_delimiter = ',')]
    pub failover_order: Vec<String>,
    /// `HH:MM-HH:MM` local time, with --time-zone.
    #[arg(long, requires = "time_zone")]
    pub quiet_hours: Option<String>,
    /// An IANA zone (`Europe/Berlin`).
    #[arg(long, requires = "quiet_hours")]
    pub time_zone: Option<String>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        NotifyCommand::Send(send_args) => send(config, *send_args).await,
        NotifyCommand::Drop(drop_args) => upload(config, drop_args).await,
        NotifyCommand::Prefs(command) => prefs(config, command).await,
        NotifyCommand::Status(status_args) => status(config, status_args).await,
    }
}

/// `notify status`: the record of each stage, newest state first in `summary`.
async fn status(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
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
    let scores: Vec<(uuid::Uuid, String, i16, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT tenant_id, scorer, priority, created_at FROM notify_scores
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
        let messages = super::dlq::receive(
            &sqs,
            &dlq_url,
            args.dlq_scan,
            super::dlq::INSPECT_VISIBILITY_SECS,
        )
        .await?;
        super::dlq::release(&sqs, &dlq_url, &messages).await?;
        for m in &messages {
            if names_event(m, &args.event_id, tenant) {
                let mut letter = serde_json::to_value(super::dlq::DeadLetter::of(m))?;
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
            ("deferred" | "retrying", Some(at)) => {
                format!("{} on {} until {}", c.state, c.channel, at.to_rfc3339())
            }
            (state, _) => format!("{state} on {}", c.channel),
        }
    } else if !scores.is_empty() {
        "ranked; not yet handed to a channel (waiting in the priority queue for its sendAfter)"
            .to_owned()
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
            "ranked": scores.iter().map(|(t, scorer, priority, at)| json!({
                "tenantId": t, "scorer": scorer, "priority": priority, "at": at,
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

/// Whether a dead letter of the incoming (an EventBridge event) or priority (a
/// RankedNotification) stage is the notification `event_id` (of `tenant`, when given).
fn names_event(
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

fn notify_config(config: &Config) -> anyhow::Result<&NotifyConfig> {
    config.notify.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "no [notify] section in the configuration: add one (see config/default.toml) naming the bucket and queues"
        )
    })
}

/// The event `send` publishes, validated with ranking's own parser.
fn build_event(args: &SendArgs) -> anyhow::Result<NotificationEvent> {
    let detail: Map<String, Value> = match &args.file {
        Some(path) => {
            let origin = path.display().to_string();
            let text = if origin == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
            };
            match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => anyhow::bail!("{origin}: expected one JSON object (a NotificationEvent)"),
                Err(e) => anyhow::bail!("{origin}: not JSON: {}", crate::safe::json_error(&e)),
            }
        }
        None => {
            let inputs = IdentityInputs {
                tenant_flag: args.tenant_id.clone(),
                tenant_env: std::env::var("MOCK_TENANT_ID").ok(),
                user_flag: args.user_id.clone(),
                user_env: std::env::var("MOCK_USER_ID").ok(),
                account: None,
            };
            let (identity, warnings) = resolve_identity(&inputs, !args.no_identity_fallback)
                .map_err(anyhow::Error::msg)?;
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            let mut metadata = Map::new();
            for entry in &args.metadata {
                let (k, v) = entry
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--metadata {entry:?}: expected KEY=VALUE"))?;
                metadata.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let mut user = json!({"id": identity.user_id, "channels": args.channels});
            if let Some(segment) = &args.segment {
                user["segment"] = json!(segment);
            }
            let event = json!({
                "eventId": args.event_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                "source": args.source,
                "occurredAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "tenantId": identity.tenant_id,
                "user": user,
                "content": {"title": args.title, "body": args.body, "metadata": metadata},
            });
            event.as_object().cloned().unwrap_or_default()
        }
    };
    NotificationEvent::parse(&detail, "event")
        .map_err(|e| anyhow::anyhow!("not a valid NotificationEvent v1: {e}"))
}

async fn send(config: &Config, args: SendArgs) -> anyhow::Result<ExitCode> {
    let event = build_event(&args)?;
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let bus = args.bus.as_deref().unwrap_or(&config.eventbridge.bus_name);
    let detail = serde_json::to_value(&event)?;
    let prepared = super::publish::Prepared {
        source: event.source.clone(),
        detail_type: NOTIFICATION_REQUESTED.to_owned(),
        detail: detail.as_object().cloned().unwrap_or_default(),
        interaction_id: uuid::Uuid::nil(),
        content_len: event.content.body.len(),
        content_sha256: String::new(),
    };
    let client = aws_sdk_eventbridge::Client::new(&sdk);
    let results = super::publish::put(&client, bus, std::slice::from_ref(&prepared))
        .await
        .map_err(|e| {
            anyhow::anyhow!("PutEvents on bus {bus:?}: {}", crate::safe::error_chain(&e))
        })?;
    let eventbridge_id = results
        .entries
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("PutEvents answered no entry"))?
        .map_err(|failed| anyhow::anyhow!("EventBridge rejected the event: {failed}"))?;
    tracing::info!(event_id = %event.event_id, %eventbridge_id, "notification published");
    println!(
        "{}",
        json!({
            "event_id": event.event_id, "eventbridge_id": eventbridge_id, "bus": bus,
            "tenant_id": event.tenant_id, "user_id": event.user.id,
            "channels": event.user.channels,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// S3 multipart parts (5 MiB is S3's minimum part size except the last; 8 MiB keeps memory
/// small and progress fine-grained).
const PART_BYTES: usize = 8 * 1024 * 1024;

async fn upload(config: &Config, args: DropArgs) -> anyhow::Result<ExitCode> {
    let notify = notify_config(config)?;
    let path = &args.file;
    let origin = path.display().to_string();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let total = file.metadata().await?.len();
    let key = match &args.key {
        Some(key) => key.clone(),
        None => format!(
            "drops/{}",
            Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "drop.jsonl".to_owned())
        ),
    };
    if key.ends_with(crate::notify::drop::REJECTS_SUFFIX) {
        anyhow::bail!(
            "--key {key:?}: keys ending in {} are rejects objects and are not read; choose another key",
            crate::notify::drop::REJECTS_SUFFIX
        );
    }
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let s3 = crate::aws::s3_client(&sdk);
    let bucket = notify.bucket.as_str();
    let progress = Progress::new(total, "uploading", Unit::Bytes);
    let s3_error = |call: &str, e: &dyn std::error::Error| {
        anyhow::anyhow!(
            "{call} s3://{bucket}/{key}: {}",
            crate::safe::error_chain(e)
        )
    };
    if total as usize <= PART_BYTES {
        let mut body = Vec::with_capacity(total as usize);
        file.read_to_end(&mut body).await?;
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(body.into())
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &aws_sdk_s3::Error::from(e)))?;
        progress.advance(total);
    } else {
        let upload = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", &aws_sdk_s3::Error::from(e)))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let parts = upload_parts(&s3, bucket, &key, &upload_id, &mut file, &progress).await;
        let parts = match parts {
            Ok(parts) => parts,
            Err(e) => {
                // Leave no half-uploaded parts behind (they cost storage until aborted).
                let _ = s3
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        s3.complete_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", &aws_sdk_s3::Error::from(e)))?;
    }
    progress.finish();
    tracing::info!(bytes = total, "drop uploaded");
    println!(
        "{}",
        json!({"bucket": bucket, "key": key, "bytes": total, "rejects_key": format!("{key}{}", crate::notify::drop::REJECTS_SUFFIX)})
    );
    Ok(ExitCode::SUCCESS)
}

async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    file: &mut tokio::fs::File,
    progress: &Progress,
) -> anyhow::Result<Vec<aws_sdk_s3::types::CompletedPart>> {
    let mut parts = Vec::new();
    for number in 1.. {
        let mut part = Vec::with_capacity(PART_BYTES);
        (&mut *file)
            .take(PART_BYTES as u64)
            .read_to_end(&mut part)
            .await?;
        if part.is_empty() {
            break;
        }
        let len = part.len() as u64;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(part.into())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "UploadPart {number} of s3://{bucket}/{key}: {}",
                    crate::safe::error_chain(&aws_sdk_s3::Error::from(e))
                )
            })?;
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        progress.advance(len);
    }
    Ok(parts)
}

async fn prefs(config: &Config, command: PrefsCommand) -> anyhow::Result<ExitCode> {
    let url = config.secrets.database_url.as_ref().ok_or_else(|| {
        anyhow::anyhow!("DATABASE_URL is not set: preferences live in PostgreSQL; export it")
    })?;
    let pool = crate::postgres::connect(&config.database, url).await?;
    // The daemon applies migrations at startup; an operator may import before its first start.
    crate::postgres::migrate(&pool).await?;
    let store = PreferenceStore::new(pool);
    match command {
        PrefsCommand::Get { tenant_id, user_id } => {
            let tenant = uuid::Uuid::parse_str(&tenant_id)
                .map_err(|_| anyhow::anyhow!("--tenant-id {tenant_id:?} is not a UUID"))?;
            match store.get(tenant, &user_id).await? {
                Some(p) => {
                    println!("{}", serde_json::to_string_pretty(&p)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no preferences stored for this user in tenant {tenant}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PrefsCommand::Set(args) => {
            let document = set_document(&args);
            let p = Preferences::parse(&document, "preferences")
                .map_err(|e| anyhow::anyhow!("{}", flag_error(&e.to_string())))?;
            store.put(std::slice::from_ref(&p)).await?;
            println!(
                "{}",
                json!({"stored": 1, "tenant_id": p.tenant_id, "user_id": p.user_id, "channels": p.channels.keys().collect::<Vec<_>>()})
            );
            Ok(ExitCode::SUCCESS)
        }
        PrefsCommand::Import { file } => {
            let origin = file.display().to_string();
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            let mut valid = Vec::new();
            let mut invalid = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(map)) => {
                        Preferences::parse(&map, "line").map_err(|e| e.to_string())
                    }
                    Ok(_) => Err("expected a JSON object".to_owned()),
                    Err(e) => Err(format!("not JSON: {}", crate::safe::json_error(&e))),
                };
                match parsed {
                    Ok(p) => valid.push(p),
                    Err(e) => invalid.push(format!("{origin}:{}: {e}", i + 1)),
                }
            }
            if !invalid.is_empty() {
                for line in &invalid {
                    eprintln!("{line}");
                }
                anyhow::bail!(
                    "{} invalid line(s): nothing imported; fix them and import again",
                    invalid.len()
                );
            }
            store.put(&valid).await?;
            println!("{}", json!({"stored": valid.len()}));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The preferences document `prefs set` builds from its flags.
fn set_document(args: &SetArgs) -> Map<String, Value> {
    let mut channels = BTreeMap::new();
    for (name, value) in [
        ("email", &args.email),
        ("sms", &args.sms),
        ("push", &args.push),
        ("webhook", &args.webhook),
    ] {
        if let Some(v) = value {
            channels.insert(name, v.clone());
        }
    }
    let mut doc = json!({
        "tenantId": args.tenant_id, "userId": args.user_id, "channels": channels,
        "optOut": args.opt_out, "failoverOrder": args.failover_order,
    });
    if let Some(segment) = &args.segment {
        doc["segment"] = json!(segment);
    }
    if let (Some(hours), Some(zone)) = (&args.quiet_hours, &args.time_zone) {
        let (start, end) = hours.split_once('-').unwrap_or((hours.as_str(), ""));
        doc["quietHours"] = json!({"start": start, "end": end, "timeZone": zone});
    }
    doc.as_object().cloned().unwrap_or_default()
}

/// A document error in the words of `prefs set`'s flags.
fn flag_error(error: &str) -> String {
    let flags = [
        ("preferences.channels.email", "--email"),
        ("preferences.channels.sms", "--sms"),
        ("preferences.channels.push", "--push"),
        ("preferences.channels.webhook", "--webhook"),
        ("preferences.quietHours.timeZone", "--time-zone"),
        ("preferences.quietHours", "--quiet-hours"),
        ("preferences.optOut", "--opt-out"),
        ("preferences.failoverOrder", "--failover-order"),
        ("preferences.tenantId", "--tenant-id"),
        ("preferences.userId", "--user-id"),
        ("preferences.segment", "--segment"),
    ];
    for (path, flag) in flags {
        if let Some(rest) = error.strip_prefix(path) {
            return format!("{flag}{rest}");
        }
    }
    error.to_owned()
}
