//! Extraction happens once per interaction: results are stored keyed by tenant, interaction
//! key, model and prompt version — in PostgreSQL when `DATABASE_URL` is set, else in memory — and
//! reused by every pipeline and every redelivery. Within a process, callers asking for the same
//! interaction at once share one extraction.
//!
//! The store is an optimisation of cost, never a gate: if PostgreSQL errors, the extraction is
//! computed (or recomputed) and the pipeline goes on. The first stored result wins, so pipelines
//! in different processes racing on one interaction still all use the same items.

mod memory;
mod postgres;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, WeakShared};
use sqlx::PgPool;
use uuid::Uuid;

use super::{ExtractError, Extraction, Extractor};
use crate::contract::envelope::Interaction;
use crate::telemetry;

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
    store: Box<dyn ExtractionStore>,
    pending: Mutex<HashMap<String, WeakShared<Computation>>>,
}

/// Where extractions are kept: one file per backend.
pub trait ExtractionStore: Send + Sync + 'static {
    /// The stored extraction of (tenant, key) by `model` with prompt `version`, if any.
    fn load<'a>(
        &'a self,
        tenant_id: Uuid,
        key: &'a str,
        model: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Extraction>>, sqlx::Error>>;

    /// Stores the extraction unless one is already stored, and returns the stored one: the
    /// first writer wins. On error the extraction is handed back.
    fn save<'a>(
        &'a self,
        key: &'a str,
        tenant_id: Uuid,
        extraction: Extraction,
    ) -> BoxFuture<'a, Result<Arc<Extraction>, (sqlx::Error, Extraction)>>;
}

impl Extractions {
    /// Results stored in `pool` when given, else in memory.
    pub fn new(extractor: Extractor, pool: Option<PgPool>) -> Self {
        let store: Box<dyn ExtractionStore> = match pool {
            Some(pool) => Box::new(postgres::PostgresExtractions::new(pool)),
            None => Box::new(memory::MemoryExtractions::default()),
        };
        Self {
            inner: Arc::new(Inner {
                extractor,
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
        match self.store.load(tenant, key, &model, version).await {
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
            Ok(extraction) => extraction,
            Err(e) => {
                telemetry::extraction("failed");
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
        match self
            .store
            .save(key, interaction.tenant_id, extraction)
            .await
        {
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
}

/// The single-flight key: (tenant, interaction key).
fn scoped_key(tenant_id: Uuid, key: &str) -> String {
    format!("{tenant_id}\u{0}{key}")
}

pub(super) fn memory_key(tenant_id: Uuid, key: &str, model: &str, version: &str) -> String {
    format!("{}\u{0}{model}\u{0}{version}", scoped_key(tenant_id, key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::envelope::{
        Content, ContentFormat, EventKind, InteractionSource, InteractionType,
    };

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
        let x = Extractions::new(Extractor::Patterns, None);
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
        let x = Extractions::new(Extractor::Patterns, None);
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
        let x = Extractions::new(llm, None);
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
