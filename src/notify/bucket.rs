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
//!
//! **Provider buckets.** SES's send rate and SNS's SMS rate are the account's, not a tenant's:
//! `notify.provider_rate_limits` gives each a bucket of its own (tenant nil, key
//! `provider:<name>`), which every send on that provider takes from in the same statement as its
//! tenant's. 100 tenants at 14/s each then still send at most the account's rate together.

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

    /// Takes the next token of each bucket `(tenant, key)` (created full on first use), in one
    /// statement, reserving those not there yet; the send is due when its last token is. A send
    /// takes from its tenant's bucket and, where the account has one, its provider's (tenant
    /// nil): one decision either way. Keys must differ; every caller lists the tenant's bucket
    /// first and the provider's last, so two statements lock shared rows in the same order.
    ///
    /// Refill is computed from `clock_timestamp()`; a statement that waited for the row's lock
    /// behind another (its clock read earlier) adds no refill rather than a negative one, and
    /// never moves `updated_at` back, so a race only ever grants less.
    pub async fn reserve(
        &self,
        buckets: &[(Uuid, &str, Limit)],
    ) -> Result<Reservation, sqlx::Error> {
        let tenants: Vec<Uuid> = buckets.iter().map(|b| b.0).collect();
        let keys: Vec<&str> = buckets.iter().map(|b| b.1).collect();
        let capacities: Vec<f64> = buckets.iter().map(|b| b.2.capacity).collect();
        let refills: Vec<f64> = buckets.iter().map(|b| b.2.refill_per_sec).collect();
        // A new row's `tokens` is its capacity less one, so the update finds the capacity as
        // `EXCLUDED.tokens + 1`, and its refill by its key's place in the arguments.
        let rows: Vec<(String, f64)> = sqlx::query_as(
            r#"
            INSERT INTO notify_rate_buckets AS b (tenant_id, key, tokens, updated_at)
            SELECT tenant_id, key, capacity - 1, clock_timestamp()
            FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS r(tenant_id, key, capacity)
            ON CONFLICT (tenant_id, key) DO UPDATE
            SET tokens = LEAST(EXCLUDED.tokens + 1,
                               b.tokens + ($4::float8[])[array_position($2::text[], b.key)]
                                   * GREATEST(0, EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at)))) - 1,
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
            RETURNING b.key, b.tokens
            "#,
        )
        .bind(&tenants)
        .bind(&keys)
        .bind(&capacities)
        .bind(&refills)
        .fetch_all(&self.pool)
        .await?;
        let latest = rows
            .iter()
            .filter_map(|(key, tokens)| {
                let limit = buckets.iter().find(|b| b.1 == key)?.2;
                match due(*tokens, limit) {
                    Reservation::Now => None,
                    Reservation::Ahead(d) => Some(d),
                }
            })
            .max();
        Ok(latest.map_or(Reservation::Now, Reservation::Ahead))
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
