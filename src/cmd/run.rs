//! `conveyor run`: the daemon, until SIGTERM/SIGINT, then drained (see `daemon`).

use std::process::ExitCode;

use crate::config::Config;
use crate::shutdown::{self, Shutdown};

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::new();
    shutdown::spawn_signal_listener(shutdown.clone())?;
    crate::daemon::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
