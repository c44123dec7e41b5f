//! The `notify-ingest` pipeline: the notification system's S3 intake, on a queue in the `s3`
//! format fed by `notify.bucket`'s ObjectCreated notifications.
//!
//! **An upload is planned** ([`Ingest::plan`]): its size is split into ranges of
//! `notify.drop_range_bytes` (8 MiB), recorded in PostgreSQL (`src/notify/drop_ranges.rs`),
//! and each range becomes a work message on the same queue — the upload's record plus the
//! range — so any number of daemons read a drop's ranges side by side.
//!
//! **A range is read** (`range.rs`): streamed in parts (never held whole), its lines validated
//! as NotificationEvents v1; the valid ones sent to `notify.incoming_queue` as their own bytes
//! in `SendMessageBatch` calls (several in flight, partial failures sent again), the invalid
//! ones recorded with the range. A range finished is recorded once: a daemon killed mid-drop
//! costs the ranges it had in flight, which are read again (the same lines, the same message
//! ids; ranking is idempotent by (tenantId, eventId)).
//!
//! **The last range** writes `<key>.rejects.jsonl` next to the drop, each reject with its line
//! number in the drop, or removes an earlier upload's when this one has none.
//!
//! A new upload of the key abandons the unread ranges of the previous one (logged, counted).

mod parts;
mod range;

use std::sync::Arc;

use aws_sdk_s3::Client as S3;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::contract::Contract;
use crate::fault::Dependency;
use crate::notify::drop;
use crate::notify::drop_ranges::{self, DropRanges, DropState, Upload};
use crate::notify::outbox::{MAX_BATCH_ENTRIES, Outbox, Outgoing};
use crate::telemetry;
use parts::s3_error;

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "notify-ingest",
    accepts: &[Contract::Json],
    needs: &[Need::Postgres, Need::Notify],
    // One range (8 MiB) per run: about 20,000 lines of 400 bytes at what LocalStack takes,
    // some 40 s; the rest is headroom for small lines and a slow queue.
    timeout_secs: 840,
    build: |shared| {
        Box::pin(async move {
            let notify = shared.notify()?;
            let sdk = shared.aws()?;
            let sqs = aws_sdk_sqs::Client::new(sdk);
            let incoming =
                Outbox::resolve(sqs.clone(), &notify.incoming_queue, "notify.incoming_queue")
                    .await?;
            let work = Outbox::resolve(sqs, &notify.ingest_queue, "notify.ingest_queue").await?;
            Ok(Arc::new(NotifyIngest(Arc::new(Ingest {
                s3: crate::aws::s3_client(sdk),
                bucket: notify.bucket,
                incoming,
                work,
                drops: DropRanges::new(shared.postgres()?),
                ranges: Arc::new(Semaphore::new(notify.ingest_ranges_in_flight as usize)),
                sends_in_flight: notify.ingest_sends_in_flight as usize,
                range_bytes: notify.drop_range_bytes,
                max_line_bytes: notify.max_line_bytes as usize,
                pack: notify.pack_events,
                region: sdk.region().map(|r| r.to_string()),
            }))) as Arc<dyn Pipeline>)
        })
    },
};

/// The pipeline: its state is shared with every run.
pub struct NotifyIngest(Arc<Ingest>);

struct Ingest {
    s3: S3,
    /// The only bucket drops are read from: an event naming another is not followed, so a
    /// notification from elsewhere cannot make the daemon read what its role can read.
    bucket: String,
    incoming: Outbox,
    /// `notify.ingest_queue`: where a drop's ranges go as work messages.
    work: Outbox,
    drops: DropRanges,
    /// Ranges this process reads at once (`notify.ingest_ranges_in_flight`).
    ranges: Arc<Semaphore>,
    sends_in_flight: usize,
    range_bytes: u64,
    max_line_bytes: usize,
    /// Lines packed into batches (`notify.pack_events`), else a message each.
    pack: bool,
    /// Written into the messages, as EventBridge would.
    region: Option<String>,
}

/// What the `s3` format makes of a record (`src/input/s3.rs`).
#[derive(Deserialize)]
struct Record {
    bucket: String,
    key: String,
    etag: Option<String>,
    event_name: String,
    event_time: Option<String>,
    sequencer: Option<String>,
    /// Set on a range's work message.
    range: Option<Range>,
}

