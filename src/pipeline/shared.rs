//! The long-lived clients pipelines share, created once, on first use by a pipeline's
//! [`Descriptor::build`](super::Descriptor): the PostgreSQL pool, the Bolt graph (with its
//! constraints), the extraction store and its model, EventBridge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use neo4rs::Graph;
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::bolt;
use crate::breaker::Breakers;
use crate::config::Config;
use crate::config::ExtractorKind;
use crate::extract::llm::Llm;
use crate::extract::{Extractions, Extractor};
use crate::ops::Readiness;

/// What a pipeline may be built from.
pub struct Shared {
    pub config: Config,
    pub breakers: Breakers,
    pub readiness: Readiness,
    postgres: Option<PgPool>,
    aws: Option<aws_config::SdkConfig>,
    graph: OnceCell<BoltGraph>,
    extractions: OnceCell<Extractions>,
    /// The model client and its limiter: one per process, whoever calls the model.
    llm: std::sync::OnceLock<Arc<Llm>>,
}

/// The Bolt graph and whether its constraints exist yet (writes wait for them).
#[derive(Clone)]
pub struct BoltGraph {
    pub graph: Graph,
    pub schema_ready: Arc<AtomicBool>,
}

impl Shared {
    pub fn new(
        config: Config,
        breakers: Breakers,
        readiness: Readiness,
        postgres: Option<PgPool>,
        aws: Option<aws_config::SdkConfig>,
    ) -> Self {
        Self {
            config,
            breakers,
            readiness,
            postgres,
            aws,
            graph: OnceCell::new(),
            extractions: OnceCell::new(),
            llm: std::sync::OnceLock::new(),
        }
    }

    /// The PostgreSQL pool (`DATABASE_URL`).
    pub fn postgres(&self) -> anyhow::Result<PgPool> {
        self.postgres
            .clone()
            .context("this pipeline writes to PostgreSQL: export DATABASE_URL")
    }

    /// The `[notify]` section, for the notification stages' pipelines (config validation
    /// requires it when a route names one).
    pub fn notify(&self) -> anyhow::Result<crate::config::NotifyConfig> {
        self.config
            .notify
            .clone()
            .context("the notification pipelines need a [notify] section")
    }

    /// The AWS SDK configuration (loaded when queues are configured).
    pub fn aws(&self) -> anyhow::Result<&aws_config::SdkConfig> {
        self.aws
            .as_ref()
            .context("this pipeline calls AWS, which is configured only with queues to consume")
    }

    /// The extraction store and its model, shared by every pipeline that needs action items.
    pub async fn extractions(&self) -> anyhow::Result<Extractions> {
        self.extractions
            .get_or_try_init(|| async {
                let extractor = match self.config.extraction.extractor {
                    ExtractorKind::Llm => Extractor::Llm(self.llm()?),
                    ExtractorKind::Patterns => Extractor::new(&self.config.extraction, None)?,
                };
                Ok::<_, anyhow::Error>(Extractions::new(extractor, self.postgres.clone()))
            })
            .await
            .cloned()
    }

    /// The model client of `[extraction]`, shared by extraction and notification scoring so
    /// that one request limit and one `Retry-After` pause hold for the whole process.
    pub fn llm(&self) -> anyhow::Result<Arc<Llm>> {
        if let Some(llm) = self.llm.get() {
            return Ok(llm.clone());
        }
        let key = self
            .config
            .secrets
            .openai_api_key
            .as_ref()
            .context("calling the model needs OPENAI_API_KEY in the environment")?;
        let built = Arc::new(Llm::new(&self.config.extraction, key)?);
        Ok(self.llm.get_or_init(|| built).clone())
    }

    /// The Bolt graph. Its constraints must exist before the first write, or concurrent MERGEs
    /// could create duplicates: a server that is down at startup is waited for in the
    /// background (graph writes fail and retry meanwhile) rather than failing into a restart
    /// loop.
    pub async fn graph(&self) -> anyhow::Result<BoltGraph> {
        self.graph
            .get_or_try_init(|| async {
                let config = &self.config.graph;
                let (Some(uri), Some(password)) = (&config.uri, &self.config.secrets.neo4j_password)
                else {
                    anyhow::bail!(
                        "the graph pipeline needs a Bolt server: set graph.uri (or NEO4J_URI) and NEO4J_PASSWORD"
                    );
                };
                let graph = bolt::pool(config, uri, password)
                    .with_context(|| format!("graph.uri = {uri:?}: cannot build the Bolt client"))?;
                let schema = Schema {
                    graph: graph.clone(),
                    timeout: Duration::from_secs(config.connect_timeout_secs) * 6,
                    ready: Arc::new(AtomicBool::new(false)),
                    readiness: self.readiness.clone(),
                };
                self.readiness.set("graph", false);
                let built = BoltGraph {
                    graph,
                    schema_ready: schema.ready.clone(),
                };
                if schema.create().await.is_err() {
                    tokio::spawn(schema.ensure());
                }
                Ok(built)
            })
            .await
            .cloned()
    }

    /// The graph, if a pipeline built it (for health probes).
    pub fn built_graph(&self) -> Option<Graph> {
        self.graph.get().map(|g| g.graph.clone())
    }

    /// The extraction store, if a pipeline built it (for health probes).
    pub fn built_extractions(&self) -> Option<Extractions> {
        self.extractions.get().cloned()
    }
}

/// The graph's constraints and indexes, and who waits for them.
struct Schema {
    graph: Graph,
    timeout: Duration,
    /// What the graph pipeline checks before writing.
    ready: Arc<AtomicBool>,
    readiness: Readiness,
}

impl Schema {
    /// One attempt; on success graph writes may start.
    async fn create(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, bolt::setup_schema(&self.graph)).await {
            Ok(Ok(())) => {
                self.ready.store(true, Ordering::Release);
                self.readiness.set("graph", true);
                tracing::info!("graph constraints and indexes in place");
                Ok(())
            }
            Ok(Err(e)) => Err(crate::safe::error_chain(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Retries until the server answers; graph writes retry meanwhile.
    async fn ensure(self) {
        let mut wait = Duration::from_secs(1);
        while let Err(error) = self.create().await {
            tracing::error!(
                %error,
                retry_in_secs = wait.as_secs(),
                "creating the graph's constraints failed; graph writes will retry meanwhile"
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}
