use std::process::ExitCode;

use clap::Parser;
use conveyor::cli::{Cli, Command};
use conveyor::config::{Config, Sources};
use conveyor::shutdown::{self, Shutdown};
use conveyor::{check, dlq, infra, ops, policy, postgres, publish, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    conveyor::install_crypto_provider();
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = Sources {
        dir: cli.config.config_dir.clone(),
        env: cli.config.env.clone(),
        file: cli.config.config_file.clone(),
    };
    let config = Config::load(&sources)?;

    match cli.command {
        Command::Run => {
            telemetry::init_logging(&config.telemetry)?;
            let shutdown = Shutdown::new();
            shutdown::spawn_signal_listener(shutdown.clone())?;
            conveyor::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { no_probe } => {
            let failed = check::run(&config, &cli.config.env, !no_probe).await;
            if failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: check failed for: {}", failed.join(", "));
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Migrate => {
            telemetry::init_logging(&config.telemetry)?;
            let url = config.secrets.database_url.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "DATABASE_URL is not set: export DATABASE_URL=postgres://… to migrate"
                )
            })?;
            let pool = postgres::connect(&config.database, url).await?;
            postgres::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => {
            telemetry::init_logging(&config.telemetry)?;
            publish::run(&config, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { role } => {
            telemetry::init_logging(&config.telemetry)?;
            let resources = policy::resources(&config).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&policy::document(&resources, role))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(args) => {
            telemetry::init_logging(&config.telemetry)?;
            dlq::run(&config, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health {
            ready,
            timeout_secs,
        } => {
            let path = if ready { "/readyz" } else { "/healthz" };
            let timeout = std::time::Duration::from_secs(timeout_secs);
            match ops::ask(config.ops.listen_addr, path, timeout).await {
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
        Command::Infra(command) => {
            telemetry::init_logging(&config.telemetry)?;
            match infra::run(&config, command).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(e.exit_code())
                }
            }
        }
    }
}
