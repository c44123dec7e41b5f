//! The `graph` pipeline: an interaction's action items written to the Bolt graph (Neo4j) as a
//! tenant-scoped graph, in one transaction per interaction:
//!
//! ```text
//! (User)-[:MEMBER_OF]->(Tenant)            (Account)-[:BELONGS_TO]->(Tenant)
//! (User)-[:RECORDED]->(Interaction)-[:ABOUT_ACCOUNT]->(Account)
//! (Interaction)-[:ABOUT_OPPORTUNITY]->(Opportunity)-[:FOR_ACCOUNT]->(Account)
//! (Interaction)-[:WITH_CONTACT]->(Contact)-[:WORKS_AT]->(Account)
//! (Interaction)-[:HAS_ACTION_ITEM]->(ActionItem)-[:OWNED_BY]->(Person)
//! ```
//!
//! Every node is MERGEd on a `key` that starts with the tenant id and names its `tenant_id`
//! too, so two tenants never share a node; every statement is parameterised. The Interaction
//! holds type, source, time, content length and SHA-256 — not the content. Re-running an
//! interaction leaves the graph as it was.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use neo4rs::{BoltType, Graph, Query, query};
use serde_json::Value;

use super::{Delivery, Descriptor, Need, Pipeline, PipelineError};
use crate::contract::Contract;
use crate::contract::envelope::Interaction;
use crate::extract::{Extraction, Extractions};
use crate::fault::Dependency;
use crate::fields::kind;
use crate::telemetry::otel;
use crate::{bolt, telemetry};

/// Transient conflicts are retried this many times in place, with a short random pause,
/// before the message goes back to the queue.
const IN_PLACE_ATTEMPTS: u64 = 4;

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "graph",
    accepts: &[Contract::EnvelopeV1, Contract::BatchCompletedV1],
    needs: &[Need::Graph, Need::Model],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |r| {
        Box::pin(async move {
            let bolt = r.graph().await?;
            Ok(Arc::new(GraphPipeline::new(
                bolt.graph,
                r.extractions().await?,
                bolt.schema_ready,
            )) as Arc<dyn Pipeline>)
        })
    },
};

pub struct GraphPipeline {
    graph: Graph,
    extractions: Extractions,
    /// Set once the constraints exist: writing before would let concurrent MERGEs duplicate.
    schema_ready: Arc<AtomicBool>,
}

impl GraphPipeline {
    pub fn new(graph: Graph, extractions: Extractions, schema_ready: Arc<AtomicBool>) -> Self {
        Self {
            graph,
            extractions,
            schema_ready,
        }
    }
}

impl Pipeline for GraphPipeline {
    fn name(&self) -> &'static str {
        "graph"
    }

    fn dependencies(&self) -> &'static [Dependency] {
        &[Dependency::Graph, Dependency::Model]
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        let graph = self.graph.clone();
        let extractions = self.extractions.clone();
        let schema_ready = self.schema_ready.clone();
        Box::pin(async move {
            let interaction = super::require_interaction(&delivery, "graph")?;
            let references = References::of(interaction)?;
            let extraction = extractions.get(&delivery.key, interaction).await?;
            let statements = statements(&delivery.key, interaction, &references, &extraction);
            if !schema_ready.load(Ordering::Acquire) {
                let reason = "the graph's constraints are not created yet (is the Bolt server up?)";
                return Err(PipelineError::Unavailable(Dependency::Graph, reason.into()));
            }
            let started = Instant::now();
            let mut attempt = 1;
            let result = loop {
                let span = otel::db("neo4j", "merge", "interaction_graph");
                match otel::traced(span, write(&graph, statements.clone())).await {
                    Err(e) if attempt < IN_PLACE_ATTEMPTS && bolt::is_worth_retrying_now(&e) => {
                        let pause = rand::random_range(10..100) * attempt;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        attempt += 1;
                    }
                    result => break result,
                }
            };
            match result {
                Ok(()) => {
                    telemetry::graph_written(started.elapsed().as_secs_f64());
                    Ok(())
                }
                Err(e) => Err(PipelineError::classified(
                    Dependency::Graph,
                    crate::fault::classify::bolt(&e),
                    format!("graph write failed: {}", crate::safe::error_chain(&e)),
                )),
            }
        })
    }
}

