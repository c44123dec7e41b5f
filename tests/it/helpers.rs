//! Shared test helpers: the stack's coordinates, unique names, SQS clients, and a handle on a
//! spawned `conveyor` process whose log lines the test can read.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stack's coordinates, from `scripts/stack env`. Tests fail loudly without them: a test
/// that silently skips its real dependency proves nothing.
pub struct Stack {
    pub aws_endpoint: String,
    pub region: String,
    pub database_url: String,
    pub pg_admin_url: String,
    pub neo4j_uri: String,
    pub neo4j_user: String,
    pub neo4j_password: String,
}

pub fn stack() -> Stack {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests with scripts/test, or `eval \"$(scripts/stack env)\"` after `scripts/stack up`")
        })
    };
    Stack {
        aws_endpoint: var("AWS_ENDPOINT_URL"),
        region: var("AWS_REGION"),
        database_url: var("DATABASE_URL"),
        pg_admin_url: var("CONVEYOR_STACK_PG_ADMIN_URL"),
        neo4j_uri: var("NEO4J_URI"),
        neo4j_user: var("NEO4J_USER"),
        neo4j_password: var("NEO4J_PASSWORD"),
    }
}

/// A name no other test (or earlier run) uses: prefix, process id, counter, random suffix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// AWS SDK configuration pointing at the stack's LocalStack.
pub async fn aws_sdk() -> aws_config::SdkConfig {
    conveyor::install_crypto_provider();
    let s = stack();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&s.aws_endpoint)
        .region(aws_config::Region::new(s.region))
        .load()
        .await
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_sdk().await)
}

/// Creates a queue and returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url")
}

/// The repository's `config/` directory.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `conveyor` with the test environment: config from the repository, `CONVEYOR_ENV=test`, and
/// the stack's environment. `extra_toml` is written to a file passed with `--config`.
pub struct Conveyor {
    command: Command,
    _config_file: tempfile::NamedTempFile,
}

impl Conveyor {
    pub fn new(extra_toml: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, extra_toml.as_bytes()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_conveyor"));
        // Start from the stack's environment only, minus any CONVEYOR_ setting of the caller.
        for (key, _) in std::env::vars() {
            if key.starts_with("CONVEYOR_") && !key.starts_with("CONVEYOR_STACK_") {
                command.env_remove(key);
            }
        }
        command
            .env("CONVEYOR_ENV", "test")
            .env("CONVEYOR_CONFIG_DIR", config_dir())
            .env("CONVEYOR_CONFIG", file.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        Self {
            command,
            _config_file: file,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Runs a subcommand to completion.
    pub fn output(mut self, args: &[&str]) -> Output {
        let out = self.command.args(args).output().expect("spawn conveyor");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `conveyor run` and waits until it has started consuming.
    pub fn spawn_daemon(self) -> Daemon {
        self.spawn_daemon_until("conveyor started")
    }

    /// Starts `conveyor run` and waits for a log line containing `needle` (its ops address is
    /// read from the earlier "ops listener up" line).
    pub fn spawn_daemon_until(mut self, needle: &str) -> Daemon {
        let mut child = self
            .command
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conveyor run");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        let mut daemon = Daemon {
            child,
            lines,
            readers,
            ops_addr: None,
            _config_file: self._config_file,
        };
        daemon.wait_for_log(needle, Duration::from_secs(30));
        let line = daemon.wait_for_log("ops listener up", Duration::from_secs(1));
        // Text (`ops_addr=…`) or JSON (`"ops_addr":"…"`) logs.
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let addr = json
            .as_ref()
            .and_then(|j| j["ops_addr"].as_str())
            .or_else(|| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("ops_addr="))
            })
            .unwrap_or_else(|| panic!("no ops_addr in {line:?}"));
        daemon.ops_addr = Some(addr.parse().unwrap());
        daemon
    }
}

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A running `conveyor run`. Killed on drop if still running.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The threads reading its stdout and stderr: joined once it exits, so its last lines are
    /// in `logs()` by then.
    readers: Vec<std::thread::JoinHandle<()>>,
    pub ops_addr: Option<SocketAddr>,
    _config_file: tempfile::NamedTempFile,
}

