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

/// Is this Bolt error one a retry cannot fix? A rejected statement (a type the server refuses,
/// a syntax error; not a vanished entity) or a constraint violation other than uniqueness:
/// the data is bad. A
/// uniqueness violation is not: every write is a MERGE on the unique key, so it can only mean
/// a concurrent MERGE of the same node won the race (ArcadeDB reports that at commit), and a
/// retry finds the winner's node. Connection loss, timeouts and transient errors pass too.
pub fn is_permanent(error: &neo4rs::Error) -> bool {
    match error {
        neo4rs::Error::Neo4j(e) => {
            (e.code().contains("ConstraintValidationFailed") && !is_uniqueness_race(e))
                || (e.code().starts_with("Neo.ClientError.Statement.") && !is_entity_race(e))
        }
        _ => false,
    }
}

/// Is the server down or refusing conveyor (no connection, the connection lost, credentials
/// refused, the database unavailable)? An outage of the graph, not a property of the data:
/// it counts toward the graph's circuit breaker.
pub fn is_unavailable(error: &neo4rs::Error) -> bool {
    match error {
        neo4rs::Error::IOError { .. }
        | neo4rs::Error::ConnectionError
        | neo4rs::Error::IncompleteBoltExchange
        | neo4rs::Error::AuthenticationError(_)
        | neo4rs::Error::RoutingTableError(_) => true,
        neo4rs::Error::Neo4j(e) => {
            e.code().starts_with("Neo.ClientError.Security.")
                || e.code() == "Neo.TransientError.General.DatabaseUnavailable"
        }
        _ => false,
    }
}

/// Should the same transaction simply be tried again at once? Transient server errors
/// (deadlocks, concurrent modification — ArcadeDB reports concurrent appends to one node's
/// edges this way), uniqueness races and vanished entities.
pub fn is_worth_retrying_now(error: &neo4rs::Error) -> bool {
    match error {
        neo4rs::Error::Neo4j(e) => {
            e.kind() == neo4rs::Neo4jErrorKind::Transient
                || is_uniqueness_race(e)
                || is_entity_race(e)
        }
        _ => false,
    }
}

/// `EntityNotFound`: an entity the statement reached vanished under it — deleted by another
/// transaction in Neo4j; in ArcadeDB also seen under concurrent writes right after a restart.
/// conveyor deletes nothing, so it is a race, never bad data.
fn is_entity_race(e: &neo4rs::Neo4jError) -> bool {
    e.code() == "Neo.ClientError.Statement.EntityNotFound"
}

/// A uniqueness violation, as Neo4j ("already exists with label") or ArcadeDB ("Duplicated
/// key") words it.
fn is_uniqueness_race(e: &neo4rs::Neo4jError) -> bool {
    e.code().contains("ConstraintValidationFailed")
        && (e.message().contains("Duplicated key") || e.message().contains("already exists"))
}
