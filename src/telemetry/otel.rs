//! OpenTelemetry traces: the exporter set-up, the spans conveyor makes (named and attributed
//! per the messaging, database and GenAI semantic conventions), and the trace context carried
//! across queues in X-Ray's header format.
//!
//! Off unless an OTLP endpoint is configured. Off, every span below is disabled at its callsite
//! (a filter directive turns the `conveyor::otel` target off): no exporter thread, no span data.
//!
//! The trace of one message: `receive {queue}` (CLIENT, one per receive that brought messages)
//! → `process {queue}` (CONSUMER, one per message, linked to the producer's context) →
//! `pipeline {name}` → the pipeline's calls (`INSERT …`, `chat {model}`, `send {queue}`).
//! Deletes and visibility changes are batched across messages, so `settle {queue}` (CLIENT) is
//! its own root, linked to the process spans of the messages it settles.
//!
//! Head sampling (`telemetry.otlp.sample_ratio`, 1 by default: every message): the decision is
//! made once per receive, and a receive left out makes none of these spans — not the
//! receive's, its messages' process spans, their pipelines' or their calls' — so an unsampled
//! message costs what it costs with tracing off. A settle span is made when one of the
//! messages it settles was sampled.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::export::SCOPE;
pub use super::export::{Endpoint, Provider, SetupError, probe};
pub use super::trace_header::{from_traceparent, from_xray, to_traceparent, to_xray};

/// The tracing target of every span meant for export. The log output never shows these spans
/// (their ids go on the log lines instead); filtering by target keeps them out of it.
pub const TARGET: &str = "conveyor::otel";
/// Whether spans are being made (tracing is on). One cached callsite check.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// The share of receives whose messages are traced (`telemetry.otlp.sample_ratio`), as the
/// bits of an `f64`: set once at start-up, read on every receive.
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(1.0f64.to_bits());

