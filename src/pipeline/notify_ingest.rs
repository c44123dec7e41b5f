//! The `notify-ingest` pipeline: the notification system's S3 intake. Routed on a queue in the
//! `s3` format fed by `notify.bucket`'s ObjectCreated notifications, it streams each dropped
//! JSON-lines object (never holding it whole), validates every line as a NotificationEvent v1,
//! sends the valid ones to `notify.incoming_queue` in `SendMessageBatch` calls (several in
//! flight, partial failures sent again), and writes the invalid ones' line, field and reason to
//! `<key>.rejects.jsonl` next to the drop.
//!
//! A failure part-way (SQS or S3 down, the lease lost) retries the whole object: lines already
//! sent are sent again, which is harmless — ranking is idempotent by (tenantId, eventId).

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::Client as S3;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::breaker::{Breakers, Dependency};
use crate::contract::Contract;
use crate::notify::drop::{self, Lines, MAX_LINE_BYTES, MAX_REJECTS_LISTED, Reject};
use crate::notify::outbox::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, Outbox, Outgoing};
use crate::telemetry;

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "notify-ingest",
    accepts: &[Contract::Json],
    needs: &[Need::Notify],
    // A drop is read in one run: 14 minutes (under a queue's default 900 s deadline) is about
    // 650,000 lines at what LocalStack takes (docs/notifications.md); larger drops need
    // pipelines.notify-ingest.timeout_secs and the queue's deadline_secs raised.
    timeout_secs: 840,
    build: |shared| {
        Box::pin(async move {
            let notify = shared
                .config
                .notify
                .clone()
                .ok_or_else(|| anyhow::anyhow!("the notify-ingest pipeline needs [notify]"))?;
            let sdk = shared.aws()?;
            let incoming = Outbox::resolve(
                aws_sdk_sqs::Client::new(sdk),
                &notify.incoming_queue,
                "notify.incoming_queue",
                shared.breakers.clone(),
            )
            .await?;
            Ok(Arc::new(NotifyIngest {
                s3: crate::aws::s3_client(sdk),
                bucket: notify.bucket,
                incoming,
                sends_in_flight: notify.ingest_sends_in_flight as usize,
                region: sdk.region().map(|r| r.to_string()),
                breakers: shared.breakers.clone(),
            }) as Arc<dyn Pipeline>)
        })
    },
};

pub struct NotifyIngest {
    s3: S3,
    /// The only bucket drops are read from: an event naming another is not followed, so a
    /// notification from elsewhere cannot make the daemon read what its role can read.
    bucket: String,
    incoming: Outbox,
    sends_in_flight: usize,
    /// Written into the messages, as EventBridge would.
    region: Option<String>,
    breakers: Breakers,
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

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let job = Ingest {
            s3: self.s3.clone(),
            bucket: self.bucket.clone(),
            incoming: self.incoming.clone(),
            sends_in_flight: self.sends_in_flight,
            region: self.region.clone(),
            breakers: self.breakers.clone(),
        };
        Box::pin(async move { job.run(&delivery).await })
    }
}

/// One run's owned state.
struct Ingest {
    s3: S3,
    bucket: String,
    incoming: Outbox,
    sends_in_flight: usize,
    region: Option<String>,
    breakers: Breakers,
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
        let totals = self.read(drop_id, &record).await?;
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

    /// Streams the object, sends its valid lines and writes its rejects.
    async fn read(&self, drop_id: &str, record: &Record) -> Result<Totals, PipelineError> {
        let mut request = self.s3.get_object().bucket(&record.bucket).key(&record.key);
        // The version this notification announced: an object overwritten since has its own
        // notification, and this one is superseded.
        if let Some(etag) = &record.etag {
            request = request.if_match(format!("\"{}\"", etag.trim_matches('"')));
        }
        let object = match request.send().await {
            Ok(object) => object,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let missing = e
                    .as_service_error()
                    .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key);
                if status == Some(412) || missing {
                    telemetry::notify_drop("skipped");
                    tracing::warn!(
                        drop_id,
                        "the drop was overwritten or deleted since this notification; its newer upload is read on its own notification"
                    );
                    return Ok(Totals::default());
                }
                return Err(self.s3_error("GetObject", &e));
            }
        };
        let reader = tokio::io::BufReader::with_capacity(64 * 1024, object.body.into_async_read());
        let mut lines = Lines::new(reader, MAX_LINE_BYTES);
        let mut totals = Totals::default();
        let mut rejects: Vec<Reject> = Vec::new();
        let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH_ENTRIES);
        let mut batch_bytes = 0usize;
        let mut sending = FuturesUnordered::new();
        loop {
            let next = lines.next().await.map_err(|e| {
                let reason = format!("reading the drop: {e}");
                self.breakers.failure(Dependency::S3, &reason);
                PipelineError::Unavailable(Dependency::S3, reason)
            })?;
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
                        attributes: Vec::new(),
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
                .map_err(|e| self.s3_error("PutObject (rejects)", &e))?;
        }
        self.breakers.success(Dependency::S3);
        Ok(totals)
    }

    fn s3_error<E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        call: &str,
        e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> PipelineError {
        let reason = format!("{call} on the drop: {}", crate::safe::error_chain(e));
        if crate::aws::is_transient(e) || crate::aws::is_auth_refused(e) {
            self.breakers.failure(Dependency::S3, &reason);
            PipelineError::Unavailable(Dependency::S3, reason)
        } else {
            PipelineError::Retryable(reason)
        }
    }
}
