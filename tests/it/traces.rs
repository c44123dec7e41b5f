//! OpenTelemetry traces end to end: `conveyor publish` and the daemon export over OTLP/HTTP to
//! a receiver here that decodes `ExportTraceServiceRequest` with the real protobuf types; one
//! envelope's trace runs from the publisher through EventBridge and SQS to the graph and
//! projection writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::Value;

use crate::helpers::*;
use crate::publish::bus_to_queue;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    /// (trace id, span id, the `conveyor.link.from` attribute)
    links: Vec<(String, String, String)>,
    error: bool,
}

/// An OTLP/HTTP trace receiver on port 0. It answers from the test's runtime, so the tests run
/// on a multi-threaded one: a CLI run waited for with `output()` blocks one thread.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("an ExportTraceServiceRequest in protobuf");
                    sink.lock().unwrap().extend(flatten(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(Exported {
                    service: service.clone(),
                    kind: span.kind(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| {
                            let from = l
                                .attributes
                                .iter()
                                .find(|a| a.key == "conveyor.link.from")
                                .map(|a| text(a.value.as_ref()))
                                .unwrap_or_default();
                            (hex::encode(&l.trace_id), hex::encode(&l.span_id), from)
                        })
                        .collect(),
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    out
}

/// The environment that turns tracing on, exporting to `receiver` quickly.
fn traced(conveyor: Conveyor, receiver: &Receiver, service: &str) -> Conveyor {
    conveyor
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
}

fn one<'a>(spans: &'a [Exported], what: &str, pick: impl Fn(&Exported) -> bool) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {what} span; all spans:\n{spans:#?}"
    );
    found[0]
}

fn attribute<'a>(span: &'a Exported, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{key} on {span:#?}"))
}

/// The daemon's config: the queue routed to graph and projection, JSON logs.
fn daemon_toml(k: &str, url: &str, llm_base: &str) -> String {
    let s = stack();
    format!(
        "{}\n[telemetry]\nlog_format = \"json\"\n\
         [graph]\nuri = \"{}\"\nuser = \"{}\"\n\
         [extraction]\nextractor = \"llm\"\nbase_url = \"{llm_base}\"\nmodel = \"fake-model\"\n",
        queue_toml(
            k,
            url,
            &format!(
                "[[queues.{k}.routes]]\nsource = \"*\"\ndetail_type = \"*\"\npipelines = [\"graph\", \"projection\"]"
            )
        ),
        s.neo4j_uri,
        s.neo4j_user,
    )
}

/// The spans of `trace`'s consumer side, once its settle span has arrived.
async fn consumed(receiver: &Receiver, k: &str, trace: &str) -> Vec<Exported> {
    let settled = |spans: &[Exported]| -> Option<String> {
        let process = spans
            .iter()
            .find(|s| s.name == format!("process {k}") && s.links.iter().any(|l| l.0 == trace))?;
        spans
            .iter()
            .any(|s| {
                s.name == format!("settle {k}") && s.links.iter().any(|l| l.1 == process.span_id)
            })
            .then(|| process.trace_id.clone())
    };
    eventually(
        "the message's spans exported",
        Duration::from_secs(90),
        async || settled(&receiver.spans()).is_some(),
    )
    .await;
    // Let a late batch arrive too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    receiver.spans()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_envelope_is_one_trace_from_the_publisher_through_sqs_to_the_writes() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start().await;
    let (bus, q) = bus_to_queue("it-trace").await;
    let llm = crate::fake_llm::FakeLlm::start().await;
    let k = unique("tr").replace('-', "_").to_lowercase();
    let mut daemon = traced(
        Conveyor::new(&daemon_toml(&k, &q.url, &llm.base_url)),
        &receiver,
        "conveyor-it",
    )
    .env("OPENAI_API_KEY", "sk-test")
    .spawn_daemon();

    let tenant = uuid::Uuid::new_v4().to_string();
    let out = traced(Conveyor::new(""), &receiver, "publisher-it").output(&[
        "publish",
        "--type",
        "transcript",
        "--sample",
        "--tenant-id",
        &tenant,
        "--bus",
        &bus,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let published: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let trace = published["trace_id"]
        .as_str()
        .expect("publish prints the trace id")
        .to_owned();
    assert_eq!(trace.len(), 32);

    let spans = consumed(&receiver, &k, &trace).await;
    // The publisher's side: one PRODUCER span, exported by the CLI before it exited.
    let send = one(&spans, "publisher send", |s| s.trace_id == trace);
    assert_eq!(
        (send.name.as_str(), send.kind, send.service.as_str()),
        (
            format!("send {bus}").as_str(),
            SpanKind::Producer,
            "publisher-it"
        )
    );

    // The consumer's side: receive → process → pipeline → write, in one trace of its own,
    // linked to the publisher's.
    let process = one(&spans, "process", |s| {
        s.name == format!("process {k}") && s.links.iter().any(|l| l.0 == trace)
    });
    assert_eq!(process.kind, SpanKind::Consumer);
    assert_eq!(process.service, "conveyor-it");
    assert_eq!(attribute(process, "messaging.system"), "aws_sqs");
    assert_eq!(attribute(process, "messaging.operation.type"), "process");
    assert_eq!(attribute(process, "messaging.destination.name"), k);
    assert_eq!(attribute(process, "conveyor.outcome"), "deleted");
    assert!(!attribute(process, "messaging.message.id").is_empty());
    assert!(!process.error);
    let link = process.links.iter().find(|l| l.0 == trace).unwrap();
    assert_eq!(link.1, send.span_id, "linked to the publisher's send span");
    eprintln!("the producer's context came from {}", link.2);

    let receive = one(&spans, "receive", |s| s.span_id == process.parent);
    assert_eq!(receive.name, format!("receive {k}"));
    assert_eq!(receive.kind, SpanKind::Client);
    assert_eq!(receive.trace_id, process.trace_id);
    assert!(
        attribute(receive, "messaging.batch.message_count")
            .parse::<i64>()
            .unwrap()
            >= 1
    );

    let children = |parent: &Exported| -> Vec<&Exported> {
        spans
            .iter()
            .filter(|s| s.parent == parent.span_id)
            .collect()
    };
    let graph = one(&spans, "pipeline graph", |s| {
        s.parent == process.span_id && s.name == "pipeline graph"
    });
    let projection = one(&spans, "pipeline projection", |s| {
        s.parent == process.span_id && s.name == "pipeline projection"
    });
    let merge = children(graph)
        .into_iter()
        .find(|s| s.name == "merge interaction_graph")
        .unwrap_or_else(|| panic!("a graph write under {graph:#?}: {spans:#?}"));
    assert_eq!(merge.kind, SpanKind::Client);
    assert_eq!(attribute(merge, "db.system.name"), "neo4j");
    let upsert = children(projection)
        .into_iter()
        .find(|s| s.name == "upsert projection_interactions")
        .unwrap_or_else(|| panic!("a projection write under {projection:#?}: {spans:#?}"));
    assert_eq!(attribute(upsert, "db.system.name"), "postgresql");
    for pipeline in [graph, projection] {
        assert!(
            children(pipeline)
                .iter()
                .any(|s| s.name == "claim pipeline_ledger"),
            "the ledger claim is a child of {}",
            pipeline.name
        );
    }
    // The model call: under whichever pipeline asked first (the other waits for its answer).
    let chat = one(&spans, "chat", |s| {
        s.trace_id == process.trace_id && s.name == "chat fake-model"
    });
    assert!([&graph.span_id, &projection.span_id].contains(&&chat.parent));
    assert_eq!(chat.kind, SpanKind::Client);
    assert_eq!(attribute(chat, "gen_ai.operation.name"), "chat");
    assert!(
        attribute(chat, "gen_ai.usage.input_tokens")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        attribute(chat, "gen_ai.usage.output_tokens")
            .parse::<u64>()
            .is_ok()
    );

    // The delete: batched, so a root of its own, linked to the process span.
    let settle = one(&spans, "settle", |s| {
        s.name == format!("settle {k}") && s.links.iter().any(|l| l.1 == process.span_id)
    });
    assert_eq!(settle.kind, SpanKind::Client);
    assert_eq!(
        attribute(settle, "messaging.operation.name"),
        "DeleteMessageBatch"
    );

    // Nothing of the message's content or the tenant id rides on a span.
    let sample_words = ["pricing", "ACTION", "Thanks"];
    for span in &spans {
        for value in span.attributes.values() {
            assert!(
                !sample_words.iter().any(|w| value.contains(w)) && !value.contains(&tenant),
                "content on {span:#?}"
            );
        }
    }

    // Log lines written inside the process span carry its trace.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    let logs = daemon.logs();
    let traced_lines: Vec<Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["trace_id"] == process.trace_id.as_str())
        .collect();
    assert!(
        traced_lines
            .iter()
            .any(|l| l["span_id"].as_str().is_some_and(|s| s.len() == 16)),
        "log lines inside the trace carry trace_id and span_id:\n{}",
        logs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_the_queue_carries_its_trace_in_aws_trace_header() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-trace-q", 3).await;
    let k = unique("tq").replace('-', "_").to_lowercase();
    let toml = queue_toml(
        &k,
        &q.url,
        &format!(
            "[[queues.{k}.routes]]\nsource = \"*\"\ndetail_type = \"*\"\npipelines = [\"log\"]"
        ),
    );
    // An envelope with a trace_id of its own: the AWSTraceHeader link is the one taken.
    let detail = r#"{"schema_version":"v1","tenant_id":"5b0c8f2e-8d0e-4c1e-9a53-0d5f3a1e7c11","user_id":"u",
        "interaction_type":"note","content":{"text":"hello","format":"plain"},"timestamp":"2026-11-18T10:30:00Z",
        "source":"api","trace_id":"opaque-upstream-id"}"#;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), detail).unwrap();
    let out = traced(Conveyor::new(&toml), &receiver, "publisher-it").output(&[
        "publish",
        "--type",
        "note",
        "--file",
        file.path().to_str().unwrap(),
        "--queue",
        &k,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let published: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let trace = published["trace_id"].as_str().unwrap().to_owned();

    let mut daemon = traced(Conveyor::new(&toml), &receiver, "conveyor-it").spawn_daemon();
    let spans = consumed(&receiver, &k, &trace).await;
    let process = one(&spans, "process", |s| s.name == format!("process {k}"));
    assert_eq!(
        process
            .links
            .iter()
            .map(|l| (l.0.as_str(), l.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(trace.as_str(), "AWSTraceHeader")],
        "one link, from the system attribute (the envelope's own trace_id names no span)"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    // Text logs too: the `log` pipeline's line, written in its pipeline span, names the trace.
    let pipeline = one(&spans, "pipeline log", |s| s.parent == process.span_id);
    let logs = daemon.logs();
    let line = logs
        .iter()
        .find(|l| l.contains("payload_sha256"))
        .expect("the log pipeline's line");
    assert!(
        line.ends_with(&format!(
            "trace_id={} span_id={}",
            process.trace_id, pipeline.span_id
        )),
        "{line}"
    );
}

/// Head sampling at 0: the exporter runs, yet a message handled makes no span at all — no
/// receive, process, pipeline or settle span (each receive's messages are traced together or
/// not at all; `telemetry.otlp.sample_ratio`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_left_out_by_head_sampling_makes_no_span() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-trace-sampled", 3).await;
    let k = unique("ts").replace('-', "_").to_lowercase();
    let toml = format!(
        "{}\n[telemetry.otlp]\nsample_ratio = 0.0\n",
        queue_toml(
            &k,
            &q.url,
            &format!("[[queues.{k}.routes]]\ncontract = \"json\"\npipelines = [\"log\"]"),
        )
    );
    let mut daemon = traced(Conveyor::new(&toml), &receiver, "conveyor-unsampled").spawn_daemon();
    send_all(
        &sqs,
        &q.url,
        &(0..5)
            .map(|i| event_body(&format!("e-unsampled-{i}"), serde_json::json!({"a": i})))
            .collect::<Vec<_>>(),
    )
    .await;
    eventually(
        "the five handled and deleted",
        Duration::from_secs(60),
        async || queue_depth(&sqs, &q.url).await == (0, 0),
    )
    .await;
    // The exporter sends every 200 ms here: a span made would have arrived by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    assert_eq!(
        daemon
            .logs()
            .iter()
            .filter(|l| l.contains("payload_sha256"))
            .count(),
        5,
        "each handled once"
    );
    let made: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.service == "conveyor-unsampled")
        .map(|s| s.name)
        .collect();
    assert!(
        made.is_empty(),
        "no span for an unsampled receive: {made:?}"
    );
}

/// Threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_endpoint_there_is_no_exporter_and_nothing_is_sent() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-trace-off", 3).await;
    let k = unique("to").replace('-', "_").to_lowercase();
    let toml = queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\ncontract = \"json\"\npipelines = [\"log\"]"),
    );
    // The SDK names its export thread "OpenTelemetry.Traces.BatchProcessor" (15 bytes shown).
    const EXPORTER: &str = "OpenTelemetry.T";
    let on = traced(Conveyor::new(&toml), &receiver, "conveyor-it").spawn_daemon();
    assert_eq!(
        threads_named(on.child.id(), EXPORTER),
        1,
        "on: one exporter thread"
    );
    drop(on);
    // Its long poll, cut off by the kill, may still take a message sent now: a queue of its own
    // for the daemon without tracing.
    let q = queue_with_dlq(&sqs, "it-trace-off", 3).await;
    let toml = queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\ncontract = \"json\"\npipelines = [\"log\"]"),
    );

    // Off: the variables of another tool set to a protocol conveyor does not speak are not
    // looked at, since no endpoint is set.
    let mut off = Conveyor::new(&toml)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .spawn_daemon();
    assert_eq!(
        threads_named(off.child.id(), EXPORTER),
        0,
        "off: no exporter thread"
    );
    send_all(
        &sqs,
        &q.url,
        &[event_body("e-off", serde_json::json!({"a": 1}))],
    )
    .await;
    off.wait_for_log("payload_sha256", Duration::from_secs(30));
    off.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(off.wait_exit(Duration::from_secs(30)).0, Some(0));
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.name != format!("process {k}")),
        "nothing exported with tracing off"
    );

    // A protocol conveyor does not speak, with an endpoint set: refused by name.
    let out = traced(Conveyor::new(&toml), &receiver, "conveyor-it")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output(&["run"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && out.stderr.contains("http/protobuf"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_carries_its_trace_from_stage_to_stage() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start().await;
    let webhooks = crate::delivery::Receiver::start(|_, _| 200).await;
    let tenant = uuid::Uuid::new_v4();
    let s = crate::notifications::Stages::provision_with(
        "it-trace-notify",
        Some(crate::notifications::Delivering {
            allow_private: true,
            secrets: format!("{tenant}={}", crate::delivery::new_secret().0),
        }),
    )
    .await;
    s.import_prefs(&[serde_json::json!({"tenantId": tenant, "userId": "u-1",
        "channels": {"webhook": format!("{}/k/{tenant}", webhooks.base)}})]);
    let mut daemon = traced(s.cli(""), &receiver, "conveyor-it").spawn_daemon();
    let event =
        crate::delivery::notification(tenant, &format!("{}-0", s.prefix), "u-1", &["webhook"]);
    crate::delivery::drop_events(&s, &[event]);

    // Each stage's process span links to the send span of the stage before it.
    let linked = |spans: &[Exported], queue: &str| -> Option<(Exported, Exported)> {
        let process = spans
            .iter()
            .find(|p| p.name == format!("process {queue}"))?;
        let (trace, span, _) = process.links.first()?;
        let send = spans
            .iter()
            .find(|s| &s.trace_id == trace && &s.span_id == span)?;
        Some((process.clone(), send.clone()))
    };
    eventually(
        "the three stages' spans exported",
        Duration::from_secs(120),
        async || {
            let spans = receiver.spans();
            linked(&spans, "incoming").is_some()
                && linked(&spans, "priority").is_some()
                && spans.iter().any(|s| s.name == "deliver webhook")
        },
    )
    .await;
    assert_eq!(webhooks.hits().len(), 1);
    let spans = receiver.spans();
    let parent_of = |span: &Exported| spans.iter().find(|p| p.span_id == span.parent).cloned();
    for (queue, sender) in [
        ("incoming", "pipeline notify-ingest"),
        ("priority", "pipeline notify-rank"),
    ] {
        let (process, send) = linked(&spans, queue).unwrap();
        assert_eq!(send.kind, SpanKind::Producer, "{send:#?}");
        assert!(send.name.starts_with("send "), "{send:#?}");
        assert_eq!(attribute(&send, "messaging.system"), "aws_sqs");
        assert_eq!(
            parent_of(&send).map(|p| p.name),
            Some(sender.to_owned()),
            "the {queue} message was sent by {sender}"
        );
        assert_eq!(
            process
                .links
                .iter()
                .map(|l| l.2.as_str())
                .collect::<Vec<_>>(),
            ["AWSTraceHeader"]
        );
    }
    let deliver = one(&spans, "deliver", |s| s.name == "deliver webhook");
    assert_eq!(deliver.kind, SpanKind::Client);
    let pipeline = parent_of(deliver).expect("the deliver span's parent");
    assert_eq!(pipeline.name, "pipeline notify-deliver");
    let (priority, _) = linked(&spans, "priority").unwrap();
    assert_eq!(pipeline.parent, priority.span_id);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_copy_keeps_its_producers_trace_header() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-trace-dlq", 3).await;
    let k = unique("td").replace('-', "_").to_lowercase();
    let toml = queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"log\"]"),
    );
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    sqs.send_message()
        .queue_url(&q.url)
        .message_body("not json")
        .set_message_system_attributes(conveyor::sqs::trace_header_attribute(Some(
            header.to_owned(),
        )))
        .send()
        .await
        .unwrap();
    // Tracing off: the header is the producer's, carried whether or not this daemon traces.
    let mut daemon = Conveyor::new(&toml).spawn_daemon();
    let dead_letter = async || {
        let mut dead = Vec::new();
        eventually("a dead letter", Duration::from_secs(30), async || {
            dead = sqs
                .receive_message()
                .queue_url(&q.dlq_url)
                // Back in a second, for the redrive below.
                .visibility_timeout(1)
                .message_system_attribute_names(
                    aws_sdk_sqs::types::MessageSystemAttributeName::AwsTraceHeader,
                )
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            !dead.is_empty()
        })
        .await;
        dead.remove(0)
    };
    let trace_header = |m: &aws_sdk_sqs::types::Message| {
        m.attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::AwsTraceHeader))
            .cloned()
    };
    let first = dead_letter().await;
    assert_eq!(first.body(), Some("not json"));
    assert!(string_attribute(&first, "conveyor.error").is_some_and(|e| !e.is_empty()));
    assert_eq!(trace_header(&first).as_deref(), Some(header));

    // Redriven, it goes back with the header: dead-lettered again, the new copy still has it.
    eventually(
        "the dead letter visible again",
        Duration::from_secs(10),
        async || queue_depth(&sqs, &q.dlq_url).await == (1, 0),
    )
    .await;
    let out = Conveyor::new(&toml).output(&["dlq", "redrive"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let second = dead_letter().await;
    assert_ne!(second.message_id(), first.message_id(), "a new dead letter");
    assert_eq!(trace_header(&second).as_deref(), Some(header));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_the_collector() {
    let receiver = Receiver::start().await;
    let out = traced(Conveyor::new(""), &receiver, "conveyor-it").output(&["check"]);
    assert!(
        out.stdout
            .contains("ok    otlp traces: the collector at 127.0.0.1 took an empty export"),
        "{}",
        out.all()
    );
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let out =
        Conveyor::new(&format!("[telemetry.otlp]\nendpoint = \"{closed}\"\n")).output(&["check"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  otlp traces: no collector answers at 127.0.0.1"))
        .unwrap_or_else(|| panic!("{}", out.all()));
    assert!(line.contains("telemetry.otlp.endpoint"), "{line}");
}
