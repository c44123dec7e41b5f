//! The ledger in this process's memory: deduplicates redeliveries within one process's recent
//! past only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Claim, Key, LedgerError, LedgerStore};

/// Entries are kept for an hour: the map must not grow without bound.
const MEMORY_RETENTION: Duration = Duration::from_secs(3600);

/// tenant, key and pipeline, NUL-separated: one allocation per lookup.
type MemoryKey = String;

#[derive(Default)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<MemoryKey, MemoryEntry>>,
}

#[derive(Debug, Clone)]
struct MemoryEntry {
    succeeded: bool,
    claim: Option<(Uuid, Instant)>,
    created: Instant,
}

fn owned(k: Key<'_>) -> MemoryKey {
    let mut owned = String::with_capacity(k.tenant.len() + k.key.len() + k.pipeline.len() + 2);
    for (i, part) in [k.tenant, k.key, k.pipeline].into_iter().enumerate() {
        if i > 0 {
            owned.push('\0');
        }
        owned.push_str(part);
    }
    owned
}

impl MemoryLedger {
    fn claim_now(&self, key: Key<'_>, token: Uuid, hold: Duration) -> Claim {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Amortised pruning: whenever the map has doubled since it was last pruned.
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, e| e.created.elapsed() < MEMORY_RETENTION);
        }
        let entry = entries.entry(owned(key)).or_insert(MemoryEntry {
            succeeded: false,
            claim: None,
            created: Instant::now(),
        });
        if entry.succeeded {
            return Claim::AlreadySucceeded;
        }
        if let Some((_, until)) = entry.claim
            && until > Instant::now()
        {
            return Claim::Busy(until - Instant::now());
        }
        entry.claim = Some((token, Instant::now() + hold));
        Claim::Claimed(token)
    }

    fn finish_now(&self, key: Key<'_>, token: Uuid, error: Option<&str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(&owned(key))
            && entry.claim.is_some_and(|(t, _)| t == token)
        {
            entry.succeeded = error.is_none();
            entry.claim = None;
        }
    }
}

impl LedgerStore for MemoryLedger {
    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        token: Uuid,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Claim, LedgerError>> {
        Box::pin(std::future::ready(Ok(self.claim_now(key, token, hold))))
    }

    fn finish<'a>(
        &'a self,
        key: Key<'a>,
        token: Uuid,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.finish_now(key, token, error);
        Box::pin(std::future::ready(Ok(())))
    }

    fn prune(&self) -> BoxFuture<'_, Result<u64, LedgerError>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        entries.retain(|_, e| e.created.elapsed() < MEMORY_RETENTION);
        Box::pin(std::future::ready(Ok((before - entries.len()) as u64)))
    }
}
