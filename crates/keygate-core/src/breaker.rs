//! [`Breaker`]: one circuit breaker shape for every dependency keygate calls
//! on a request's path — Redis, the key store (PostgreSQL) and the OpenID
//! provider — so that an outage costs one timeout, not one per request.
//!
//! ```text
//!            failure                 open-for elapsed,
//!   closed ───────────► open ───────────────────────► probing
//!     ▲                   ▲     the next call is the probe  │
//!     │                   └──────── probe failed ───────────┤
//!     └───────────────────────────── probe succeeded ───────┘
//! ```
//!
//! - **closed**: every call goes through. Its cost is one atomic load.
//! - **open**: every call fails at once ([`Open`]), for `open_for`.
//! - **probing** (half-open): after `open_for`, exactly one call goes
//!   through — the probe — and every other call still fails at once. The
//!   probe's success closes the breaker; its failure opens it for another
//!   `open_for`; a probe dropped unfinished (its request was cancelled) lets
//!   the next call probe.
//!
//! Only a probe closes the breaker: a call that started while it was closed
//! and succeeds late proves little about now. So while a dependency hangs,
//! at most one request at a time waits for it; the rest get their answer
//! (the degraded behaviour, or 503) at once. When it returns, the first call
//! after the open window closes the breaker: keygate recovers within
//! `open_for` plus one round trip.
//!
//! The breaker applies no timeout itself: each caller bounds its own call
//! (`redis-timeout`, `store-query-timeout`, `openid-provider-timeout`) and
//! reports the outcome on the [`Call`] it was given.
//!
//! Metrics (labelled `dependency`): `keygate_dependency_probes_total` (calls
//! let through to test a failing dependency), `keygate_dependency_fail_fast_total`
//! (calls refused at once) and the gauge `keygate_dependency_up` (1 while
//! closed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The state word: closed.
const CLOSED: u64 = 0;
/// The state word: a probe is in flight.
const PROBING: u64 = u64::MAX;
// Anything else: open until that many milliseconds after `epoch`.

/// A circuit breaker for one dependency. Cheap to call while closed (one
/// atomic load); share it by reference or in an `Arc`.
#[derive(Debug)]
pub struct Breaker {
    name: &'static str,
    open_for_ms: u64,
    state: AtomicU64,
    epoch: Instant,
    probes: AtomicU64,
    fail_fast: AtomicU64,
}

/// The breaker is open (or another call is probing): the dependency is
/// failing, and this call was refused without trying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} failed recently; failing fast until a probe succeeds")]
pub struct Open(pub &'static str);

/// A call let through by the breaker. Report how it went with
/// [`Call::succeeded`] or [`Call::failed`]; dropping it unreported is
/// neutral (a probe dropped that way lets the next call probe).
#[derive(Debug)]
#[must_use = "report the call's outcome with succeeded() or failed()"]
pub struct Call<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

/// What a breaker has done so far (for tests and health output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Calls let through to test a failing dependency.
    pub probes: u64,
    /// Calls refused at once.
    pub fail_fast: u64,
}

impl Breaker {
    /// A closed breaker for the dependency `name` (a metrics label:
    /// `redis`, `store`, `provider`) that stays open for `open_for` after a
    /// failure before it lets one probe through.
    pub fn new(name: &'static str, open_for: Duration) -> Self {
        metrics::gauge!("keygate_dependency_up", "dependency" => name).set(1.0);
        Breaker {
            name,
            open_for_ms: u64::try_from(open_for.as_millis())
                .unwrap_or(u64::MAX / 2)
                .clamp(1, u64::MAX / 2),
            state: AtomicU64::new(CLOSED),
            epoch: Instant::now(),
            probes: AtomicU64::new(0),
            fail_fast: AtomicU64::new(0),
        }
    }

