//! conveyor's configuration: one typed tree, layered with figment.
//!
//! Layers, later wins:
//! 1. built-in defaults (the `Default` impls below, mirrored with comments in `config/default.toml`);
//! 2. `config/default.toml`;
//! 3. `config/<CONVEYOR_ENV>.toml` (`local`, `test`, `production` ship with the repository);
//! 4. the file given with `--config FILE`;
//! 5. `CONVEYOR_…` environment variables, `__` for nesting
//!    (`CONVEYOR_QUEUES__MAIN__POLLERS=4` sets `queues.main.pollers`);
//!    plus the conventional `NEO4J_URI` / `NEO4J_USER` for `graph.uri` / `graph.user`.
//!
//! Unknown keys are errors everywhere. Secrets never come from files: they are read from the
//! environment into [`Secrets`] and print as `***`. After loading, [`Config::validate`] checks
//! every cross-field rule and names the key, the bad value and what would be valid.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// SQS caps a long poll at 20 seconds (ReceiveMessage `WaitTimeSeconds`, API reference).
pub const SQS_MAX_WAIT_SECS: u32 = 20;
/// SQS returns at most 10 messages per ReceiveMessage and takes at most 10 entries per batch call.
pub const SQS_MAX_BATCH: u32 = 10;
/// SQS caps a message's visibility timeout at 12 hours (43,200 s) from its first receive.
pub const SQS_MAX_VISIBILITY_SECS: u32 = 43_200;
/// SQS keeps a message at most 14 days (MessageRetentionPeriod maximum, 1,209,600 s).
pub const SQS_MAX_RETENTION_SECS: u32 = 1_209_600;

