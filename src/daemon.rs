//! `conveyor run`: the daemon's wiring. It starts the ops listener and the consumers, and on
//! shutdown stops them in order: consumers drain first, the ops listener last, so `/metrics`
//! stays readable while work finishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::Breakers;
use crate::claim_check::ClaimCheck;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::engine::{self, Consumer};
use crate::extract::Extractions;
use crate::fault::Dependency;
use crate::ledger::Ledger;
use crate::ops::{self, Readiness};
use crate::pipeline::{Registry, Shared};
use crate::shutdown::Shutdown;
use crate::sqs::QueueLookupError;
use crate::{aws, bolt, postgres, telemetry};
use neo4rs::Graph;
use sqlx::PgPool;

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
    /// Closed after the consumers stop, so in-flight work keeps its connections.
    clients: Clients,
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
    engine::awaiting_first_receive(&readiness, config.queues.keys().map(String::as_str));
    let listener = ops::bind(config.ops.listen_addr)
        .await
        .with_context(|| format!("ops.listen_addr = {}: cannot bind", config.ops.listen_addr))?;
    let ops_addr = listener.local_addr()?;
    // Before anything that may wait (SQS unreachable at startup): /healthz answers from here on.
    tracing::info!(%ops_addr, "ops listener up");
    let tasks = TaskTracker::new();
    let ops_stop = CancellationToken::new();
    tasks.spawn(ops::serve(
        listener,
        readiness.clone(),
        telemetry::metrics_handle(),
        ops_stop.clone(),
    ));

    let breakers = Breakers::new(config.breaker.clone(), readiness.clone());
    let pool = open_postgres(&config, &readiness).await?;
    let ledger = match &pool {
        Some(pool) => Ledger::postgres(pool.clone()),
        None => Ledger::in_memory(),
    };
    tasks.spawn(prune_ledger(ledger.clone(), shutdown.graceful.clone()));
    if let (Some(pool), Some(notify)) = (&pool, &config.notify)
        && config.routes_to("notify-deliver")
    {
        tasks.spawn(prune_deliveries(
            pool.clone(),
            notify.retention_secs,
            shutdown.graceful.clone(),
        ));
    }
    let sdk = match config.queues.is_empty() {
        true => None,
        false => {
            let sdk = aws::sdk_config(&config.aws).await;
            aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
            Some(sdk)
        }
    };
    let shared = Shared::new(
        config.clone(),
        breakers.clone(),
        readiness.clone(),
        pool.clone(),
        sdk.clone(),
    );
    build_pipelines(&config, &mut registry, &shared).await?;
    let clients = Clients {
        postgres: pool,
        graph: shared.built_graph(),
        extractions: shared.built_extractions(),
    };
    tasks.spawn(watch_health(
        clients.clone(),
        config.clone(),
        readiness.clone(),
        breakers.clone(),
        shutdown.graceful.clone(),
    ));

    let mut consumers = Vec::new();
    if let Some(sdk) = &sdk {
        let claim_check = ClaimCheck::new(aws::s3_client(sdk));
        let context = engine::Context {
            api: Arc::new(engine::queue::Sqs(aws_sdk_sqs::Client::new(sdk))),
            shutdown: shutdown.clone(),
            grace: Duration::from_secs(config.shutdown.grace_secs),
            call_timeout: Duration::from_secs(config.aws.call_timeout_secs),
            readiness: readiness.clone(),
            clock: engine::Clock::System,
        };
        for (name, queue) in &config.queues {
            let dispatcher = Dispatcher::new(
                name,
                queue,
                &config,
                &registry,
                ledger.clone(),
                breakers.clone(),
                Some(claim_check.clone()),
            )
            .map_err(anyhow::Error::msg)?;
            match Consumer::start(name, queue.clone(), Arc::new(dispatcher), &context).await {
                Ok(consumer) => consumers.push(consumer),
                // Shut down while SQS was still unreachable: nothing was received, so there
                // is nothing to drain; stop the queues already started.
                Err(QueueLookupError::Stopped) => break,
                Err(e) => {
                    let fix = e.fix();
                    return Err(anyhow::Error::new(e)
                        .context(format!("queues.{name}: cannot start consuming ({fix})")));
                }
            }
        }
    } else {
        tracing::warn!(
            "no queues configured: add [queues.<name>] to the config; nothing will be consumed"
        );
    }
    tracing::info!(%ops_addr, queues = config.queues.len(), "conveyor started");
    Ok(Running {
        ops_addr,
        readiness,
        shutdown,
        consumers,
        ops_stop,
        tasks,
        clients,
    })
}

/// PostgreSQL when `DATABASE_URL` is set (migrations applied here): the idempotency ledger,
/// stored extractions and the projection. Without it the ledger and extractions live in
/// memory. A configured database that cannot be reached is a startup error: running on
/// without it would quietly weaken the exactly-once guarantee.
async fn open_postgres(config: &Config, readiness: &Readiness) -> anyhow::Result<Option<PgPool>> {
    let Some(url) = &config.secrets.database_url else {
        tracing::warn!(
            "no DATABASE_URL: the idempotency ledger and extractions are in memory, so effects are \
             deduplicated only within this process; set DATABASE_URL to share them across \
             instances and restarts"
        );
        return Ok(None);
    };
    let pool = postgres::connect(&config.database, url).await.context(
        "PostgreSQL (DATABASE_URL) is unreachable; check the URL and that the server is up",
    )?;
    postgres::migrate(&pool)
        .await
        .context("applying migrations/ to PostgreSQL")?;
    readiness.set("postgres", true);
    tracing::info!("idempotency ledger in PostgreSQL; migrations applied");
    Ok(Some(pool))
}