/// One range of a drop to read: the work message's addition to the upload's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Range {
    /// The drop's id (its upload notification's).
    drop: String,
    /// Its number, from 0.
    no: u32,
    start: u64,
    end: u64,
    /// The object's size and ETag (quoted), as planned.
    size: u64,
    etag: String,
}

impl Pipeline for NotifyIngest {
    fn name(&self) -> &'static str {
        "notify-ingest"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::S3, Dependency::Sqs, Dependency::Postgres]
    }

    /// Not guarded by the ledger: the drop's own record says which ranges are done, and a
    /// ledger claim of a run killed with its process would hold the range for the whole read
    /// timeout before a redelivery could read it again.
    fn deduplicated(&self) -> bool {
        false
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let job = self.0.clone();
        Box::pin(async move { job.run(&delivery).await })
    }
}

/// A PostgreSQL failure recording a drop: the database's outage or the statement's fault,
/// by its class.
fn db_error(e: sqlx::Error) -> PipelineError {
    crate::fault::classify::postgres_failure("recording the drop's ranges", &e)
}

impl Ingest {
    async fn run(&self, delivery: &Delivery) -> Result<(), PipelineError> {
        let record: Record = serde_json::from_value(delivery.event.payload.clone()).map_err(|e| {
            PipelineError::Permanent(format!(
                "the notify-ingest pipeline takes S3 event notifications (queue format \"s3\"): {}",
                crate::safe::json_error(&e)
            ))
        })?;
        if !record.event_name.starts_with("ObjectCreated:") {
            telemetry::notify_drop("skipped");
            tracing::info!(drop_id = %delivery.key, event_name = %record.event_name, "not an upload; nothing to read");
            return Ok(());
        }
        if record.key.ends_with(drop::REJECTS_SUFFIX) {
            telemetry::notify_drop("skipped");
            tracing::debug!(drop_id = %delivery.key, "a rejects object; not a drop");
            return Ok(());
        }
        if record.bucket != self.bucket {
            return Err(PipelineError::Permanent(format!(
                "a drop in bucket {} is not read: drops are read from notify.bucket ({}) only; point the bucket's notifications at this queue only from that bucket",
                crate::safe::token(&record.bucket),
                self.bucket
            )));
        }
        match &record.range {
            Some(range) => self.read_range(&record, range).await,
            // The id is a hash of the bucket, key, ETag and sequencer: logged instead of the key.
            None => self.plan(delivery.key.as_str(), &record).await,
        }
    }

