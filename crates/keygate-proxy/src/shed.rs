//! Load shedding: a bound on the requests keygate works on at once
//! (`max-concurrent-requests`). Past it, a request is answered at once with
//! 503 `temporarily_unavailable` and `Retry-After`, never queued, parsed
//! further or forwarded, and counted in `keygate_requests_shed_total`. Every
//! wait a request can have — for a dependency, for the upstream — belongs to
//! a request in flight, so this bound is also the bound on queued work.
//!
//! Self-contained and called from one place, the listener's service function
//! (`server.rs`), so it can move with it: [`Shedder::enter`] on arrival, the
//! returned [`InFlight`] guard dropped when the request's response head is
//! ready (a streamed body then counts against `max-connections`, not here).
//! The cost per request is one `fetch_add` and one `fetch_sub` on a shared
//! counter; nothing else is touched unless the request is shed.
//!
//! `/oauth/health` and `/oauth/ready` are never shed ([`exempt`]): they are
//! answered from memory, and an orchestrator that reads an overload as a
//! dead or unready process would restart it or take it out of rotation,
//! moving the load onto the other replicas.

use crate::respond::{Body, RETRY_AFTER_UNAVAILABLE, Refusal};
use http::Response;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The requests a listener works on, and its bound.
#[derive(Debug)]
pub struct Shedder {
    in_flight: AtomicUsize,
    max: usize,
    listener: &'static str,
}

/// One request being worked on; dropping it makes room for another.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while this guard lives"]
pub struct InFlight {
    shedder: Arc<Shedder>,
}

impl Shedder {
    /// A bound of `max` requests at once on `listener` (a metrics label).
    pub fn new(max: usize, listener: &'static str) -> Arc<Self> {
        Arc::new(Shedder {
            in_flight: AtomicUsize::new(0),
            max: max.max(1),
            listener,
        })
    }

    /// Counts a request in, or refuses it (and counts that) when
    /// `max-concurrent-requests` are already in flight.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("keygate_requests_shed_total", "listener" => self.listener)
                .increment(1);
            return None;
        }
        Some(InFlight {
            shedder: Arc::clone(self),
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shedder.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Paths never shed: the liveness and readiness probes.
pub fn exempt(path: &str) -> bool {
    path == "/oauth/health" || path == "/oauth/ready"
}

/// The answer to a shed request: 503 `temporarily_unavailable` with
/// `Retry-After`.
pub fn overloaded() -> Response<Body> {
    Refusal::Unavailable(format!(
        "keygate is at its limit of concurrent requests; retry after {RETRY_AFTER_UNAVAILABLE} s"
    ))
    .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_requests_are_refused_until_one_ends() {
        let shedder = Shedder::new(2, "public");
        let a = shedder.enter().unwrap();
        let _b = shedder.enter().unwrap();
        assert!(shedder.enter().is_none());
        assert_eq!(shedder.in_flight(), 2);
        drop(a);
        assert_eq!(shedder.in_flight(), 1);
        assert!(shedder.enter().is_some());
    }

    #[test]
    fn the_answer_is_503_with_retry_after() {
        let resp = overloaded();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    #[test]
    fn probes_are_exempt() {
        assert!(exempt("/oauth/health") && exempt("/oauth/ready"));
        assert!(!exempt("/oauth/metrics") && !exempt("/api"));
    }
}
