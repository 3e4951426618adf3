//! OpenTelemetry tracing (off unless `otel-endpoint` is set; the binary
//! installs the exporter). Each request on the main listener gets a
//! server span, target `keygate::trace`, continuing the caller's W3C
//! `traceparent`/`tracestate` when `otel-trace-context` trusts the caller,
//! with the outcome of the phases as attributes (`http.route`,
//! `keygate.upstream`, `keygate.decision`, `keygate.reason`, the status).
//! Provider, store and Redis calls are child spans (instrumented where they
//! are made), and the upstream gets keygate's span as its parent in a new
//! `traceparent`: the caller's never reaches it. Without `otel-endpoint` the
//! spans are disabled where they are declared and cost next to nothing.

use crate::context::RequestCtx;
use crate::gateway::Gateway;
use http::{HeaderMap, Request, StatusCode};
use keygate_core::config::TraceContextFrom;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use std::net::SocketAddr;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace-context headers keygate reads and writes.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The request's server span, its parent taken from the caller's headers
/// when allowed. Disabled when tracing is off.
pub fn request_span<B>(gw: &Gateway, req: &Request<B>, peer: SocketAddr) -> Span {
    if !gw.tracing {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "keygate::trace",
        "request",
        otel.name = %req.method(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %req.method(),
        url.path = Empty,
        http.route = Empty,
        http.response.status_code = Empty,
        client.address = %peer.ip(),
        keygate.upstream = Empty,
        keygate.decision = Empty,
        keygate.reason = Empty,
    );
    let continue_from_caller = match gw.config.otel_trace_context {
        TraceContextFrom::All => true,
        TraceContextFrom::TrustedProxies => gw.trusted_peer(peer.ip()),
        TraceContextFrom::None => false,
    };
    if continue_from_caller && req.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the phases' outcome on the request's span.
pub fn record(span: &Span, gw: &Gateway, ctx: &RequestCtx) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.name", format!("{} {}", ctx.method, ctx.route));
    span.record("url.path", ctx.path.as_str());
    span.record("http.route", ctx.route.as_str());
    span.record("keygate.decision", ctx.decision.as_str());
    span.record("keygate.reason", ctx.reason.as_str());
    if let Some(name) = gw.sites.get(ctx.site).and_then(|s| s.name.as_deref()) {
        span.record("keygate.upstream", name);
    }
}

/// Records the response status (a 5xx marks the span as an error).
pub fn finish(span: &Span, status: StatusCode) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Replaces the trace context of an upstream request with the current
/// span's (the request span, or the caller's trace when tracing is off:
/// then the headers pass untouched).
pub fn inject(gw: &Gateway, headers: &mut HeaderMap) {
    if !gw.tracing {
        return;
    }
    for name in TRACE_HEADERS {
        headers.remove(name);
    }
    let cx = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
    if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
        headers.remove("tracestate");
    }
}
