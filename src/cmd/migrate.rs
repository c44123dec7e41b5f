//! `conveyor migrate`: apply `migrations/` to PostgreSQL (the daemon also does at startup).

use std::process::ExitCode;

use crate::config::Config;
use crate::postgres;

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let url = config.secrets.database_url.as_ref().ok_or_else(|| {
        anyhow::anyhow!("DATABASE_URL is not set: export DATABASE_URL=postgres://… to migrate")
    })?;
    let pool = postgres::connect(&config.database, url).await?;
    postgres::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
