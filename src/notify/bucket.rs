//! Rate limits: a token bucket per (tenant, `rateLimitKey`) in PostgreSQL — the seed's DynamoDB
//! conditional update, in the database conveyor already runs.
//!
//! A send makes **one** decision on its bucket: [`Buckets::reserve`] refills the bucket for the
//! time since it was last touched and takes a token, in one statement under the row's lock, so
//! any number of daemons sharing the database obey one bucket. A token that is not there yet is
//! reserved all the same: the bucket goes below zero, and the caller learns when its token is
//! due (with k reserved ahead, the k-th is due k / refill seconds from now). The caller waits
//! until then — in place, or deferred with the reservation recorded on its delivery record — and
//! sends without asking again. Waiters never wake to find the bucket empty, and each comes back
//! at its own time: no backlog stampedes.
//!
//! The bound: sends happen no sooner than their tokens are due, so a bucket never grants more
//! than `capacity + refill_per_sec × t` in any window of length `t`.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Limit;

/// When a send may go: its token is there, or reserved and due later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reservation {
    /// A token was there: send now.
    Now,
    /// The bucket was empty: the token reserved for this send is due in this long.
    Ahead(Duration),
}

#[derive(Clone)]
pub struct Buckets {
    pool: PgPool,
}

impl Buckets {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Takes the next token of the bucket `(tenant, key)` (created full on first use), reserving
    /// it when it is not there yet.
    ///
    /// Refill is computed from `clock_timestamp()`; a statement that waited for the row's lock
    /// behind another (its clock read earlier) adds no refill rather than a negative one, and
    /// never moves `updated_at` back, so a race only ever grants less.
    pub async fn reserve(
        &self,
        tenant: Uuid,
        key: &str,
        limit: Limit,
    ) -> Result<Reservation, sqlx::Error> {
        let (tokens,): (f64,) = sqlx::query_as(
            r#"
            INSERT INTO notify_rate_buckets AS b (tenant_id, key, tokens, updated_at)
            VALUES ($1, $2, $3 - 1, clock_timestamp())
            ON CONFLICT (tenant_id, key) DO UPDATE
            SET tokens = LEAST($3, b.tokens + $4 * GREATEST(0, EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at)))) - 1,
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
            RETURNING b.tokens
            "#,
        )
        .bind(tenant)
        .bind(key)
        .bind(limit.capacity)
        .bind(limit.refill_per_sec)
        .fetch_one(&self.pool)
        .await?;
        Ok(due(tokens, limit))
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

/// When the token that left the bucket at `tokens` is due.
fn due(tokens: f64, limit: Limit) -> Reservation {
    if tokens >= 0.0 {
        return Reservation::Now;
    }
    Reservation::Ahead(Duration::from_secs_f64(-tokens / limit.refill_per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kth_token_reserved_ahead_is_due_k_refills_from_now() {
        let limit = Limit {
            capacity: 10.0,
            refill_per_sec: 20.0,
        };
        assert_eq!(due(9.0, limit), Reservation::Now);
        assert_eq!(due(0.0, limit), Reservation::Now);
        assert_eq!(
            due(-1.0, limit),
            Reservation::Ahead(Duration::from_millis(50))
        );
        assert_eq!(
            due(-40.0, limit),
            Reservation::Ahead(Duration::from_secs(2))
        );
    }
}
