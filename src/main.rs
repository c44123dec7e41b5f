use std::process::ExitCode;

use clap::Parser;
use conveyor::cmd::{self, Cli};

/// mimalloc: tokio allocates a task per message, aligned to a cache line, and glibc's aligned
/// allocation was the largest single cost of the engine's hot path (BENCHMARKS.md, in process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