/// The whole configuration. Every section has defaults; see `config/default.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Logging format and level.
    pub telemetry: TelemetryConfig,
    /// The operations HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    pub ops: OpsConfig,
    /// AWS region and endpoint; credentials come from the default chain.
    pub aws: AwsConfig,
    /// How the daemon stops on SIGTERM / SIGINT.
    pub shutdown: ShutdownConfig,
    /// Queues to consume, keyed by a short lowercase name used in logs, metrics and env overrides.
    pub queues: BTreeMap<String, QueueConfig>,
    /// PostgreSQL (idempotency ledger, projection). The URL is the `DATABASE_URL` secret.
    pub database: DatabaseConfig,
    /// The Bolt graph server (Neo4j, or ArcadeDB locally). The password is `NEO4J_PASSWORD`.
    pub graph: GraphConfig,
    /// Per-pipeline settings, keyed by pipeline name.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// EventBridge, for `conveyor publish` and `conveyor infra`.
    pub eventbridge: EventBridgeConfig,
    /// What `conveyor infra up` provisions.
    pub infra: InfraConfig,
    /// Where the `announce` pipeline publishes its result events.
    pub announce: AnnounceConfig,
    /// Action-item extraction for the `graph` and `projection` pipelines.
    pub extraction: ExtractionConfig,
    /// When a dependency counts as down and its queues pause (see `src/breaker.rs`).
    pub breaker: BreakerConfig,
    /// Secrets, from the environment only; never read from a file, never serialized.
    #[serde(skip)]
    pub secrets: Secrets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` locally, `json` in production.
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `conveyor=debug,info`); `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` listen. Port 0 picks a free port.
    pub listen_addr: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Region; unset means the default chain (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint override (LocalStack); unset means `AWS_ENDPOINT_URL` or the real AWS endpoints.
    pub endpoint_url: Option<String>,
    /// Connect timeout for AWS calls. A frozen endpoint must not hang a poller forever.
    pub connect_timeout_secs: u64,
    /// Upper bound for one AWS call attempt, on top of a long poll's own wait.
    pub call_timeout_secs: u64,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            connect_timeout_secs: 3,
            call_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight work may run after SIGTERM. Keep it below the platform's stop timeout
    /// (ECS: 30 s by default; Fly: `kill_timeout`), or the platform SIGKILLs mid-flush.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 25 }
    }
}

/// One queue to consume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue URL. Either this or `name`.
    pub url: Option<String>,
    /// The queue name, resolved to a URL with GetQueueUrl at startup. Either this or `url`.
    pub name: Option<String>,
    /// How bodies are written: `eventbridge`, `sns`, `s3` or `raw` (see `input`).
    pub format: crate::input::Format,
    /// Concurrent long-pollers for this queue.
    pub pollers: u32,
    /// Messages received but not yet finished, across this queue's pollers.
    pub max_in_flight: u32,
    /// Long-poll wait per ReceiveMessage (0–20 s).
    pub wait_time_secs: u32,
    /// Most messages asked for per ReceiveMessage (1–10); fewer when permits are short.
    pub receive_batch_size: u32,
    /// Lease length: the visibility timeout set on receive and on every extension.
    pub visibility_timeout_secs: u32,
    /// Extend a lease when less than this remains of it. Must be shorter than the lease.
    pub lease_renew_before_secs: u32,
    /// Dead-letter after this many receives when the queue has no RedrivePolicy of its own.
    pub max_receive_count: u32,
    /// DLQ URL override; unset means the queue's RedrivePolicy target.
    pub dlq_url: Option<String>,
    /// Longest wait before pending deletes are sent even if fewer than 10 are queued.
    pub delete_flush_millis: u64,
    /// Backoff for retryable failures.
    pub retry: RetryConfig,
    /// Which pipelines run for which events; the first matching route wins.
    pub routes: Vec<RouteConfig>,
    /// What happens to an event no route matches.
    pub on_unrouted: Unrouted,
    /// Longest a message's whole handling may take — ledger claims and writes, every
    /// pipeline, the `after` stage — before it is given up and retried. Without it, a step
    /// that blocks (a lock on the ledger) would hold the message, its lease extended, for up
    /// to SQS's 12 hours and fill `max_in_flight`.
    pub deadline_secs: u64,
}

/// Routes an event by its `source`, `detail_type` and attributes to pipelines (what those are
/// in each input format: see `input`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// `source` to match: exact, a prefix ending in `*` (`com.yourapp.*`), or `*` for any.
    pub source: String,
    /// `detail_type` to match, same forms (`EnvelopeV1.*`).
    pub detail_type: String,
    /// Attributes that must be present and match, same forms (`{ tenant = "acme-*" }`).
    pub attributes: BTreeMap<String, String>,
    /// What the events must contain: `auto`, `envelope_v1`, `batch_completed_v1` or `json`.
    pub contract: crate::contract::Contract,
    /// Pipelines to run, concurrently, each isolated from the others.
    pub pipelines: Vec<String>,
    /// Pipelines to run once every one of `pipelines` has succeeded (e.g. `announce`).
    pub after: Vec<String>,
    /// `all`: the message succeeds when every pipeline did. `any`: when at least one did —
    /// which drops the failed pipelines' work, so it is opt-in.
    pub ack: Ack,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            source: "*".to_owned(),
            detail_type: "*".to_owned(),
            attributes: BTreeMap::new(),
            contract: crate::contract::Contract::default(),
            pipelines: Vec::new(),
            after: Vec::new(),
            ack: Ack::All,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    All,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// Dead-letter with reason `unrouted`: nothing disappears silently.
    DeadLetter,
    /// Delete it, counted in `conveyor_unrouted_total` and logged.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// How long one run may take before it counts as a retryable failure.
    pub timeout_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self { timeout_secs: 300 }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            url: None,
            name: None,
            format: crate::input::Format::default(),
            pollers: 2,
            max_in_flight: 100,
            wait_time_secs: SQS_MAX_WAIT_SECS,
            receive_batch_size: SQS_MAX_BATCH,
            visibility_timeout_secs: 60,
            lease_renew_before_secs: 20,
            max_receive_count: 3,
            dlq_url: None,
            delete_flush_millis: 20,
            retry: RetryConfig::default(),
            routes: Vec::new(),
            on_unrouted: Unrouted::DeadLetter,
            deadline_secs: 900,
        }
    }
}

impl QueueConfig {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs.into())
    }

    pub fn lease_renew_before(&self) -> Duration {
        Duration::from_secs(self.lease_renew_before_secs.into())
    }

    pub fn delete_flush(&self) -> Duration {
        Duration::from_millis(self.delete_flush_millis)
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

impl Config {
    /// The timeout of one run of `pipeline`.
    pub fn pipeline_timeout(&self, pipeline: &str) -> Duration {
        let secs = self
            .pipelines
            .get(pipeline)
            .map_or(PipelineConfig::default().timeout_secs, |p| p.timeout_secs);
        Duration::from_secs(secs)
    }
}

/// Exponential backoff with full jitter: the delay before receive n+1 is uniform in
/// `[0, min(cap, base * multiplier^(n-1))]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Backoff ceiling after the first failed receive.
    pub base_secs: u32,
    /// Growth per receive.
    pub multiplier: f64,
    /// Largest backoff (≤ 43,200 s, SQS's visibility cap).
    pub cap_secs: u32,
    /// `full`: uniform in [0, ceiling], so failures do not return in bursts. `none`: exactly
    /// the ceiling (predictable; for tests and low-volume queues).
    pub jitter: Jitter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    Full,
    None,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_secs: 5,
            multiplier: 2.0,
            cap_secs: 900,
            jitter: Jitter::Full,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventBridgeConfig {
    /// The event bus `conveyor publish` puts events on.
    pub bus_name: String,
}

impl Default for EventBridgeConfig {
    fn default() -> Self {
        Self {
            bus_name: "default".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The bus the `announce` pipeline publishes to.
    pub bus_name: String,
    /// The announcement's `source`.
    pub source: String,
    /// The announcement's `detail-type`.
    pub detail_type: String,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            bus_name: "default".to_owned(),
            source: "conveyor".to_owned(),
            detail_type: "InteractionProcessed".to_owned(),
        }
    }
}

/// The resources `conveyor infra` manages: a DLQ, a queue redriving to it, an EventBridge rule
/// on `eventbridge.bus_name` with the queue as its target, and the queue policy letting only
/// that rule send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfraConfig {
    /// The queue to create (point `queues.<key>.name` at it to consume it).
    pub queue_name: String,
    /// The DLQ; unset = `<queue_name>-dlq`.
    pub dlq_name: Option<String>,
    /// The queue's default visibility timeout (SQS attribute; conveyor's leases override it).
    pub visibility_timeout_secs: u32,
    /// How long the queue and the DLQ keep messages (14 days is SQS's maximum).
    pub retention_secs: u32,
    /// Native redrive to the DLQ after this many receives (conveyor dead-letters explicitly
    /// first; this is the backstop).
    pub max_receive_count: u32,
    /// The EventBridge rule.
    pub rule_name: String,
    /// Event sources the rule matches.
    pub sources: Vec<String>,
    /// Detail-types the rule matches; empty = any.
    pub detail_types: Vec<String>,
}

