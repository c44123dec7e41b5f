//! `conveyor health`: ask the running daemon's ops listener whether it is alive or ready, for
//! container health checks (the image needs no curl).

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check /readyz (every dependency answers) instead of /healthz (the process is alive).
    #[arg(long)]
    pub ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let timeout = Duration::from_secs(args.timeout_secs);
    match crate::ops::ask(config.ops.listen_addr, path, timeout).await {
        Ok(body) => {
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