    /// Splits an upload into ranges and sends each as a work message; reports the drop at
    /// once when it has no range (an empty object) or when its report is all that is left.
    async fn plan(&self, drop_id: &str, record: &Record) -> Result<(), PipelineError> {
        // The version this notification announced: one overwritten since has its own.
        let etag = record
            .etag
            .as_ref()
            .map(|e| format!("\"{}\"", e.trim_matches('"')));
        // Its first byte: the answer says the object's size and ETag (a GET, not a HEAD, so a
        // refusal carries S3's error code).
        let first = self
            .s3
            .get_object()
            .bucket(&record.bucket)
            .key(&record.key)
            .range("bytes=0-0")
            .set_if_match(etag)
            .send()
            .await;
        let (size, etag) = match first {
            Ok(object) => (
                object
                    .content_range()
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|total| total.parse().ok())
                    .unwrap_or_else(|| object.content_length().unwrap_or(0).max(0) as u64),
                object.e_tag().unwrap_or_default().to_owned(),
            ),
            Err(e) => {
                if parts::superseded(&e) {
                    superseded(drop_id);
                    return Ok(());
                }
                // An empty object has no byte 0 to ask for.
                if e.raw_response().map(|r| r.status().as_u16()) == Some(416) {
                    let etag = record.etag.clone().unwrap_or_default();
                    (0, format!("\"{}\"", etag.trim_matches('"')))
                } else {
                    // A role without s3:ListBucket is told 403 for a missing key too.
                    let resource = format!("{}/{}", record.bucket, record.key);
                    return Err(s3_error("s3:GetObject", &resource, &e));
                }
            }
        };
        let ranges = drop_ranges::split(size, self.range_bytes);
        let planned = self
            .drops
            .plan(&Upload {
                drop_id,
                bucket: &record.bucket,
                key: &record.key,
                etag: &etag,
                size,
                ranges: ranges.len() as u32,
            })
            .await
            .map_err(db_error)?;
        for (older, unread) in &planned.abandoned {
            tracing::warn!(
                drop_id,
                abandoned_drop_id = %older,
                unread_ranges = unread,
                "a new upload of the drop's key: the earlier upload's unread ranges are abandoned"
            );
        }
        match planned.state {
            DropState::Reported | DropState::Abandoned => {
                tracing::info!(drop_id, state = ?planned.state, "the drop was planned before; nothing to do");
                return Ok(());
            }
            DropState::Read => return self.report(drop_id, &record.bucket, &record.key).await,
            DropState::Reading => {}
        }
        let work: Vec<Outgoing> = ranges
            .iter()
            .enumerate()
            .map(|(no, &(start, end))| Outgoing {
                body: work_message(
                    record,
                    &Range {
                        drop: drop_id.to_owned(),
                        no: no as u32,
                        start,
                        end,
                        size,
                        etag: etag.clone(),
                    },
                ),
                attributes: Vec::new(),
                // Drops take turns on the ingest queue, as tenants do elsewhere.
                group: Some(drop_id.to_owned()),
            })
            .collect();
        let count = work.len();
        let mut work = work.into_iter().peekable();
        while work.peek().is_some() {
            let batch: Vec<Outgoing> = work.by_ref().take(MAX_BATCH_ENTRIES).collect();
            self.work.send_batch(batch).await?;
        }
        tracing::info!(drop_id, bytes = size, ranges = count, "drop planned");
        Ok(())
    }

    /// Writes the drop's rejects object (or removes an earlier upload's when it has none) and
    /// records it; the drop's totals are counted and logged.
    async fn report(&self, drop_id: &str, bucket: &str, key: &str) -> Result<(), PipelineError> {
        if self.drops.state(drop_id).await.map_err(db_error)? == Some(DropState::Abandoned) {
            // A newer upload of the key writes its own rejects object.
            return Ok(());
        }
        let totals = self.drops.totals(drop_id).await.map_err(db_error)?;
        let rejects_key = format!("{key}{}", drop::REJECTS_SUFFIX);
        let resource = format!("{bucket}/{rejects_key}");
        if totals.rejected > 0 {
            let (rejects, unlisted) = self
                .drops
                .rejects(drop_id, totals.ranges)
                .await
                .map_err(db_error)?;
            let body = drop::rejects_body(&rejects, unlisted);
            self.s3
                .put_object()
                .bucket(bucket)
                .key(&rejects_key)
                .content_type("application/x-ndjson")
                .body(body.into())
                .send()
                .await
                .map_err(|e| s3_error("s3:PutObject", &resource, &e))?;
        } else {
            // An earlier upload's rejects must not read as this one's.
            self.s3
                .delete_object()
                .bucket(bucket)
                .key(&rejects_key)
                .send()
                .await
                .map_err(|e| s3_error("s3:DeleteObject", &resource, &e))?;
        }
        self.drops.reported(drop_id).await.map_err(db_error)?;
        telemetry::notify_drop("read");
        tracing::info!(
            drop_id,
            ranges = totals.ranges,
            accepted = totals.accepted,
            rejected = totals.rejected,
            "drop ingested"
        );
        Ok(())
    }
}

/// Counted and logged: the upload was overwritten or deleted since its notification, whose
/// newer upload is read on its own notification.
fn superseded(drop_id: &str) {
    telemetry::notify_drop("skipped");
    tracing::warn!(
        drop_id,
        "the drop was overwritten or deleted since this notification; its newer upload is read on its own notification"
    );
}

/// A range's work message: the upload's S3 record (its key encoded as S3 writes it) with the
/// range added, in the `s3` format this queue reads.
fn work_message(record: &Record, range: &Range) -> String {
    let key: String = url::form_urlencoded::byte_serialize(record.key.as_bytes()).collect();
    let mut entry = json!({
        "eventVersion": "2.1",
        "eventSource": "conveyor:notify-ingest",
        "eventName": record.event_name,
        "eventTime": record.event_time,
        "s3": {
            "bucket": {"name": record.bucket},
            "object": {"key": key, "size": range.size, "eTag": range.etag.trim_matches('"'), "sequencer": record.sequencer},
        },
    });
    entry[crate::input::s3::RANGE_FIELD] = json!(range);
    json!({ "Records": [entry] }).to_string()
}
