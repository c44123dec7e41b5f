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

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    conveyor::install_crypto_provider();
    let s = stack();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&s.aws_endpoint)
        .region(aws_config::Region::new(s.region))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&sdk)
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

    /// Starts `conveyor run` and waits until it reports its ops address.
    pub fn spawn_daemon(mut self) -> Daemon {
        let mut child = self
            .command
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conveyor run");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut daemon = Daemon {
            child,
            lines,
            ops_addr: None,
            _config_file: self._config_file,
        };
        let line = daemon.wait_for_log("conveyor started", Duration::from_secs(30));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ops_addr="))
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

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
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
