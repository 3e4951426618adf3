//! Phase 6, **log**: one structured access-log line and the request
//! metrics.

use crate::context::RequestCtx;

/// Phase 6: one structured line and the metrics for the request.
pub fn log(ctx: &RequestCtx, status: http::StatusCode) {
    let elapsed = ctx.started.elapsed();
    let decision = ctx.decision.as_str();
    metrics::counter!(
        "keygate_requests_total",
        "route" => ctx.route.clone(),
        "decision" => decision,
        "reason" => ctx.reason.as_str(),
    )
    .increment(1);
    metrics::histogram!("keygate_request_duration_seconds", "decision" => decision)
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "keygate::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        client = %ctx.peer.ip(),
        method = %ctx.method,
        path = %ctx.path,
        route = %ctx.route,
        status = status.as_u16(),
        decision,
        reason = %ctx.reason,
        subject = ctx.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or(""),
        duration_us = elapsed.as_micros() as u64,
    );
}
