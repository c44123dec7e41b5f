//! The Bolt graph client (Neo4j in production, ArcadeDB locally).

use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, query};

use crate::config::{GraphConfig, Secret};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("bolt: {0}")]
    Bolt(#[from] neo4rs::Error),
    #[error("bolt server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bolt server answered RETURN 1 with no row")]
    NoRow,
}

/// Builds the pool and proves it with `RETURN 1`. `Graph::connect` does not connect by itself
/// and the first query retries for a long time, so the probe is bounded by the connect timeout.
pub async fn connect(
    config: &GraphConfig,
    uri: &str,
    password: &Secret,
) -> Result<Graph, GraphError> {
    let graph = pool(config, uri, password)?;
    probe(&graph, Duration::from_secs(config.connect_timeout_secs)).await?;
    Ok(graph)
}

/// Builds the pool without connecting (connections open on first use).
pub fn pool(config: &GraphConfig, uri: &str, password: &Secret) -> Result<Graph, GraphError> {
    let mut builder = ConfigBuilder::new()
        .uri(uri)
        .user(config.user.as_str())
        .password(password.expose())
        .max_connections(config.max_connections)
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs));
    if let Some(db) = &config.database {
        builder = builder.db(db.as_str());
    }
    Ok(Graph::connect(builder.build()?)?)
}

/// `RETURN 1`, bounded by `timeout`.
pub async fn probe(graph: &Graph, timeout: Duration) -> Result<(), GraphError> {
    let round_trip = async {
        let mut rows = graph.execute(query("RETURN 1 AS one")).await?;
        let row = rows.next().await?.ok_or(GraphError::NoRow)?;
        let one: i64 = row.get("one").map_err(neo4rs::Error::from)?;
        if one == 1 {
            Ok(())
        } else {
            Err(GraphError::NoRow)
        }
    };
    tokio::time::timeout(timeout, round_trip)
        .await
        .map_err(|_| GraphError::Timeout(timeout))?
}

/// Node labels conveyor writes; each has a unique `key` (tenant id + the node's own id), so
/// every MERGE is tenant-scoped by construction, and a `tenant_id` property that every MERGE
/// also names.
pub const LABELS: &[&str] = &[
    "Tenant",
    "User",
    "Interaction",
    "Account",
    "Opportunity",
    "Contact",
    "ActionItem",
    "Person",
];

/// Creates the uniqueness constraints and indexes, idempotently (`IF NOT EXISTS`).
pub async fn setup_schema(graph: &Graph) -> Result<(), GraphError> {
    for label in LABELS {
        let name = label.to_lowercase();
        graph
            .run(query(&format!(
                "CREATE CONSTRAINT {name}_key IF NOT EXISTS FOR (n:{label}) REQUIRE n.key IS UNIQUE"
            )))
            .await?;
    }
    for label in ["Interaction", "ActionItem", "Person"] {
        let name = label.to_lowercase();
        graph
            .run(query(&format!(
                "CREATE INDEX {name}_tenant IF NOT EXISTS FOR (n:{label}) ON (n.tenant_id)"
            )))
            .await?;
    }
    Ok(())
}

/// Should the same transaction simply be tried again at once? Transient server errors
/// (deadlocks, concurrent modification — ArcadeDB reports concurrent appends to one node's
/// edges this way), uniqueness races and vanished entities.
pub fn is_worth_retrying_now(error: &neo4rs::Error) -> bool {
    match error {
        neo4rs::Error::Neo4j(e) => {
            e.kind() == neo4rs::Neo4jErrorKind::Transient
                || crate::fault::classify::is_uniqueness_race(e)
                || crate::fault::classify::is_entity_race(e)
        }
        _ => false,
    }
}
