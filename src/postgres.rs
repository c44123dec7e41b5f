//! The PostgreSQL pool, shared by everything that needs the database.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::{DatabaseConfig, Secret};

/// Opens a pool and proves it with one round trip, within the configured connect timeout.
pub async fn connect(config: &DatabaseConfig, url: &Secret) -> Result<PgPool, sqlx::Error> {
    let timeout = Duration::from_secs(config.connect_timeout_secs);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(timeout)
        .connect(url.expose())
        .await?;
    probe(&pool).await?;
    Ok(pool)
}

/// One round trip.
pub async fn probe(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await?;
    Ok(())
}

/// Applies the migrations in `migrations/` (embedded at build time). Safe to run concurrently
/// from several instances: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
