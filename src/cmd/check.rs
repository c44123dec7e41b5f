//! `conveyor check`: print the effective configuration with secrets redacted, then probe every
//! configured dependency and name each one that fails.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::engine::queue::QueueApi;
use crate::extract::Extractor;
use crate::safe::error_chain;
use crate::{aws, bolt, postgres, sqs};

/// A probe's verdict on one dependency.
struct Probe {
    name: String,
    result: Result<String, String>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only load, validate and print the configuration.
    #[arg(long)]
    pub no_probe: bool,
}

/// Runs the check; exit 1 naming the dependencies that failed.
pub async fn run(config: &Config, env: &str, args: Args) -> anyhow::Result<ExitCode> {
    let failed = check(config, env, !args.no_probe).await;
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: check failed for: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// Prints the configuration and the probes; returns the names of the dependencies that
/// failed (empty = all good).
async fn check(config: &Config, env: &str, probe: bool) -> Vec<String> {
    println!("# conveyor effective configuration (CONVEYOR_ENV={env})");
    println!("{}", config.redacted_toml());
    if !probe {
        return Vec::new();
    }

    let probes = probe_all(config).await;
    println!("# dependencies");
    let mut failed = Vec::new();
    for p in &probes {
        match &p.result {
            Ok(detail) => println!("ok    {}: {detail}", p.name),
            Err(reason) => {
                println!("FAIL  {}: {reason}", p.name);
                failed.push(p.name.clone());
            }
        }
    }
    failed
}

async fn probe_all(config: &Config) -> Vec<Probe> {
    let mut probes = Vec::new();
    let timeout =
        Duration::from_secs(config.aws.connect_timeout_secs + config.aws.call_timeout_secs);

    if !config.queues.is_empty() {
        let sdk = aws::sdk_config(&config.aws).await;
        match aws::require_region(&sdk) {
            Err(reason) => probes.push(Probe {
                name: "aws region".into(),
                result: Err(reason),
            }),
            Ok(region) => {
                probes.push(Probe {
                    name: "aws region".into(),
                    result: Ok(region),
                });
                // What the daemon reads at startup, with the same checks (a FIFO queue's DLQ
                // must be FIFO).
                let api = crate::engine::queue::Sqs(aws_sdk_sqs::Client::new(&sdk));
                for (name, queue) in &config.queues {
                    let result = match tokio::time::timeout(timeout, api.lookup(name, queue)).await
                    {
                        Err(_) => Err(format!("no answer from SQS within {timeout:?}")),
                        Ok(Err(e @ sqs::QueueLookupError::DeadLetterKind { .. })) => {
                            Err(format!("{e}: {}", e.fix()))
                        }
                        Ok(Err(e)) => Err(error_chain(&e)),
                        Ok(Ok((info, _))) => Ok(format!(
                            "{}{} ({} visible, {} in flight, {})",
                            info.url,
                            if info.fifo { ", FIFO" } else { "" },
                            info.approximate_visible,
                            info.approximate_in_flight,
                            match &info.redrive {
                                Some(r) => format!(
                                    "redrive to {} after {} receives",
                                    r.dead_letter_target_arn, r.max_receive_count
                                ),
                                None =>
                                    "no RedrivePolicy: failures retry forever unless dlq_url is set"
                                        .into(),
                            }
                        )),
                    };
                    probes.push(Probe {
                        name: format!("sqs queue {name}"),
                        result,
                    });
                }
                if let Some(notify) = &config.notify {
                    probes.extend(probe_notify(&sdk, notify, timeout).await);
                }
            }
        }
    }

    if let Some(url) = &config.secrets.database_url {
        let result = match postgres::connect(&config.database, url).await {
            Ok(pool) => {
                pool.close().await;
                Ok("SELECT 1 answered".to_owned())
            }
            Err(e) => Err(error_chain(&e)),
        };
        probes.push(Probe {
            name: "postgres".into(),
            result,
        });
    }

    if let (Some(uri), Some(password)) = (&config.graph.uri, &config.secrets.neo4j_password) {
        let result = match bolt::connect(&config.graph, uri, password).await {
            Ok(_) => Ok(format!("RETURN 1 answered at {uri}")),
            Err(e) => Err(error_chain(&e)),
        };
        probes.push(Probe {
            name: "bolt graph".into(),
            result,
        });
    }

    if crate::pipeline::catalog::needs(config, crate::pipeline::Need::Model) {
        let result =
            match Extractor::new(&config.extraction, config.secrets.openai_api_key.as_ref()) {
                Ok(extractor) => extractor.probe().await,
                Err(e) => Err(error_chain(e.as_ref())),
            };
        probes.push(Probe {
            name: "model".into(),
            result,
        });
    }
    let env = |name: &str| std::env::var(name).ok();
    if let Some(url) =
        crate::telemetry::otel::Endpoint::resolve(&config.telemetry.otlp, env).traces_url(env)
    {
        let result = crate::telemetry::otel::probe(&url, env)
            .await
            .map_err(|reason| {
                format!(
                    "{reason}; check telemetry.otlp.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT (an OTLP/HTTP receiver, port 4318)"
                )
            });
        probes.push(Probe {
            name: "otlp traces".into(),
            result,
        });
    }
    let scores_with_model = config
        .notify
        .as_ref()
        .is_some_and(|n| n.scorer == crate::config::Scorer::Model);
    if scores_with_model && config.routes_to("notify-rank") {
        let result = match config.secrets.openai_api_key.as_ref() {
            None => Err("notify.scorer = \"model\" needs OPENAI_API_KEY".to_owned()),
            Some(key) => match crate::extract::llm::Llm::new(&config.extraction, key) {
                Ok(llm) => llm.probe().await,
                Err(e) => Err(error_chain(e.as_ref())),
            },
        };
        probes.push(Probe {
            name: "model (notification scoring)".into(),
            result,
        });
    }
    probes
}

/// The notification stages' bucket and the queues their pipelines send to.
async fn probe_notify(
    sdk: &aws_config::SdkConfig,
    notify: &crate::config::NotifyConfig,
    timeout: Duration,
) -> Vec<Probe> {
    let mut probes = Vec::new();
    let s3 = aws::s3_client(sdk);
    let result =
        match tokio::time::timeout(timeout, s3.head_bucket().bucket(&notify.bucket).send()).await {
            Err(_) => Err(format!("no answer from S3 within {timeout:?}")),
            Ok(Err(e)) => Err(format!(
                "{}: run `conveyor infra up`",
                error_chain(&aws_sdk_s3::Error::from(e))
            )),
            Ok(Ok(_)) => Ok("exists".to_owned()),
        };
    probes.push(Probe {
        name: format!("notify.bucket {}", notify.bucket),
        result,
    });
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for (key, name) in [
        ("notify.incoming_queue", &notify.incoming_queue),
        ("notify.priority_queue", &notify.priority_queue),
    ] {
        let result = match tokio::time::timeout(
            timeout,
            sqs.get_queue_url().queue_name(name).send(),
        )
        .await
        {
            Err(_) => Err(format!("no answer from SQS within {timeout:?}")),
            Ok(Err(e)) => Err(format!("{}: run `conveyor infra up`", error_chain(&e))),
            Ok(Ok(out)) => Ok(out.queue_url.unwrap_or_default()),
        };
        probes.push(Probe {
            name: format!("{key} {name}"),
            result,
        });
    }
    probes
}