/// The clients the health probes watch: those the routed pipelines use.
#[derive(Clone, Default)]
struct Clients {
    postgres: Option<PgPool>,
    graph: Option<Graph>,
    extractions: Option<Extractions>,
}

/// Builds, from the catalog, every pipeline a route names that `registry` does not have yet.
async fn build_pipelines(
    config: &Config,
    registry: &mut Registry,
    shared: &Shared,
) -> anyhow::Result<()> {
    for descriptor in crate::pipeline::catalog::routed(config) {
        if registry.get(descriptor.name).is_none() {
            let pipeline = (descriptor.build)(shared)
                .await
                .with_context(|| format!("building the {} pipeline", descriptor.name))?;
            registry.add(pipeline);
        }
    }
    Ok(())
}

/// Probes PostgreSQL and the graph every few seconds and the model endpoint every minute,
/// and reports each in `/readyz` and to its circuit breaker (a failing probe opens it).
async fn watch_health(
    clients: Clients,
    config: Config,
    readiness: Readiness,
    breakers: Breakers,
    stop: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(5);
    const MODEL_EVERY: u32 = 12;
    let timeout = Duration::from_secs(config.database.connect_timeout_secs.max(1));
    let graph_timeout = Duration::from_secs(config.graph.connect_timeout_secs.max(1));
    let mut tick = tokio::time::interval(EVERY);
    let mut ticks = 0u32;
    let mut last = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Each probe's result goes to /readyz, to the dependency's circuit breaker (a failing
        // probe opens it) and, when it changed, to the log.
        let mut report = |component: &'static str,
                          dependency: Option<Dependency>,
                          result: Result<(), String>| {
            readiness.set(component, result.is_ok());
            if let Some(dependency) = dependency {
                breakers.probed(
                    dependency,
                    result.as_ref().map(|_| ()).map_err(String::as_str),
                );
            }
            let ok = result.is_ok();
            if last.insert(component, ok) != Some(ok) {
                match result {
                    Ok(()) => tracing::info!(component, "dependency healthy"),
                    Err(error) => tracing::warn!(component, %error, "dependency unhealthy"),
                }
            }
        };
        if let Some(pool) = &clients.postgres {
            report(
                "postgres",
                Some(Dependency::Postgres),
                within(timeout, postgres::probe(pool)).await,
            );
            // A database can answer SELECT 1 while the ledger is locked: not ready either, but
            // not an outage of PostgreSQL (the ledger is bypassed, never waited for).
            const LEDGER_WAIT: Duration = Duration::from_secs(1);
            report(
                "ledger",
                None,
                within(timeout, postgres::probe_ledger(pool, LEDGER_WAIT)).await,
            );
        }
        if let Some(graph) = &clients.graph {
            report(
                "graph",
                Some(Dependency::Graph),
                bolt::probe(graph, graph_timeout)
                    .await
                    .map_err(|e| crate::safe::error_chain(&e)),
            );
        }
        if let Some(x) = &clients.extractions
            && ticks.is_multiple_of(MODEL_EVERY)
        {
            report(
                "model",
                Some(Dependency::Model),
                x.extractor().probe().await.map(|_| ()),
            );
        }
        ticks = ticks.wrapping_add(1);
    }
}

/// A PostgreSQL probe bounded by `timeout`, its error as one line.
async fn within(
    timeout: Duration,
    probe: impl std::future::Future<Output = Result<(), sqlx::Error>>,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::safe::error_chain(&e)),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
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

/// Deletes, hourly, delivery records and drops' ranges older than twice the notification
/// queues' retention (no message of theirs can still be delivered) and rate-limit buckets idle
/// for a day.
async fn prune_deliveries(pool: sqlx::PgPool, retention_secs: u32, stop: CancellationToken) {
    let deliveries = crate::notify::deliveries::Deliveries::new(pool.clone());
    let drops = crate::notify::drop_ranges::DropRanges::new(pool.clone());
    let buckets = crate::notify::bucket::Buckets::new(pool, Duration::ZERO);
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let retained = Duration::from_secs(u64::from(retention_secs) * 2);
        let records = match deliveries.prune(retained).await {
            Ok(records) => drops.prune(retained).await.map(|drops| records + drops),
            Err(e) => Err(e),
        };
        let idle = buckets.prune(Duration::from_secs(86_400)).await;
        match (records, idle) {
            (Ok(0), Ok(0)) => {}
            (Ok(records), Ok(buckets)) => {
                tracing::info!(
                    records,
                    buckets,
                    "pruned notification delivery and drop records and idle rate-limit buckets"
                )
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %crate::safe::error_chain(&e), "pruning notification delivery records failed")
            }
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
        if let Some(pool) = &self.clients.postgres {
            // Waits for borrowed connections to come back; never longer than a few seconds.
            if tokio::time::timeout(Duration::from_secs(5), pool.close())
                .await
                .is_err()
            {
                tracing::warn!(
                    "PostgreSQL pool still had connections out after 5 s; exiting anyway"
                );
            }
        }
        drop(self.clients);
        tracing::info!("conveyor stopped");
        Ok(())
    }
}

/// Runs the daemon until `shutdown` is triggered and everything has drained.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}
