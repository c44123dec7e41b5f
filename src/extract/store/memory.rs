//! Extractions in this process's memory (without `DATABASE_URL`), bounded: the oldest are
//! dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{ExtractionStore, memory_key};
use crate::extract::Extraction;

/// Results kept (oldest dropped first).
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct MemoryExtractions {
    inner: Mutex<Results>,
}

/// Results by key, and keys oldest first (for eviction).
#[derive(Default)]
struct Results {
    by_key: HashMap<String, Arc<Extraction>>,
    order: VecDeque<String>,
}

impl ExtractionStore for MemoryExtractions {
    fn load<'a>(
        &'a self,
        tenant_id: Uuid,
        key: &'a str,
        model: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Extraction>>, sqlx::Error>> {
        let results = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let found = results
            .by_key
            .get(&memory_key(tenant_id, key, model, version))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        tenant_id: Uuid,
        extraction: Extraction,
    ) -> BoxFuture<'a, Result<Arc<Extraction>, (sqlx::Error, Extraction)>> {
        let mut results = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Results { by_key, order } = &mut *results;
        let k = memory_key(
            tenant_id,
            key,
            &extraction.model,
            &extraction.prompt_version,
        );
        if let Some(stored) = by_key.get(&k) {
            return Box::pin(std::future::ready(Ok(stored.clone())));
        }
        if order.len() >= CAPACITY
            && let Some(oldest) = order.pop_front()
        {
            by_key.remove(&oldest);
        }
        order.push_back(k.clone());
        let stored = Arc::new(extraction);
        by_key.insert(k, stored.clone());
        Box::pin(std::future::ready(Ok(stored)))
    }
}
