//! The stores and the model: PostgreSQL, the Bolt graph, action-item extraction.

use serde::{Deserialize, Serialize};

use super::{Problems, Secrets};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Fail at startup when `DATABASE_URL` is not set (instead of running without PostgreSQL).
    pub required: bool,
    /// Pool size. Work beyond it waits for a free connection (up to `statement_timeout_secs`):
    /// back-pressure, never counted against PostgreSQL.
    pub max_connections: u32,
    /// How long a health probe (on a connection of its own) may take before PostgreSQL counts
    /// as unreachable.
    pub connect_timeout_secs: u64,
    /// Longest one statement may run (PostgreSQL `statement_timeout`).
    pub statement_timeout_secs: u64,
    /// Longest one statement may wait for a lock (PostgreSQL `lock_timeout`): a table locked
    /// by a migration or an idle-in-transaction session fails the statement after this,
    /// instead of holding the message. A lock wait is an outage, never the message's fault.
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
pub enum ExtractorKind {
    /// An OpenAI-compatible chat endpoint with JSON-schema structured output.
    Llm,
    /// Offline rules ("I'll …", "action item: …", "by Friday"): no network, lower recall.
    Patterns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractionConfig {
    /// `llm` or `patterns`.
    pub extractor: ExtractorKind,
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
            extractor: ExtractorKind::Llm,
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

impl DatabaseConfig {
    pub(super) fn validate(&self, secrets: &Secrets, problems: &mut Problems) {
        if self.required && secrets.database_url.is_none() {
            problems.bad(
                "database.required",
                &true,
                "DATABASE_URL is not set in the environment: export DATABASE_URL=postgres://… or set database.required = false",
            );
        }
        if self.max_connections == 0 {
            problems.bad("database.max_connections", &0, "must be at least 1");
        }
        for (key, value) in [
            ("database.connect_timeout_secs", self.connect_timeout_secs),
            (
                "database.statement_timeout_secs",
                self.statement_timeout_secs,
            ),
            ("database.lock_timeout_secs", self.lock_timeout_secs),
        ] {
            // 0 would mean "no timeout" to PostgreSQL: exactly what these keys exist to prevent.
            if value == 0 {
                problems.bad(
                    key,
                    &0,
                    "must be at least 1 (0 would mean no timeout at all)",
                );
            }
        }
    }
}

impl GraphConfig {
    pub(super) fn validate(&self, secrets: &Secrets, problems: &mut Problems) {
        if let Some(uri) = &self.uri {
            if uri.trim().is_empty() {
                problems.bad(
                    "graph.uri",
                    &"\"\"",
                    "set a Bolt address (host:port, bolt://… or neo4j://…) or leave it unset for no graph",
                );
            } else if secrets.neo4j_password.is_none() {
                problems.bad(
                    "graph.uri",
                    &format!("{uri:?}"),
                    "a graph is configured but NEO4J_PASSWORD is not set in the environment: export it (secrets never come from files)",
                );
            }
        }
        if self.max_connections == 0 {
            problems.bad("graph.max_connections", &0, "must be at least 1");
        }
    }
}

impl ExtractionConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.http_url("extraction.base_url", &self.base_url);
        for (key, value) in [
            ("extraction.timeout_secs", self.timeout_secs),
            (
                "extraction.requests_per_minute",
                u64::from(self.requests_per_minute),
            ),
            (
                "extraction.max_concurrent_requests",
                u64::from(self.max_concurrent_requests),
            ),
            (
                "extraction.max_output_tokens",
                u64::from(self.max_output_tokens),
            ),
        ] {
            if value == 0 {
                problems.bad(key, &0, "must be at least 1");
            }
        }
        if self.chunk_tokens < 256 {
            problems.bad(
                "extraction.chunk_tokens",
                &self.chunk_tokens,
                "must be at least 256, or the instructions would outweigh the content",
            );
        }
        if self.model.trim().is_empty() {
            problems.bad("extraction.model", &"\"\"", "name the model to ask");
        }
    }
}
