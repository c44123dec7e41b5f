//! The `projection` pipeline: an interaction and its action items projected into PostgreSQL
//! (`projection_interactions`, `projection_action_items`; see `migrations/`), in one
//! transaction of upserts on stable keys. Items no longer in the extraction are removed, so
//! the rows always equal the interaction's one stored extraction.
//!
//! It is independent of the graph: routed alongside it, a PostgreSQL outage makes only this
//! pipeline retry.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::contract::Contract;
use crate::contract::envelope::Interaction;
use crate::extract::{Extraction, Extractions};
use crate::fault::Dependency;
use crate::telemetry::{self, otel};

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "projection",
    accepts: &[Contract::EnvelopeV1, Contract::BatchCompletedV1],
    needs: &[Need::Postgres, Need::Model],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |r| {
        Box::pin(async move {
            Ok(
                Arc::new(Projection::new(r.postgres()?, r.extractions().await?))
                    as Arc<dyn Pipeline>,
            )
        })
    },
};

pub struct Projection {
    pool: PgPool,
    extractions: Extractions,
}

impl Projection {
    pub fn new(pool: PgPool, extractions: Extractions) -> Self {
        Self { pool, extractions }
    }
}

impl Pipeline for Projection {
    fn name(&self) -> &'static str {
        "projection"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::Postgres, Dependency::Model]
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let pool = self.pool.clone();
        let extractions = self.extractions.clone();
        Box::pin(async move {
            let interaction = super::require_interaction(&delivery, "projection")?;
            let extraction = extractions.get(&delivery.key, interaction).await?;
            let started = Instant::now();
            let span = otel::db("postgresql", "upsert", "projection_interactions");
            let written = write(&pool, &delivery.key, interaction, &extraction);
            match otel::traced(span, written).await {
                Ok(()) => {
                    telemetry::projection_written(started.elapsed().as_secs_f64());
                    Ok(())
                }
                Err(e) => Err(crate::fault::classify::postgres_failure(
                    "projection failed",
                    &e,
                )),
            }
        })
    }
}

async fn write(
    pool: &PgPool,
    key: &str,
    interaction: &Interaction,
    extraction: &Extraction,
) -> Result<(), sqlx::Error> {
    let tenant = interaction.tenant_id;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO projection_interactions \
           (tenant_id, interaction_key, interaction_id, interaction_type, source, user_id, account_id, \
            occurred_at, content_length, content_sha256, action_item_count, extraction_model, prompt_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (tenant_id, interaction_key) DO UPDATE SET \
           interaction_id = EXCLUDED.interaction_id, interaction_type = EXCLUDED.interaction_type, \
           source = EXCLUDED.source, user_id = EXCLUDED.user_id, account_id = EXCLUDED.account_id, \
           occurred_at = EXCLUDED.occurred_at, content_length = EXCLUDED.content_length, \
           content_sha256 = EXCLUDED.content_sha256, action_item_count = EXCLUDED.action_item_count, \
           extraction_model = EXCLUDED.extraction_model, prompt_version = EXCLUDED.prompt_version, \
           updated_at = now()",
    )
    .bind(tenant)
    .bind(key)
    .bind(interaction.interaction_id)
    .bind(interaction.interaction_type.as_str())
    .bind(interaction.source.as_str())
    .bind(&interaction.user_id)
    .bind(&interaction.account_id)
    .bind(interaction.timestamp)
    .bind(interaction.content.len() as i32)
    .bind(interaction.content.sha256())
    .bind(extraction.items.len() as i32)
    .bind(&extraction.model)
    .bind(&extraction.prompt_version)
    .execute(&mut *tx)
    .await?;

    let items = &extraction.items;
    let ids: Vec<String> = items.iter().map(|i| i.id(tenant, key)).collect();
    sqlx::query(
        "DELETE FROM projection_action_items \
         WHERE tenant_id = $1 AND interaction_key = $2 AND NOT (action_item_id = ANY($3))",
    )
    .bind(tenant)
    .bind(key)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    if !items.is_empty() {
        sqlx::query(
            "INSERT INTO projection_action_items \
               (tenant_id, interaction_key, action_item_id, description, owner_name, owner_email, \
                due_date, status, priority, confidence) \
             SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], \
                                          $7::date[], $8::text[], $9::text[], $10::real[]) \
             ON CONFLICT (tenant_id, action_item_id) DO UPDATE SET \
               description = EXCLUDED.description, owner_name = EXCLUDED.owner_name, \
               owner_email = EXCLUDED.owner_email, due_date = EXCLUDED.due_date, \
               status = EXCLUDED.status, priority = EXCLUDED.priority, \
               confidence = EXCLUDED.confidence, updated_at = now()",
        )
        .bind(tenant)
        .bind(key)
        .bind(&ids)
        .bind(
            items
                .iter()
                .map(|i| i.description.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            items
                .iter()
                .map(|i| i.owner.as_ref().map(|o| o.name.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            items
                .iter()
                .map(|i| i.owner.as_ref().and_then(|o| o.email.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.due_date).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.status.as_str()).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|i| i.priority.map(|p| p.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.confidence).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
