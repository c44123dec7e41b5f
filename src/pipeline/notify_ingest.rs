//! The `notify-ingest` pipeline: the notification system's S3 intake. Routed on a queue in the
//! `s3` format fed by `notify.bucket`'s ObjectCreated notifications, it streams each dropped
//! JSON-lines object (never holding it whole), validates every line as a NotificationEvent v1,
//! sends the valid ones to `notify.incoming_queue` in `SendMessageBatch` calls (several in
//! flight, partial failures sent again), and writes the invalid ones' line, field and reason to
//! `<key>.rejects.jsonl` next to the drop.
//!
//! A failure part-way (SQS or S3 down, the lease lost, the process killed) retries the whole
//! object: lines already sent are sent again, which is harmless — ranking is idempotent by
//! (tenantId, eventId).

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::Client as S3;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::contract::Contract;
use crate::fault::Dependency;
use crate::notify::binding::DROP_KEY_ATTRIBUTE;
use crate::notify::drop::{self, Lines, MAX_LINE_BYTES, MAX_REJECTS_LISTED, Reject};
use crate::notify::outbox::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, Outbox, Outgoing};
use crate::telemetry;

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "notify-ingest",
    accepts: &[Contract::Json],
    needs: &[Need::Notify],
    // A drop is read in one run: 14 minutes (under a queue's default 900 s deadline) is about
    // 475,000 lines at what LocalStack takes (docs/notifications.md); larger drops need
    // pipelines.notify-ingest.timeout_secs and the queue's deadline_secs raised.
    timeout_secs: 840,
    build: |shared| {
        Box::pin(async move {
            let notify = shared.notify()?;
            let sdk = shared.aws()?;
            let incoming = Outbox::resolve(
                aws_sdk_sqs::Client::new(sdk),
                &notify.incoming_queue,
                "notify.incoming_queue",
            )
            .await?;
            Ok(Arc::new(NotifyIngest(Arc::new(Ingest {
                s3: crate::aws::s3_client(sdk),
                bucket: notify.bucket,
                incoming,
                sends_in_flight: notify.ingest_sends_in_flight as usize,
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
    sends_in_flight: usize,
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
}

/// A drop's totals.
#[derive(Debug, Default)]
struct Totals {
    accepted: u64,
    rejected: u64,
}

impl Pipeline for NotifyIngest {
    fn name(&self) -> &'static str {
        "notify-ingest"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::S3, Dependency::Sqs]
    }

    /// Not guarded by the ledger: a read is harmless to repeat (ranking is idempotent by
    /// eventId), while a ledger claim of a run killed with its process would hold the drop for
    /// the whole read timeout (14 minutes) before a redelivery could read it again. A duplicate
    /// notification of one upload reads it twice; ranking absorbs the repeats.
    fn deduplicated(&self) -> bool {
        false
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let job = self.0.clone();
        Box::pin(async move { job.run(&delivery).await })
    }
}

impl Ingest {
    async fn run(&self, delivery: &Delivery) -> Result<(), PipelineError> {
        let record: Record = serde_json::from_value(delivery.event.payload.clone()).map_err(|e| {
            PipelineError::Permanent(format!(
                "the notify-ingest pipeline takes S3 event notifications (queue format \"s3\"): {}",
                crate::safe::json_error(&e)
            ))
        })?;
        // The id is a hash of the bucket, key, ETag and sequencer: logged instead of the key.
        let drop_id = delivery.key.as_str();
        if !record.event_name.starts_with("ObjectCreated:") {
            telemetry::notify_drop("skipped");
            tracing::info!(drop_id, event_name = %record.event_name, "not an upload; nothing to read");
            return Ok(());
        }
        if record.key.ends_with(drop::REJECTS_SUFFIX) {
            telemetry::notify_drop("skipped");
            tracing::debug!(drop_id, "a rejects object; not a drop");
            return Ok(());
        }
        if record.bucket != self.bucket {
            return Err(PipelineError::Permanent(format!(
                "a drop in bucket {} is not read: drops are read from notify.bucket ({}) only; point the bucket's notifications at this queue only from that bucket",
                crate::safe::token(&record.bucket),
                self.bucket
            )));
        }
        let started = Instant::now();
        let Some(totals) = self.read(drop_id, &record).await? else {
            return Ok(()); // superseded by a newer upload: counted and logged as skipped
        };
        telemetry::notify_drop("read");
        telemetry::notify_ingested("accepted", totals.accepted);
        telemetry::notify_ingested("rejected", totals.rejected);
        tracing::info!(
            drop_id,
            accepted = totals.accepted,
            rejected = totals.rejected,
            latency_ms = started.elapsed().as_millis() as u64,
            "drop ingested"
        );
        Ok(())
    }

    /// Streams the object, sends its valid lines and writes its rejects; `None` when the
    /// object was overwritten or deleted (its newer upload has its own notification).
    async fn read(&self, drop_id: &str, record: &Record) -> Result<Option<Totals>, PipelineError> {
        let mut parts = Parts {
            s3: self.s3.clone(),
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            // The version this notification announced: an object overwritten since has its own
            // notification, and this one is superseded.
            etag: record
                .etag
                .as_ref()
                .map(|e| format!("\"{}\"", e.trim_matches('"'))),
            next: 0,
            size: None,
        };
        let first = match parts.next_part().await {
            Ok(first) => first,
            Err(ReadFailure::Superseded) => {
                telemetry::notify_drop("skipped");
                tracing::warn!(
                    drop_id,
                    "the drop was overwritten or deleted since this notification; its newer upload is read on its own notification"
                );
                return Ok(None);
            }
            Err(ReadFailure::Failed(e)) => return Err(e),
        };
        let rest = futures::stream::try_unfold(parts, |mut parts| async move {
            match parts.next_part().await {
                Ok(Some(bytes)) => Ok(Some((bytes, parts))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
            }
        });
        let stream = futures::stream::iter(first.map(Ok)).chain(rest);
        let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
        let mut lines = Lines::new(reader, MAX_LINE_BYTES);
        let mut totals = Totals::default();
        let mut rejects: Vec<Reject> = Vec::new();
        let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH_ENTRIES);
        let mut batch_bytes = 0usize;
        let mut sending = FuturesUnordered::new();
        loop {
            let next = match lines.next().await {
                Ok(next) => next,
                // The parts' own failures travel through the reader as I/O errors.
                Err(e) => match e.into_inner().map(|inner| inner.downcast::<ReadFailure>()) {
                    Some(Ok(failure)) => match *failure {
                        ReadFailure::Failed(e) => return Err(e),
                        ReadFailure::Superseded => {
                            telemetry::notify_drop("skipped");
                            tracing::warn!(
                                drop_id,
                                sent = totals.accepted,
                                "the drop was overwritten or deleted while it was read; its newer upload is read on its own notification"
                            );
                            return Ok(None);
                        }
                    },
                    Some(Err(other)) => {
                        return Err(PipelineError::Retryable(format!(
                            "reading the drop: {}",
                            crate::safe::error_chain(other.as_ref())
                        )));
                    }
                    None => {
                        return Err(PipelineError::Retryable("reading the drop failed".into()));
                    }
                },
            };
            let Some((number, line)) = next else { break };
            match drop::check(number, line) {
                None => continue,
                Some(Err(reject)) => {
                    totals.rejected += 1;
                    telemetry::notify_rejected(reject.kind, reject.top_field());
                    if rejects.len() < MAX_REJECTS_LISTED {
                        rejects.push(reject);
                    }
                }
                Some(Ok((event, detail))) => {
                    totals.accepted += 1;
                    let message = Outgoing {
                        body: drop::incoming_body(drop_id, number, detail, self.region.as_deref()),
                        // Its origin, for ranking to check the drop prefix's tenants.
                        attributes: vec![(DROP_KEY_ATTRIBUTE, record.key.clone())],
                        // The tenant as the message group: SQS fair queues' key.
                        group: Some(event.tenant_id.to_string()),
                    };
                    tracing::debug!(drop_id, line = number, event_id = %event.event_id, user_id = %event.user.id, "line accepted");
                    if batch.len() == MAX_BATCH_ENTRIES
                        || batch_bytes + message.size() > MAX_BATCH_BYTES
                    {
                        sending.push(self.incoming.send_batch(std::mem::take(&mut batch)));
                        batch_bytes = 0;
                    }
                    batch_bytes += message.size();
                    batch.push(message);
                    // Bounded: memory stays flat however long the drop.
                    while sending.len() >= self.sends_in_flight {
                        if let Some(sent) = sending.next().await {
                            sent?;
                        }
                    }
                }
            }
        }
        if !batch.is_empty() {
            sending.push(self.incoming.send_batch(batch));
        }
        while let Some(sent) = sending.next().await {
            sent?;
        }
        if totals.rejected > 0 {
            let unlisted = totals.rejected - rejects.len() as u64;
            let body = drop::rejects_body(&rejects, unlisted);
            self.s3
                .put_object()
                .bucket(&record.bucket)
                .key(format!("{}{}", record.key, drop::REJECTS_SUFFIX))
                .content_type("application/x-ndjson")
                .body(body.into())
                .send()
                .await
                .map_err(|e| {
                    let resource =
                        format!("{}/{}{}", record.bucket, record.key, drop::REJECTS_SUFFIX);
                    s3_error("s3:PutObject", &resource, &e)
                })?;
        }
        Ok(Some(totals))
    }
}

/// A failed S3 call on a drop, by its class (see `fault::classify`): a refused permission
/// names the action and the object, so `/readyz` says what the role lacks.
fn s3_error<E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static>(
    action: &str,
    resource: &str,
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PipelineError {
    crate::fault::classify::aws_failure(Dependency::S3, action, resource, e)
}

/// Bytes asked for per GET. The drop is read part by part, each response read whole at once:
/// no download stays open while its lines are sent (one read slowly over minutes was cut
/// part-way on LocalStack, and S3 closes connections that stall), and memory stays bounded.
const PART_BYTES: u64 = 8 * 1024 * 1024;
/// Tries of one part whose body broke off mid-read (the SDK retries only failed requests).
const PART_TRIES: u32 = 3;

/// The drop's parts, in order.
struct Parts {
    s3: S3,
    bucket: String,
    key: String,
    /// `If-Match`: every part of the same version.
    etag: Option<String>,
    /// The first byte not read yet.
    next: u64,
    /// The object's size, once the first answer gave it.
    size: Option<u64>,
}

/// Why the drop could not be read on.
#[derive(Debug, thiserror::Error)]
enum ReadFailure {
    /// Overwritten or deleted since the notification (412, NoSuchKey).
    #[error("the drop was overwritten or deleted")]
    Superseded,
    #[error("{0}")]
    Failed(PipelineError),
}

impl Parts {
    /// The next part; `None` past the end.
    async fn next_part(&mut self) -> Result<Option<bytes::Bytes>, ReadFailure> {
        if self.size.is_some_and(|size| self.next >= size) {
            return Ok(None);
        }
        let mut pause = std::time::Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = self.next + PART_BYTES - 1;
            let answer = self
                .s3
                .get_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .range(format!("bytes={}-{last}", self.next))
                .set_if_match(self.etag.clone())
                .send()
                .await;
            let object = match answer {
                Ok(object) => object,
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let missing = e.as_service_error().is_some_and(
                        aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                    );
                    if status == Some(412) || missing {
                        return Err(ReadFailure::Superseded);
                    }
                    // An empty object has no byte 0 to ask for.
                    if status == Some(416) && self.next == 0 {
                        self.size = Some(0);
                        return Ok(None);
                    }
                    // A role without s3:ListBucket is told 403 for a missing key too.
                    let resource = format!("{}/{}", self.bucket, self.key);
                    return Err(ReadFailure::Failed(s3_error("s3:GetObject", &resource, &e)));
                }
            };
            // `bytes 0-8388607/52428800`: the total after the slash.
            self.size = object
                .content_range()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|total| total.parse().ok())
                .or(self.size)
                .or_else(|| object.content_length().map(|l| self.next + l.max(0) as u64));
            match object.body.collect().await {
                Ok(body) => {
                    let bytes = body.into_bytes();
                    self.next += bytes.len() as u64;
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(bytes));
                }
                Err(e) if attempt < PART_TRIES => {
                    tracing::warn!(error = %crate::safe::error_chain(&e), attempt, "a part of the drop broke off mid-read; asking for it again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    let reason = format!(
                        "reading the drop at byte {}: {}",
                        self.next,
                        crate::safe::error_chain(&e)
                    );
                    return Err(ReadFailure::Failed(PipelineError::Unavailable(
                        Dependency::S3,
                        reason,
                    )));
                }
            }
        }
    }
}