impl Daemon {
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`; panics with the log so far on timeout.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "conveyor exited ({status}) before logging {needle:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needle:?} after {timeout:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops_addr.unwrap())
    }

    /// The sum of the daemon's `name` series carrying every one of `labels` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum_of(&text, name, labels)
    }

    /// Waits until the daemon itself holds `n` messages (its `conveyor_in_flight` gauge). The
    /// queue's not-visible count is no proof: SQS counts a message in flight once a receive
    /// took it, before the answer reached the daemon, and a shutdown then aborts that receive.
    pub async fn eventually_in_flight(&self, n: usize, timeout: Duration) {
        let metrics_url = self.url("/metrics");
        eventually(&format!("{n} messages in flight"), timeout, async || {
            let Ok(answer) = reqwest::get(&metrics_url).await else {
                return false;
            };
            let text = answer.text().await.unwrap_or_default();
            sum_of(&text, "conveyor_in_flight", &[]) == n as f64
        })
        .await;
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = start.elapsed();
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return (status.code(), took);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "conveyor did not exit within {timeout:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- LocalStack sharing ---------------------------------------------------------------

/// A test that needs LocalStack to itself (one that LocalStack's emulation gets wrong under
/// the suite's load) takes this exclusively; every other LocalStack test shares it.
static LOCALSTACK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub async fn localstack_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOCALSTACK.read().await
}

/// Waits for a moment when no other test uses LocalStack, without queueing: a queued writer
/// (tokio's lock is fair) would hold every test that starts meanwhile behind the longest one
/// running, three test threads idle for minutes. Usually that moment is the suite's end.
pub async fn localstack_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    loop {
        if let Ok(alone) = LOCALSTACK.try_write() {
            return alone;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- queues and messages --------------------------------------------------------------

pub struct TestQueue {
    pub name: String,
    pub url: String,
    pub dlq_url: String,
}

/// A queue with a DLQ and a RedrivePolicy, both accepting SQS's 1 MiB maximum.
pub async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    max_receive_count: u32,
) -> TestQueue {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let name = unique(prefix);
    let (url, dlq_url) = create_with_dlq(
        sqs,
        &name,
        &format!("{name}-dlq"),
        &[(A::MaximumMessageSize, "1048576")],
        max_receive_count,
    )
    .await;
    TestQueue { name, url, dlq_url }
}

/// A FIFO queue (content-based deduplication) with a FIFO DLQ and a RedrivePolicy, as
/// `conveyor infra up` with `infra.fifo = true` creates them.
pub async fn fifo_queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    max_receive_count: u32,
) -> TestQueue {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let name = unique(prefix);
    let (url, dlq_url) = create_with_dlq(
        sqs,
        &format!("{name}.fifo"),
        &format!("{name}-dlq.fifo"),
        &[
            (A::FifoQueue, "true"),
            (A::ContentBasedDeduplication, "true"),
        ],
        max_receive_count,
    )
    .await;
    TestQueue { name, url, dlq_url }
}

/// Creates a DLQ and a queue redriving to it, both with `attributes`; returns their URLs.
async fn create_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    dlq_name: &str,
    attributes: &[(aws_sdk_sqs::types::QueueAttributeName, &str)],
    max_receive_count: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let create = |name: &str| {
        let mut create = sqs.create_queue().queue_name(name);
        for (attribute, value) in attributes {
            create = create.attributes(attribute.clone(), *value);
        }
        create
    };
    let dlq_url = create(dlq_name).send().await.unwrap().queue_url.unwrap();
    let dlq_arn = queue_arn(sqs, &dlq_url).await;
    let url = create(name)
        .attributes(
            A::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (url, dlq_url)
}

/// Receives up to 10 messages with their `MessageGroupId` (see [`group_id`]), waiting up to a
/// second and leaving them hidden for `visibility_secs`.
pub async fn receive_grouped(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    visibility_secs: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(visibility_secs)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
        )
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

/// A FIFO message's `MessageGroupId`, when it was received with it.
pub fn group_id(m: &aws_sdk_sqs::types::Message) -> Option<&str> {
    m.attributes()?
        .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
        .map(String::as_str)
}

/// Sends (group id, body) pairs to a FIFO queue in batches of 10, in order.
pub async fn send_grouped(sqs: &aws_sdk_sqs::Client, url: &str, messages: &[(String, String)]) {
    let messages: Vec<(Option<&str>, &str)> = messages
        .iter()
        .map(|(group, body)| (Some(group.as_str()), body.as_str()))
        .collect();
    send_batches(sqs, url, &messages).await;
}

/// A queue's ARN.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&A::QueueArn)
        .unwrap()
}

/// A rule on `bus` sending events that match `pattern` to the queue at `queue_url`.
pub async fn rule_to_queue(bus: &str, pattern: serde_json::Value, queue_url: &str) {
    let sdk = aws_sdk().await;
    let (eb, sqs) = (
        aws_sdk_eventbridge::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    );
    let arn = queue_arn(&sqs, queue_url).await;
    let rule = unique("it-rule");
    eb.put_rule()
        .name(&rule)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id("queue")
        .arn(arn)
        .build()
        .unwrap();
    eb.put_targets()
        .rule(&rule)
        .event_bus_name(bus)
        .targets(target)
        .send()
        .await
        .unwrap();
}

/// Publishes one event to the default bus through LocalStack's EventBridge.
pub async fn put_event(source: &str, detail_type: &str, detail: &serde_json::Value) {
    let eb = aws_sdk_eventbridge::Client::new(&aws_sdk().await);
    let out = eb
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source(source)
                .detail_type(detail_type)
                .detail(detail.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_entry_count, 0);
}

/// An EventBridge event as SQS receives it from a rule.
pub fn event_body(id: &str, detail: serde_json::Value) -> String {
    serde_json::json!({
        "version": "0", "id": id, "detail-type": "Test.event", "source": "conveyor.tests",
        "account": "000000000000", "time": "2025-01-23T10:30:00Z", "region": "us-east-1",
        "resources": [], "detail": detail,
    })
    .to_string()
}

/// Sends bodies in batches of 10.
pub async fn send_all(sqs: &aws_sdk_sqs::Client, url: &str, bodies: &[String]) {
    let messages: Vec<(Option<&str>, &str)> = bodies.iter().map(|b| (None, b.as_str())).collect();
    send_batches(sqs, url, &messages).await;
}

/// Sends (group id, body) pairs in batches of 10, in order.
async fn send_batches(sqs: &aws_sdk_sqs::Client, url: &str, messages: &[(Option<&str>, &str)]) {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (group, body))| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(*body)
                    .set_message_group_id(group.map(str::to_owned))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed.is_empty(), "send failed: {:?}", out.failed);
    }
}

/// (visible, in flight) from the queue's approximate counters.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let n = |a: A| attributes[&a].parse().unwrap();
    (
        n(A::ApproximateNumberOfMessages),
        n(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Receives (and deletes) everything in a queue, with message attributes.
pub async fn drain_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let deadline = Instant::now() + timeout;
    let mut all = Vec::new();
    while all.len() < expected && Instant::now() < deadline {
        let messages = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        let entries = messages.iter().enumerate().map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .build()
                .unwrap()
        });
        let deleted = sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        assert!(
            deleted.failed.is_empty(),
            "drain {url}: {:?}",
            deleted.failed
        );
        all.extend(messages);
    }
    all
}

pub fn string_attribute<'a>(m: &'a aws_sdk_sqs::types::Message, name: &str) -> Option<&'a str> {
    m.message_attributes.as_ref()?.get(name)?.string_value()
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- in-process daemon ----------------------------------------------------------------

/// A config from TOML over the built-in defaults and the stack's secrets. Not validated, so
/// tests can route to pipelines they register themselves.
pub fn test_config(toml: &str) -> conveyor::config::Config {
    use figment::providers::{Format, Serialized, Toml};
    let mut config: conveyor::config::Config =
        figment::Figment::from(Serialized::defaults(conveyor::config::Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .unwrap();
    config.ops.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.secrets = conveyor::config::Secrets::from_env();
    config
}

/// `[queues.<key>]` for a test queue, plus `extra` lines inside that table.
pub fn queue_toml(key: &str, url: &str, extra: &str) -> String {
    format!("[queues.{key}]\nurl = \"{url}\"\n{extra}\n")
}

pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub struct InProcess {
    pub shutdown: conveyor::shutdown::Shutdown,
    pub ops_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(
        config: conveyor::config::Config,
        registry: conveyor::pipeline::Registry,
    ) -> Self {
        conveyor::install_crypto_provider();
        init_test_logging();
        let shutdown = conveyor::shutdown::Shutdown::new();
        let running = conveyor::start_with(config, registry, shutdown.clone())
            .await
            .expect("daemon starts");
        let ops_addr = running.ops_addr;
        Self {
            shutdown,
            ops_addr,
            task: tokio::spawn(running.wait()),
        }
    }

    /// SIGTERM's equivalent; waits for the daemon to finish draining.
    pub async fn stop(self) {
        self.shutdown.begin();
        self.task.await.unwrap().unwrap();
    }
}

/// One metric's value from the global recorder, summed over series whose labels include all
/// of `labels` (e.g. `queue="x"`).
pub fn metric(name: &str, labels: &[&str]) -> f64 {
    sum_of(
        &conveyor::telemetry::metrics_handle().render(),
        name,
        labels,
    )
}

/// The sum of `name`'s series carrying every one of `labels` in a Prometheus text exposition.
pub fn sum_of(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Event id → (receive count, when) of each delivery.
pub type Deliveries = std::collections::HashMap<String, Vec<(u32, Instant)>>;

/// A pipeline that records every delivery it sees.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Deliveries>>,
    pub sleep: Duration,
    /// Fail retryably while the receive count is below this.
    pub fail_until_receive: u32,
}

impl Recorder {
    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn deliveries(&self) -> usize {
        self.seen.lock().unwrap().values().map(Vec::len).sum()
    }
}

impl conveyor::pipeline::Pipeline for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn run(
        &self,
        delivery: Arc<conveyor::pipeline::Delivery>,
    ) -> futures::future::BoxFuture<'static, Result<(), conveyor::pipeline::PipelineError>> {
        let this = self.clone();
        Box::pin(async move {
            this.seen
                .lock()
                .unwrap()
                .entry(delivery.key.clone())
                .or_default()
                .push((delivery.receive_count, Instant::now()));
            if !this.sleep.is_zero() {
                tokio::time::sleep(this.sleep).await;
            }
            if delivery.receive_count < this.fail_until_receive {
                return Err(conveyor::pipeline::PipelineError::Retryable(
                    "recorder: asked to fail".into(),
                ));
            }
            Ok(())
        })
    }
}

pub fn registry_with(recorder: &Recorder) -> conveyor::pipeline::Registry {
    let mut registry = conveyor::pipeline::Registry::built_in();
    registry.add(Arc::new(recorder.clone()));
    registry
}

/// A pool on the stack's database (migrated).
pub async fn pg() -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(&stack().database_url).await.unwrap();
    conveyor::postgres::migrate(&pool).await.unwrap();
    pool
}

/// (idempotency key, interaction) of each delivery.
pub type Captured = Vec<(String, Option<conveyor::contract::envelope::Interaction>)>;

/// Records the interactions it is given.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Captured>>);

impl conveyor::pipeline::Pipeline for Capture {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn run(
        &self,
        d: Arc<conveyor::pipeline::Delivery>,
    ) -> futures::future::BoxFuture<'static, Result<(), conveyor::pipeline::PipelineError>> {
        self.0
            .lock()
            .unwrap()
            .push((d.key.clone(), d.interaction.clone()));
        Box::pin(async { Ok(()) })
    }
}

/// A database of the test's own on the stack's server (migrated): a test that locks or
/// breaks it disturbs no other test. Returns its URL and a pool on it.
pub async fn private_database(prefix: &str) -> (String, sqlx::PgPool) {
    let s = stack();
    let name = unique(prefix).replace('-', "_").to_lowercase();
    let admin = sqlx::PgPool::connect(&s.pg_admin_url).await.unwrap();
    // `name` is made here of [a-z0-9_] only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = match s.database_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("DATABASE_URL has no database name"),
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    conveyor::postgres::migrate(&pool).await.unwrap();
    (url, pool)
}

/// GET on the in-process daemon's ops listener: (status, body).
pub async fn ops_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

// --- private servers ------------------------------------------------------------------

/// A Bolt server of the test's own (ArcadeDB from the stack's installation), so stopping it
/// disturbs no other test.
pub struct PrivateBolt {
    root: tempfile::TempDir,
    bolt_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl PrivateBolt {
    pub async fn start() -> Self {
        let mut bolt = Self {
            root: tempfile::tempdir().unwrap(),
            bolt_port: closed_port(),
            http_port: closed_port(),
            child: None,
        };
        bolt.restart().await;
        bolt
    }

    pub fn uri(&self) -> String {
        format!("127.0.0.1:{}", self.bolt_port)
    }

    pub async fn restart(&mut self) {
        let dir = std::env::var("CONVEYOR_STACK_ARCADEDB_DIR")
            .expect("CONVEYOR_STACK_ARCADEDB_DIR: run under scripts/test");
        let root = self.root.path();
        let child = Command::new(format!("{dir}/jre/bin/java"))
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("{dir}/jars/*"))
            .arg(format!("-Darcadedb.server.rootPath={}", root.display()))
            .arg(format!(
                "-Darcadedb.server.databaseDirectory={}/databases",
                root.display()
            ))
            .arg("-Darcadedb.server.rootPassword=private-bolt-pw")
            .arg("-Darcadedb.server.defaultDatabases=neo4j[root]")
            .arg("-Darcadedb.server.httpIncomingHost=127.0.0.1")
            .arg(format!(
                "-Darcadedb.server.httpIncomingPort={}",
                self.http_port
            ))
            .arg("-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin")
            .arg("-Darcadedb.bolt.host=127.0.0.1")
            .arg(format!("-Darcadedb.bolt.port={}", self.bolt_port))
            .arg("-Darcadedb.bolt.defaultDatabase=neo4j")
            .arg("com.arcadedb.server.ArcadeDBServer")
            // ArcadeDB writes ./log/ relative to its working directory: keep it in the tempdir.
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let config = conveyor::config::GraphConfig {
            user: "root".into(),
            connect_timeout_secs: 2,
            ..Default::default()
        };
        let uri = self.uri();
        eventually(
            "the private Bolt server",
            Duration::from_secs(90),
            async || {
                conveyor::bolt::connect(
                    &config,
                    &uri,
                    &conveyor::config::Secret::new("private-bolt-pw"),
                )
                .await
                .is_ok()
            },
        )
        .await;
    }

    /// SIGTERM, and wait for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            child.wait().unwrap();
        }
    }

    pub async fn graph(&self) -> neo4rs::Graph {
        let config = conveyor::config::GraphConfig {
            user: "root".into(),
            ..Default::default()
        };
        conveyor::bolt::connect(
            &config,
            &self.uri(),
            &conveyor::config::Secret::new("private-bolt-pw"),
        )
        .await
        .unwrap()
    }
}

impl Drop for PrivateBolt {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP forwarder to a real server that a test can cut (every connection closed, new ones
/// refused) and restore on the same port: a dependency outage as the daemon sees it, without
/// stopping a server other tests share.
pub struct Proxy {
    pub port: u16,
    target: String,
    /// The accept loop; aborting it drops every connection it forwards.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    /// Forwards a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, target)
    }

    /// Forwards `listener`'s connections to `target` (for a port bound before the proxy).
    pub fn on(listener: tokio::net::TcpListener, target: &str) -> Self {
        let proxy = Self {
            port: listener.local_addr().unwrap().port(),
            target: target.to_owned(),
            task: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Accepts and forwards again, on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Runs the parliament IAM linter (installed by scripts/test) on a policy document: every
/// action, resource and condition must be one IAM knows, with no finding of any severity.
pub fn assert_parliament_clean(role: &str, doc: &serde_json::Value) {
    let parliament = std::env::var("CONVEYOR_STACK_PARLIAMENT").expect(
        "CONVEYOR_STACK_PARLIAMENT: run under scripts/test, which installs the parliament IAM linter",
    );
    let out = std::process::Command::new(&parliament)
        .args([
            "--json",
            "--minimum_severity",
            "LOW",
            "--string",
            &doc.to_string(),
        ])
        .output()
        .unwrap();
    let findings = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "parliament on the {role} policy: {findings}"
    );
}
