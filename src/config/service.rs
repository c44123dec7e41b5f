//! The process's own settings: logging, the ops listener, AWS, shutdown, circuit breakers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Problems;

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
    /// OpenTelemetry traces over OTLP/HTTP; off unless an endpoint is set here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: OtlpConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            otlp: OtlpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// A collector's OTLP/HTTP base URL (`http://collector:4318`); traces go to
    /// `<endpoint>/v1/traces`. Empty: `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else tracing is off.
    pub endpoint: String,
    /// `service.name` of the exported spans, unless `OTEL_SERVICE_NAME` is set.
    pub service_name: String,
    /// Head sampling: the share of receives whose messages are traced (0 to 1). Each
    /// receive's messages are traced together or not at all; one left out makes no span.
    pub sample_ratio: f64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            service_name: "conveyor".to_owned(),
            sample_ratio: 1.0,
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

impl TelemetryConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.bad(
                "telemetry.log_level",
                &format!("{:?}", self.log_level),
                &format!(
                    "not a tracing filter ({e}); use e.g. \"info\" or \"conveyor=debug,info\""
                ),
            );
        }
        let endpoint = &self.otlp.endpoint;
        if !endpoint.is_empty() {
            match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => problems.bad(
                    "telemetry.otlp.endpoint",
                    &format!("{endpoint:?}"),
                    "not an http(s) URL; use a collector's OTLP/HTTP address such as \"http://otel-collector:4318\", or \"\" for no tracing",
                ),
            }
        }
        let ratio = self.otlp.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            problems.bad(
                "telemetry.otlp.sample_ratio",
                &ratio,
                "must be between 0 and 1: 1 traces every message, 0.1 one receive in ten",
            );
        }
        if self.otlp.service_name.trim().is_empty() {
            problems.bad(
                "telemetry.otlp.service_name",
                &"\"\"",
                "must name the service, e.g. \"conveyor\"",
            );
        }
    }
}

impl AwsConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.connect_timeout_secs == 0 {
            problems.bad("aws.connect_timeout_secs", &0, "must be at least 1");
        }
        if self.call_timeout_secs == 0 {
            problems.bad("aws.call_timeout_secs", &0, "must be at least 1");
        }
        if let Some(url) = &self.endpoint_url {
            problems.http_url("aws.endpoint_url", url);
        }
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.grace_secs == 0 {
            problems.bad(
                "shutdown.grace_secs",
                &0,
                "must be at least 1 so in-flight work can finish",
            );
        }
    }
}

impl BreakerConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.failures_to_open == 0 {
            problems.bad("breaker.failures_to_open", &0, "must be at least 1");
        }
        if self.cooldown_secs == 0 {
            problems.bad(
                "breaker.cooldown_secs",
                &0,
                "must be at least 1, or a down dependency would be tried in a tight loop",
            );
        }
    }
}
