//! Logging and metrics in one place: the subscriber set-up, every metric name, and one function
//! per event that both logs and counts. Labels stay low-cardinality (queue, operation, outcome,
//! reason, pipeline); ids and lengths go into log fields, message content goes nowhere.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global tracing subscriber: JSON lines or readable text, to stderr, with the
/// level from `RUST_LOG` when set, else from config.
pub fn init_logging(config: &TelemetryConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(filter)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colour only for a terminal: escape codes in a piped log break grep and parsers.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
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
