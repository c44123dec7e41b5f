//! Rate limits: a token bucket per (tenant, `rateLimitKey`) in PostgreSQL — the seed's DynamoDB
//! conditional update, in the database conveyor already runs. A token is taken by one
//! statement: it refills the bucket for the time since it was last touched, and takes a token
//! only if one is there, under the row's lock, so any number of daemons sharing the database
//! obey one bucket. A bucket never grants more than `capacity + refill_per_sec × t` in any
//! window of length `t`.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Limit;

/// Whether a token was taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    Taken,
    /// The bucket is empty: the next token is due in this long.
    Empty(Duration),
}

#[derive(Clone)]
pub struct Buckets {
    pool: PgPool,
}

impl Buckets {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Takes one token from the bucket `(tenant, key)`, created full on first use.
    ///
    /// Refill is computed from `clock_timestamp()`; a statement that waited for the row's lock
    /// behind another (its clock read earlier) adds no refill rather than a negative one, and
    /// never moves `updated_at` back, so a race only ever grants less.
    pub async fn take(&self, tenant: Uuid, key: &str, limit: Limit) -> Result<Take, sqlx::Error> {
        let (taken, available): (Option<f64>, Option<f64>) = sqlx::query_as(
            r#"
            WITH clock AS (SELECT clock_timestamp() AS now),
            take AS (
                INSERT INTO notify_rate_buckets AS b (tenant_id, key, tokens, updated_at)
                SELECT $1, $2, $3 - 1, now FROM clock
                ON CONFLICT (tenant_id, key) DO UPDATE
                SET tokens = LEAST($3, b.tokens + $4 * GREATEST(0, EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at)))) - 1,
                    updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
                WHERE LEAST($3, b.tokens + $4 * GREATEST(0, EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at)))) >= 1
                RETURNING b.tokens
            )
            SELECT
                (SELECT tokens FROM take),
                (SELECT LEAST($3, b.tokens + $4 * GREATEST(0, EXTRACT(EPOCH FROM ((SELECT now FROM clock) - b.updated_at))))
                   FROM notify_rate_buckets b WHERE b.tenant_id = $1 AND b.key = $2)
            "#,
        )
        .bind(tenant)
        .bind(key)
        .bind(limit.capacity)
        .bind(limit.refill_per_sec)
        .fetch_one(&self.pool)
        .await?;
        if taken.is_some() {
            return Ok(Take::Taken);
        }
        // What the statement saw before another took the last token; at least one token's
        // refill time, since the one that emptied it may not be visible to this snapshot.
        let missing = (1.0 - available.unwrap_or(0.0)).max(0.0);
        let secs = (missing / limit.refill_per_sec).max(1.0 / limit.refill_per_sec);
        Ok(Take::Empty(Duration::from_secs_f64(secs.min(3_600.0))))
    }

    /// Deletes buckets untouched for `idle`: a bucket idle that long has refilled (for any
    /// capacity that refills within it), and one taken from next is created full. Returns how
    /// many.
    pub async fn prune(&self, idle: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM notify_rate_buckets WHERE updated_at < clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(idle.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
