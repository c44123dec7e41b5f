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
    let mut builder = ConfigBuilder::new()
        .uri(uri)
        .user(config.user.as_str())
        .password(password.expose())
        .max_connections(config.max_connections)
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs));
    if let Some(db) = &config.database {
        builder = builder.db(db.as_str());
    }
    let graph = Graph::connect(builder.build()?)?;
    probe(&graph, Duration::from_secs(config.connect_timeout_secs)).await?;
    Ok(graph)
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
