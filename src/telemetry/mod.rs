//! Logging and metrics in one place: the subscriber set-up (with the trace exporter of
//! [`otel`] when configured), every metric name, and one function per event that both logs and
//! counts. Labels stay low-cardinality (queue, operation, outcome, reason, pipeline); ids and
//! lengths go into log fields, message content goes nowhere.

mod export;
pub mod otel;
mod trace_header;

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// What telemetry keeps running for the process: the trace exporter, when tracing is on. Hold
/// it until the command is done; dropping it flushes the spans still buffered.
pub struct Telemetry {
    _traces: Option<otel::Provider>,
}

/// Installs the global tracing subscriber: JSON lines or readable text, to stderr, with the
/// level from `RUST_LOG` when set, else from config; and, when an OTLP endpoint is configured,
/// the span exporter (see [`otel`]).
pub fn init_logging(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let env = |name: &str| std::env::var(name).ok();
    let endpoint = otel::Endpoint::resolve(&config.otlp, env);
    let traces = match &endpoint {
        otel::Endpoint::Off => None,
        endpoint => Some(otel::Provider::start(
            endpoint,
            &config.otlp.service_name,
            env,
        )?),
    };
    otel::set_sample_ratio(config.otlp.sample_ratio);
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(filter)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    }
    // async-openai logs response bodies (model output derived from content) on some errors;
    // conveyor logs those errors itself, without the bodies.
    .add_directive("async_openai=off".parse()?)
    // PostgreSQL's NOTICEs (`relation "_sqlx_migrations" already exists, skipping` on every
    // start) are the server talking to itself: only warnings and worse reach the output.
    .add_directive("sqlx::postgres::notice=warn".parse()?)
    // Spans for export exist only while exporting: off, their callsites are disabled outright.
    .add_directive(
        format!(
            "{}={}",
            otel::TARGET,
            if traces.is_some() { "info" } else { "off" }
        )
        .parse()?,
    );
    // The log output leaves the exported spans out (their ids go on its lines instead); the
    // exporter sees nothing else.
    let not_exported = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == otel::TARGET)
    });
    let exported_only = tracing_subscriber::filter::filter_fn(|meta| meta.target() == otel::TARGET);
    let registry = tracing_subscriber::registry().with(filter).with(
        traces
            .as_ref()
            .map(|t| t.layer().with_filter(exported_only)),
    );
    // Either format puts the trace's ids on lines written inside a traced span (and only then:
    // untraced, the line is written as it always was, colour and all).
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .map_event_format(|inner| otel::WithTraceIds { inner, json: true })
                    .with_filter(not_exported),
            )
            .try_init()?,
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colour only for a terminal: escape codes in a piped log break grep and parsers.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .map_event_format(|inner| otel::WithTraceIds { inner, json: false })
                    .with_filter(not_exported),
            )
            .try_init()?,
    }
    if traces.is_some() {
        // The host only: a collector URL may carry credentials.
        let to = match &endpoint {
            otel::Endpoint::Configured(url) => url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default(),
            _ => "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        };
        tracing::info!(to, "exporting traces over OTLP/HTTP");
    }
    // A panic is a bug worth a structured log line, not a stray line on stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    Ok(Telemetry { _traces: traces })
}

/// The Prometheus recorder. The `metrics` facade is process-global by design (its macros find
/// the recorder through a global), so the recorder is installed once; everything else in
/// conveyor is passed explicitly.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0,
                ])
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already, which nothing in conveyor does.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

// --- metric names: every metric conveyor exports, in one place -------------------------

