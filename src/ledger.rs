//! The idempotency ledger: (tenant, interaction key, pipeline) → status, attempts, last error.
//! The tenant is part of every key: two tenants reusing an `interaction_id` are two
//! interactions, and one tenant's success never skips the other's work.
//!
//! A pipeline that already succeeded for a key is skipped on redelivery. Two deliveries of the
//! same key at once (SQS is at-least-once; two daemons may share a queue) must not run the same
//! pipeline concurrently, so running it requires a *claim*: one atomic upsert that succeeds
//! only if the row is new, failed, or held by a claim that has expired. A claim holds for the
//! pipeline's timeout plus a margin, so a worker that dies mid-run (kill -9) blocks the key only
//! until then. The loser of a race sees `Busy` and retries the message later, by which time
//! the winner has recorded its success and the pipeline is skipped.
//!
//! Without a database the ledger lives in memory: effects are then deduplicated only within
//! one process (the daemon says so at startup).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// Longest `last_error` kept.
const MAX_ERROR_CHARS: usize = 1024;
/// SQS keeps a message at most 14 days (MessageRetentionPeriod maximum), so no delivery of a
/// key can arrive later than that: older ledger rows are deleted.
pub const RETENTION: Duration = Duration::from_secs(15 * 24 * 3600);
/// The in-memory ledger keeps entries for an hour: it only deduplicates redeliveries within one
/// process's recent past, and must not grow without bound.
const MEMORY_RETENTION: Duration = Duration::from_secs(3600);

/// The result of asking to run a pipeline for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Run it; report the result with this token.
    Claimed(Uuid),
    /// It already succeeded for this key: skip it.
    AlreadySucceeded,
    /// Another delivery is running it right now; its claim holds this much longer.
    Busy(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(#[from] sqlx::Error);

#[derive(Clone)]
pub enum Ledger {
    Postgres(PgPool),
    Memory(Arc<Mutex<HashMap<MemoryKey, MemoryEntry>>>),
}

/// (tenant, key, pipeline).
type MemoryKey = (String, String, String);

#[derive(Debug, Clone)]
pub struct MemoryEntry {
    succeeded: bool,
    claim: Option<(Uuid, Instant)>,
    created: Instant,
}

impl Ledger {
    pub fn in_memory() -> Self {
        Ledger::Memory(Arc::default())
    }

    /// Asks to run `pipeline` for `tenant`'s `key`; the claim holds for `hold` unless
    /// completed.
    pub async fn claim(
        &self,
        tenant: &str,
        key: &str,
        pipeline: &str,
        hold: Duration,
    ) -> Result<Claim, LedgerError> {
        let token = Uuid::new_v4();
        match self {
            Ledger::Postgres(pool) => {
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
                    Some((_, remaining)) => {
                        Claim::Busy(Duration::from_secs_f64(remaining.max(1.0)))
                    }
                    // It changed between the two statements: try again shortly.
                    None => Claim::Busy(Duration::from_secs(1)),
                })
            }
            Ledger::Memory(entries) => {
                let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
                // Amortised pruning: whenever the map has doubled since it was last pruned.
                if entries.len() >= 1024 && entries.len().is_power_of_two() {
                    entries.retain(|_, e| e.created.elapsed() < MEMORY_RETENTION);
                }
                let entry = entries
                    .entry((tenant.to_owned(), key.to_owned(), pipeline.to_owned()))
                    .or_insert(MemoryEntry {
                        succeeded: false,
                        claim: None,
                        created: Instant::now(),
                    });
                if entry.succeeded {
                    return Ok(Claim::AlreadySucceeded);
                }
                if let Some((_, until)) = entry.claim
                    && until > Instant::now()
                {
                    return Ok(Claim::Busy(until - Instant::now()));
                }
                entry.claim = Some((token, Instant::now() + hold));
                Ok(Claim::Claimed(token))
            }
        }
    }

    /// Records the claimed run's success.
    pub async fn succeeded(
        &self,
        tenant: &str,
        key: &str,
        pipeline: &str,
        token: Uuid,
    ) -> Result<(), LedgerError> {
        self.finish(tenant, key, pipeline, token, None).await
    }

    /// Records the claimed run's failure, releasing the claim.
    pub async fn failed(
        &self,
        tenant: &str,
        key: &str,
        pipeline: &str,
        token: Uuid,
        error: &str,
    ) -> Result<(), LedgerError> {
        self.finish(tenant, key, pipeline, token, Some(error)).await
    }

    /// Ends a claim: succeeded when `error` is `None`, else failed with it. Only the holder of
    /// the claim's token can end it, so a run whose claim expired and was taken over cannot
    /// overwrite the new holder's record.
    async fn finish(
        &self,
        tenant: &str,
        key: &str,
        pipeline: &str,
        token: Uuid,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        match self {
            Ledger::Postgres(pool) => {
                let error: Option<String> =
                    error.map(|e| crate::safe::one_line(e, MAX_ERROR_CHARS));
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
            }
            Ledger::Memory(entries) => {
                let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) =
                    entries.get_mut(&(tenant.to_owned(), key.to_owned(), pipeline.to_owned()))
                    && entry.claim.is_some_and(|(t, _)| t == token)
                {
                    entry.succeeded = error.is_none();
                    entry.claim = None;
                }
            }
        }
        Ok(())
    }
}

impl Ledger {
    /// Deletes rows no delivery can need any more; returns how many.
    pub async fn prune(&self) -> Result<u64, LedgerError> {
        match self {
            Ledger::Postgres(pool) => Ok(sqlx::query(
                "DELETE FROM pipeline_ledger WHERE updated_at < now() - make_interval(secs => $1)",
            )
            .bind(RETENTION.as_secs_f64())
            .execute(pool)
            .await?
            .rows_affected()),
            Ledger::Memory(entries) => {
                let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
                let before = entries.len();
                entries.retain(|_, e| e.created.elapsed() < MEMORY_RETENTION);
                Ok((before - entries.len()) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_ledger_claims_once_skips_after_success_and_frees_failed_or_expired_claims() {
        let ledger = Ledger::in_memory();
        let hold = Duration::from_secs(60);
        let Claim::Claimed(first) = ledger.claim("t", "k", "graph", hold).await.unwrap() else {
            panic!()
        };
        assert!(matches!(
            ledger.claim("t", "k", "graph", hold).await.unwrap(),
            Claim::Busy(_)
        ));
        assert!(matches!(
            ledger.claim("t", "k", "projection", hold).await.unwrap(),
            Claim::Claimed(_)
        ));
        ledger
            .failed("t", "k", "graph", first, "down")
            .await
            .unwrap();
        let Claim::Claimed(second) = ledger.claim("t", "k", "graph", hold).await.unwrap() else {
            panic!()
        };
        ledger.succeeded("t", "k", "graph", first).await.unwrap(); // a stale token changes nothing
        assert!(matches!(
            ledger.claim("t", "k", "graph", hold).await.unwrap(),
            Claim::Busy(_)
        ));
        ledger.succeeded("t", "k", "graph", second).await.unwrap();
        assert_eq!(
            ledger.claim("t", "k", "graph", hold).await.unwrap(),
            Claim::AlreadySucceeded
        );

        assert!(matches!(
            ledger
                .claim("t", "e", "graph", Duration::ZERO)
                .await
                .unwrap(),
            Claim::Claimed(_)
        ));
        assert!(
            matches!(
                ledger.claim("t", "e", "graph", hold).await.unwrap(),
                Claim::Claimed(_)
            ),
            "expired claim"
        );
    }
}
