//! Exporting spans: where to (`[telemetry.otlp] endpoint` or the standard `OTEL_EXPORTER_OTLP_*`
//! variables, OTLP over HTTP/protobuf only), the provider whose batch processor exports them
//! from its own thread, and the collector probe `conveyor check` runs.

use crate::config::OtlpConfig;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::registry::LookupSpan;

/// The only OTLP protocol conveyor exports with.
/// The instrumentation scope's name on every exported span.
pub(super) const SCOPE: &str = "conveyor";
pub(super) const PROTOCOL: &str = "http/protobuf";

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

#[cfg(test)]
mod tests {
    use super::*;

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
