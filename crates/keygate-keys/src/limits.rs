//! Rate limits and usage quotas of API keys, checked in phase 3 once the key
//! is known and before it is exchanged, so a key over its limit costs
//! neither the provider nor the upstream anything. The same machinery
//! limits bearer and session callers per subject and anonymous ones per
//! client address (`rate-limit-subject`, `rate-limit-address`).
//!
//! With `redis-url` the counters live in Redis and every replica shares
//! them (GCRA on Redis's clock; fixed calendar windows for quotas). Without
//! Redis, or while Redis cannot be reached, each process counts in memory:
//! the limit then holds per replica, so across N replicas a key may get up
//! to N times its limit until Redis answers again. Limits never let a
//! request through that the shared counter would refuse while Redis works.
//!
//! Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (the rate limit: burst size, requests left now, seconds
//! until the full burst is back), and `X-Quota-Limit`, `X-Quota-Remaining`,
//! `X-Quota-Reset` for quotas; refusals are 429 with `Retry-After`.

use keygate_core::Reason;
use keygate_core::limits::{Quota, RateLimit};
use keygate_core::unix_now;
use keygate_store::Redis;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Response headers describing a key's limits, as (lower-case name,
/// value) pairs for the proxy to write.
pub type LimitHeaders = Vec<(&'static str, u64)>;

/// Why a request was refused: the client-facing text and when to retry.
#[derive(Debug, Clone)]
pub struct Limited {
    /// E.g. "rate limit of 10/s exceeded".
    pub description: String,
    /// Seconds until a retry can succeed (at least 1).
    pub retry_after: u64,
    /// `rate_limited` or `quota_exceeded`, for logs and metrics.
    pub reason: Reason,
}

/// The rate limiter and quota counter of API keys.
pub struct Limiter {
    redis: Option<Redis>,
    /// Local GCRA state: each key's theoretical arrival time, in µs since `epoch`.
    tats: moka::sync::Cache<String, Arc<AtomicU64>>,
    /// Local quota counters, by key and window.
    counts: moka::sync::Cache<String, Arc<AtomicU64>>,
    epoch: Instant,
    /// Whether the last Redis attempt failed (to warn once per outage).
    degraded: AtomicBool,
}

/// One rate-limit decision, on either counter.
struct Decision {
    allowed: bool,
    /// How far the key's schedule runs ahead of now after this request.
    ahead: Duration,
    retry_after: Duration,
}

impl Limiter {
    /// A limiter counting in `redis` when given, in memory otherwise.
    pub fn new(redis: Option<Redis>) -> Self {
        Limiter {
            redis,
            tats: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            counts: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(32 * 86_400))
                .build(),
            epoch: Instant::now(),
            degraded: AtomicBool::new(false),
        }
    }

    /// Counts one request of key `key_id` against its limits; adds the
    /// limits' headers to `headers`; `Err` when the request must wait.
    pub async fn check(
        &self,
        key_id: &str,
        rate: Option<RateLimit>,
        quota: Option<Quota>,
        headers: &mut LimitHeaders,
    ) -> Result<(), Limited> {
        self.check_for(key_id, "this API key", rate, quota, headers)
            .await
    }

    /// [`Limiter::check`] for any caller: `id` names its counters (keep
    /// the namespaces apart: `sub:…`, `ip:…`), `what` names it in the
    /// refusal ("this API key", "this user").
    pub async fn check_for(
        &self,
        id: &str,
        what: &str,
        rate: Option<RateLimit>,
        quota: Option<Quota>,
        headers: &mut LimitHeaders,
    ) -> Result<(), Limited> {
        let key_id = id;
        if let Some(rate) = rate {
            let d = self.rate(key_id, rate).await;
            let burst_span = rate.interval() * rate.burst;
            let remaining = if d.allowed {
                burst_span.saturating_sub(d.ahead).as_micros() / rate.interval().as_micros().max(1)
            } else {
                0
            };
            push(headers, "ratelimit-limit", u64::from(rate.burst));
            push(headers, "ratelimit-remaining", remaining as u64);
            push(headers, "ratelimit-reset", ceil_secs(d.ahead));
            if !d.allowed {
                return Err(Limited {
                    description: format!("rate limit of {rate} exceeded for {what}"),
                    retry_after: ceil_secs(d.retry_after).max(1),
                    reason: Reason::RateLimited,
                });
            }
        }
        if let Some(quota) = quota {
            let now = unix_now();
            let (window, left) = quota.window(now);
            let (allowed, used) = self.quota(key_id, &window, quota, left).await;
            push(headers, "x-quota-limit", quota.count);
            push(
                headers,
                "x-quota-remaining",
                quota.count.saturating_sub(used),
            );
            push(headers, "x-quota-reset", left);
            if !allowed {
                return Err(Limited {
                    description: format!(
                        "usage quota of {quota} used up for {what}; it refills at the start of the next {}",
                        match quota.period {
                            keygate_core::limits::QuotaPeriod::Day => "day (UTC)",
                            keygate_core::limits::QuotaPeriod::Month => "month (UTC)",
                        }
                    ),
                    retry_after: left.max(1),
                    reason: Reason::QuotaExceeded,
                });
            }
        }
        Ok(())
    }

    async fn rate(&self, key_id: &str, rate: RateLimit) -> Decision {
        if let Some(redis) = &self.redis {
            let key = redis.key(&format!("rl:{key_id}"));
            match redis.gcra(&key, rate.interval(), rate.burst).await {
                Ok(o) => {
                    self.recovered();
                    return Decision {
                        allowed: o.allowed,
                        ahead: o.ahead,
                        retry_after: o.retry_after,
                    };
                }
                Err(e) => self.fall_back(&e),
            }
        }
        self.local_rate(key_id, rate)
    }

    /// GCRA in memory: lock-free, one compare-and-swap per request.
    fn local_rate(&self, key_id: &str, rate: RateLimit) -> Decision {
        let tat = self
            .tats
            .get_with_by_ref(key_id, || Arc::new(AtomicU64::new(0)));
        let interval = rate.interval().as_micros().max(1) as u64;
        let span = interval * u64::from(rate.burst);
        let now = self.epoch.elapsed().as_micros() as u64;
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let new_tat = current.max(now) + interval;
            if new_tat - now > span {
                return Decision {
                    allowed: false,
                    ahead: Duration::from_micros(current.max(now) - now),
                    retry_after: Duration::from_micros(new_tat - now - span),
                };
            }
            match tat.compare_exchange_weak(current, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Decision {
                        allowed: true,
                        ahead: Duration::from_micros(new_tat - now),
                        retry_after: Duration::ZERO,
                    };
                }
                Err(seen) => current = seen,
            }
        }
    }

    async fn quota(&self, key_id: &str, window: &str, quota: Quota, left: u64) -> (bool, u64) {
        let name = format!("q:{key_id}:{window}");
        if let Some(redis) = &self.redis {
            match redis
                .quota(&redis.key(&name), quota.count, Duration::from_secs(left))
                .await
            {
                Ok(outcome) => {
                    self.recovered();
                    return outcome;
                }
                Err(e) => self.fall_back(&e),
            }
        }
        let count = self
            .counts
            .get_with_by_ref(&name, || Arc::new(AtomicU64::new(0)));
        let mut used = count.load(Ordering::Acquire);
        loop {
            if used >= quota.count {
                return (false, used);
            }
            match count.compare_exchange_weak(used, used + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (true, used + 1),
                Err(seen) => used = seen,
            }
        }
    }

    fn fall_back(&self, e: &keygate_store::SharedError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "rate limits are counted per replica until Redis answers again");
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("rate limits are shared through Redis again");
        }
    }
}