impl Default for InfraConfig {
    fn default() -> Self {
        Self {
            queue_name: "conveyor-events".to_owned(),
            dlq_name: None,
            visibility_timeout_secs: 720,
            retention_secs: 1_209_600,
            max_receive_count: 3,
            rule_name: "conveyor-events".to_owned(),
            sources: vec![
                "com.yourapp.transcription".to_owned(),
                "com.eq.email-pipeline".to_owned(),
            ],
            detail_types: Vec::new(),
        }
    }
}

impl InfraConfig {
    pub fn dlq_name(&self) -> String {
        self.dlq_name
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.queue_name))
    }
}

/// Per-dependency circuit breakers: when a dependency counts as down, pausing the queues that
/// need it instead of spending their messages' retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures attributed to a dependency that open its breaker.
    pub failures_to_open: u32,
    /// Seconds an open breaker waits before letting one trial message through.
    pub cooldown_secs: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 3,
            cooldown_secs: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Fail at startup when `DATABASE_URL` is not set (instead of running without PostgreSQL).
    pub required: bool,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a new connection, or for a free one from the pool, before
    /// calling PostgreSQL unreachable.
    pub connect_timeout_secs: u64,
    /// Longest one statement may run (PostgreSQL `statement_timeout`).
    pub statement_timeout_secs: u64,
    /// Longest one statement may wait for a lock (PostgreSQL `lock_timeout`): a table locked
    /// by a migration or an idle-in-transaction session fails the statement after this,
    /// instead of holding the message.
    pub lock_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            required: false,
            max_connections: 10,
            connect_timeout_secs: 5,
            statement_timeout_secs: 30,
            lock_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// Bolt address (`neo4j://host:7687`, `bolt://…`, or `host:port`); unset = no graph.
    /// `NEO4J_URI` sets it too.
    pub uri: Option<String>,
    /// Bolt user; `NEO4J_USER` sets it too.
    pub user: String,
    /// Database name; unset = the server's default database.
    pub database: Option<String>,
    /// Bolt connection pool size.
    pub max_connections: usize,
    /// How long a probe or first connection may take before the server counts as unreachable.
    pub connect_timeout_secs: u64,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            uri: None,
            user: "neo4j".to_owned(),
            database: None,
            max_connections: 16,
            connect_timeout_secs: 5,
        }
    }
}

/// How action items are extracted from an interaction's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extractor {
    /// An OpenAI-compatible chat endpoint with JSON-schema structured output.
    Llm,
    /// Offline rules ("I'll …", "action item: …", "by Friday"): no network, lower recall.
    Patterns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractionConfig {
    /// `llm` or `patterns`.
    pub extractor: Extractor,
    /// The chat endpoint's base URL (OpenAI, a gateway, vLLM, Ollama: anything that serves
    /// `POST {base_url}/chat/completions`). The key is the `OPENAI_API_KEY` secret.
    pub base_url: String,
    /// Model name sent with each request; part of the stored extraction's key.
    pub model: String,
    /// Longest wait for one chat completion.
    pub timeout_secs: u64,
    /// Most chat requests per minute, across every worker of this process.
    pub requests_per_minute: u32,
    /// Most chat requests in flight at once, across every worker of this process.
    pub max_concurrent_requests: u32,
    /// Content longer than this many tokens (estimated at 4 bytes each) is split into chunks
    /// of at most this size, extracted separately and merged.
    pub chunk_tokens: u32,
    /// Upper bound on the tokens the model may answer with, per chunk.
    pub max_output_tokens: u32,
}

impl Default for ExtractionConfig {
    fn default() -> Self {
        Self {
            extractor: Extractor::Llm,
            base_url: "https://api.openai.com/v1".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            timeout_secs: 60,
            requests_per_minute: 500,
            max_concurrent_requests: 8,
            chunk_tokens: 6000,
            max_output_tokens: 4000,
        }
    }
}

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Secrets read from the environment by their conventional names.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Secrets {
    /// `DATABASE_URL`: may carry a password.
    pub database_url: Option<Secret>,
    /// `NEO4J_PASSWORD`.
    pub neo4j_password: Option<Secret>,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<Secret>,
    /// `AWS_ACCESS_KEY_ID` (read here only to report it redacted; the SDK reads its own chain).
    pub aws_access_key_id: Option<Secret>,
    /// `AWS_SECRET_ACCESS_KEY` (as above).
    pub aws_secret_access_key: Option<Secret>,
}

impl Secrets {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret)
        };
        Self {
            database_url: var("DATABASE_URL"),
            neo4j_password: var("NEO4J_PASSWORD"),
            openai_api_key: var("OPENAI_API_KEY"),
            aws_access_key_id: var("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
        }
    }
}

/// Where configuration comes from: the directory of TOML files, the environment name and an
/// optional extra file.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Directory holding `default.toml` and `<env>.toml`.
    pub dir: PathBuf,
    /// `CONVEYOR_ENV`: selects `<dir>/<env>.toml`.
    pub env: String,
    /// `--config FILE`, merged over the environment's file.
    pub file: Option<PathBuf>,
}

