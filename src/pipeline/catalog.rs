//! The catalog: every pipeline a config may name, what it accepts and needs, and the config
//! rules that only the catalog can check (a route names a known pipeline that takes its
//! contract; what the routed pipelines need is configured; a queue's deadline outlasts its
//! routes' timeouts). Every `conveyor` command, `run` and `check` among them, loads its config
//! with [`rules`], so these problems are reported with config's own, in one error.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Pipeline, Shared};
use crate::config::{Config, ExtractorKind, PipelineConfig, Problems};
use crate::contract::Contract;

/// Every pipeline a route may name.
pub const CATALOG: &[Descriptor] = &[
    super::graph::DESCRIPTOR,
    super::projection::DESCRIPTOR,
    super::announce::DESCRIPTOR,
    super::NOOP,
    super::chaos::DESCRIPTOR,
    super::log::DESCRIPTOR,
    super::notify_ingest::DESCRIPTOR,
    super::notify_rank::DESCRIPTOR,
    super::notify_deliver::DESCRIPTOR,
];

/// What config validation, the daemon and `conveyor check` know of a pipeline before it exists.
pub struct Descriptor {
    pub name: &'static str,
    /// The route contracts it can take; empty: any (it reads only ids, or the raw payload).
    /// An `auto` route is accepted by any pipeline and checked per event.
    pub accepts: &'static [Contract],
    /// What it calls: checked at startup (secrets, URLs) and probed by `conveyor check`.
    pub needs: &'static [Need],
    /// How long one run may take unless `pipelines.<name>.timeout_secs` says otherwise.
    pub timeout_secs: u64,
    /// Builds it from the daemon's shared clients.
    pub build: Build,
}

/// How a [`Descriptor`] builds its pipeline.
pub type Build = fn(&Shared) -> BoxFuture<'_, anyhow::Result<Arc<dyn Pipeline>>>;

/// A dependency a pipeline needs configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `DATABASE_URL`.
    Postgres,
    /// `graph.uri` and `NEO4J_PASSWORD`.
    Graph,
    /// The `[extraction]` model (an OpenAI-compatible endpoint, or offline patterns).
    Model,
    /// EventBridge, through the AWS credential chain.
    EventBridge,
    /// The `[notify]` section: the notification stages' bucket and queues.
    Notify,
}

/// The catalog entry named `name`.
pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    CATALOG.iter().find(|d| d.name == name)
}