fn push(headers: &mut LimitHeaders, name: &'static str, value: u64) {
    headers.push((name, value));
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(headers: &LimitHeaders, name: &str) -> String {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .unwrap()
    }

    #[tokio::test]
    async fn in_memory_limits_allow_the_burst_then_refuse_with_retry_after() {
        let limiter = Limiter::new(None);
        let rate: RateLimit = "2/s burst 3".parse().unwrap();
        for left in [2, 1, 0] {
            let mut h = Vec::new();
            limiter.check("k1", Some(rate), None, &mut h).await.unwrap();
            assert_eq!(header(&h, "ratelimit-limit"), "3");
            assert_eq!(header(&h, "ratelimit-remaining"), left.to_string());
        }
        let mut h = Vec::new();
        let refused = limiter
            .check("k1", Some(rate), None, &mut h)
            .await
            .unwrap_err();
        assert_eq!(refused.reason, Reason::RateLimited);
        assert_eq!(refused.retry_after, 1);
        assert_eq!(header(&h, "ratelimit-remaining"), "0");
        assert!(refused.description.contains("2/s burst 3"));
        // Another key is not affected.
        limiter
            .check("k2", Some(rate), None, &mut Vec::new())
            .await
            .unwrap();
        // After one interval, one more.
        tokio::time::sleep(Duration::from_millis(510)).await;
        limiter
            .check("k1", Some(rate), None, &mut Vec::new())
            .await
            .unwrap();
        assert!(
            limiter
                .check("k1", Some(rate), None, &mut Vec::new())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn in_memory_quotas_count_only_what_they_let_through() {
        let limiter = Limiter::new(None);
        let quota: Quota = "2/day".parse().unwrap();
        let mut h = Vec::new();
        limiter.check("k", None, Some(quota), &mut h).await.unwrap();
        assert_eq!(header(&h, "x-quota-remaining"), "1");
        limiter
            .check("k", None, Some(quota), &mut Vec::new())
            .await
            .unwrap();
        for _ in 0..3 {
            let mut h = Vec::new();
            let refused = limiter
                .check("k", None, Some(quota), &mut h)
                .await
                .unwrap_err();
            assert_eq!(refused.reason, Reason::QuotaExceeded);
            assert_eq!(header(&h, "x-quota-remaining"), "0");
            assert!(refused.retry_after >= 1 && refused.retry_after <= 86_400);
        }
    }

    #[tokio::test]
    async fn no_limits_no_headers() {
        let mut h = Vec::new();
        Limiter::new(None)
            .check("k", None, None, &mut h)
            .await
            .unwrap();
        assert!(h.is_empty());
    }
}