pub const MESSAGES_RECEIVED: &str = "conveyor_messages_received_total";
pub const MESSAGES_DELETED: &str = "conveyor_messages_deleted_total";
pub const MESSAGES_RETRIED: &str = "conveyor_messages_retried_total";
pub const MESSAGES_DEAD_LETTERED: &str = "conveyor_messages_dead_lettered_total";
pub const MESSAGES_RELEASED: &str = "conveyor_messages_released_total";
pub const IN_FLIGHT: &str = "conveyor_in_flight";
pub const LEASE_EXTENSIONS: &str = "conveyor_lease_extensions_total";
pub const LEASES_LOST: &str = "conveyor_leases_lost_total";
pub const SQS_REQUESTS: &str = "conveyor_sqs_requests_total";
pub const SQS_ERRORS: &str = "conveyor_sqs_errors_total";
pub const HANDLER_DURATION: &str = "conveyor_handler_duration_seconds";
pub const PIPELINE_DURATION: &str = "conveyor_pipeline_duration_seconds";
pub const PIPELINE_RUNS: &str = "conveyor_pipeline_runs_total";
pub const PIPELINE_SKIPPED: &str = "conveyor_pipeline_skipped_total";
pub const UNROUTED: &str = "conveyor_unrouted_total";
pub const LLM_REQUESTS: &str = "conveyor_llm_requests_total";
pub const LLM_REQUEST_DURATION: &str = "conveyor_llm_request_duration_seconds";
pub const LLM_TOKENS: &str = "conveyor_llm_tokens_total";
pub const LLM_MALFORMED: &str = "conveyor_llm_malformed_replies_total";
pub const LLM_ITEMS_DROPPED: &str = "conveyor_llm_items_dropped_total";
pub const EXTRACTIONS: &str = "conveyor_extractions_total";
pub const GRAPH_WRITE_DURATION: &str = "conveyor_graph_write_duration_seconds";
pub const PROJECTION_WRITE_DURATION: &str = "conveyor_projection_write_duration_seconds";
pub const DEADLINES_EXCEEDED: &str = "conveyor_deadlines_exceeded_total";
pub const BREAKER_STATE: &str = "conveyor_breaker_state";
pub const QUEUE_PAUSED: &str = "conveyor_queue_paused";
pub const MESSAGES_REQUEUED: &str = "conveyor_messages_requeued_total";
pub const MESSAGES_DEFERRED: &str = "conveyor_messages_deferred_total";
pub const MESSAGES_SPLIT: &str = "conveyor_messages_split_total";
pub const DEAD_LETTERS_REFUSED: &str = "conveyor_dead_letters_refused_total";
pub const FIFO_GROUPS_ACTIVE: &str = "conveyor_fifo_groups_active";
pub const FIFO_RELEASED_AFTER_FAILURE: &str = "conveyor_fifo_released_after_failure_total";
pub const NOTIFY_DROPS: &str = "conveyor_notify_drops_total";
pub const NOTIFY_INGESTED: &str = "conveyor_notify_ingested_total";
pub const NOTIFY_DROP_RANGES: &str = "conveyor_notify_drop_ranges_total";
pub const NOTIFY_DROP_BYTES: &str = "conveyor_notify_drop_bytes_read_total";
pub const NOTIFY_REJECTED: &str = "conveyor_notify_rejected_total";
pub const NOTIFY_SCORES: &str = "conveyor_notify_scores_total";
pub const NOTIFY_RANKED: &str = "conveyor_notify_ranked_total";
pub const NOTIFY_DEFERRED: &str = "conveyor_notify_deferred_total";
pub const NOTIFY_DELIVERED: &str = "conveyor_notify_delivered_total";
pub const NOTIFY_FAILED: &str = "conveyor_notify_failed_total";
pub const NOTIFY_RATE_LIMITED: &str = "conveyor_notify_rate_limited_total";
pub const NOTIFY_BUCKET_DECISIONS: &str = "conveyor_notify_bucket_decisions_total";
pub const NOTIFY_FAILOVERS: &str = "conveyor_notify_failovers_total";
pub const NOTIFY_LATENCY: &str = "conveyor_notify_latency_seconds";
pub const NOTIFY_DUPLICATES: &str = "conveyor_notify_duplicates_skipped_total";
pub const NOTIFY_IN_DOUBT: &str = "conveyor_notify_in_doubt_total";
pub const TENANT_TURNS_WAITED: &str = "conveyor_tenant_turns_waited_total";

/// SQS operations, as metric labels.
#[derive(Debug, Clone, Copy)]
pub enum SqsOp {
    ReceiveMessage,
    DeleteMessageBatch,
    ChangeMessageVisibilityBatch,
    SendMessage,
}

impl SqsOp {
    const ALL: [SqsOp; 4] = [
        SqsOp::ReceiveMessage,
        SqsOp::DeleteMessageBatch,
        SqsOp::ChangeMessageVisibilityBatch,
        SqsOp::SendMessage,
    ];

    fn label(self) -> &'static str {
        match self {
            SqsOp::ReceiveMessage => "ReceiveMessage",
            SqsOp::DeleteMessageBatch => "DeleteMessageBatch",
            SqsOp::ChangeMessageVisibilityBatch => "ChangeMessageVisibilityBatch",
            SqsOp::SendMessage => "SendMessage",
        }
    }
}

