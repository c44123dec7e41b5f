//! The PostgreSQL pool, shared by everything that needs the database.

use std::time::Duration;

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::{DatabaseConfig, Secret};

/// Opens a pool and proves it with one round trip, within the configured connect timeout.
/// Every session has a statement and a lock-wait timeout, and waiting for a pooled connection
/// is bounded too: no database call can hold a message longer than those.
pub async fn connect(config: &DatabaseConfig, url: &Secret) -> Result<PgPool, sqlx::Error> {
    let timeout = Duration::from_secs(config.connect_timeout_secs);
    let options = PgConnectOptions::from_str(url.expose())?.options([
        (
            "statement_timeout",
            format!("{}s", config.statement_timeout_secs),
        ),
        ("lock_timeout", format!("{}s", config.lock_timeout_secs)),
        // A session of ours left idle inside a transaction (a task dropped mid-transaction
        // whose connection was not reset) must not hold its locks for long either.
        (
            "idle_in_transaction_session_timeout",
            format!("{}s", config.statement_timeout_secs),
        ),
    ]);
    // Waiting for a pooled connection is back-pressure, not an outage: more messages in
    // flight than connections simply queue for one, up to a statement's own budget. Whether
    // the server is there is the health probe's question, asked on a connection of its own.
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(timeout.max(Duration::from_secs(config.statement_timeout_secs)))
        .connect_with(options)
        .await?;
    probe(&pool).await?;
    Ok(pool)
}

/// One round trip, on a connection of its own (opened and closed here), so a pool busy with
/// work never reads as the server being down.
pub async fn probe(pool: &PgPool) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    let answered = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    answered.map(|_| ())
}

/// Proves the idempotency ledger can be written: takes the lock an INSERT or UPDATE takes on
/// `pipeline_ledger`, waiting at most `wait`, and rolls back. A database that answers
/// `SELECT 1` while the ledger is locked (a migration, an idle-in-transaction session) fails
/// this.
pub async fn probe_ledger(pool: &PgPool, wait: Duration) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    let result = lock_ledger(&mut conn, wait).await;
    let _ = conn.close().await;
    result
}

async fn lock_ledger(conn: &mut sqlx::PgConnection, wait: Duration) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", wait.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE pipeline_ledger IN ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await
}

/// Applies the migrations in `migrations/` (embedded at build time). Safe to run concurrently
/// from several instances: sqlx takes an advisory lock.
///
/// A migration may rewrite a large table, so it runs on a connection of its own without the
/// pool's statement timeout; that connection is closed afterwards, not returned to the pool.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    let result = sqlx::migrate!("./migrations").run(&mut conn).await;
    let _ = conn.close().await;
    result
}
