//! `chaos`: a pipeline that misbehaves on request, for tests and soak runs. It reads the
//! directive object at `chaos` (or `extras.chaos`) in the payload and succeeds when there is
//! none:
//!
//! ```json
//! {"sleep_ms": 5000, "fail_until_receive": 3, "permanent": false, "panic": false}
//! ```
//! - `sleep_ms`: sleep first (a slow handler);
//! - `fail_until_receive`: fail retryably while the receive count is below this number
//!   (a transient fault that heals after N−1 deliveries);
//! - `permanent`: fail permanently (bad input);
//! - `panic`: panic (a bug).
//!
//! Only events that carry a directive are affected, so routing real traffic through it is
//! harmless; it exists to prove conveyor's fault handling end to end.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{Delivery, Descriptor, Pipeline, PipelineError};

pub(super) const DESCRIPTOR: Descriptor = Descriptor {
    name: "chaos",
    accepts: &[],
    needs: &[],
    timeout_secs: crate::config::DEFAULT_PIPELINE_TIMEOUT_SECS,
    build: |_| Box::pin(async { Ok(Arc::new(Chaos) as Arc<dyn Pipeline>) }),
};

pub struct Chaos;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Directive {
    sleep_ms: u64,
    fail_until_receive: u32,
    permanent: bool,
    panic: bool,
}

fn directive(delivery: &Delivery) -> Option<Directive> {
    let detail = &delivery.event.payload;
    let value = detail
        .get("chaos")
        .or_else(|| detail.get("extras").and_then(|e| e.get("chaos")))?;
    serde_json::from_value(value.clone()).ok()
}

impl Pipeline for Chaos {
    fn name(&self) -> &'static str {
        "chaos"
    }

    fn run(&self, delivery: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        Box::pin(async move {
            let Some(d) = directive(&delivery) else {
                return Ok(());
            };
            if d.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(d.sleep_ms)).await;
            }
            if d.panic {
                panic!("chaos: panic requested");
            }
            if d.permanent {
                return Err(PipelineError::Permanent(
                    "chaos: permanent failure requested".into(),
                ));
            }
            if delivery.receive_count < d.fail_until_receive {
                return Err(PipelineError::Retryable(format!(
                    "chaos: transient failure requested until receive {}",
                    d.fail_until_receive
                )));
            }
            Ok(())
        })
    }
}
