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

use std::fmt;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtlpConfig;

/// The tracing target of every span meant for export. The log output never shows these spans
/// (their ids go on the log lines instead); filtering by target keeps them out of it.
pub const TARGET: &str = "conveyor::otel";
/// The instrumentation scope's name on every exported span.
const SCOPE: &str = "conveyor";
/// The only OTLP protocol conveyor exports with.
const PROTOCOL: &str = "http/protobuf";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{variable} = {value:?}: conveyor exports traces over OTLP {PROTOCOL} only (port 4318 on a collector); unset it or set it to {PROTOCOL:?}"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

/// Where traces go, if anywhere: `telemetry.otlp.endpoint`, else the standard
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (which the SDK reads
/// itself), else nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Off,
    /// The traces URL, from the config's base URL.
    Configured(String),
    /// From the standard environment variables.
    Environment,
}

impl Endpoint {
    pub fn resolve(config: &OtlpConfig, env: impl Fn(&str) -> Option<String>) -> Endpoint {
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        if !config.endpoint.is_empty() {
            let base = config.endpoint.trim_end_matches('/');
            let url = if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            };
            Endpoint::Configured(url)
        } else if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Endpoint::Environment
        } else {
            Endpoint::Off
        }
    }

    /// The URL spans are POSTed to, as the exporter derives it: the configured one; else
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is; else `OTEL_EXPORTER_OTLP_ENDPOINT` with
    /// `/v1/traces` appended.
    pub fn traces_url(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        match self {
            Endpoint::Off => None,
            Endpoint::Configured(url) => Some(url.clone()),
            Endpoint::Environment => set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
                set("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
            }),
        }
    }
}

/// Asks the collector to take an empty export (a zero-length ExportTraceServiceRequest), with
/// the headers of `OTEL_EXPORTER_OTLP_HEADERS` / `_TRACES_HEADERS` (`key=value,…`): what
/// `conveyor check` reports. Names the host, never the full URL (it may carry credentials).
pub async fn probe(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client
        .post(url)
        .header("content-type", "application/x-protobuf");
    for variable in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        for pair in env(variable).unwrap_or_default().split(',') {
            if let Some((key, value)) = pair.split_once('=') {
                request = request.header(key.trim(), value.trim());
            }
        }
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => {
            Ok(format!("the collector at {host} took an empty export"))
        }
        Ok(answer) => Err(format!(
            "the collector at {host} answered {} to an empty export",
            answer.status()
        )),
        Err(e) => Err(format!(
            "no collector answers at {host}: {}",
            crate::safe::error_chain(&e.without_url())
        )),
    }
}

/// The exporting tracer provider; flushes what is buffered when dropped (at process exit).
pub struct Provider(SdkTracerProvider);

