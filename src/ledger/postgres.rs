//! The ledger in PostgreSQL (`pipeline_ledger`): one atomic upsert per claim, so two
//! instances sharing a queue never run one pipeline for one key at once.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Claim, Key, LedgerError, LedgerStore};
use crate::telemetry::otel;

/// Longest `last_error` kept.
const MAX_ERROR_CHARS: usize = 1024;
/// SQS keeps a message at most 14 days (MessageRetentionPeriod maximum), so no delivery of a
/// key can arrive later than that: older rows are deleted.
pub const RETENTION: Duration = Duration::from_secs(15 * 24 * 3600);

pub struct PostgresLedger {
    pool: PgPool,
}

impl PostgresLedger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl LedgerStore for PostgresLedger {
    fn claim<'a>(
        &'a self,
        Key {
            tenant,
            key,
            pipeline,
        }: Key<'a>,
        token: Uuid,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Claim, LedgerError>> {
        let pool = &self.pool;
        let span = otel::db("postgresql", "claim", "pipeline_ledger");
        Box::pin(otel::traced(span, async move {
            let claimed: Option<i32> = sqlx::query_scalar(
                    "INSERT INTO pipeline_ledger AS l (tenant, key, pipeline, status, claim_token, claimed_until)
                     VALUES ($5, $1, $2, 'running', $3, now() + make_interval(secs => $4))
                     ON CONFLICT (tenant, key, pipeline) DO UPDATE
                        SET status = 'running', attempts = l.attempts + 1,
                            claim_token = EXCLUDED.claim_token, claimed_until = EXCLUDED.claimed_until,
                            updated_at = now()
                      WHERE l.status = 'failed' OR (l.status = 'running' AND l.claimed_until < now())
                     RETURNING attempts",
                )
                .bind(key)
                .bind(pipeline)
                .bind(token)
                .bind(hold.as_secs_f64())
                .bind(tenant)
                .fetch_optional(pool)
                .await?;
            if claimed.is_some() {
                return Ok(Claim::Claimed(token));
            }
            let row: Option<(String, f64)> = sqlx::query_as(
                "SELECT status, GREATEST(EXTRACT(EPOCH FROM claimed_until - now()), 0)::float8
                       FROM pipeline_ledger WHERE tenant = $3 AND key = $1 AND pipeline = $2",
            )
            .bind(key)
            .bind(pipeline)
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some((status, _)) if status == "succeeded" => Claim::AlreadySucceeded,
                Some((_, remaining)) => Claim::Busy(Duration::from_secs_f64(remaining.max(1.0))),
                // It changed between the two statements: try again shortly.
                None => Claim::Busy(Duration::from_secs(1)),
            })
        }))
    }

    fn finish<'a>(
        &'a self,
        Key {
            tenant,
            key,
            pipeline,
        }: Key<'a>,
        token: Uuid,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let pool = &self.pool;
        let span = otel::db("postgresql", "finish", "pipeline_ledger");
        Box::pin(otel::traced(span, async move {
            let error: Option<String> = error.map(|e| crate::safe::one_line(e, MAX_ERROR_CHARS));
            sqlx::query(
                    "UPDATE pipeline_ledger
                        SET status = CASE WHEN $4::text IS NULL THEN 'succeeded' ELSE 'failed' END,
                            last_error = $4, claim_token = NULL, claimed_until = NULL, updated_at = now()
                      WHERE tenant = $5 AND key = $1 AND pipeline = $2 AND claim_token = $3",
                )
                .bind(key)
                .bind(pipeline)
                .bind(token)
                .bind(error)
                .bind(tenant)
                .execute(pool)
                .await?;
            Ok(())
        }))
    }

    fn prune(&self) -> BoxFuture<'_, Result<u64, LedgerError>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM pipeline_ledger WHERE updated_at < now() - make_interval(secs => $1)",
            )
            .bind(RETENTION.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
    }
}
