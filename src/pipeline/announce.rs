//! `announce`: publishes a result event to EventBridge after a route's other pipelines have
//! succeeded, so downstream consumers can react. It carries ids, the tenant, the interaction
//! type and the content's length and hash — never the content. Failures are retryable and,
//! like any pipeline's, isolated; the ledger makes the announcement happen once per key.

use std::sync::Arc;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use futures::future::BoxFuture;
use serde_json::json;

use super::{Delivery, Pipeline, PipelineError};
use crate::config::AnnounceConfig;

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

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let (client, config) = (self.client.clone(), self.config.clone());
        Box::pin(async move {
            let interaction = d.interaction.as_ref();
            let detail = json!({
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
            let entry = PutEventsRequestEntry::builder()
                .event_bus_name(&config.bus_name)
                .source(&config.source)
                .detail_type(&config.detail_type)
                .detail(detail.to_string())
                .build();
            let out = client
                .put_events()
                .entries(entry)
                .send()
                .await
                .map_err(|e| {
                    PipelineError::Retryable(format!("PutEvents: {}", crate::error_chain(&e)))
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
