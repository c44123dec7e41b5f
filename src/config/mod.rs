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
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
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
    /// How a queue's handlers are shared between tenants (`src/dispatch/fair.rs`).
    pub fairness: FairnessConfig,
    /// The notification system's stages; absent when it does not run here.
    pub notify: Option<NotifyConfig>,
    /// Secrets, from the environment only; never read from a file, never serialized.
    #[serde(skip)]
    pub secrets: Secrets,
    /// `CONVEYOR_…` variables that name no section (`CONVEYOR_BIN` in a CI job, say): not
    /// configuration, so left alone; the CLI logs their names at debug level.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

mod env;
mod fairness;
mod infra;
mod notify;
mod problems;
mod queue;
mod secrets;
mod service;
mod stores;

pub use fairness::FairnessConfig;
pub use infra::{AnnounceConfig, EventBridgeConfig, InfraConfig};
pub use notify::{Bindings, EmailConfig, Limit, NotifyConfig, Scorer, SmsConfig};
pub use problems::{ConfigError, Problems};
pub use queue::{
    Ack, DEFAULT_PIPELINE_TIMEOUT_SECS, Jitter, PipelineConfig, QueueConfig, RetryConfig,
    RouteConfig, Unrouted,
};
pub use secrets::{Secret, Secrets, SigningSecrets, WEBHOOK_SECRETS_ENV, decode_secret};
pub use service::{
    AwsConfig, BreakerConfig, LogFormat, OpsConfig, OtlpConfig, ShutdownConfig, TelemetryConfig,
};
pub use stores::{DatabaseConfig, ExtractionConfig, ExtractorKind, GraphConfig};

/// Rules over the whole configuration that config itself cannot know (see
/// [`Config::load_with`]).
pub type Rules = fn(&Config, &mut Problems);

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
    /// Whether the command uses secrets' values. `conveyor policy` does not: a secret the
    /// config would require and the environment lacks is then stood in for by a placeholder
    /// that nothing reads, instead of failing the load.
    pub secrets_used: bool,
}

impl Config {
    /// Loads the configuration from `sources`, the process environment included, and validates
    /// its own fields. What needs the pipeline catalog is checked by [`Config::load_with`].
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        Self::load_with(sources, |_, _| {})
    }

    /// Loads like [`Config::load`], then runs `rules` too, reporting their problems with
    /// config's own in one error. The rules that need to know the pipelines (does a route name a
    /// known one, does it take the route's contract, is what it needs configured) live above
    /// config, beside the catalog, and come in here.
    pub fn load_with(sources: &Sources, rules: Rules) -> Result<Config, ConfigError> {
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
        figment = figment.merge(env::variables());

        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.into_iter().map(|e| describe(&e)).collect()))?;
        config.secrets = Secrets::from_env();
        if !sources.secrets_used {
            config.secrets.stand_in_for_missing();
        }
        config.ignored_env = env::ignored();
        let mut problems = Problems::default();
        if let Some(notify) = &config.notify {
            notify.bindings.validate_env(&sources.env, &mut problems);
        }
        match (config.validate_with(rules), problems.into_result()) {
            (Ok(()), Ok(())) => {}
            (Err(ConfigError::Invalid(mut a)), Err(ConfigError::Invalid(b))) => {
                a.extend(b);
                return Err(ConfigError::Invalid(a));
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        }
        Ok(config)
    }

    /// Checks every rule a single field's type cannot express. Each problem names the key, the
    /// value and what would be valid; all problems are reported at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(|_, _| {})
    }

    /// [`Config::validate`] plus `rules` (see [`Config::load_with`]).
    pub fn validate_with(&self, rules: Rules) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.telemetry.validate(&mut problems);
        self.aws.validate(&mut problems);
        self.shutdown.validate(&mut problems);
        for (name, queue) in &self.queues {
            queue.validate(name, &mut problems);
        }
        self.database.validate(&self.secrets, &mut problems);
        self.graph.validate(&self.secrets, &mut problems);
        self.extraction.validate(&mut problems);
        for (name, pipeline) in &self.pipelines {
            pipeline.validate(name, &mut problems);
        }
        self.eventbridge.validate(&mut problems);
        self.infra.validate(&mut problems);
        self.breaker.validate(&mut problems);
        self.fairness.validate(&mut problems);
        if let Some(notify) = &self.notify {
            notify.validate(&self.secrets, &mut problems);
            let queues: Vec<&str> = self.queues.keys().map(String::as_str).collect();
            notify.bindings.validate(&queues, &mut problems);
            if self.routes_to("notify-deliver") && notify.email.sender.is_empty() {
                problems.bad(
                    "notify.email.sender",
                    &"(unset)",
                    "a route names the notify-deliver pipeline, which sends email from it: set it to an SES identity (`conveyor infra up` asks SES to verify it)",
                );
            }
        }
        rules(self, &mut problems);
        problems.into_result()
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

    const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
    const ROUTE: &str = "[[queues.main.routes]]\npipelines = [\"noop\"]\n";

    fn sources(env: &str) -> Sources {
        Sources {
            dir: PathBuf::from("config"),
            env: env.to_owned(),
            file: None,
            secrets_used: true,
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
    fn variables_naming_no_section_are_not_config_and_are_listed() {
        Jail::expect_with(|jail| {
            jail_with_config(jail, "")?;
            jail.set_env("CONVEYOR_BIN", "target/debug/conveyor");
            jail.set_env("CONVEYOR_ENV", "dev");
            jail.set_env("CONVEYOR_OPS__LISTEN_ADDR", "127.0.0.1:9999");
            let c = Config::load(&sources("dev")).map_err(|e| e.to_string())?;
            assert_eq!(c.ignored_env, ["CONVEYOR_BIN"]);
            assert_eq!(
                c.ops.listen_addr.port(),
                9999,
                "a section's variable still applies"
            );
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
    fn a_tracing_endpoint_must_be_an_http_url_and_the_service_named() {
        for endpoint in ["otel-collector:4318", "grpc://c:4317", "http://"] {
            let e = load_err(
                &format!("[telemetry.otlp]\nendpoint = \"{endpoint}\"\n"),
                &[],
            );
            assert!(
                e.contains(&format!("telemetry.otlp.endpoint = \"{endpoint}\"")),
                "{e}"
            );
            assert!(e.contains("http://otel-collector:4318"), "the fix: {e}");
        }
        let e = load_err("[telemetry.otlp]\nservice_name = \" \"\n", &[]);
        assert!(e.contains("telemetry.otlp.service_name"), "{e}");
    }

    #[test]
    fn queue_needs_exactly_one_of_url_and_name() {
        let e = load_err("[queues.main]\npollers = 1\n", &[]);
        assert!(e.contains("queues.main.url"), "{e}");
        let e = load_err("[queues.main]\nurl = \"http://x/q\"\nname = \"q\"\n", &[]);
        assert!(e.contains("queues.main.name"), "{e}");
    }

    #[test]
    fn routes_must_have_pipelines_and_valid_patterns() {
        // Whether the pipelines exist is the catalog's rule (`pipeline::catalog`).
        let e = load_err(
            "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\nsource = \"a*b\"\npipelines = [\"grph\"]\n",
            &[],
        );
        assert!(e.contains("queues.main.routes[0].source = \"a*b\""), "{e}");
        let e = load_err("[queues.main]\nname = \"q\"\n", &[]);
        assert!(e.contains("queues.main.routes = []"), "{e}");
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
