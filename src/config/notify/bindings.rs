//! `[notify.bindings]`: which tenants each source of notifications may speak for. An event's
//! `tenantId` is whatever its producer wrote; these bindings are what makes it believable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Problems;

/// `[notify.bindings]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bindings {
    /// EventBridge `source` → the tenants its events may name.
    pub sources: BTreeMap<String, Vec<Uuid>>,
    /// A key prefix in `notify.bucket` → the tenants the lines of drops under it may name
    /// (the longest matching prefix applies).
    pub drop_prefixes: BTreeMap<String, Vec<Uuid>>,
    /// A consumed queue (`[queues.<key>]`) → the tenants events received on it may name, on
    /// top of their source's binding.
    pub queues: BTreeMap<String, Vec<Uuid>>,
    /// Lets events from a source or drop prefix bound to no tenant through (with a warning at
    /// startup). For the `local` (and `test`) environments only: elsewhere the configuration
    /// is refused.
    pub allow_unbound: bool,
}

impl Bindings {
    /// `allow_unbound` only where `CONVEYOR_ENV` is `local` or `test`.
    pub fn validate_env(&self, env: &str, problems: &mut Problems) {
        if self.allow_unbound && !matches!(env, "local" | "test") {
            problems.bad(
                "notify.bindings.allow_unbound",
                &true,
                &format!(
                    "only for the local environment (CONVEYOR_ENV={env:?}): bind each source and drop prefix to its tenants in [notify.bindings] instead"
                ),
            );
        }
    }

    pub(crate) fn validate(&self, queues: &[&str], problems: &mut Problems) {
        for (table, map) in [
            ("sources", &self.sources),
            ("drop_prefixes", &self.drop_prefixes),
            ("queues", &self.queues),
        ] {
            for (name, tenants) in map {
                if tenants.is_empty() {
                    problems.bad(
                        &format!("notify.bindings.{table}.\"{name}\""),
                        &"[]",
                        "list the tenant ids it may send for (remove the entry to bind it to none)",
                    );
                }
            }
        }
        for name in self.queues.keys() {
            if !queues.contains(&name.as_str()) {
                problems.bad(
                    &format!("notify.bindings.queues.\"{name}\""),
                    &format!("{name:?}"),
                    &format!(
                        "the key of a consumed queue ([queues.<key>]): one of {}",
                        queues.join(", ")
                    ),
                );
            }
        }
    }
}
