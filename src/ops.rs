//! The operations HTTP listener: `/healthz` (the process is alive), `/readyz` (every dependency
//! it needs answers) and `/metrics` (Prometheus text). It carries no message data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

#[derive(Clone, Debug)]
enum ComponentState {
    Ready,
    Unready,
    /// Unready, with what an operator should know (which dependency, since when).
    UnreadyBecause(String),
    /// Calls in flight, by id, with the time each should have answered by. Ready while none is
    /// overdue: a call that hangs is as bad as one that fails, and is noticed long before the
    /// client gives up on it.
    Calls {
        next_id: u64,
        deadlines: BTreeMap<u64, Instant>,
    },
}

impl ComponentState {
    fn is_ready(&self, now: Instant) -> bool {
        match self {
            ComponentState::Ready => true,
            ComponentState::Unready | ComponentState::UnreadyBecause(_) => false,
            ComponentState::Calls { deadlines, .. } => deadlines.values().all(|d| now < *d),
        }
    }
}

/// A call being waited for; dropping it (answer or error) removes it.
pub struct CallGuard {
    readiness: Readiness,
    component: Arc<str>,
    id: u64,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(ComponentState::Calls { deadlines, .. }) =
            self.readiness.lock().get_mut(&*self.component)
        {
            deadlines.remove(&self.id);
        }
    }
}

impl Readiness {
    /// Records whether `component` (e.g. `postgres`) is usable right now.
    pub fn set(&self, component: impl Into<String>, ready: bool) {
        self.set_detail(component, ready, None);
    }

    /// As [`Readiness::set`], with a detail shown beside an unready component in `/readyz`.
    pub fn set_detail(&self, component: impl Into<String>, ready: bool, detail: Option<String>) {
        let state = match (ready, detail) {
            (true, _) => ComponentState::Ready,
            (false, Some(detail)) => ComponentState::UnreadyBecause(detail),
            (false, None) => ComponentState::Unready,
        };
        self.lock().insert(component.into(), state);
    }

    /// Tracks a call to `component` that should answer within `answer_within`: the component
    /// is unready while any such call is overdue.
    pub fn call(&self, component: &Arc<str>, answer_within: std::time::Duration) -> CallGuard {
        let mut components = self.lock();
        let state =
            components
                .entry(component.to_string())
                .or_insert_with(|| ComponentState::Calls {
                    next_id: 0,
                    deadlines: BTreeMap::new(),
                });
        let ComponentState::Calls { next_id, deadlines } = state else {
            unreachable!("a component is either set or tracked by calls, never both");
        };
        let id = *next_id;
        *next_id += 1;
        deadlines.insert(id, Instant::now() + answer_within);
        CallGuard {
            readiness: self.clone(),
            component: component.clone(),
            id,
        }
    }

    pub fn is_ready(&self) -> bool {
        let now = Instant::now();
        self.lock().values().all(|state| state.is_ready(now))
    }

    /// Each component: ready, and the detail of an unready one.
    fn snapshot(&self) -> BTreeMap<String, (bool, Option<String>)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(name, state)| {
                let detail = match state {
                    ComponentState::UnreadyBecause(detail) => Some(detail.clone()),
                    _ => None,
                };
                (name.clone(), (state.is_ready(now), detail))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ComponentState>> {
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
    let status = if components.values().all(|(ready, _)| *ready) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body: String = components
        .iter()
        .map(|(name, (ready, detail))| match (ready, detail) {
            (true, _) => format!("{name} ready\n"),
            (false, Some(detail)) => format!("{name} unready ({detail})\n"),
            (false, None) => format!("{name} unready\n"),
        })
        .collect();
    (status, body)
}

async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `conveyor health`: GETs `path` from the ops listener at `listen_addr` (an unspecified
/// address such as 0.0.0.0 is asked on loopback). The body on a 200; otherwise what went wrong.
pub async fn ask(
    listen_addr: SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<String, String> {
    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}{path}");
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::safe::error_chain(&e)))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{url} answered {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_component_with_an_overdue_call_is_unready_until_it_answers() {
        let r = Readiness::default();
        let sqs: Arc<str> = Arc::from("sqs:main:calls");
        r.set("postgres", true);
        let slow = r.call(&sqs, Duration::from_millis(30));
        let patient = r.call(&sqs, Duration::from_secs(60));
        assert!(r.is_ready());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!r.is_ready(), "one call overdue");
        drop(slow);
        assert!(r.is_ready(), "the overdue call answered");
        drop(patient);
        r.set("postgres", false);
        assert!(!r.is_ready());
    }
}