/// One transaction: all statements or none.
async fn write(graph: &Graph, statements: Vec<Query>) -> Result<(), neo4rs::Error> {
    let mut txn = graph.start_txn().await?;
    match txn.run_queries(statements).await {
        Ok(_) => txn.commit().await.map(|_| ()),
        Err(e) => {
            // The server discards the transaction with the connection if this fails too.
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}

/// Account, opportunity and contacts the interaction refers to (from `account_id`,
/// `extras.opportunity_id` and `extras.contact_ids`).
pub struct References {
    pub account_id: Option<String>,
    pub opportunity_id: Option<String>,
    pub contact_ids: Vec<String>,
}

impl References {
    /// A reference of the wrong type is bad data: permanent, naming the field.
    pub fn of(interaction: &Interaction) -> Result<Self, PipelineError> {
        let id = |field: &str, value: &Value| match value {
            Value::String(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Null => Ok(None),
            Value::String(_) => Ok(None),
            _ => Err(PipelineError::Permanent(format!(
                "detail.extras.{field}: expected a string id, got {}",
                kind(value)
            ))),
        };
        let opportunity_id = match interaction.extras.get("opportunity_id") {
            Some(v) => id("opportunity_id", v)?,
            None => None,
        };
        let contact_ids = match interaction.extras.get("contact_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => {
                let mut out = Vec::new();
                for (i, v) in ids.iter().enumerate() {
                    if let Some(id) = id(&format!("contact_ids[{i}]"), v)?
                        && !out.contains(&id)
                    {
                        out.push(id);
                    }
                }
                out
            }
            Some(other) => {
                return Err(PipelineError::Permanent(format!(
                    "detail.extras.contact_ids: expected an array of string ids, got {}",
                    kind(other)
                )));
            }
        };
        Ok(Self {
            account_id: interaction
                .account_id
                .clone()
                .filter(|a| !a.trim().is_empty()),
            opportunity_id,
            contact_ids,
        })
    }
}

/// A tenant-scoped node key.
fn scoped(tenant: &str, kind: &str, id: &str) -> String {
    format!("{tenant}:{kind}:{id}")
}

/// The transaction's statements, every value a parameter.
pub fn statements(
    key: &str,
    interaction: &Interaction,
    refs: &References,
    extraction: &Extraction,
) -> Vec<Query> {
    let tenant = interaction.tenant_id.to_string();
    let interaction_key = scoped(&tenant, "interaction", key);
    let account_key = refs
        .account_id
        .as_deref()
        .map(|a| scoped(&tenant, "account", a));
    let base = |q: &str| {
        query(q)
            .param("tenant", tenant.clone())
            .param("interaction_key", interaction_key.clone())
    };

    let mut statements = vec![
        base(
            "MERGE (t:Tenant {key: $tenant, tenant_id: $tenant}) \
             MERGE (u:User {key: $user_key, tenant_id: $tenant}) ON CREATE SET u.user_id = $user_id \
             MERGE (u)-[:MEMBER_OF]->(t) \
             MERGE (i:Interaction {key: $interaction_key, tenant_id: $tenant}) \
             SET i.interaction_key = $key, i.interaction_id = $interaction_id, i.type = $type, \
                 i.source = $source, i.occurred_at = $occurred_at, i.content_length = $content_length, \
                 i.content_sha256 = $content_sha256, i.extraction_model = $model, \
                 i.prompt_version = $prompt_version \
             MERGE (u)-[:RECORDED]->(i)",
        )
        .param("user_key", scoped(&tenant, "user", &interaction.user_id))
        .param("user_id", interaction.user_id.clone())
        .param("key", key.to_owned())
        .param(
            "interaction_id",
            interaction.interaction_id.map(|id| id.to_string()),
        )
        .param("type", interaction.interaction_type.as_str())
        .param("source", interaction.source.as_str())
        .param("occurred_at", interaction.timestamp)
        .param("content_length", interaction.content.len() as i64)
        .param("content_sha256", interaction.content.sha256())
        .param("model", extraction.model.clone())
        .param("prompt_version", extraction.prompt_version.clone()),
    ];

    if let (Some(account_id), Some(account_key)) = (&refs.account_id, &account_key) {
        statements.push(
            base(
                "MATCH (t:Tenant {key: $tenant, tenant_id: $tenant}) \
                 MATCH (i:Interaction {key: $interaction_key, tenant_id: $tenant}) \
                 MERGE (a:Account {key: $account_key, tenant_id: $tenant}) ON CREATE SET a.account_id = $account_id \
                 MERGE (a)-[:BELONGS_TO]->(t) \
                 MERGE (i)-[:ABOUT_ACCOUNT]->(a)",
            )
            .param("account_key", account_key.clone())
            .param("account_id", account_id.clone()),
        );
    }
    if let Some(opportunity_id) = &refs.opportunity_id {
        let opportunity_key = scoped(&tenant, "opportunity", opportunity_id);
        statements.push(
            base(
                "MATCH (i:Interaction {key: $interaction_key, tenant_id: $tenant}) \
                 MERGE (o:Opportunity {key: $opportunity_key, tenant_id: $tenant}) \
                   ON CREATE SET o.opportunity_id = $opportunity_id \
                 MERGE (i)-[:ABOUT_OPPORTUNITY]->(o)",
            )
            .param("opportunity_key", opportunity_key.clone())
            .param("opportunity_id", opportunity_id.clone()),
        );
        if let Some(account_key) = &account_key {
            statements.push(
                base(
                    "MATCH (o:Opportunity {key: $opportunity_key, tenant_id: $tenant}) \
                     MATCH (a:Account {key: $account_key, tenant_id: $tenant}) \
                     MERGE (o)-[:FOR_ACCOUNT]->(a)",
                )
                .param("opportunity_key", opportunity_key)
                .param("account_key", account_key.clone()),
            );
        }
    }
    if !refs.contact_ids.is_empty() {
        let contacts: Vec<BoltType> = refs
            .contact_ids
            .iter()
            .map(|id| {
                map([
                    ("key", scoped(&tenant, "contact", id).into()),
                    ("id", id.clone().into()),
                ])
            })
            .collect();
        statements.push(
            base(
                "MATCH (i:Interaction {key: $interaction_key, tenant_id: $tenant}) \
                 UNWIND $contacts AS c \
                 MERGE (p:Contact {key: c.key, tenant_id: $tenant}) ON CREATE SET p.contact_id = c.id \
                 MERGE (i)-[:WITH_CONTACT]->(p)",
            )
            .param("contacts", contacts.clone()),
        );
        if let Some(account_key) = &account_key {
            statements.push(
                base(
                    "MATCH (a:Account {key: $account_key, tenant_id: $tenant}) \
                     UNWIND $contacts AS c \
                     MATCH (p:Contact {key: c.key, tenant_id: $tenant}) \
                     MERGE (p)-[:WORKS_AT]->(a)",
                )
                .param("account_key", account_key.clone())
                .param("contacts", contacts),
            );
        }
    }
    if !extraction.items.is_empty() {
        let mut items = Vec::new();
        let mut owned = Vec::new();
        for item in &extraction.items {
            let id = item.id(interaction.tenant_id, key);
            let item_key = scoped(&tenant, "action_item", &id);
            items.push(map([
                ("key", item_key.clone().into()),
                ("id", id.into()),
                ("description", item.description.clone().into()),
                ("status", item.status.as_str().into()),
                ("priority", item.priority.map(|p| p.as_str()).into()),
                ("due_date", item.due_date.into()),
                ("confidence", f64::from(item.confidence).into()),
            ]));
            if let Some(owner) = &item.owner {
                owned.push(map([
                    ("item_key", item_key.into()),
                    ("person_key", scoped(&tenant, "person", &owner.key()).into()),
                    ("name", owner.name.clone().into()),
                    ("email", owner.email.clone().into()),
                ]));
            }
        }
        statements.push(
            base(
                "MATCH (i:Interaction {key: $interaction_key, tenant_id: $tenant}) \
                 UNWIND $items AS item \
                 MERGE (ai:ActionItem {key: item.key, tenant_id: $tenant}) \
                 SET ai.id = item.id, ai.description = item.description, ai.status = item.status, \
                     ai.priority = item.priority, ai.due_date = item.due_date, \
                     ai.confidence = item.confidence, ai.interaction_key = $key \
                 MERGE (i)-[:HAS_ACTION_ITEM]->(ai)",
            )
            .param("key", key.to_owned())
            .param("items", items),
        );
        if !owned.is_empty() {
            statements.push(
                base(
                    "UNWIND $owned AS o \
                     MATCH (ai:ActionItem {key: o.item_key, tenant_id: $tenant}) \
                     MERGE (p:Person {key: o.person_key, tenant_id: $tenant}) \
                       ON CREATE SET p.name = o.name, p.email = o.email \
                     MERGE (ai)-[:OWNED_BY]->(p)",
                )
                .param("owned", owned),
            );
        }
    }
    statements
}

fn map<const N: usize>(entries: [(&str, BoltType); N]) -> BoltType {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<HashMap<String, BoltType>>()
        .into()
}
