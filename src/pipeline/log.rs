//! `log`: writes one line per event — ids, source, type, the payload's length and SHA-256 —
//! and succeeds. For watching a new queue's traffic before routing it anywhere real; it never
//! logs content.

use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{Delivery, Descriptor, Pipeline, PipelineError};

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "log",
    accepts: &[],
    needs: &[],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |_| Box::pin(async { Ok(Arc::new(Log) as Arc<dyn Pipeline>) }),
};

pub struct Log;

impl Pipeline for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let payload = d.event.payload.to_string();
        tracing::info!(
            queue = %d.queue,
            message_id = %d.message_id,
            event_id = d.event.id.as_deref().unwrap_or("-"),
            key = %d.key,
            source = %crate::safe::token(&d.event.source),
            detail_type = %crate::safe::token(&d.event.detail_type),
            contract = d.contract.as_str(),
            payload_bytes = payload.len(),
            payload_sha256 = %hex::encode(Sha256::digest(payload.as_bytes())),
            "event"
        );
        Box::pin(async { Ok(()) })
    }

    /// A redelivery is worth its own line.
    fn deduplicated(&self) -> bool {
        false
    }
}