/// A queue's per-message metrics, registered once. Recording through a handle is an atomic
/// add; through the `metrics` macros every call would build, allocate and hash its key again
/// (a few µs per message across the handful recorded for each).
#[derive(Clone)]
pub struct QueueMetrics {
    received: metrics::Counter,
    deleted: metrics::Counter,
    retried: metrics::Counter,
    released: metrics::Counter,
    in_flight: metrics::Gauge,
    handler: metrics::Histogram,
    requests: [metrics::Counter; 4],
    errors: [metrics::Counter; 4],
}

impl QueueMetrics {
    pub fn new(queue: &str) -> Self {
        let per_op = |name: &'static str| {
            SqsOp::ALL.map(|op| {
                metrics::counter!(name, "queue" => queue.to_owned(), "operation" => op.label())
            })
        };
        Self {
            received: metrics::counter!(MESSAGES_RECEIVED, "queue" => queue.to_owned()),
            deleted: metrics::counter!(MESSAGES_DELETED, "queue" => queue.to_owned()),
            retried: metrics::counter!(MESSAGES_RETRIED, "queue" => queue.to_owned()),
            released: metrics::counter!(MESSAGES_RELEASED, "queue" => queue.to_owned()),
            in_flight: metrics::gauge!(IN_FLIGHT, "queue" => queue.to_owned()),
            handler: metrics::histogram!(HANDLER_DURATION, "queue" => queue.to_owned()),
            requests: per_op(SQS_REQUESTS),
            errors: per_op(SQS_ERRORS),
        }
    }

    pub fn received(&self, count: usize) {
        self.received.increment(count as u64);
    }

    pub fn deleted(&self) {
        self.deleted.increment(1);
    }

    pub fn retried(&self) {
        self.retried.increment(1);
    }

    pub fn released(&self) {
        self.released.increment(1);
    }

    pub fn handler_finished(&self, seconds: f64) {
        self.handler.record(seconds);
    }

    pub fn request(&self, op: SqsOp) {
        self.requests[op as usize].increment(1);
    }

    pub fn error(&self, op: SqsOp) {
        self.errors[op as usize].increment(1);
    }

    /// Counts a message in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }
}

/// A FIFO queue's lane metrics, registered once (for FIFO queues only).
pub struct FifoMetrics {
    groups_active: metrics::Gauge,
    released_after_failure: metrics::Counter,
}

impl FifoMetrics {
    pub fn new(queue: &str) -> Self {
        Self {
            groups_active: metrics::gauge!(FIFO_GROUPS_ACTIVE, "queue" => queue.to_owned()),
            released_after_failure: metrics::counter!(FIFO_RELEASED_AFTER_FAILURE, "queue" => queue.to_owned()),
        }
    }

    /// A message group's lane started (true) or ended (false).
    pub fn group_active(&self, active: bool) {
        if active {
            self.groups_active.increment(1.0);
        } else {
            self.groups_active.decrement(1.0);
        }
    }

    /// Messages of a group handed back unhandled because an earlier one of it failed.
    pub fn released_after_failure(&self, count: usize) {
        self.released_after_failure.increment(count as u64);
    }
}

/// One pipeline's run metrics, registered once (see [`QueueMetrics`]).
pub struct PipelineMetrics {
    duration: metrics::Histogram,
    runs: [metrics::Counter; PipelineMetrics::OUTCOMES.len()],
}

impl PipelineMetrics {
    const OUTCOMES: [&'static str; 5] = [
        "success",
        "busy",
        "retryable_error",
        "permanent_error",
        "unavailable",
    ];

    pub fn new(pipeline: &'static str) -> Self {
        Self {
            duration: metrics::histogram!(PIPELINE_DURATION, "pipeline" => pipeline),
            runs: Self::OUTCOMES
                .map(|outcome| metrics::counter!(PIPELINE_RUNS, "pipeline" => pipeline, "outcome" => outcome)),
        }
    }

    /// `outcome` is one of `success`, `busy`, `retryable_error`, `permanent_error`,
    /// `unavailable`.
    pub fn finished(&self, outcome: &'static str, seconds: f64) {
        self.duration.record(seconds);
        if let Some(i) = Self::OUTCOMES.iter().position(|o| *o == outcome) {
            self.runs[i].increment(1);
        }
    }
}

/// A dependency's circuit breaker changed state: the gauge is 0 closed, 1 half-open, 2 open.
pub fn breaker_state(dependency: crate::fault::Dependency, state: &'static str) {
    let value = match state {
        "closed" => 0.0,
        "half_open" => 1.0,
        _ => 2.0,
    };
    metrics::gauge!(BREAKER_STATE, "dependency" => dependency.as_str()).set(value);
}

/// A queue stopped (true) or resumed (false) receiving because a dependency it needs is down.
pub fn queue_paused(queue: &str, paused: bool) {
    metrics::gauge!(QUEUE_PAUSED, "queue" => queue.to_owned()).set(if paused { 1.0 } else { 0.0 });
}

