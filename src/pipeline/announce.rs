//! `announce`: publishes a result event to EventBridge after a route's other pipelines have
//! succeeded, so downstream consumers can react. It carries ids, the tenant, the interaction
//! type and the content's length and hash — never the content. Failures are retryable and,
//! like any pipeline's, isolated.
//!
//! Delivery is **at least once**: PutEvents cannot be made atomic with the ledger's record
//! of it, so a daemon killed between the two announces again on redelivery. Every
//! announcement therefore carries `announcement_id`, derived from tenant and interaction key
//! alone — the same on every repeat — for consumers to deduplicate on.

use std::sync::Arc;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use futures::future::BoxFuture;
use serde_json::json;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::config::AnnounceConfig;
use crate::fault::Dependency;
use crate::telemetry::otel;

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "announce",
    // Ids and, when there is one, the interaction's type, length and hash.
    accepts: &[],
    needs: &[Need::EventBridge],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |r| {
        Box::pin(async move {
            Ok(Arc::new(Announce::new(
                aws_sdk_eventbridge::Client::new(r.aws()?),
                r.config.announce.clone(),
            )) as Arc<dyn Pipeline>)
        })
    },
};

pub struct Announce {
    client: aws_sdk_eventbridge::Client,
    config: AnnounceConfig,
}

impl Announce {
    pub fn new(client: aws_sdk_eventbridge::Client, config: AnnounceConfig) -> Self {
        Self { client, config }
    }
}

impl Pipeline for Announce {
    fn name(&self) -> &'static str {
        "announce"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::EventBridge]
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let (client, config) = (self.client.clone(), self.config.clone());
        Box::pin(async move {
            let interaction = d.interaction.as_ref();
            let detail = json!({
                "announcement_id": announcement_id(&d.tenant, &d.key),
                "interaction_key": d.key,
                "source_event_id": d.event.id,
                "source_detail_type": d.event.detail_type,
                "tenant_id": interaction.map(|i| i.tenant_id),
                "interaction_id": interaction.and_then(|i| i.interaction_id),
                "interaction_type": interaction.map(|i| i.interaction_type),
                "account_id": interaction.and_then(|i| i.account_id.clone()),
                "content_length": interaction.map(|i| i.content.len()),
                "content_sha256": interaction.map(|i| i.content.sha256()),
            });
            let span = otel::send("aws_eventbridge", &config.bus_name, 1);
            let entry = PutEventsRequestEntry::builder()
                .event_bus_name(&config.bus_name)
                .source(&config.source)
                .detail_type(&config.detail_type)
                .detail(detail.to_string())
                .set_trace_header(otel::header_of(&span))
                .build();
            let out = otel::traced(span, client.put_events().entries(entry).send())
                .await
                .map_err(|e| {
                    crate::fault::classify::aws_failure(
                        Dependency::EventBridge,
                        "events:PutEvents",
                        &config.bus_name,
                        &e,
                    )
                })?;
            if out.failed_entry_count > 0 {
                let entry = out.entries.unwrap_or_default().into_iter().next();
                return Err(PipelineError::Retryable(format!(
                    "PutEvents rejected the announcement: {}",
                    entry.and_then(|e| e.error_code).unwrap_or_default()
                )));
            }
            Ok(())
        })
    }
}

/// The announcement's stable id: 32 hex digits of SHA-256 over tenant and interaction key,
/// so every repeat of one interaction's announcement carries the same id.
pub fn announcement_id(tenant: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("conveyor.announce\u{0}{tenant}\u{0}{key}"));
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_ids_are_stable_per_tenant_and_key() {
        let id = announcement_id("t1", "k1");
        assert_eq!(id.len(), 32);
        assert_eq!(id, announcement_id("t1", "k1"));
        assert_ne!(id, announcement_id("t2", "k1"));
        assert_ne!(id, announcement_id("t1", "k2"));
    }
}
