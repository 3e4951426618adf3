//! OpenTelemetry tracing on the real binary, exported over OTLP/HTTP to a
//! receiver in the test: the request's server span continues the caller's
//! W3C `traceparent` (from a trusted proxy), a provider call is its child,
//! and the upstream gets a `traceparent` whose parent is keygate's span, not
//! the caller's. An untrusted caller's trace context is not continued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use serde_json::Value;
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn config(
    idp: &Idp,
    upstream: &Upstream,
    otlp: &OtlpReceiver,
    extra: &str,
) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "listen: 127.0.0.1:0\ndiscovery-url: {}\nclient-id: keygate\nclient-secret: keygate-secret\n\
             upstream-url: {}\nlog-format: json\notel-endpoint: {}\notel-service-name: keygate-test\n\
             token-introspection: always\n{extra}",
            idp.issuer,
            upstream.url(),
            otlp.url()
        ),
    )
    .unwrap();
    file
}

/// Waits until the receiver holds a span `want` accepts.
async fn span(otlp: &OtlpReceiver, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(s) = otlp.spans().into_iter().find(|s| want(s)) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {what} span among {:#?}", otlp.spans());
}

/// keygate (with `extra`) in front of an echo upstream, exporting to a
/// receiver: one GET with the caller's trace context, then a stop, which
/// flushes the spans. The receiver and what the upstream saw.
async fn one_traced_request(extra: &str) -> (OtlpReceiver, Echo) {
    let (idp, upstream, otlp) = (
        Idp::start().await,
        Upstream::start().await,
        OtlpReceiver::start().await,
    );
    let file = config(&idp, &upstream, &otlp, extra);
    let mut keygate = KeygateProcess::start(env!("CARGO_BIN_EXE_keygate"), file.path()).await;
    let token = idp.token("alice").await;
    let resp = client()
        .get(keygate.url("/api/items"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=caller")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = Echo(resp.json().await.unwrap());
    assert!(keygate.stop(), "keygate exited with an error");
    (otlp, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_continue_a_trusted_callers_trace_and_reach_the_collector() {
    let (otlp, seen) = one_traced_request("trusted-proxies: [127.0.0.1/32]\n").await;

    let request = span(&otlp, "request", |s| {
        s["traceId"] == TRACE_ID && s["parentSpanId"] == CALLER_SPAN
    })
    .await;
    assert_eq!(request["kind"], 2, "a server span: {request}");
    assert_eq!(
        attribute(&request, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(&request, "url.path").as_deref(),
        Some("/api/items")
    );
    assert_eq!(
        attribute(&request, "keygate.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(attribute(&request, "keygate.reason").as_deref(), Some("ok"));
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("200")
    );
    let service = request["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(Value::from("keygate-test")));
    let request_span = request["spanId"].as_str().unwrap().to_owned();

    // The provider's introspection, a child of the request.
    let child = span(&otlp, "provider", |s| {
        s["traceId"] == TRACE_ID && s["parentSpanId"] == request_span.as_str()
    })
    .await;
    assert_eq!(child["name"], "provider POST", "{child}");

    // The upstream's parent is keygate's span, in the caller's trace (whose
    // tracestate goes along, as W3C Trace Context has it).
    let traceparent = seen.header("traceparent").unwrap();
    assert_eq!(traceparent, format!("00-{TRACE_ID}-{request_span}-01"));
    assert_eq!(seen.header("tracestate").as_deref(), Some("vendor=caller"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_callers_trace_context_starts_a_new_trace() {
    let (otlp, seen) = one_traced_request("").await;
    assert!(
        seen.header("tracestate").is_none(),
        "the caller's tracestate is dropped"
    );
    let request = span(&otlp, "request", |s| s["kind"] == 2).await;
    assert_ne!(request["traceId"], TRACE_ID);
    assert!(
        request["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{request}"
    );
    let traceparent = seen.header("traceparent").unwrap();
    assert!(!traceparent.contains(TRACE_ID), "{traceparent}");
}