    /// The dependency's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn now_ms(&self) -> u64 {
        // +1: a deadline is never CLOSED (0), even in the first millisecond.
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1)
            .min(u64::MAX / 2)
    }

    /// Lets a call through, or refuses it at once while the dependency is
    /// failing. After the open window, the first caller becomes the probe
    /// and every other caller is refused until the probe reports.
    pub fn enter(&self) -> Result<Call<'_>, Open> {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Ok(Call {
                breaker: self,
                probe: false,
                settled: false,
            });
        }
        if state != PROBING
            && self.now_ms() >= state
            && self
                .state
                .compare_exchange(state, PROBING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.probes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("keygate_dependency_probes_total", "dependency" => self.name)
                .increment(1);
            return Ok(Call {
                breaker: self,
                probe: true,
                settled: false,
            });
        }
        self.fail_fast.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("keygate_dependency_fail_fast_total", "dependency" => self.name)
            .increment(1);
        Err(Open(self.name))
    }

    /// Whether the breaker is closed: the last probe (or every call since
    /// the last failure) succeeded.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Counts so far.
    pub fn stats(&self) -> BreakerStats {
        BreakerStats {
            probes: self.probes.load(Ordering::Relaxed),
            fail_fast: self.fail_fast.load(Ordering::Relaxed),
        }
    }

    fn open(&self, cause: &dyn std::fmt::Display, probe: bool) {
        let until = self.now_ms().saturating_add(self.open_for_ms);
        if probe {
            self.state.store(until, Ordering::Release);
            tracing::debug!(dependency = self.name, error = %cause, "probe failed; still failing fast");
            return;
        }
        // A call that is not the probe never takes the decision from one.
        let before = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != PROBING).then_some(until)
            });
        if before == Ok(CLOSED) {
            metrics::gauge!("keygate_dependency_up", "dependency" => self.name).set(0.0);
            tracing::warn!(
                dependency = self.name,
                error = %cause,
                open_for_ms = self.open_for_ms,
                "dependency failed; failing fast, one probe at a time, until it answers again"
            );
        }
    }

    fn close(&self) {
        self.state.store(CLOSED, Ordering::Release);
        metrics::gauge!("keygate_dependency_up", "dependency" => self.name).set(1.0);
        tracing::info!(dependency = self.name, "dependency answers again");
    }
}

impl Call<'_> {
    /// Whether this call is the probe of a failing dependency.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The dependency answered.
    pub fn succeeded(mut self) {
        self.settled = true;
        if self.probe {
            self.breaker.close();
        }
    }

    /// The dependency failed or did not answer in time: calls fail fast for
    /// the open window. `cause` goes to the log once per outage.
    pub fn failed(mut self, cause: &dyn std::fmt::Display) {
        self.settled = true;
        self.breaker.open(cause, self.probe);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            // Cancelled: no verdict. The window is over, so the next call probes.
            let now = self.breaker.now_ms();
            self.breaker.state.store(now, Ordering::Release);
        }
    }
}

/// One value per key: from `cache`, or made by `init` (and cached) when the
/// cache has none. While `dependency_up`, concurrent callers for one key
/// share one `init`. While the dependency's breaker is not closed they do
/// not: each runs its own `init`, which asks the breaker, so that all but
/// the probe are answered at once instead of waiting for the probe's call.
pub async fn shared_while_up<K, V, S, E, F>(
    cache: &moka::future::Cache<K, V, S>,
    key: K,
    dependency_up: bool,
    init: F,
) -> Result<V, std::sync::Arc<E>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: std::future::Future<Output = Result<V, E>>,
{
    if dependency_up {
        return cache.try_get_with(key, init).await;
    }
    if let Some(cached) = cache.get(&key).await {
        return Ok(cached);
    }
    let made = init.await.map_err(std::sync::Arc::new)?;
    cache.insert(key, made.clone()).await;
    Ok(made)
}

