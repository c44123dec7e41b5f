use std::process::ExitCode;

use clap::Parser;
use conveyor::cmd::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    conveyor::install_crypto_provider();
    match cmd::execute(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
