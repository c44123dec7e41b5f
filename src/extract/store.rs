//! Extraction happens once per interaction: results are stored keyed by tenant, interaction
//! key, model and prompt version — in PostgreSQL when `DATABASE_URL` is set, else in memory — and
//! reused by every pipeline and every redelivery. Within a process, callers asking for the same
//! interaction at once share one extraction.
//!
//! The store is an optimisation of cost, never a gate: if PostgreSQL errors, the extraction is
//! computed (or recomputed) and the pipeline goes on. The first stored result wins, so pipelines
//! in different processes racing on one interaction still all use the same items.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, WeakShared};
use sqlx::PgPool;
use uuid::Uuid;

use super::{ExtractError, Extraction, Extractor};
use crate::breaker::{Breakers, Dependency};
use crate::envelope::Interaction;
use crate::telemetry;

/// In-memory results kept without PostgreSQL (oldest dropped first).
const MEMORY_CAPACITY: usize = 10_000;

type Computation = BoxFuture<'static, Result<Arc<Extraction>, ExtractError>>;

/// Dead entries (computations every caller gave up on) are swept when the map reaches this.
const PENDING_SWEEP_AT: usize = 1024;

/// Extractions, computed at most once per interaction: the shared service pipelines call.
#[derive(Clone)]
pub struct Extractions {
    inner: Arc<Inner>,
}

struct Inner {
    extractor: Extractor,
    /// Told whether the model answered (its circuit breaker), when the daemon has one.
    breakers: Option<Breakers>,
    store: Store,
    pending: Mutex<HashMap<String, WeakShared<Computation>>>,
}

enum Store {
    Postgres(PgPool),
    Memory(Mutex<Memory>),
}

/// Results by key, and keys oldest first (for eviction).
#[derive(Default)]
struct Memory {
    results: HashMap<String, Arc<Extraction>>,
    order: VecDeque<String>,
}

impl Extractions {
    /// Results stored in `pool` when given, else in memory. Model outages and recoveries are
    /// reported to `breakers`.
    pub fn new(extractor: Extractor, pool: Option<PgPool>, breakers: Option<Breakers>) -> Self {
        let store = match pool {
            Some(pool) => Store::Postgres(pool),
            None => Store::Memory(Mutex::default()),
        };
        Self {
            inner: Arc::new(Inner {
                extractor,
                breakers,
                store,
                pending: Mutex::default(),
            }),
        }
    }

    pub fn extractor(&self) -> &Extractor {
        &self.inner.extractor
    }

    /// The interaction's extraction: stored, being computed by another caller, or computed now.
    /// Every lookup is scoped by the interaction's tenant: another tenant's interaction with
    /// the same key is another interaction.
    ///
    /// The map holds computations weakly: when every caller waiting on one has given up (a
    /// pipeline timeout, a lost lease, shutdown), the computation is dropped with them and
    /// releases what it held (a model request slot, a PostgreSQL connection).
    pub async fn get(
        &self,
        key: &str,
        interaction: &Interaction,
    ) -> Result<Arc<Extraction>, ExtractError> {
        let scoped = scoped_key(interaction.tenant_id, key);
        let shared = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&scoped).and_then(WeakShared::upgrade) {
                Some(running) => running,
                None => {
                    let inner = self.inner.clone();
                    let owned_key = key.to_owned();
                    let interaction = interaction.clone();
                    let computation =
                        async move { inner.load_or_compute(&owned_key, &interaction).await }
                            .boxed()
                            .shared();
                    if pending.len() >= PENDING_SWEEP_AT {
                        pending.retain(|_, weak| weak.upgrade().is_some());
                    }
                    if let Some(weak) = computation.downgrade() {
                        pending.insert(scoped.clone(), weak);
                    }
                    computation
                }
            }
        };
        let result = shared.clone().await;
        // The first caller back removes the entry (if it is still this computation's).
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .get(&scoped)
            .and_then(WeakShared::upgrade)
            .is_none_or(|p| p.ptr_eq(&shared))
        {
            pending.remove(&scoped);
        }
        result
    }
}

impl Inner {
    async fn load_or_compute(
        &self,
        key: &str,
        interaction: &Interaction,
    ) -> Result<Arc<Extraction>, ExtractError> {
        let model = self.extractor.model().to_owned();
        let version = self.extractor.prompt_version();
        let tenant = interaction.tenant_id;
        match self.load(tenant, key, &model, version).await {
            Ok(Some(stored)) => {
                telemetry::extraction("stored");
                return Ok(stored);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                key,
                error = %crate::safe::error_chain(&e),
                "reading stored extractions failed; extracting anyway"
            ),
        }
        let started = std::time::Instant::now();
        let extraction = match self.extractor.extract(interaction).await {
            Ok(extraction) => {
                if let Some(breakers) = &self.breakers {
                    breakers.success(Dependency::Model);
                }
                extraction
            }
            Err(e) => {
                telemetry::extraction("failed");
                if let (Some(breakers), ExtractError::Unavailable { reason, .. }) =
                    (&self.breakers, &e)
                {
                    breakers.failure(Dependency::Model, reason);
                }
                return Err(e);
            }
        };
        telemetry::extraction("extracted");
        tracing::info!(
            key,
            tenant_id = %interaction.tenant_id,
            content_len = interaction.content.len(),
            chunks = extraction.chunks,
            items = extraction.items.len(),
            prompt_tokens = extraction.prompt_tokens,
            completion_tokens = extraction.completion_tokens,
            duration_ms = started.elapsed().as_millis() as u64,
            model = %extraction.model,
            "extracted action items"
        );
        match self.save(key, interaction.tenant_id, extraction).await {
            Ok(stored) => Ok(stored),
            Err((e, extraction)) => {
                tracing::warn!(
                    key,
                    error = %crate::safe::error_chain(&e),
                    "storing the extraction failed; using it unstored (a redelivery may extract again)"
                );
                Ok(Arc::new(extraction))
            }
        }
    }

