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
//! Backends, one file each: [`postgres`] (shared by every instance; the daemon's choice with
//! `DATABASE_URL`) and [`memory`] (one process only: effects are then deduplicated within it
//! alone, and the daemon says so at startup).

mod memory;
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use uuid::Uuid;

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

/// A place to keep the ledger. `key` is (tenant, interaction key, pipeline) throughout.
pub trait LedgerStore: Send + Sync + 'static {
    /// Claims the key for `token` if it is new, failed, or its claim expired; the claim holds
    /// for `hold`.
    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        token: Uuid,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Claim, LedgerError>>;

    /// Ends `token`'s claim: succeeded when `error` is `None`, else failed with it. A token
    /// that no longer holds the claim changes nothing.
    fn finish<'a>(
        &'a self,
        key: Key<'a>,
        token: Uuid,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Deletes entries no delivery can need any more; returns how many.
    fn prune(&self) -> BoxFuture<'_, Result<u64, LedgerError>>;
}

/// (tenant, interaction key, pipeline).
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub tenant: &'a str,
    pub key: &'a str,
    pub pipeline: &'a str,
}

/// The ledger the dispatcher uses, over one backend.
#[derive(Clone)]
pub struct Ledger(Arc<dyn LedgerStore>);

impl Ledger {
    pub fn new(store: impl LedgerStore) -> Self {
        Self(Arc::new(store))
    }

    /// In PostgreSQL (`pipeline_ledger`), shared by every instance.
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self::new(postgres::PostgresLedger::new(pool))
    }

    /// In this process's memory.
    pub fn in_memory() -> Self {
        Self::new(memory::MemoryLedger::default())
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
        let key = Key {
            tenant,
            key,
            pipeline,
        };
        // From the thread's generator: `Uuid::new_v4` asks the kernel each time, a system call
        // per message (uuid's `fast-rng` feature would do the same as this).
        let token = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        self.0.claim(key, token, hold).await
    }

    /// Records the claimed run's success.
    pub async fn succeeded(
        &self,
        tenant: &str,
        key: &str,
        pipeline: &str,
        token: Uuid,
    ) -> Result<(), LedgerError> {
        let key = Key {
            tenant,
            key,
            pipeline,
        };
        self.0.finish(key, token, None).await
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
        let key = Key {
            tenant,
            key,
            pipeline,
        };
        self.0.finish(key, token, Some(error)).await
    }

    /// Deletes rows no delivery can need any more; returns how many.
    pub async fn prune(&self) -> Result<u64, LedgerError> {
        self.0.prune().await
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
