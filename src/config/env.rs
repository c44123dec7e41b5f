//! Which environment variables are configuration: `NEO4J_URI` / `NEO4J_USER`, and
//! `CONVEYOR_<SECTION>__<KEY>` (`__` for nesting) where SECTION is one of config's sections.
//! Any other `CONVEYOR_…` variable belongs to something else (`CONVEYOR_BIN` in a CI job, the
//! scripts' `CONVEYOR_STACK_…`, the CLI's own `CONVEYOR_ENV`) and is left alone.

use figment::providers::Env;

/// Keys of `CONVEYOR_…` variables that select the configuration instead of being part of it,
/// or that belong to the scripts (`CONVEYOR_STACK_…`).
const NON_CONFIG_ENV_KEYS: &[&str] = &["env", "config", "config_dir"];

/// The top-level sections. Only a `CONVEYOR_<SECTION>__…` variable naming one of these is
/// configuration (and then an unknown key in it is an error naming it); any other `CONVEYOR_…`
/// variable belongs to something else and is ignored.
const SECTIONS: &[&str] = &[
    "telemetry",
    "ops",
    "aws",
    "shutdown",
    "queues",
    "database",
    "graph",
    "pipelines",
    "eventbridge",
    "infra",
    "announce",
    "extraction",
    "breaker",
    "notify",
];

/// Whether the `CONVEYOR_`-less, lower-cased variable name `key` is configuration.
fn names_a_section(key: &str) -> bool {
    SECTIONS.contains(&key.split("__").next().unwrap_or_default())
}

/// The variables that are configuration, as a figment provider (merged last: they win).
pub(super) fn variables() -> figment::Figment {
    figment::Figment::new()
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
                .filter(|key| names_a_section(&key.as_str().to_ascii_lowercase()))
                .split("__"),
        )
}

/// `CONVEYOR_…` variables of this process that are not configuration and not the CLI's or the
/// scripts' own: the names only, for one debug line.
pub(super) fn ignored() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            let Some(key) = name.strip_prefix("CONVEYOR_") else {
                return false;
            };
            let key = key.to_ascii_lowercase();
            !names_a_section(&key)
                && !NON_CONFIG_ENV_KEYS.contains(&key.as_str())
                && !key.starts_with("stack_")
        })
        .collect()
}
