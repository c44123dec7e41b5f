//! The in-process engine benchmark (`scripts/bench`, `BENCH_ONLY=engine`): the engine's own
//! cost per message, without LocalStack's ceiling. 200,000 messages (BENCH_MESSAGES) of ~1 KiB
//! EventBridge events go through the in-memory queue three ways, side by side in one process:
//!
//!   loop        the least work that drains the queue: receive 10, delete them, repeat
//!   engine      conveyor's engine (leases, batcher, in-flight bound) with a handler that
//!               succeeds at once
//!   dispatcher  the engine with the real handler: decode, route, ledger (in memory), `noop`
//!
//! Metrics go to the Prometheus recorder, as in the daemon. Prints CPU µs per message (user + system, from getrusage) and wall time for each, and the
//! ratios to the loop.
//!
//! Tracing: `scripts/bench` runs this twice in one go, with logging set up as the daemon does
//! it — `BENCH_TRACING=off` (no OTLP endpoint) and `BENCH_TRACING=on` (exporting to
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, the SDK's default batching; `BENCH_SAMPLE_RATIO` sets
//! `telemetry.otlp.sample_ratio`) — against an OTLP sink that is this same binary run as
//! `engine-bench sink PORT` (it decodes and counts the spans), and prints the CPU ratio on / off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor::config::{Config, QueueConfig, RouteConfig};
use conveyor::engine::memory::MemoryQueues;
use conveyor::engine::queue::QueueApi;
use conveyor::engine::{Consumer, Context, Handler, Outcome, Received};
use futures::future::BoxFuture;

/// The daemon's allocator (src/main.rs), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_micros(t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64)
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

fn body(i: usize) -> String {
    serde_json::json!({
        "version": "0", "id": format!("ev-{i}"), "detail-type": "Bench.event", "source": "conveyor.bench",
        "account": "000000000000", "time": "2026-11-23T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": {"n": i, "padding": "x".repeat(800)},
    })
    .to_string()
}

fn filled(n: usize) -> (MemoryQueues, String) {
    let queues = MemoryQueues::new();
    queues.create("bench-dlq", None);
    let url = queues.create("bench", Some(("bench-dlq", 3)));
    queues.push_many(&url, (0..n).map(body));
    (queues, url)
}

struct Succeed;

impl Handler for Succeed {
    fn handle(self: Arc<Self>, _message: Arc<Received>) -> BoxFuture<'static, Outcome> {
        Box::pin(std::future::ready(Outcome::Success))
    }
}

/// (cpu, wall) to drain `n` messages with receive-10 / delete-batch on `tasks` tasks.
async fn least_work_loop(n: usize, tasks: usize) -> (Duration, Duration) {
    let (queues, url) = filled(n);
    let (cpu0, wall0) = (cpu(), Instant::now());
    let workers = (0..tasks).map(|_| {
        let (queues, url) = (queues.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                let messages = queues.receive(&url, 10, 0, 60, None).await.unwrap();
                if messages.is_empty() {
                    return;
                }
                let receipts = messages
                    .iter()
                    .map(|m| m.receipt_handle().unwrap())
                    .collect();
                queues.delete_batch(&url, receipts).await.unwrap();
            }
        })
    });
    futures::future::join_all(workers).await;
    assert!(queues.is_empty(&url));
    (cpu() - cpu0, wall0.elapsed())
}

/// (cpu, wall) for the engine to drain `n` messages with `handler`.
async fn engine(n: usize, handler: Arc<dyn Handler>) -> (Duration, Duration) {
    let (queues, url) = filled(n);
    let shutdown = conveyor::shutdown::Shutdown::new();
    let context = Context {
        api: Arc::new(queues.clone()),
        shutdown: shutdown.clone(),
        grace: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        readiness: Default::default(),
        clock: Default::default(),
    };
    let (cpu0, wall0) = (cpu(), Instant::now());
    let consumer = Consumer::start("bench", queue_config(&url), handler, &context)
        .await
        .unwrap();
    while !queues.is_empty(&url) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (cpu1, wall1) = (cpu() - cpu0, wall0.elapsed());
    shutdown.begin();
    consumer.stopped().await;
    (cpu1, wall1)
}