impl Provider {
    /// Builds the OTLP/HTTP exporter and the batching provider, and makes it the global one (the
    /// `receive` span is made through it). The resource takes `OTEL_SERVICE_NAME` and
    /// `OTEL_RESOURCE_ATTRIBUTES` as the standard says; `service_name` otherwise.
    pub fn start(
        endpoint: &Endpoint,
        service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Provider, SetupError> {
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env(variable).filter(|v| v.trim() != PROTOCOL) {
                return Err(SetupError::Protocol { variable, value });
            }
        }
        use opentelemetry_otlp::WithExportConfig;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Endpoint::Configured(url) = endpoint {
            exporter = exporter.with_endpoint(url.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| SetupError::Exporter(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none_or(|v| v.trim().is_empty()) {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let resource = resource
            .with_attribute(KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION").to_owned(),
            ))
            .build();
        // The sampler is the SDK's default: OTEL_TRACES_SAMPLER / _ARG when set, else
        // parent-based always-on.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Provider(provider))
    }

    /// The `tracing` layer that turns `conveyor::otel` spans into OpenTelemetry spans.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.0.tracer(SCOPE))
            // Span timings as events would be noise; conveyor's log lines carry the ids.
            .with_tracked_inactivity(false)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // Exports what is still buffered (the SDK bounds this with its own timeout).
        if let Err(e) = self.0.shutdown() {
            eprintln!("tracing: flushing spans at exit failed: {e}");
        }
    }
}

/// Whether spans are being made (tracing is on). One cached callsite check.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

// --- the spans ------------------------------------------------------------------------------

/// The `receive {queue}` span of a receive that brought `count` messages, from when the call
/// was sent (`sent_at`) until now. Made through the OpenTelemetry API rather than `tracing` so an empty
/// long poll makes no span at all (its outcome is known only at its end). The returned context
/// is the parent of the messages' process spans.
pub fn receive(queue: &str, count: usize, sent_at: tokio::time::Instant) -> Option<Context> {
    if !enabled() {
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
/// context when the message carried one in `AWSTraceHeader`.
pub fn process(
    queue: &str,
    message_id: &str,
    parent: Option<&Context>,
    trace_header: Option<&str>,
) -> Span {
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
    if let Some(parent) = parent {
        let _ = span.set_parent(parent.clone());
    }
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

/// A send to another queue (`system` `aws_sqs`) or bus (`aws_eventbridge`): a PRODUCER span
/// whose context the sent messages carry.
pub fn send(system: &'static str, destination: &str, count: usize) -> Span {
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
pub fn settle(queue: &str, operation: &'static str, links: &[SpanContext]) -> Span {
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
        messaging.batch.message_count = links.len(),
    );
    for link in links {
        span.add_link(link.clone());
    }
    span
}

/// The current span's context, to link to later (a settle span), when tracing is on.
pub fn current_context() -> Option<SpanContext> {
    if !enabled() {
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

/// Parses an X-Ray trace header, `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=
/// 53995c3f42cd8ad8;Sampled=1`: the root's two hex parts are the 128-bit trace id, `Parent` the
/// span. Without a `Parent` there is no span to link to.
pub fn from_xray(header: &str) -> Option<SpanContext> {
    let (mut root, mut parent, mut sampled) = (None, None, false);
    for part in header.split(';') {
        let (key, value) = part.trim().split_once('=')?;
        match key.trim() {
            "Root" => root = Some(value.trim()),
            "Parent" => parent = Some(value.trim()),
            "Sampled" => sampled = value.trim() == "1",
            _ => {}
        }
    }
    let mut pieces = root?.split('-');
    let (version, time, random) = (pieces.next()?, pieces.next()?, pieces.next()?);
    if version != "1" || time.len() != 8 || random.len() != 24 || pieces.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(&format!("{time}{random}")).ok()?;
    let span = SpanId::from_hex(parent.filter(|p| p.len() == 16)?).ok()?;
    remote(trace, span, sampled)
}

/// The X-Ray header naming `cx` as the parent.
pub fn to_xray(cx: &SpanContext) -> String {
    let trace = cx.trace_id().to_string();
    format!(
        "Root=1-{}-{};Parent={};Sampled={}",
        &trace[..8],
        &trace[8..],
        cx.span_id(),
        u8::from(cx.is_sampled())
    )
}

/// Parses a W3C `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn from_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || parts.next().is_some()
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    remote(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        flags & 1 == 1,
    )
}

/// The W3C `traceparent` of `cx`.
pub fn to_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

fn remote(trace: TraceId, span: SpanId, sampled: bool) -> Option<SpanContext> {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let cx = SpanContext::new(trace, span, flags, true, TraceState::default());
    cx.is_valid().then_some(cx)
}

// --- log lines ------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xray_headers_round_trip_and_name_a_span() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let cx = from_xray(header).expect("a valid header");
        assert_eq!(
            cx.trace_id().to_string(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(cx.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(to_xray(&cx), header);
        // Order, spaces and extra keys (Lineage) do not matter.
        let shuffled = " Sampled=0; Lineage=a87bd80c:1|68fd508a:5 ;Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793";
        let cx = from_xray(shuffled).expect("still valid");
        assert!(!cx.is_sampled());
    }

    #[test]
    fn xray_headers_without_a_parent_or_malformed_are_not_links() {
        for header in [
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
            "Root=1-zzzzzzzz-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "garbage",
            "",
        ] {
            assert!(from_xray(header).is_none(), "{header:?}");
        }
    }

    #[test]
    fn traceparents_round_trip() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = from_traceparent(value).expect("valid");
        assert_eq!(to_traceparent(&cx), value);
        assert_eq!(
            from_xray(&to_xray(&cx)).map(|x| (x.trace_id(), x.span_id())),
            Some((cx.trace_id(), cx.span_id()))
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert!(from_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_endpoint_comes_from_config_then_the_standard_variables() {
        let config = |endpoint: &str| OtlpConfig {
            endpoint: endpoint.to_owned(),
            ..OtlpConfig::default()
        };
        let none = |_: &str| None;
        assert_eq!(Endpoint::resolve(&config(""), none), Endpoint::Off);
        assert_eq!(
            Endpoint::resolve(&config("http://collector:4318/"), none),
            Endpoint::Configured("http://collector:4318/v1/traces".into())
        );
        assert_eq!(
            Endpoint::resolve(&config("http://collector:4318/v1/traces"), none),
            Endpoint::Configured("http://collector:4318/v1/traces".into())
        );
        let env = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".to_owned())
        };
        assert_eq!(Endpoint::resolve(&config(""), env), Endpoint::Environment);
        let blank = |_: &str| Some(" ".to_owned());
        assert_eq!(Endpoint::resolve(&config(""), blank), Endpoint::Off);
    }

    #[test]
    fn the_traces_url_is_derived_as_the_exporter_does() {
        let env = |traces: Option<&'static str>, base: Option<&'static str>| {
            move |name: &str| match name {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => traces.map(str::to_owned),
                "OTEL_EXPORTER_OTLP_ENDPOINT" => base.map(str::to_owned),
                _ => None,
            }
        };
        assert_eq!(
            Endpoint::Environment.traces_url(env(None, Some("http://c:4318/"))),
            Some("http://c:4318/v1/traces".into())
        );
        assert_eq!(
            Endpoint::Environment.traces_url(env(Some("http://t:4318/x"), Some("http://c:4318"))),
            Some("http://t:4318/x".into())
        );
        assert_eq!(
            Endpoint::Configured("http://k:4318/v1/traces".into()).traces_url(env(None, None)),
            Some("http://k:4318/v1/traces".into())
        );
        assert_eq!(Endpoint::Off.traces_url(env(None, Some("http://c"))), None);
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "grpc".to_owned());
        let error = Provider::start(&Endpoint::Environment, "conveyor", env)
            .err()
            .expect("grpc refused");
        let text = error.to_string();
        assert!(
            text.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && text.contains("http/protobuf"),
            "{text}"
        );
    }
}