/// Names in the catalog, for error messages.
pub fn catalog_names() -> String {
    CATALOG
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config rules that need the catalog: pass to [`Config::load_with`].
pub fn rules(config: &Config, problems: &mut Problems) {
    for (name, queue) in &config.queues {
        for (i, route) in queue.routes.iter().enumerate() {
            let route_key = |field: &str| format!("queues.{name}.routes[{i}].{field}");
            for (field, names) in [("pipelines", &route.pipelines), ("after", &route.after)] {
                for pipeline in names {
                    let Some(descriptor) = descriptor(pipeline) else {
                        problems.bad(
                            &route_key(field),
                            &format!("{pipeline:?}"),
                            &format!("unknown pipeline; known: {}", catalog_names()),
                        );
                        continue;
                    };
                    let contract = route.contract;
                    if contract != Contract::Auto
                        && !descriptor.accepts.is_empty()
                        && !descriptor.accepts.contains(&contract)
                    {
                        problems.bad(
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
        let key = |field: &str| format!("queues.{name}.{field}");
        let longest_route = queue
            .routes
            .iter()
            .map(|r| {
                let stage = |names: &[String]| {
                    names
                        .iter()
                        .map(|n| timeout(config, n))
                        .max()
                        .unwrap_or_default()
                };
                stage(&r.pipelines) + stage(&r.after)
            })
            .max()
            .unwrap_or_default();
        let deadline_in_range =
            (1..=u64::from(crate::config::SQS_MAX_VISIBILITY_SECS)).contains(&queue.deadline_secs);
        if deadline_in_range && queue.deadline() <= longest_route {
            problems.bad(
                &key("deadline_secs"),
                &queue.deadline_secs,
                &format!(
                    "must exceed the longest route's pipeline timeouts ({} s: its pipelines' \
                     longest timeout plus its `after` stage's), or the deadline would cut \
                     every slow run short; raise it or lower pipelines.<name>.timeout_secs",
                    longest_route.as_secs()
                ),
            );
        }
    }
    for name in config.pipelines.keys() {
        if descriptor(name).is_none() {
            problems.bad(
                &format!("pipelines.{name}"),
                &"(section)",
                &format!("unknown pipeline; known: {}", catalog_names()),
            );
        }
    }
    validate_needs(config, problems);
}

/// The timeout of one run of `pipeline`: `pipelines.<name>.timeout_secs`, else the catalog's
/// default for it.
pub fn timeout(config: &Config, pipeline: &str) -> Duration {
    let secs = match config.pipelines.get(pipeline) {
        Some(p) => p.timeout_secs,
        None => {
            descriptor(pipeline).map_or(PipelineConfig::default().timeout_secs, |d| d.timeout_secs)
        }
    };
    Duration::from_secs(secs)
}

/// The catalog entries of every pipeline a route names (each once).
pub fn routed(config: &Config) -> impl Iterator<Item = &'static Descriptor> {
    CATALOG.iter().filter(|d| config.routes_to(d.name))
}

/// Does any routed pipeline need `need`?
pub fn needs(config: &Config, need: Need) -> bool {
    routed(config).any(|d| d.needs.contains(&need))
}

/// What the routed pipelines need configured (the catalog says): secrets, URLs.
fn validate_needs(config: &Config, problems: &mut Problems) {
    // What the routed pipelines need, from the catalog.
    let needs = |need: Need| {
        routed(config)
            .filter(|d| d.needs.contains(&need))
            .map(|d| d.name)
            .collect::<Vec<_>>()
    };
    let (graph_users, postgres_users, model_users) = (
        needs(Need::Graph),
        needs(Need::Postgres),
        needs(Need::Model),
    );
    if !graph_users.is_empty() && config.graph.uri.is_none() {
        problems.bad(
            "graph.uri",
            &"(unset)",
            &format!(
                "a route names the {} pipeline: set graph.uri (or NEO4J_URI) and NEO4J_PASSWORD",
                graph_users.join(", ")
            ),
        );
    }
    if !postgres_users.is_empty() && config.secrets.database_url.is_none() {
        for pipeline in postgres_users {
            problems.bad(
                "queues.*.routes.pipelines",
                &format!("{pipeline:?}"),
                &format!(
                    "the {pipeline} pipeline writes to PostgreSQL: export DATABASE_URL, or remove it from the route"
                ),
            );
        }
    }
    if config.notify.is_none() {
        for pipeline in needs(Need::Notify) {
            problems.bad(
                "notify",
                &"(absent)",
                &format!(
                    "a route names the {pipeline} pipeline, which sends to the notification stages' queues: add a [notify] section (see config/default.toml)"
                ),
            );
        }
    }
    let x = &config.extraction;
    if !model_users.is_empty() && x.extractor == ExtractorKind::Llm {
        if config.secrets.openai_api_key.is_none() {
            problems.bad(
                "extraction.extractor",
                &"\"llm\"",
                "OPENAI_API_KEY is not set in the environment: export it (any value for a gateway without keys), or use extractor = \"patterns\" to run offline",
            );
        }
        if url::Url::parse(&x.base_url).is_err() {
            problems.bad(
                "extraction.base_url",
                &format!("{:?}", x.base_url),
                "must be an absolute URL such as \"https://api.openai.com/v1\"",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    use super::*;
    use crate::config::{Secret, Secrets};

    /// The problems `toml` over the built-in defaults has, with `secrets`.
    fn problems(toml: &str, secrets: Secrets) -> String {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .unwrap();
        config.secrets = secrets;
        config
            .validate_with(rules)
            .expect_err("config should be rejected")
            .to_string()
    }

    const GRAPH_AND_PROJECTION: &str = "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\npipelines = [\"graph\", \"projection\"]\n";

    #[test]
    fn the_real_pipelines_name_what_they_need() {
        let e = problems(GRAPH_AND_PROJECTION, Secrets::default());
        assert!(e.contains("graph.uri = (unset)"), "{e}");
        assert!(e.contains("export DATABASE_URL"), "{e}");
        assert!(e.contains("OPENAI_API_KEY is not set"), "{e}");
        let e = problems(
            &format!(
                "{GRAPH_AND_PROJECTION}[extraction]\nextractor = \"patterns\"\nchunk_tokens = 10\nrequests_per_minute = 0\n"
            ),
            Secrets::default(),
        );
        assert!(!e.contains("OPENAI_API_KEY"), "patterns need no key: {e}");
        assert!(
            e.contains("extraction.chunk_tokens = 10"),
            "config's own rules too: {e}"
        );
    }

    #[test]
    fn routes_must_name_known_pipelines_that_take_their_contract() {
        let e = problems(
            "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\npipelines = [\"grph\"]\n",
            Secrets::default(),
        );
        assert!(
            e.contains("queues.main.routes[0].pipelines = \"grph\": unknown pipeline; known: graph, projection"),
            "{e}"
        );
        let e = problems("[pipelines.nope]\ntimeout_secs = 3\n", Secrets::default());
        assert!(e.contains("pipelines.nope"), "{e}");
        let e = problems(
            "[queues.main]\nname = \"q\"\n[[queues.main.routes]]\ncontract = \"ranked_notification_v1\"\npipelines = [\"projection\"]\n",
            Secrets {
                database_url: Some(Secret::new("postgres://x")),
                ..Secrets::default()
            },
        );
        assert!(
            e.contains("queues.main.routes[0].contract = \"ranked_notification_v1\": the projection pipeline cannot take it"),
            "{e}"
        );
    }

    #[test]
    fn a_deadline_must_outlast_its_routes_timeouts() {
        let e = problems(
            "[queues.main]\nname = \"q\"\ndeadline_secs = 60\n[[queues.main.routes]]\npipelines = [\"noop\"]\n[pipelines.noop]\ntimeout_secs = 90\n",
            Secrets::default(),
        );
        assert!(
            e.contains("queues.main.deadline_secs = 60: must exceed the longest route's pipeline timeouts (90 s"),
            "{e}"
        );
    }
}