fn queue_config(url: &str) -> QueueConfig {
    QueueConfig {
        url: Some(url.to_owned()),
        routes: vec![RouteConfig {
            pipelines: vec!["noop".into()],
            ..RouteConfig::default()
        }],
        ..QueueConfig::default()
    }
}

fn dispatcher(url: &str) -> Arc<dyn Handler> {
    let mut config = Config::default();
    config.queues.insert("bench".into(), queue_config(url));
    let readiness = conveyor::ops::Readiness::default();
    let dispatcher = conveyor::dispatch::Dispatcher::new(
        "bench",
        &config.queues["bench"],
        &config,
        &conveyor::pipeline::Registry::built_in(),
        conveyor::ledger::Ledger::in_memory(),
        conveyor::breaker::Breakers::new(config.breaker.clone(), readiness),
        None,
    )
    .unwrap();
    Arc::new(dispatcher)
}

/// The OTLP/HTTP sink: decodes every ExportTraceServiceRequest and counts its spans; `GET
/// /count` answers the count so far.
async fn sink(port: u16) {
    use prost::Message as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    let spans = Arc::new(AtomicU64::new(0));
    let (counted, counting) = (spans.clone(), spans);
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counting = counting.clone();
                async move {
                    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
                        .expect("an ExportTraceServiceRequest");
                    let n: usize = request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len())
                        .sum();
                    counting.fetch_add(n as u64, Ordering::Relaxed);
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route(
            "/count",
            axum::routing::get(move || async move { counted.load(Ordering::Relaxed).to_string() }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the sink's port");
    axum::serve(listener, app).await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sink") {
        let port = args
            .get(2)
            .and_then(|p| p.parse().ok())
            .expect("engine-bench sink PORT");
        return sink(port).await;
    }
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    // Logging as the daemon sets it up (warnings only, so the run prints nothing), with or
    // without the exporter.
    let tracing = std::env::var("BENCH_TRACING").ok();
    let _telemetry = tracing.as_ref().map(|_| {
        let mut config = conveyor::config::TelemetryConfig {
            log_level: "warn".into(),
            ..Default::default()
        };
        // Head sampling, as `telemetry.otlp.sample_ratio` sets it (1: every receive).
        if let Some(ratio) = std::env::var("BENCH_SAMPLE_RATIO")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.otlp.sample_ratio = ratio;
        }
        conveyor::telemetry::init_logging(&config).expect("logging set up")
    });
    // Metrics recorded as the daemon records them (Prometheus registry).
    let _ = conveyor::telemetry::metrics_handle();
    // Warm the allocator and the code paths once.
    let _ = least_work_loop(10_000, 2).await;
    let _ = engine(10_000, Arc::new(Succeed)).await;

    let lp = least_work_loop(n, 2).await;
    let en = engine(n, Arc::new(Succeed)).await;
    let url = MemoryQueues::url("bench");
    let di = engine(n, dispatcher(&url)).await;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("in-process engine benchmark: {n} messages, in-memory queue, 2 worker threads");
    println!("| | CPU µs/msg | wall s | msg/s | CPU vs loop |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (c, w)) in [
        ("least-work loop", lp),
        ("engine, succeeding handler", en),
        ("engine + dispatcher (decode, route, ledger, noop)", di),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.2}× |",
            per(c),
            w.as_secs_f64(),
            n as f64 / w.as_secs_f64(),
            c.as_secs_f64() / lp.0.as_secs_f64()
        );
    }
    println!(
        "engine's own cost: {:.2} µs/msg over the loop; dispatcher adds {:.2} µs/msg",
        per(en.0.saturating_sub(lp.0)),
        per(di.0.saturating_sub(en.0))
    );
    if let Some(tracing) = tracing {
        // For scripts/bench's on/off comparison.
        println!(
            "RESULT tracing={tracing} loop={:.3} engine={:.3} dispatcher={:.3}",
            per(lp.0),
            per(en.0),
            per(di.0)
        );
    }
}
