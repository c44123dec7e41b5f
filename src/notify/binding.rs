//! Whether an event's tenant is one its origin may speak for (`[notify.bindings]`). A producer
//! writes any `tenantId` it likes; ranking believes it only when the event's origin — its
//! EventBridge `source`, or the drop prefix it was read from — and the queue it came on are
//! bound to that tenant. Refusals name the binding, never the event's content.

use uuid::Uuid;

use crate::config::Bindings;

/// The SQS message attribute `notify-ingest` gives every event read from a drop: the drop's
/// key, for its prefix's binding. EventBridge targets cannot set message attributes, so an
/// event published with the drops' source has none and is refused as unbound.
pub const DROP_KEY_ATTRIBUTE: &str = "conveyor.drop_key";

/// Where an event came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// Published on EventBridge (or sent in its format) with this `source`.
    Source(&'a str),
    /// Read from a drop with this key (`None`: an event that says it came from a drop and
    /// does not say which).
    Drop(Option<&'a str>),
}

/// `Ok` when `tenant` may be named by an event from `origin` received on `queue`; else why
/// not, naming the binding to change.
pub fn check(bindings: &Bindings, origin: Origin, queue: &str, tenant: Uuid) -> Result<(), String> {
    let queue_bound = match bindings.queues.get(queue) {
        Some(tenants) if !tenants.contains(&tenant) => {
            return Err(format!(
                "tenant {tenant} is not bound to queue {queue:?} (notify.bindings.queues: {} tenants)",
                tenants.len()
            ));
        }
        Some(_) => true,
        None => false,
    };
    let (bound, what, fix) = match origin {
        Origin::Source(source) => (
            bindings.sources.get(source),
            format!("source {source:?}"),
            format!("notify.bindings.sources.\"{source}\""),
        ),
        Origin::Drop(Some(key)) => {
            let prefix = bindings
                .drop_prefixes
                .keys()
                .filter(|p| key.starts_with(p.as_str()))
                .max_by_key(|p| p.len());
            match prefix {
                Some(p) => (
                    bindings.drop_prefixes.get(p),
                    format!("drop prefix {p:?}"),
                    format!("notify.bindings.drop_prefixes.\"{p}\""),
                ),
                None => (
                    None,
                    "its drop's key (under no bound prefix)".to_owned(),
                    "notify.bindings.drop_prefixes.\"<prefix>\"".to_owned(),
                ),
            }
        }
        Origin::Drop(None) => (
            None,
            format!(
                "a drop that is not named ({DROP_KEY_ATTRIBUTE} is missing: only notify-ingest sends drop events)"
            ),
            "notify.bindings.drop_prefixes".to_owned(),
        ),
    };
    match bound {
        Some(tenants) if tenants.contains(&tenant) => Ok(()),
        Some(tenants) => Err(format!(
            "tenant {tenant} is not bound to {what} ({fix}: {} tenants): its events may not name it",
            tenants.len()
        )),
        None if queue_bound || bindings.allow_unbound => Ok(()),
        None => Err(format!(
            "{what} is bound to no tenant: add {fix} = [\"<tenant id>\", …] to [notify.bindings], then redrive"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings() -> Bindings {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut bindings = Bindings::default();
        bindings.sources.insert("acme.billing".into(), vec![a]);
        bindings.drop_prefixes.insert("acme/".into(), vec![a]);
        bindings
            .drop_prefixes
            .insert("acme/partner/".into(), vec![b]);
        bindings.queues.insert("partner".into(), vec![b]);
        bindings
    }

    #[test]
    fn an_origin_speaks_only_for_its_bound_tenants() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let bindings = bindings();
        let source = Origin::Source("acme.billing");
        assert_eq!(check(&bindings, source, "incoming", a), Ok(()));
        let refused = check(&bindings, source, "incoming", b).unwrap_err();
        assert!(
            refused.contains("notify.bindings.sources.\"acme.billing\""),
            "{refused}"
        );
        // The longest matching prefix decides.
        assert_eq!(
            check(&bindings, Origin::Drop(Some("acme/x.jsonl")), "incoming", a),
            Ok(())
        );
        assert!(
            check(
                &bindings,
                Origin::Drop(Some("acme/partner/x.jsonl")),
                "incoming",
                a
            )
            .is_err()
        );
        assert_eq!(
            check(
                &bindings,
                Origin::Drop(Some("acme/partner/x.jsonl")),
                "incoming",
                b
            ),
            Ok(())
        );
        // A queue's binding applies on top, and binds an otherwise unbound origin.
        assert!(check(&bindings, source, "partner", a).is_err());
        assert_eq!(
            check(&bindings, Origin::Source("other"), "partner", b),
            Ok(())
        );
    }

    #[test]
    fn an_unbound_origin_is_refused_unless_allowed_and_names_the_binding_to_add() {
        let a = Uuid::from_u128(1);
        let mut bindings = bindings();
        for origin in [
            Origin::Source("other"),
            Origin::Drop(Some("elsewhere/x.jsonl")),
            Origin::Drop(None),
        ] {
            let refused = check(&bindings, origin, "incoming", a).unwrap_err();
            assert!(refused.contains("notify.bindings"), "{refused}");
        }
        bindings.allow_unbound = true;
        assert_eq!(
            check(&bindings, Origin::Source("other"), "incoming", a),
            Ok(())
        );
        assert_eq!(check(&bindings, Origin::Drop(None), "incoming", a), Ok(()));
        // Allowing the unbound never loosens a binding.
        assert!(
            check(
                &bindings,
                Origin::Source("acme.billing"),
                "incoming",
                Uuid::from_u128(2)
            )
            .is_err()
        );
    }
}