/// Sets the head-sampling ratio (clamped to 0..=1): each receive's messages are traced
/// together, or not at all, with this probability.
pub fn set_sample_ratio(ratio: f64) {
    SAMPLE_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// The head-sampling decision for one receive.
fn sampled() -> bool {
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// Whether a span made now belongs to a sampled trace: tracing is on and the current span is
/// one being exported (a message's process span or one of its descendants). A span inside
/// an unsampled message is not made at all, rather than made and dropped by the exporter's
/// sampler: that is what keeps head sampling cheap.
fn in_trace() -> bool {
    enabled() && !Span::current().is_none()
}

// --- the spans ------------------------------------------------------------------------------

/// The `receive {queue}` span of a receive that brought `count` messages, from when the call
/// was sent (`sent_at`) until now. Made through the OpenTelemetry API rather than `tracing` so an empty
/// long poll makes no span at all (its outcome is known only at its end). The returned context
/// is the parent of the messages' process spans.
pub fn receive(queue: &str, count: usize, sent_at: tokio::time::Instant) -> Option<Context> {
    if !enabled() || !sampled() {
        return None;
    }
    let sent_at = SystemTime::now() - sent_at.elapsed();
    let tracer = opentelemetry::global::tracer(SCOPE);
    let span = tracer
        .span_builder(format!("receive {queue}"))
        .with_kind(SpanKind::Client)
        .with_start_time(sent_at)
        .with_attributes([
            KeyValue::new("messaging.system", "aws_sqs"),
            KeyValue::new("messaging.operation.type", "receive"),
            KeyValue::new("messaging.operation.name", "ReceiveMessage"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
            KeyValue::new("messaging.batch.message_count", count as i64),
        ])
        .start(&tracer);
    let cx = Context::new().with_span(span);
    cx.span().end();
    Some(cx)
}

/// The `process {queue}` span of one message: a child of its receive, linked to the producer's
/// context when the message carried one in `AWSTraceHeader`. No receive span (tracing off, or
/// the receive not sampled): no span, and none of the message's own spans either.
pub fn process(
    queue: &str,
    message_id: &str,
    parent: Option<&Context>,
    trace_header: Option<&str>,
) -> Span {
    let Some(parent) = parent else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "aws_sqs",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.message.id = message_id,
        conveyor.outcome = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let _ = span.set_parent(parent.clone());
    if let Some(producer) = trace_header.and_then(from_xray) {
        span.add_link_with_attributes(
            producer,
            vec![KeyValue::new("conveyor.link.from", "AWSTraceHeader")],
        );
    }
    span
}

/// Links the current (process) span to the producer named by an envelope's `trace_id` — a W3C
/// `traceparent` or an X-Ray header; a bare trace id names no span and cannot be linked.
/// Called when the message carried no `AWSTraceHeader`.
pub fn link_envelope(trace_id: &str) {
    if let Some(producer) = from_traceparent(trace_id).or_else(|| from_xray(trace_id)) {
        Span::current().add_link_with_attributes(
            producer,
            vec![KeyValue::new("conveyor.link.from", "envelope.trace_id")],
        );
    }
}

/// Records how a message's handling ended on its process span; anything but a delete or a
/// deferral is an error status.
pub fn outcome(span: &Span, outcome: &'static str, error: bool) {
    span.record("conveyor.outcome", outcome);
    if error {
        span.record("otel.status_code", "error");
    }
}

/// One pipeline's run on a message.
pub fn pipeline(name: &'static str) -> Span {
    if !in_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "pipeline",
        otel.name = %format_args!("pipeline {name}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        conveyor.pipeline = name,
    )
}

/// Marks the span failed (a pipeline or call that returned an error).
pub fn failed(span: &Span) {
    span.record("otel.status_code", "error");
}

/// Runs `call` in `span`, marking the span failed when the call fails.
pub async fn traced<T, E>(span: Span, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let result = call.instrument(span.clone()).await;
    if result.is_err() {
        failed(&span);
    }
    result
}

/// A database call: `system` `postgresql` or `neo4j`; `operation` and `collection` low-
/// cardinality names (`INSERT`, `action_items`), never query text or values.
pub fn db(system: &'static str, operation: &'static str, collection: &'static str) -> Span {
    if !in_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "db",
        otel.name = %format_args!("{operation} {collection}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// A chat call to the model, per the GenAI conventions: the model and the token counts, never
/// the prompt or the reply.
pub fn chat(model: &str) -> Span {
    if !in_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "openai",
        gen_ai.request.model = model,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    )
}

/// Records a chat call's token usage on its span.
pub fn chat_tokens(span: &Span, input: u64, output: u64) {
    span.record("gen_ai.usage.input_tokens", input);
    span.record("gen_ai.usage.output_tokens", output);
}

/// A send to another queue (`system` `aws_sqs`) or bus (`aws_eventbridge`) while handling a
/// message: a PRODUCER span whose context the sent messages carry.
pub fn send(system: &'static str, destination: &str, count: usize) -> Span {
    if !in_trace() {
        return Span::none();
    }
    send_span(system, destination, count)
}

/// The CLI's `send` span (`conveyor publish`): the root of the trace it starts.
pub fn publish(system: &'static str, destination: &str, count: usize) -> Span {
    send_span(system, destination, count)
}

fn send_span(system: &'static str, destination: &str, count: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = %format_args!("send {destination}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.batch.message_count = count,
    )
}

/// A call to a delivery provider (SES, SNS, a webhook receiver): a CLIENT span named by the
/// channel, carrying no address.
pub fn deliver(channel: &'static str) -> Span {
    if !in_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "deliver",
        otel.name = %format_args!("deliver {channel}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        conveyor.channel = channel,
    )
}

/// The `settle {queue}` span of one DeleteMessageBatch / ChangeMessageVisibilityBatch call,
/// linked to the process spans of the messages it settles.
pub fn settle(queue: &str, operation: &'static str, count: usize, links: &[SpanContext]) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "settle",
        otel.name = %format_args!("settle {queue}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        messaging.system = "aws_sqs",
        messaging.operation.type = "settle",
        messaging.operation.name = operation,
        messaging.destination.name = queue,
        messaging.batch.message_count = count,
    );
    for link in links {
        span.add_link(link.clone());
    }
    span
}

/// The current span's context, to link to later (a settle span), inside a sampled trace.
pub fn current_context() -> Option<SpanContext> {
    // Outside one there is nothing to link to, and asking the span for its context costs.
    if !in_trace() {
        return None;
    }
    let cx = Span::current().context();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

/// The X-Ray trace header to send with a message or event from inside `span` (a `send`
/// span), so the next hop links back to it (`AWSTraceHeader`, EventBridge's `TraceHeader`);
/// `None` unless tracing.
pub fn header_of(span: &Span) -> Option<String> {
    context_of(span).map(|cx| to_xray(&cx))
}

/// `span`'s context, unless tracing is off.
pub fn context_of(span: &Span) -> Option<SpanContext> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

// --- trace context formats ------------------------------------------------------------------

/// Puts the current span's `trace_id` and `span_id` on every log line written inside a traced
/// span: as two more fields of a JSON object, or two more `key=value` pairs of a text line
/// (written without colour: the ids are spliced into the formatted line).
pub struct WithTraceIds<F> {
    pub inner: F,
    pub json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some(cx) = current_context() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        let (trace, span) = (cx.trace_id(), cx.span_id());
        match line.strip_suffix('}') {
            Some(object) if self.json => {
                writeln!(
                    writer,
                    "{object},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
                )
            }
            _ => writeln!(writer, "{line} trace_id={trace} span_id={span}"),
        }
    }
}