/// A configuration that could not be loaded or is not valid. Each problem names its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Keys of `CONVEYOR_…` variables that select the configuration instead of being part of it,
/// or that belong to the scripts (`CONVEYOR_STACK_…`).
const NON_CONFIG_ENV_KEYS: &[&str] = &["env", "config", "config_dir"];

impl Config {
    /// Loads and validates the configuration from `sources`, the process environment included.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let default_file = sources.dir.join("default.toml");
        let env_file = sources.dir.join(format!("{}.toml", sources.env));
        require_file(
            &default_file,
            "the config directory must hold default.toml; pass --config-dir or set CONVEYOR_CONFIG_DIR",
        )?;
        require_file(
            &env_file,
            &format!(
                "CONVEYOR_ENV={:?} selects it; set CONVEYOR_ENV to one of {} or add the file",
                sources.env,
                available_envs(&sources.dir).join(", ")
            ),
        )?;

        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(&default_file))
            .merge(Toml::file_exact(&env_file));
        if let Some(file) = &sources.file {
            require_file(file, "given with --config / CONVEYOR_CONFIG")?;
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment
            .merge(
                Env::raw()
                    .only(&["NEO4J_URI", "NEO4J_USER"])
                    // figment hands `map` and `filter` the variable's name in its original case.
                    .map(|key| {
                        if key.as_str().eq_ignore_ascii_case("neo4j_uri") {
                            "graph.uri".into()
                        } else {
                            "graph.user".into()
                        }
                    }),
            )
            .merge(
                Env::prefixed("CONVEYOR_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        !NON_CONFIG_ENV_KEYS.contains(&key.as_str()) && !key.starts_with("stack_")
                    })
                    .split("__"),
            );

        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.into_iter().map(|e| describe(&e)).collect()))?;
        config.secrets = Secrets::from_env();
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule a single field's type cannot express. Each problem names the key, the
    /// value and what would be valid; all problems are reported at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, value: &dyn fmt::Display, want: &str| {
            problems.push(format!("{key} = {value}: {want}"));
        };

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            bad(
                "telemetry.log_level",
                &format!("{:?}", self.telemetry.log_level),
                &format!(
                    "not a tracing filter ({e}); use e.g. \"info\" or \"conveyor=debug,info\""
                ),
            );
        }
        if self.aws.connect_timeout_secs == 0 {
            bad("aws.connect_timeout_secs", &0, "must be at least 1");
        }
        if self.aws.call_timeout_secs == 0 {
            bad("aws.call_timeout_secs", &0, "must be at least 1");
        }
        if self.shutdown.grace_secs == 0 {
            bad(
                "shutdown.grace_secs",
                &0,
                "must be at least 1 so in-flight work can finish",
            );
        }

        for (name, q) in &self.queues {
            let key = |field: &str| format!("queues.{name}.{field}");
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                || name.is_empty()
            {
                bad(
                    &format!("queues.{name}"),
                    &format!("{name:?}"),
                    "queue keys must be lowercase letters, digits, '-' or '_' (so CONVEYOR_QUEUES__<KEY>__… can address them)",
                );
            }
            match (&q.url, &q.name) {
                (None, None) => bad(&key("url"), &"(unset)", "set either url or name"),
                (Some(_), Some(_)) => bad(&key("name"), &"(set)", "set url or name, not both"),
                _ => {}
            }
            if q.pollers == 0 {
                bad(&key("pollers"), &0, "must be at least 1");
            }
            if q.max_in_flight == 0 {
                bad(&key("max_in_flight"), &0, "must be at least 1");
            }
            if q.wait_time_secs > SQS_MAX_WAIT_SECS {
                bad(
                    &key("wait_time_secs"),
                    &q.wait_time_secs,
                    "must be 0..=20 (SQS's long-poll maximum)",
                );
            }
            if q.receive_batch_size == 0 || q.receive_batch_size > SQS_MAX_BATCH {
                bad(
                    &key("receive_batch_size"),
                    &q.receive_batch_size,
                    "must be 1..=10 (SQS returns at most 10 messages per receive)",
                );
            }
            if q.visibility_timeout_secs < 2 || q.visibility_timeout_secs > SQS_MAX_VISIBILITY_SECS
            {
                bad(
                    &key("visibility_timeout_secs"),
                    &q.visibility_timeout_secs,
                    "must be 2..=43200 (SQS's 12-hour visibility cap)",
                );
            }
            if q.lease_renew_before_secs == 0
                || q.lease_renew_before_secs >= q.visibility_timeout_secs
            {
                bad(
                    &key("lease_renew_before_secs"),
                    &q.lease_renew_before_secs,
                    &format!(
                        "must be at least 1 and shorter than visibility_timeout_secs ({}), or every lease would be extended at once and forever",
                        q.visibility_timeout_secs
                    ),
                );
            }
            if q.max_receive_count == 0 {
                bad(&key("max_receive_count"), &0, "must be at least 1");
            }
            if q.retry.base_secs == 0 {
                bad(&key("retry.base_secs"), &0, "must be at least 1");
            }
            if !(q.retry.multiplier >= 1.0 && q.retry.multiplier.is_finite()) {
                bad(
                    &key("retry.multiplier"),
                    &q.retry.multiplier,
                    "must be a number >= 1.0",
                );
            }
            if q.routes.is_empty() {
                bad(
                    &key("routes"),
                    &"[]",
                    "add at least one [[queues.<name>.routes]] with pipelines, or every event would be unrouted",
                );
            }
            for (i, route) in q.routes.iter().enumerate() {
                let route_key = |field: &str| format!("queues.{name}.routes[{i}].{field}");
                let attributes = route
                    .attributes
                    .iter()
                    .map(|(name, pattern)| (format!("attributes.{name}"), pattern));
                for (field, pattern) in [
                    ("source".to_owned(), &route.source),
                    ("detail_type".to_owned(), &route.detail_type),
                ]
                .into_iter()
                .chain(attributes)
                {
                    if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
                        bad(
                            &route_key(&field),
                            &format!("{pattern:?}"),
                            "use an exact value, a prefix ending in '*', or \"*\"",
                        );
                    }
                }
                if route.pipelines.is_empty() {
                    bad(&route_key("pipelines"), &"[]", "name at least one pipeline");
                }
                for (field, names) in [("pipelines", &route.pipelines), ("after", &route.after)] {
                    for pipeline in names {
                        let Some(descriptor) = crate::pipeline::descriptor(pipeline) else {
                            bad(
                                &route_key(field),
                                &format!("{pipeline:?}"),
                                &format!(
                                    "unknown pipeline; known: {}",
                                    crate::pipeline::catalog_names()
                                ),
                            );
                            continue;
                        };
                        let contract = route.contract;
                        if contract != crate::contract::Contract::Auto
                            && !descriptor.accepts.is_empty()
                            && !descriptor.accepts.contains(&contract)
                        {
                            bad(
                                &route_key("contract"),
                                &format!("{:?}", contract.as_str()),
                                &format!(
                                    "the {pipeline} pipeline cannot take it (it takes {}); route {pipeline} only events of those contracts, or change the contract",
                                    descriptor
                                        .accepts
                                        .iter()
                                        .map(|c| c.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            );
                        }
                    }
                }
            }
            let longest_route = q
                .routes
                .iter()
                .map(|r| {
                    let stage = |names: &[String]| {
                        names
                            .iter()
                            .map(|n| self.pipeline_timeout(n))
                            .max()
                            .unwrap_or_default()
                    };
                    stage(&r.pipelines) + stage(&r.after)
                })
                .max()
                .unwrap_or_default();
            if q.deadline_secs == 0 || q.deadline_secs > u64::from(SQS_MAX_VISIBILITY_SECS) {
                bad(
                    &key("deadline_secs"),
                    &q.deadline_secs,
                    "must be 1..=43200 (no lease outlives SQS's 12-hour visibility cap)",
                );
            } else if q.deadline() <= longest_route {
                bad(
                    &key("deadline_secs"),
                    &q.deadline_secs,
                    &format!(
                        "must exceed the longest route's pipeline timeouts ({} s: its pipelines' \
                         longest timeout plus its `after` stage's), or the deadline would cut \
                         every slow run short; raise it or lower pipelines.<name>.timeout_secs",
                        longest_route.as_secs()
                    ),
                );
            }
            if q.retry.cap_secs < q.retry.base_secs || q.retry.cap_secs > SQS_MAX_VISIBILITY_SECS {
                bad(
                    &key("retry.cap_secs"),
                    &q.retry.cap_secs,
                    &format!(
                        "must be between retry.base_secs ({}) and 43200 (SQS's visibility cap)",
                        q.retry.base_secs
                    ),
                );
            }
        }

        if self.database.required && self.secrets.database_url.is_none() {
            bad(
                "database.required",
                &true,
                "DATABASE_URL is not set in the environment: export DATABASE_URL=postgres://… or set database.required = false",
            );
        }
        if self.database.max_connections == 0 {
            bad("database.max_connections", &0, "must be at least 1");
        }
        for (key, value) in [
            (
                "database.connect_timeout_secs",
                self.database.connect_timeout_secs,
            ),
            (
                "database.statement_timeout_secs",
                self.database.statement_timeout_secs,
            ),
            (
                "database.lock_timeout_secs",
                self.database.lock_timeout_secs,
            ),
        ] {
            // 0 would mean "no timeout" to PostgreSQL: exactly what these keys exist to prevent.
            if value == 0 {
                bad(
                    key,
                    &0,
                    "must be at least 1 (0 would mean no timeout at all)",
                );
            }
        }
        if let Some(uri) = &self.graph.uri {
            if uri.trim().is_empty() {
                bad(
                    "graph.uri",
                    &"\"\"",
                    "set a Bolt address (host:port, bolt://… or neo4j://…) or leave it unset for no graph",
                );
            } else if self.secrets.neo4j_password.is_none() {
                bad(
                    "graph.uri",
                    &format!("{uri:?}"),
                    "a graph is configured but NEO4J_PASSWORD is not set in the environment: export it (secrets never come from files)",
                );
            }
        }
        // What the routed pipelines need, from the catalog.
        let needs = |need: crate::pipeline::Need| {
            self.routed_pipelines()
                .filter(|d| d.needs.contains(&need))
                .map(|d| d.name)
                .collect::<Vec<_>>()
        };
        use crate::pipeline::Need;
        let (graph_users, postgres_users, model_users) = (
            needs(Need::Graph),
            needs(Need::Postgres),
            needs(Need::Model),
        );
        if !graph_users.is_empty() && self.graph.uri.is_none() {
            bad(
                "graph.uri",
                &"(unset)",
                &format!(
                    "a route names the {} pipeline: set graph.uri (or NEO4J_URI) and NEO4J_PASSWORD",
                    graph_users.join(", ")
                ),
            );
        }
        if !postgres_users.is_empty() && self.secrets.database_url.is_none() {
            for pipeline in postgres_users {
                bad(
                    "queues.*.routes.pipelines",
                    &format!("{pipeline:?}"),
                    &format!(
                        "the {pipeline} pipeline writes to PostgreSQL: export DATABASE_URL, or remove it from the route"
                    ),
                );
            }
        }
        let x = &self.extraction;
        if !model_users.is_empty() && x.extractor == Extractor::Llm {
            if self.secrets.openai_api_key.is_none() {
                bad(
                    "extraction.extractor",
                    &"\"llm\"",
                    "OPENAI_API_KEY is not set in the environment: export it (any value for a gateway without keys), or use extractor = \"patterns\" to run offline",
                );
            }
            if url::Url::parse(&x.base_url).is_err() {
                bad(
                    "extraction.base_url",
                    &format!("{:?}", x.base_url),
                    "must be an absolute URL such as \"https://api.openai.com/v1\"",
                );
            }
        }
        for (key, value) in [
            ("extraction.timeout_secs", x.timeout_secs),
            (
                "extraction.requests_per_minute",
                u64::from(x.requests_per_minute),
            ),
            (
                "extraction.max_concurrent_requests",
                u64::from(x.max_concurrent_requests),
            ),
            (
                "extraction.max_output_tokens",
                u64::from(x.max_output_tokens),
            ),
        ] {
            if value == 0 {
                bad(key, &0, "must be at least 1");
            }
        }
        if x.chunk_tokens < 256 {
            bad(
                "extraction.chunk_tokens",
                &x.chunk_tokens,
                "must be at least 256, or the instructions would outweigh the content",
            );
        }
        if x.model.trim().is_empty() {
            bad("extraction.model", &"\"\"", "name the model to ask");
        }
        for (name, p) in &self.pipelines {
            if crate::pipeline::descriptor(name).is_none() {
                bad(
                    &format!("pipelines.{name}"),
                    &"(section)",
                    &format!(
                        "unknown pipeline; known: {}",
                        crate::pipeline::catalog_names()
                    ),
                );
            }
            if p.timeout_secs == 0 {
                bad(
                    &format!("pipelines.{name}.timeout_secs"),
                    &0,
                    "must be at least 1",
                );
            }
        }
        if self.eventbridge.bus_name.trim().is_empty() {
            bad(
                "eventbridge.bus_name",
                &"\"\"",
                "name an event bus (\"default\" is the account's default bus)",
            );
        }
        if !(60..=SQS_MAX_RETENTION_SECS).contains(&self.infra.retention_secs) {
            bad(
                "infra.retention_secs",
                &self.infra.retention_secs,
                "must be 60..=1209600 (SQS keeps messages 1 minute to 14 days)",
            );
        }
        if self.infra.visibility_timeout_secs > SQS_MAX_VISIBILITY_SECS {
            bad(
                "infra.visibility_timeout_secs",
                &self.infra.visibility_timeout_secs,
                "must be 0..=43200 (SQS's 12-hour cap)",
            );
        }
        if !(1..=1000).contains(&self.infra.max_receive_count) {
            bad(
                "infra.max_receive_count",
                &self.infra.max_receive_count,
                "must be 1..=1000 (SQS RedrivePolicy range)",
            );
        }
        if self.infra.sources.is_empty() {
            bad(
                "infra.sources",
                &"[]",
                "name at least one event source for the rule to match",
            );
        }
        if self.graph.max_connections == 0 {
            bad("graph.max_connections", &0, "must be at least 1");
        }
        if self.breaker.failures_to_open == 0 {
            bad("breaker.failures_to_open", &0, "must be at least 1");
        }
        if self.breaker.cooldown_secs == 0 {
            bad(
                "breaker.cooldown_secs",
                &0,
                "must be at least 1, or a down dependency would be tried in a tight loop",
            );
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The catalog entries of every pipeline a route names (each once).
    pub fn routed_pipelines(&self) -> impl Iterator<Item = &'static crate::pipeline::Descriptor> {
        crate::pipeline::CATALOG
            .iter()
            .filter(|d| self.routes_to(d.name))
    }

    /// Does any queue's route run `pipeline`?
    pub fn routes_to(&self, pipeline: &str) -> bool {
        self.queues
            .values()
            .flat_map(|q| &q.routes)
            .any(|r| r.pipelines.iter().chain(&r.after).any(|p| p == pipeline))
    }

    /// The effective configuration as TOML, secrets shown as `***` or `(unset)`.
    pub fn redacted_toml(&self) -> String {
        // Serialize writes `Secret` as "***"; an unset secret is simply absent, so name it.
        let mut out =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# unprintable: {e}\n"));
        out.push_str("\n# Secrets (environment only):\n");
        let s = &self.secrets;
        for (name, value) in [
            ("DATABASE_URL", &s.database_url),
            ("NEO4J_PASSWORD", &s.neo4j_password),
            ("OPENAI_API_KEY", &s.openai_api_key),
            ("AWS_ACCESS_KEY_ID", &s.aws_access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &s.aws_secret_access_key),
        ] {
            let shown = if value.is_some() { "***" } else { "(unset)" };
            out.push_str(&format!("# {name} = {shown}\n"));
        }
        out
    }
}

