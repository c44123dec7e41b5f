//! The operations HTTP listener: `/healthz` (the process is alive), `/readyz` (every dependency
//! it needs answers) and `/metrics` (Prometheus text). It carries no message data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness of each dependency, set by the components that use it. The daemon is ready when
/// every registered component is.
#[derive(Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Records whether `component` (e.g. `sqs:main`, `postgres`) is usable right now.
    pub fn set(&self, component: impl Into<String>, ready: bool) {
        self.lock().insert(component.into(), ready);
    }

    pub fn is_ready(&self) -> bool {
        self.lock().values().all(|ready| *ready)
    }

    fn snapshot(&self) -> BTreeMap<String, bool> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // A panic while holding this lock cannot leave the map half-written; keep serving.
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Binds the listener; returns it so the caller learns the port (port 0 in tests).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let components = state.readiness.snapshot();
    let status = if components.values().all(|r| *r) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body: String = components
        .iter()
        .map(|(name, ready)| format!("{name} {}\n", if *ready { "ready" } else { "unready" }))
        .collect();
    (status, body)
}

async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
