//! Extractions in PostgreSQL (`extractions`), shared by every instance: the first stored
//! result wins, so processes racing on one interaction all use the same items.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use super::ExtractionStore;
use crate::extract::{ActionItem, Extraction};

pub struct PostgresExtractions {
    pool: PgPool,
}

impl PostgresExtractions {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl ExtractionStore for PostgresExtractions {
    fn load<'a>(
        &'a self,
        tenant_id: Uuid,
        key: &'a str,
        model: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Extraction>>, sqlx::Error>> {
        Box::pin(async move {
            let row: Option<(sqlx::types::Json<Vec<ActionItem>>, i32, i64, i64)> = sqlx::query_as(
                "SELECT items, chunks, prompt_tokens, completion_tokens FROM extractions \
                     WHERE tenant_id = $4 AND interaction_key = $1 AND model = $2 \
                       AND prompt_version = $3",
            )
            .bind(key)
            .bind(model)
            .bind(version)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|(items, chunks, prompt, completion)| {
                Arc::new(Extraction {
                    items: items.0,
                    model: model.to_owned(),
                    prompt_version: version.to_owned(),
                    chunks: chunks as u32,
                    prompt_tokens: prompt as u64,
                    completion_tokens: completion as u64,
                })
            }))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        tenant_id: Uuid,
        extraction: Extraction,
    ) -> BoxFuture<'a, Result<Arc<Extraction>, (sqlx::Error, Extraction)>> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO extractions \
                   (interaction_key, model, prompt_version, tenant_id, items, chunks, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant_id, interaction_key, model, prompt_version) DO NOTHING",
            )
            .bind(key)
            .bind(&extraction.model)
            .bind(&extraction.prompt_version)
            .bind(tenant_id)
            .bind(sqlx::types::Json(&extraction.items))
            .bind(extraction.chunks as i32)
            .bind(extraction.prompt_tokens as i64)
            .bind(extraction.completion_tokens as i64)
            .execute(&self.pool)
            .await;
            match inserted {
                Err(e) => Err((e, extraction)),
                Ok(done) if done.rows_affected() == 1 => Ok(Arc::new(extraction)),
                // Another process stored one first: use that one.
                Ok(_) => match self
                    .load(
                        tenant_id,
                        key,
                        &extraction.model,
                        &extraction.prompt_version,
                    )
                    .await
                {
                    Ok(Some(stored)) => Ok(stored),
                    Ok(None) => Ok(Arc::new(extraction)),
                    Err(e) => Err((e, extraction)),
                },
            }
        })
    }
}