/// A message that failed only because a dependency was down, at its queue's maxReceiveCount,
/// was sent back to its queue as a fresh copy instead of being dead-lettered.
pub fn message_requeued(queue: &str) {
    metrics::counter!(MESSAGES_REQUEUED, "queue" => queue.to_owned()).increment(1);
}

/// A message was deferred: sent back as a delayed copy (or, on FIFO, hidden) until its time.
pub fn message_deferred(queue: &str) {
    metrics::counter!(MESSAGES_DEFERRED, "queue" => queue.to_owned()).increment(1);
}

/// A batch split because its events ended differently (`Outcome::Split`).
pub fn message_split(queue: &str) {
    metrics::counter!(MESSAGES_SPLIT, "queue" => queue.to_owned()).increment(1);
}

/// A message could not be dead-lettered: its body alone is larger than the DLQ accepts.
pub fn dead_letter_refused(queue: &str) {
    metrics::counter!(DEAD_LETTERS_REFUSED, "queue" => queue.to_owned()).increment(1);
}

/// A message's handling ran past `queues.<key>.deadline_secs` and was given up.
pub fn deadline_exceeded(queue: &str) {
    metrics::counter!(DEADLINES_EXCEEDED, "queue" => queue.to_owned()).increment(1);
}

/// `reason` is a short stable label (`not_json`, `unrouted`, `permanent`, `retries_exhausted`).
pub fn message_dead_lettered(queue: &str, reason: &'static str) {
    metrics::counter!(MESSAGES_DEAD_LETTERED, "queue" => queue.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn lease_extended(queue: &str) {
    metrics::counter!(LEASE_EXTENSIONS, "queue" => queue.to_owned()).increment(1);
}

pub fn lease_lost(queue: &str, why: &str) {
    metrics::counter!(LEASES_LOST, "queue" => queue.to_owned()).increment(1);
    tracing::warn!(
        queue,
        why,
        "lease lost: the message's work is abandoned and it is not deleted"
    );
}

/// The ledger says the pipeline already succeeded for this key.
pub fn pipeline_skipped(pipeline: &'static str) {
    metrics::counter!(PIPELINE_SKIPPED, "pipeline" => pipeline).increment(1);
}

pub fn unrouted(queue: &str) {
    metrics::counter!(UNROUTED, "queue" => queue.to_owned()).increment(1);
}

/// One chat request: `outcome` is `ok`, `malformed`, `rate_limited`, `server_error`,
/// `retryable_status`, `refused`, `timeout` or `transport`.
pub fn llm_request(outcome: &'static str, seconds: f64) {
    metrics::counter!(LLM_REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(LLM_REQUEST_DURATION).record(seconds);
}

/// Token usage as the endpoint reported it (never the text).
pub fn llm_tokens(prompt: u64, completion: u64) {
    metrics::counter!(LLM_TOKENS, "kind" => "prompt").increment(prompt);
    metrics::counter!(LLM_TOKENS, "kind" => "completion").increment(completion);
}

/// A reply that did not match the schema (asked for once more).
pub fn llm_malformed() {
    metrics::counter!(LLM_MALFORMED).increment(1);
}

/// An extracted item that failed validation; `reason` is a short stable label.
pub fn llm_item_dropped(reason: &'static str) {
    metrics::counter!(LLM_ITEMS_DROPPED, "reason" => reason).increment(1);
}

/// An extraction request: `stored` (reused), `extracted` (computed now) or `failed`.
pub fn extraction(result: &'static str) {
    metrics::counter!(EXTRACTIONS, "result" => result).increment(1);
}

pub fn graph_written(seconds: f64) {
    metrics::histogram!(GRAPH_WRITE_DURATION).record(seconds);
}

pub fn projection_written(seconds: f64) {
    metrics::histogram!(PROJECTION_WRITE_DURATION).record(seconds);
}

/// A drop (an S3 object) read by `notify-ingest`: `read`, or `skipped` (a rejects object,
/// an event other than ObjectCreated).
pub fn notify_drop(result: &'static str) {
    metrics::counter!(NOTIFY_DROPS, "result" => result).increment(1);
}

/// Ranges of drops: `read` (first read), `reread` (read again: a killed daemon, a retry),
/// `skipped` (finished already) or `abandoned` (a newer upload of the key came first); and the
/// bytes read for them.
pub fn notify_drop_ranges(result: &'static str, ranges: u64) {
    metrics::counter!(NOTIFY_DROP_RANGES, "result" => result).increment(ranges);
}

/// Bytes of drops read by the ranges (a range's last line read past its end included).
pub fn notify_drop_bytes(bytes: u64) {
    metrics::counter!(NOTIFY_DROP_BYTES).increment(bytes);
}

/// Lines of drops: `accepted` (sent to the incoming queue) or `rejected`.
pub fn notify_ingested(result: &'static str, lines: u64) {
    metrics::counter!(NOTIFY_INGESTED, "result" => result).increment(lines);
}

/// A rejected line: `reason` is `not_json`, `not_an_object`, `too_long` or `invalid`; `field`
/// the top-level field an `invalid` line failed on (`user`, `content`, …), else empty.
pub fn notify_rejected(reason: &'static str, field: &str) {
    metrics::counter!(NOTIFY_REJECTED, "reason" => reason, "field" => field.to_owned())
        .increment(1);
}

/// A score asked for: `stored` (reused), `rules` or `model` (computed now), or `failed`.
pub fn notify_scored(result: &'static str) {
    metrics::counter!(NOTIFY_SCORES, "result" => result).increment(1);
}

/// A notification ranked and sent to the priority queue.
pub fn notify_ranked(channel: &'static str, priority: u8) {
    metrics::counter!(NOTIFY_RANKED, "channel" => channel, "priority" => priority.to_string())
        .increment(1);
}

/// A notification held back: `quiet_hours` (its `sendAfter` is their end), `not_due` (delivery
/// received it before its `sendAfter`), `rate_limited` (its token reserved ahead),
/// `reservation_early` (back before its reserved token, deferred to it again), `backoff` (a retry
/// a second or more away), `provider_unavailable`, `in_doubt` (an earlier send may have gone
/// out: held until its hold ends), `quiet_hours_at_delivery` (quiet hours the user set after
/// ranking, rechecked at delivery).
pub fn notify_deferred(reason: &'static str) {
    metrics::counter!(NOTIFY_DEFERRED, "reason" => reason).increment(1);
}

/// A notification delivered on `channel`, `latency` after its `occurredAt` (end to end: intake,
/// ranking, any quiet hours and rate-limit waits, the provider call).
pub fn notify_delivered(channel: &'static str, latency_secs: f64) {
    metrics::counter!(NOTIFY_DELIVERED, "channel" => channel).increment(1);
    metrics::histogram!(NOTIFY_LATENCY, "channel" => channel).record(latency_secs);
}

/// A failed send on `channel`: `reason` is a short label (`http_503`, `throttled`,
/// `endpoint_disabled`, `guard`, …). Every failed attempt counts, retried or not.
pub fn notify_failed(channel: &'static str, reason: &'static str) {
    metrics::counter!(NOTIFY_FAILED, "channel" => channel, "reason" => reason).increment(1);
}

/// A send held back because its rate-limit bucket was empty: its token is reserved ahead.
pub fn notify_rate_limited(channel: &'static str) {
    metrics::counter!(NOTIFY_RATE_LIMITED, "channel" => channel).increment(1);
}

/// A statement on the rate-limit buckets (tokens taken, reserved or leased): at most one per
/// send; a lease serves many.
pub fn notify_bucket_decision(channel: &'static str) {
    metrics::counter!(NOTIFY_BUCKET_DECISIONS, "channel" => channel).increment(1);
}

/// A notification moved from one channel to the next of its failover list.
pub fn notify_failover(from: &'static str, to: &'static str) {
    metrics::counter!(NOTIFY_FAILOVERS, "from" => from, "to" => to).increment(1);
}

/// A message that waited, received, for its tenant's turn at a handler (fair scheduling:
/// `src/dispatch/fair.rs`).
pub fn tenant_turn_waited(queue: &str) {
    metrics::counter!(TENANT_TURNS_WAITED, "queue" => queue.to_owned()).increment(1);
}

/// A send whose outcome is unknown (`event="held"`: it timed out or its run was aborted after
/// it went out) or, after its hold, sent again (`event="resent"`).
pub fn notify_in_doubt(channel: &'static str, event: &'static str) {
    metrics::counter!(NOTIFY_IN_DOUBT, "channel" => channel, "event" => event).increment(1);
}

/// A redelivered notification whose channel had already delivered it: deleted unsent.
pub fn notify_duplicate_skipped(channel: &'static str) {
    metrics::counter!(NOTIFY_DUPLICATES, "channel" => channel).increment(1);
}

/// A message in flight (received, its outcome not yet applied), counted in `conveyor_in_flight`
/// while it lives.
pub struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
