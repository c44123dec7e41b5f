//! Trace context as it crosses the queue: X-Ray's `AWSTraceHeader` (`Root=1-…;Parent=…;Sampled=…`)
//! and W3C `traceparent`, each read into a remote span context and written back.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Parses an X-Ray trace header, `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=
/// 53995c3f42cd8ad8;Sampled=1`: the root's two hex parts are the 128-bit trace id, `Parent` the
/// span. Without a `Parent` there is no span to link to.
pub fn from_xray(header: &str) -> Option<SpanContext> {
    let (mut root, mut parent, mut sampled) = (None, None, false);
    for part in header.split(';') {
        let (key, value) = part.trim().split_once('=')?;
        match key.trim() {
            "Root" => root = Some(value.trim()),
            "Parent" => parent = Some(value.trim()),
            "Sampled" => sampled = value.trim() == "1",
            _ => {}
        }
    }
    let mut pieces = root?.split('-');
    let (version, time, random) = (pieces.next()?, pieces.next()?, pieces.next()?);
    if version != "1" || time.len() != 8 || random.len() != 24 || pieces.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(&format!("{time}{random}")).ok()?;
    let span = SpanId::from_hex(parent.filter(|p| p.len() == 16)?).ok()?;
    remote(trace, span, sampled)
}

/// The X-Ray header naming `cx` as the parent.
pub fn to_xray(cx: &SpanContext) -> String {
    let trace = cx.trace_id().to_string();
    format!(
        "Root=1-{}-{};Parent={};Sampled={}",
        &trace[..8],
        &trace[8..],
        cx.span_id(),
        u8::from(cx.is_sampled())
    )
}

/// Parses a W3C `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn from_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || parts.next().is_some()
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    remote(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        flags & 1 == 1,
    )
}

/// The W3C `traceparent` of `cx`.
pub fn to_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

pub(super) fn remote(trace: TraceId, span: SpanId, sampled: bool) -> Option<SpanContext> {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let cx = SpanContext::new(trace, span, flags, true, TraceState::default());
    cx.is_valid().then_some(cx)
}

// --- log lines ------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xray_headers_round_trip_and_name_a_span() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let cx = from_xray(header).expect("a valid header");
        assert_eq!(
            cx.trace_id().to_string(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(cx.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(to_xray(&cx), header);
        // Order, spaces and extra keys (Lineage) do not matter.
        let shuffled = " Sampled=0; Lineage=a87bd80c:1|68fd508a:5 ;Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793";
        let cx = from_xray(shuffled).expect("still valid");
        assert!(!cx.is_sampled());
    }

    #[test]
    fn xray_headers_without_a_parent_or_malformed_are_not_links() {
        for header in [
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
            "Root=1-zzzzzzzz-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "garbage",
            "",
        ] {
            assert!(from_xray(header).is_none(), "{header:?}");
        }
    }

    #[test]
    fn traceparents_round_trip() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = from_traceparent(value).expect("valid");
        assert_eq!(to_traceparent(&cx), value);
        assert_eq!(
            from_xray(&to_xray(&cx)).map(|x| (x.trace_id(), x.span_id())),
            Some((cx.trace_id(), cx.span_id()))
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert!(from_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