    async fn load(
        &self,
        tenant_id: Uuid,
        key: &str,
        model: &str,
        version: &str,
    ) -> Result<Option<Arc<Extraction>>, sqlx::Error> {
        match &self.store {
            Store::Memory(memory) => {
                let memory = memory.lock().unwrap_or_else(|e| e.into_inner());
                Ok(memory
                    .results
                    .get(&memory_key(tenant_id, key, model, version))
                    .cloned())
            }
            Store::Postgres(pool) => {
                let row: Option<(sqlx::types::Json<Vec<super::ActionItem>>, i32, i64, i64)> =
                    sqlx::query_as(
                        "SELECT items, chunks, prompt_tokens, completion_tokens FROM extractions \
                         WHERE tenant_id = $4 AND interaction_key = $1 AND model = $2 \
                           AND prompt_version = $3",
                    )
                    .bind(key)
                    .bind(model)
                    .bind(version)
                    .bind(tenant_id)
                    .fetch_optional(pool)
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
            }
        }
    }

    /// Stores the extraction unless one is already stored, and returns the stored one: the
    /// first writer wins.
    async fn save(
        &self,
        key: &str,
        tenant_id: Uuid,
        extraction: Extraction,
    ) -> Result<Arc<Extraction>, (sqlx::Error, Extraction)> {
        match &self.store {
            Store::Memory(memory) => {
                let mut memory = memory.lock().unwrap_or_else(|e| e.into_inner());
                let Memory {
                    results: map,
                    order,
                } = &mut *memory;
                let k = memory_key(
                    tenant_id,
                    key,
                    &extraction.model,
                    &extraction.prompt_version,
                );
                if let Some(stored) = map.get(&k) {
                    return Ok(stored.clone());
                }
                if order.len() >= MEMORY_CAPACITY
                    && let Some(oldest) = order.pop_front()
                {
                    map.remove(&oldest);
                }
                order.push_back(k.clone());
                let stored = Arc::new(extraction);
                map.insert(k, stored.clone());
                Ok(stored)
            }
            Store::Postgres(pool) => {
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
                .execute(pool)
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
            }
        }
    }
}

/// The single-flight key: (tenant, interaction key).
fn scoped_key(tenant_id: Uuid, key: &str) -> String {
    format!("{tenant_id}\u{0}{key}")
}

fn memory_key(tenant_id: Uuid, key: &str, model: &str, version: &str) -> String {
    format!("{}\u{0}{model}\u{0}{version}", scoped_key(tenant_id, key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::{Content, ContentFormat, EventKind, InteractionSource, InteractionType};

    pub(crate) fn interaction(text: &str) -> Interaction {
        Interaction {
            kind: EventKind::EnvelopeV1,
            schema_version: "v1".into(),
            tenant_id: Uuid::from_u128(7),
            user_id: "u".into(),
            interaction_type: InteractionType::Transcript,
            content: Content {
                text: text.into(),
                format: ContentFormat::Plain,
            },
            timestamp: chrono::Utc::now(),
            source: InteractionSource::WebMic,
            pg_user_id: None,
            extras: Default::default(),
            interaction_id: None,
            trace_id: None,
            account_id: None,
            raw_transcript: None,
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_result_and_later_callers_reuse_it() {
        let x = Extractions::new(Extractor::Patterns, None, None);
        let i = interaction("Ann: I'll send the deck by Friday.");
        let (a, b) = tokio::join!(x.get("k1", &i), x.get("k1", &i));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one computation for both callers");
        let c = x.get("k1", &i).await.unwrap();
        assert!(Arc::ptr_eq(&a, &c), "stored, not recomputed");
        assert_eq!(a.items.len(), 1);
        assert!(x.inner.pending.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_tenants_interaction_with_the_same_key_is_extracted_for_itself() {
        let x = Extractions::new(Extractor::Patterns, None, None);
        let mine = interaction("Ann: I'll send the deck by Friday.");
        let mut theirs = interaction("Bo: I'll renew the contract by Friday.");
        theirs.tenant_id = Uuid::from_u128(8);
        let (a, b) = tokio::join!(x.get("k1", &mine), x.get("k1", &theirs));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(!Arc::ptr_eq(&a, &b), "not shared across tenants");
        assert!(a.items[0].description.to_lowercase().contains("deck"));
        assert!(
            b.items[0].description.to_lowercase().contains("renew"),
            "{:?}",
            b.items
        );
        let again = x.get("k1", &theirs).await.unwrap();
        assert!(Arc::ptr_eq(&b, &again), "stored per tenant");
    }

    #[tokio::test]
    async fn a_computation_every_caller_gave_up_on_is_dropped() {
        // A model endpoint that accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = crate::config::ExtractionConfig {
            base_url: format!("http://{}/v1", silent.local_addr().unwrap()),
            ..Default::default()
        };
        let llm = Extractor::new(&config, Some(&crate::config::Secret::new("k"))).unwrap();
        let x = Extractions::new(llm, None, None);
        let i = interaction("Ann: ACTION: send the deck");
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(200), x.get("k2", &i)).await;
        assert!(gave_up.is_err(), "the silent endpoint never answers");
        let weak = x
            .inner
            .pending
            .lock()
            .unwrap()
            .get(&scoped_key(i.tenant_id, "k2"))
            .cloned();
        assert!(
            weak.is_some_and(|w| w.upgrade().is_none()),
            "nothing keeps the abandoned computation (and its model request slot) alive"
        );
    }
}
