//! Reading one range of a drop: its lines validated, the valid ones sent to the incoming
//! queue as their own bytes, the range recorded once with its line count and rejects; the
//! drop's last range reports the drop.

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use super::parts::{Parts, ReadFailure};
use super::{Ingest, Range, Record, db_error, superseded};
use crate::fault::PipelineError;
use crate::notify::binding::DROP_KEY_ATTRIBUTE;
use crate::notify::drop::{self, Lines, MAX_MESSAGE_BYTES};
use crate::notify::drop_ranges::{DropState, Finished, MAX_REJECTS_PER_RANGE, RangeResult, Start};
use crate::notify::outbox::{Calls, Outgoing};
use crate::notify::pack::Packs;
use crate::telemetry;

impl Ingest {
    /// Reads `range` of the drop `record` names, unless it was read already or its upload
    /// was overwritten; the drop's report when it is the last.
    pub(super) async fn read_range(
        &self,
        record: &Record,
        range: &Range,
    ) -> Result<(), PipelineError> {
        let drop_id = range.drop.as_str();
        // Held until the range is read: memory stays bounded by the ranges in flight.
        let _permit = self
            .ranges
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PipelineError::Retryable("the daemon is stopping".into()))?;
        match self.drops.state(drop_id).await.map_err(db_error)? {
            None => {
                tracing::warn!(
                    drop_id,
                    range = range.no,
                    "a range of a drop no longer recorded (older than the retention); not read"
                );
                return Ok(());
            }
            Some(DropState::Abandoned) => {
                telemetry::notify_drop_ranges("abandoned", 1);
                tracing::info!(
                    drop_id,
                    range = range.no,
                    "a range of an upload overwritten since: not read"
                );
                return Ok(());
            }
            Some(DropState::Read) => {
                // Every range is read, the report is not written yet (it failed): write it.
                return self.report(drop_id, &record.bucket, &record.key).await;
            }
            Some(DropState::Reported) => {
                telemetry::notify_drop_ranges("skipped", 1);
                return Ok(());
            }
            Some(DropState::Reading) => {}
        }
        match self
            .drops
            .start(drop_id, range.no)
            .await
            .map_err(db_error)?
        {
            Start::Finished => {
                telemetry::notify_drop_ranges("skipped", 1);
                return Ok(());
            }
            Start::Read { reads } => {
                telemetry::notify_drop_ranges(if reads > 1 { "reread" } else { "read" }, 1);
            }
        }
        let started = Instant::now();
        let result = match self.read_lines(record, range).await {
            Ok(result) => result,
            Err(ReadFailure::Superseded) => {
                superseded(drop_id);
                return Ok(());
            }
            Err(ReadFailure::Failed(e)) => return Err(e),
        };
        let finished = self
            .drops
            .finish(drop_id, range.no, &result)
            .await
            .map_err(db_error)?;
        if finished == Finished::Duplicate {
            tracing::info!(
                drop_id,
                range = range.no,
                "the range was read to its end by another run first"
            );
            return Ok(());
        }
        telemetry::notify_ingested("accepted", result.accepted);
        telemetry::notify_ingested("rejected", result.rejected);
        tracing::info!(
            drop_id,
            range = range.no,
            lines = result.lines,
            accepted = result.accepted,
            rejected = result.rejected,
            latency_ms = started.elapsed().as_millis() as u64,
            "range ingested"
        );
        if finished == Finished::Drop {
            return self.report(drop_id, &record.bucket, &record.key).await;
        }
        Ok(())
    }

    /// Streams the range's lines and sends the valid ones.
    async fn read_lines(&self, record: &Record, range: &Range) -> Result<RangeResult, ReadFailure> {
        let drop_id = range.drop.as_str();
        let from = Lines::<&[u8]>::read_from(range.start);
        let parts = Parts {
            s3: self.s3.clone(),
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            etag: Some(range.etag.clone()),
            next: from,
            end: range.end,
            size: range.size,
        };
        let reader = tokio_util::io::StreamReader::new(Box::pin(parts.stream()));
        let mut lines = Lines::range(reader, range.start, range.end, self.max_line_bytes);
        let mut result = RangeResult::default();
        // Lines packed per tenant into messages of up to 256 KiB (`src/notify/pack.rs`), and
        // those into SendMessageBatch calls.
        let mut packs = Packs::default();
        let mut calls = Calls::default();
        let mut sending = FuturesUnordered::new();
        while let Some(read) = lines.next().await.map_err(ReadFailure::from_io)? {
            result.lines = read.number;
            let verdict = drop::check(read.number, read.line, self.max_line_bytes).map(|v| {
                v.and_then(|(event, text)| {
                    let message = Outgoing {
                        body: drop::incoming_body(
                            drop_id,
                            read.offset,
                            &text,
                            self.region.as_deref(),
                        ),
                        // Its origin, for ranking to check the drop prefix's tenants.
                        attributes: vec![(DROP_KEY_ATTRIBUTE, record.key.clone())],
                        // The tenant as the message group: SQS fair queues' key.
                        group: Some(event.tenant_id.to_string()),
                    };
                    if message.size() > MAX_MESSAGE_BYTES {
                        return Err(drop::Reject {
                            line: read.number,
                            field: String::new(),
                            reason: format!(
                                "a valid line of {} bytes, but its message would be {} bytes; SQS takes at most {MAX_MESSAGE_BYTES}",
                                text.len(),
                                message.size()
                            ),
                            kind: "too_large",
                        });
                    }
                    Ok(message)
                })
            });
            let message = match verdict {
                None => continue,
                Some(Ok(message)) => message,
                Some(Err(reject)) => {
                    result.rejected += 1;
                    telemetry::notify_rejected(reject.kind, reject.top_field());
                    if result.rejects.len() < MAX_REJECTS_PER_RANGE {
                        result.rejects.push(reject);
                    }
                    continue;
                }
            };
            result.accepted += 1;
            let full = if self.pack {
                packs.push(message)
            } else {
                Some(message)
            };
            if let Some(call) = full.and_then(|pack| calls.add(pack)) {
                sending.push(self.incoming.send_batch(call));
            }
            // Bounded: memory stays flat however long the range.
            while sending.len() >= self.sends_in_flight {
                if let Some(sent) = sending.next().await {
                    sent.map_err(ReadFailure::Failed)?;
                }
            }
        }
        for pack in packs.drain() {
            if let Some(call) = calls.add(pack) {
                sending.push(self.incoming.send_batch(call));
            }
        }
        if let Some(call) = calls.rest() {
            sending.push(self.incoming.send_batch(call));
        }
        while let Some(sent) = sending.next().await {
            sent.map_err(ReadFailure::Failed)?;
        }
        telemetry::notify_drop_bytes(lines.offset() - from);
        Ok(result)
    }
}
