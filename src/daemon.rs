//! `conveyor run`: the daemon's wiring. It starts the ops listener and the consumers, and on
//! shutdown stops them in order: consumers drain first, the ops listener last, so `/metrics`
//! stays readable while work finishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::engine::{self, Consumer};
use crate::ledger::Ledger;
use crate::ops::{self, Readiness};
use crate::pipeline::{Announce, Registry};
use crate::shutdown::Shutdown;
use crate::{aws, postgres, telemetry};

/// A started daemon.
pub struct Running {
    /// Where the ops listener is bound (the real port when configured with port 0).
    pub ops_addr: SocketAddr,
    /// Readiness shared with the ops listener.
    pub readiness: Readiness,
    shutdown: Shutdown,
    /// One per configured queue.
    consumers: Vec<Consumer>,
    /// The ops listener runs until every consumer has stopped.
    ops_stop: CancellationToken,
    tasks: TaskTracker,
}

/// Starts the daemon with the built-in pipelines and returns once it is consuming. Stops when
/// `shutdown` is triggered.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    start_with(config, Registry::built_in(), shutdown).await
}

/// As [`start`], with the pipelines of `registry` (tests add their own).
pub async fn start_with(
    config: Config,
    mut registry: Registry,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let readiness = Readiness::default();
    let listener = ops::bind(config.ops.listen_addr)
        .await
        .with_context(|| format!("ops.listen_addr = {}: cannot bind", config.ops.listen_addr))?;
    let ops_addr = listener.local_addr()?;
    let tasks = TaskTracker::new();
    let ops_stop = CancellationToken::new();
    tasks.spawn(ops::serve(
        listener,
        readiness.clone(),
        telemetry::metrics_handle(),
        ops_stop.clone(),
    ));

    let ledger = open_ledger(&config, &readiness).await?;
    tasks.spawn(prune_ledger(ledger.clone(), shutdown.graceful.clone()));

    let mut consumers = Vec::new();
    if config.queues.is_empty() {
        tracing::warn!(
            "no queues configured: add [queues.<name>] to the config; nothing will be consumed"
        );
    } else {
        let sdk = aws::sdk_config(&config.aws).await;
        aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
        let announces = config
            .queues
            .values()
            .flat_map(|q| &q.routes)
            .any(|r| r.pipelines.iter().chain(&r.after).any(|p| p == "announce"));
        if announces && registry.get("announce").is_none() {
            registry.add(Arc::new(Announce::new(
                aws_sdk_eventbridge::Client::new(&sdk),
                config.announce.clone(),
            )));
        }
        let context = engine::Context {
            client: aws_sdk_sqs::Client::new(&sdk),
            shutdown: shutdown.clone(),
            grace: Duration::from_secs(config.shutdown.grace_secs),
            call_timeout: Duration::from_secs(config.aws.call_timeout_secs),
            readiness: readiness.clone(),
        };
        for (name, queue) in &config.queues {
            let dispatcher = Dispatcher::new(name, queue, &config, &registry, ledger.clone())
                .map_err(anyhow::Error::msg)?;
            let consumer = Consumer::start(name, queue.clone(), Arc::new(dispatcher), &context)
                .await
                .with_context(|| format!("queues.{name}: cannot start consuming"))?;
            consumers.push(consumer);
        }
    }
    tracing::info!(%ops_addr, queues = config.queues.len(), "conveyor started");
    Ok(Running {
        ops_addr,
        readiness,
        shutdown,
        consumers,
        ops_stop,
        tasks,
    })
}

/// The idempotency ledger: in PostgreSQL when `DATABASE_URL` is set (migrations applied here),
/// else in memory. A configured database that cannot be reached is a startup error: running
/// on without it would quietly weaken the exactly-once guarantee.
async fn open_ledger(config: &Config, readiness: &Readiness) -> anyhow::Result<Ledger> {
    let Some(url) = &config.secrets.database_url else {
        tracing::warn!(
            "no DATABASE_URL: the idempotency ledger is in memory, so effects are deduplicated only \
             within this process; set DATABASE_URL to share it across instances and restarts"
        );
        return Ok(Ledger::in_memory());
    };
    let pool = postgres::connect(&config.database, url).await.context(
        "PostgreSQL (DATABASE_URL) is unreachable; check the URL and that the server is up",
    )?;
    postgres::migrate(&pool)
        .await
        .context("applying migrations/ to PostgreSQL")?;
    readiness.set("postgres", true);
    tracing::info!("idempotency ledger in PostgreSQL; migrations applied");
    Ok(Ledger::Postgres(pool))
}

/// Deletes ledger rows no delivery can need any more, hourly.
async fn prune_ledger(ledger: Ledger, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match ledger.prune().await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "pruned the idempotency ledger"),
            Err(e) => tracing::warn!(error = %e, "pruning the idempotency ledger failed"),
        }
    }
}

impl Running {
    /// Waits for shutdown to be requested and for every subsystem to stop.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.graceful.cancelled().await;
        futures::future::join_all(self.consumers.into_iter().map(Consumer::stopped)).await;
        self.ops_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("conveyor stopped");
        Ok(())
    }
}

/// Runs the daemon until `shutdown` is triggered and everything has drained.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