/// The keys of calls in flight, for a caller that must never make two
/// calls for one key at once (a refresh token that may rotate), yet must
/// not make a request wait for another's probe of a failing dependency:
/// a request that cannot [`InFlight::claim`] the key while the breaker is
/// not closed is answered at once.
#[derive(Debug)]
pub struct InFlight<K> {
    keys: std::sync::Mutex<std::collections::HashSet<K>>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            keys: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone> InFlight<K> {
    /// Marks `key` in flight until the returned guard is dropped; `None`
    /// when another call holds it.
    pub fn claim(&self, key: &K) -> Option<Claim<'_, K>> {
        let claimed = self.keys.lock().ok()?.insert(key.clone());
        match claimed {
            true => Some(Claim {
                set: self,
                key: key.clone(),
            }),
            false => None,
        }
    }
}

/// A key claimed in an [`InFlight`] set, released when dropped.
#[derive(Debug)]
#[must_use = "the key is released when the claim is dropped"]
pub struct Claim<'a, K: Eq + std::hash::Hash> {
    set: &'a InFlight<K>,
    key: K,
}

impl<K: Eq + std::hash::Hash> Drop for Claim<'_, K> {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.set.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn closed_lets_every_call_through() {
        let b = Breaker::new("test", Duration::from_millis(50));
        for _ in 0..3 {
            let call = b.enter().unwrap();
            assert!(!call.is_probe());
            call.succeeded();
        }
        assert!(b.is_closed());
        assert_eq!(b.stats(), BreakerStats::default());
    }

    #[test]
    fn a_failure_opens_it_and_one_probe_at_a_time_goes_through() {
        let b = Breaker::new("test", Duration::from_millis(30));
        b.enter().unwrap().failed(&"boom");
        assert!(!b.is_closed());
        assert_eq!(b.enter().unwrap_err(), Open("test"));
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.enter().unwrap();
        assert!(probe.is_probe());
        for _ in 0..10 {
            assert!(b.enter().is_err(), "one probe at a time");
        }
        probe.failed(&"still down");
        assert!(b.enter().is_err(), "open again for the window");
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.enter().unwrap();
        assert!(probe.is_probe());
        probe.succeeded();
        assert!(b.is_closed());
        assert!(!b.enter().unwrap().is_probe());
        assert_eq!(
            b.stats(),
            BreakerStats {
                probes: 2,
                fail_fast: 12
            }
        );
    }

    #[test]
    fn a_dropped_probe_lets_the_next_call_probe() {
        let b = Breaker::new("test", Duration::from_millis(1));
        b.enter().unwrap().failed(&"boom");
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.enter().unwrap();
        assert!(probe.is_probe());
        drop(probe);
        let next = b.enter().unwrap();
        assert!(next.is_probe());
        next.succeeded();
        assert!(b.is_closed());
    }

    #[test]
    fn calls_that_are_not_the_probe_never_decide_for_it() {
        let b = Breaker::new("test", Duration::from_millis(1));
        // Two calls let through while closed; the first fails.
        let (early, late) = (b.enter().unwrap(), b.enter().unwrap());
        early.failed(&"boom");
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.enter().unwrap();
        // The late call's success does not close it, nor would its failure
        // open a second probe.
        late.succeeded();
        assert!(!b.is_closed());
        assert!(b.enter().is_err());
        probe.succeeded();
        assert!(b.is_closed());
    }

    #[test]
    fn many_threads_get_one_probe() {
        let b = std::sync::Arc::new(Breaker::new("test", Duration::from_millis(1)));
        b.enter().unwrap().failed(&"boom");
        std::thread::sleep(Duration::from_millis(5));
        let probes = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, probes) = (b.clone(), probes.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Ok(call) = b.enter() {
                            probes.fetch_add(1, Ordering::Relaxed);
                            // Held, never reported: still the only probe.
                            std::mem::forget(call);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(probes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_key_is_claimed_once_until_its_claim_is_dropped() {
        let set = InFlight::default();
        let first = set.claim(&"session");
        assert!(first.is_some());
        assert!(set.claim(&"session").is_none(), "claimed twice");
        // A refused claim leaves the first one standing.
        assert!(set.claim(&"session").is_none());
        let other = set.claim(&"another");
        assert!(other.is_some());
        drop(first);
        assert!(set.claim(&"session").is_some(), "not released");
    }
}
