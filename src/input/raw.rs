//! The `raw` format: the body is the JSON payload, written to the queue by another service.
//! Routes match on the `source` and `type` message attributes (empty when absent).

use std::collections::BTreeMap;

use super::{Event, PoisonError};

pub(super) fn decode(
    body: &str,
    attributes: &BTreeMap<String, String>,
) -> Result<Event, PoisonError> {
    let payload = super::json(body)?;
    let attribute = |name: &str| attributes.get(name).cloned().unwrap_or_default();
    Ok(Event {
        id: None,
        source: attribute("source"),
        detail_type: attribute("type"),
        time: None,
        payload,
        payload_path: "body",
        attributes: attributes.clone(),
    })
}