fn require_file(path: &Path, hint: &str) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::File {
            path: path.to_path_buf(),
            reason: format!("not found ({hint})"),
        })
    }
}

fn available_envs(dir: &Path) -> Vec<String> {
    let mut envs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let env = name.strip_suffix(".toml")?;
            (env != "default").then(|| env.to_owned())
        })
        .collect();
    envs.sort();
    envs
}

/// One figment error as `key: problem (from source)`.
fn describe(e: &figment::Error) -> String {
    // For unknown fields figment's path already ends with the unknown key.
    let key = if e.path.is_empty() {
        "(top level)".to_owned()
    } else {
        e.path.join(".")
    };
    let source = match &e.metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(file)) => format!(" (from {})", file.display()),
            Some(other) => format!(" (from {other})"),
            None => format!(" (from {})", md.name),
        },
        None => String::new(),
    };
    let fix = match &e.kind {
        figment::error::Kind::UnknownField(..) => "; remove it or fix its spelling",
        _ => "",
    };
    format!("{key}: {}{source}{fix}", e.kind)
}

#[cfg(test)]
// figment::Jail's closures must return figment::Result, whose error is large; it is test-only.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const DEFAULT_TOML: &str = include_str!("../config/default.toml");
    const ROUTE: &str = "[[queues.main.routes]]\npipelines = [\"noop\"]\n";

    fn sources(env: &str) -> Sources {
        Sources {
            dir: PathBuf::from("config"),
            env: env.to_owned(),
            file: None,
        }
    }

    fn jail_with_config(jail: &mut Jail, env_toml: &str) -> figment::error::Result<()> {
        // The suite runs inside the stack's environment; each test sets exactly what it needs.
        jail.clear_env();
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT_TOML)?;
        jail.create_file("config/dev.toml", env_toml)?;
        Ok(())
    }

    fn load_err(env_toml: &str, env: &[(&str, &str)]) -> String {
        let mut message = String::new();
        Jail::expect_with(|jail| {
            jail_with_config(jail, env_toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            message = Config::load(&sources("dev"))
                .expect_err("config should be rejected")
                .to_string();
            Ok(())
        });
        message
    }

    #[test]
    fn shipped_default_toml_equals_the_built_in_defaults() {
        // default.toml documents every key; it must not drift from the code's defaults.
        let from_file: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        assert_eq!(
            toml::to_string(&from_file).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn layers_apply_in_order_file_env_file_extra_file_environment() {
        Jail::expect_with(|jail| {
            jail_with_config(
                jail,
                r#"
                [telemetry]
                log_level = "debug"
                [queues.main]
                name = "from-env-file"
                pollers = 3
                max_in_flight = 7
                [[queues.main.routes]]
                pipelines = ["noop"]
                "#,
            )?;
            jail.create_file(
                "extra.toml",
                "[queues.main]\npollers = 5\nwait_time_secs = 4\n",
            )?;
            jail.set_env("CONVEYOR_QUEUES__MAIN__WAIT_TIME_SECS", "6");
            jail.set_env("NEO4J_URI", "127.0.0.1:7687");
            jail.set_env("NEO4J_PASSWORD", "pw");
            let mut src = sources("dev");
            src.file = Some(PathBuf::from("extra.toml"));
            let c = Config::load(&src).map_err(|e| e.to_string())?;
            let q = &c.queues["main"];
            assert_eq!(c.telemetry.log_level, "debug", "env file over default.toml");
            assert_eq!(q.name.as_deref(), Some("from-env-file"));
            assert_eq!(q.max_in_flight, 7);
            assert_eq!(q.pollers, 5, "--config file over env file");
            assert_eq!(q.wait_time_secs, 6, "environment over every file");
            assert_eq!(q.visibility_timeout_secs, 60, "built-in default kept");
            assert_eq!(c.graph.uri.as_deref(), Some("127.0.0.1:7687"));
            Ok(())
        });
    }

    #[test]
    fn conveyor_env_and_stack_variables_are_not_config_keys() {
        Jail::expect_with(|jail| {
            jail_with_config(jail, "")?;
            jail.set_env("CONVEYOR_ENV", "dev");
            jail.set_env("CONVEYOR_CONFIG_DIR", "config");
            jail.set_env("CONVEYOR_STACK_DIR", "/tmp/x");
            Config::load(&sources("dev")).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = load_err("[telemetry]\nlog_levle = \"info\"\n", &[]);
        assert!(e.contains("telemetry.log_levle"), "{e}");
        assert!(e.contains("dev.toml"), "names the file: {e}");

        let e = load_err("", &[("CONVEYOR_OPS__LISTEN", "x")]);
        assert!(e.contains("ops.listen"), "{e}");
        assert!(e.contains("CONVEYOR_"), "names the environment: {e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = load_err("[queues.main]\nname = \"q\"\npollers = \"many\"\n", &[]);
        assert!(e.contains("queues.main.pollers"), "{e}");
    }

    #[test]
    fn every_validation_rule_names_key_value_and_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "wait_time_secs = 25",
                "queues.main.wait_time_secs = 25",
                "0..=20",
            ),
            (
                "receive_batch_size = 11",
                "queues.main.receive_batch_size = 11",
                "1..=10",
            ),
            (
                "receive_batch_size = 0",
                "queues.main.receive_batch_size = 0",
                "1..=10",
            ),
            ("pollers = 0", "queues.main.pollers = 0", "at least 1"),
            (
                "max_in_flight = 0",
                "queues.main.max_in_flight = 0",
                "at least 1",
            ),
            (
                "visibility_timeout_secs = 50000",
                "queues.main.visibility_timeout_secs = 50000",
                "43200",
            ),
            (
                "visibility_timeout_secs = 30\nlease_renew_before_secs = 30",
                "queues.main.lease_renew_before_secs = 30",
                "shorter than visibility_timeout_secs (30)",
            ),
            (
                "max_receive_count = 0",
                "queues.main.max_receive_count = 0",
                "at least 1",
            ),
            (
                "retry = { base_secs = 0 }",
                "queues.main.retry.base_secs = 0",
                "at least 1",
            ),
            (
                "retry = { multiplier = 0.5 }",
                "queues.main.retry.multiplier = 0.5",
                ">= 1.0",
            ),
            (
                "retry = { cap_secs = 50000 }",
                "queues.main.retry.cap_secs = 50000",
                "43200",
            ),
        ];
        for (line, key_and_value, fix) in cases {
            let e = load_err(
                &format!("[queues.main]\nname = \"q\"\n{line}\n{ROUTE}"),
                &[],
            );
            assert!(e.contains(key_and_value), "{line}: {e}");
            assert!(e.contains(fix), "{line}: {e}");
        }
    }

    #[test]
    fn queue_needs_exactly_one_of_url_and_name() {
        let e = load_err("[queues.main]\npollers = 1\n", &[]);
        assert!(e.contains("queues.main.url"), "{e}");
        let e = load_err("[queues.main]\nurl = \"http://x/q\"\nname = \"q\"\n", &[]);
        assert!(e.contains("queues.main.name"), "{e}");
    }

    #[test]
    fn the_real_pipelines_name_what_they_need() {
        let route = "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\npipelines = [\"graph\", \"projection\"]\n";
        let mut e = String::new();
        Jail::expect_with(|jail| {
            jail.clear_env(); // no secrets at all, whatever the test's environment holds
            jail_with_config(jail, route)?;
            e = Config::load(&sources("dev")).unwrap_err().to_string();
            Ok(())
        });
        assert!(e.contains("graph.uri = (unset)"), "{e}");
        assert!(e.contains("export DATABASE_URL"), "{e}");
        assert!(e.contains("OPENAI_API_KEY is not set"), "{e}");
        let e = load_err(
            &format!(
                "{route}[extraction]\nextractor = \"patterns\"\nchunk_tokens = 10\nrequests_per_minute = 0\n"
            ),
            &[],
        );
        assert!(!e.contains("OPENAI_API_KEY"), "patterns need no key: {e}");
        assert!(e.contains("extraction.chunk_tokens = 10"), "{e}");
        assert!(e.contains("extraction.requests_per_minute = 0"), "{e}");
    }

    #[test]
    fn routes_must_name_known_pipelines_and_valid_patterns() {
        let e = load_err(
            "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\nsource = \"a*b\"\npipelines = [\"grph\"]\n",
            &[],
        );
        assert!(
            e.contains("queues.main.routes[0].pipelines = \"grph\": unknown pipeline; known: graph, projection"),
            "{e}"
        );
        assert!(e.contains("queues.main.routes[0].source = \"a*b\""), "{e}");
        let e = load_err("[queues.main]\nname = \"q\"\n", &[]);
        assert!(e.contains("queues.main.routes = []"), "{e}");
        let e = load_err("[pipelines.nope]\ntimeout_secs = 3\n", &[]);
        assert!(e.contains("pipelines.nope"), "{e}");
    }

    #[test]
    fn queue_keys_must_be_addressable_from_the_environment() {
        let e = load_err("[queues.Main]\nname = \"q\"\n", &[]);
        assert!(e.contains("queues.Main"), "{e}");
    }

    #[test]
    fn missing_secrets_name_the_variable() {
        let e = load_err("[database]\nrequired = true\n", &[]);
        assert!(
            e.contains("database.required") && e.contains("DATABASE_URL"),
            "{e}"
        );
        let e = load_err("[graph]\nuri = \"127.0.0.1:7687\"\n", &[]);
        assert!(
            e.contains("graph.uri") && e.contains("NEO4J_PASSWORD"),
            "{e}"
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = load_err(
            "[queues.main]\nname = \"q\"\npollers = 0\nwait_time_secs = 99\n",
            &[],
        );
        assert!(e.contains("pollers") && e.contains("wait_time_secs"), "{e}");
    }

    #[test]
    fn unknown_environment_lists_the_available_ones() {
        let mut message = String::new();
        Jail::expect_with(|jail| {
            jail_with_config(jail, "")?;
            message = Config::load(&sources("staging")).unwrap_err().to_string();
            Ok(())
        });
        assert!(
            message.contains("staging.toml") && message.contains("dev"),
            "{message}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_every_rendering() {
        let mut c = Config::default();
        c.secrets.database_url = Some(Secret::new("postgres://u:hunter2@h/db"));
        c.secrets.openai_api_key = Some(Secret::new("sk-hunter2"));
        for rendered in [
            c.redacted_toml(),
            format!("{c:?}"),
            format!("{:?}", c.secrets),
        ] {
            assert!(!rendered.contains("hunter2"), "{rendered}");
        }
        assert!(c.redacted_toml().contains("# DATABASE_URL = ***"));
        assert!(c.redacted_toml().contains("# NEO4J_PASSWORD = (unset)"));
    }
}
