//! The record a key's keyed hash names, and everything this process
//! remembers about keys: the record cache (`record-cache-ttl`), the stale
//! copies used through a store outage, the negative cache of refused keys
//! (here and, with Redis, shared by every replica), and the store's change
//! feed that keeps them true.

use crate::error::{KeyError, KeyRefusal, Lookup};
use crate::state::{ApiKeys, Found};
use keygate_core::breaker::shared_while_up;
use keygate_core::encoding::hex;
use keygate_core::keys::KeyKind;
use keygate_core::limits::{KeyLimit, Quota, RateLimit};
use keygate_core::unix_now;
use keygate_store::{HashMatch, KeyChange, KeyRecord, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Redis key of a refused key (by its keyed hash, never the key).
pub(crate) fn negative_key(hash: &[u8; 32]) -> String {
    format!("n:{}", hex(hash))
}

/// Redis key of a key's exchanged token: the record and which of its keys
/// (current or, during a rotation, previous) it was exchanged for.
pub(crate) fn exchange_key(id: &str, hash: &[u8; 32]) -> String {
    format!("x:{id}:{}", hex(&hash[..8]))
}

impl ApiKeys {
    /// The record a key's hash names: from the record cache, else (unless
    /// the shared negative cache knows the key as refused) from the store.
    /// While the store cannot be reached, the record as last read is used for
    /// a key whose exchanged token is still cached (then `true`); anything
    /// else is 503.
    pub(crate) async fn record(&self, hash: &[u8; 32]) -> Result<(Arc<Found>, bool), KeyError> {
        // The usual case: cached, and no lookup future is even built.
        if let Some(found) = self.records.get(hash).await {
            return Ok((found, false));
        }
        Box::pin(self.record_from_store(hash)).await
    }

    /// The record from the store, for [`ApiKeys::record`]: concurrent
    /// lookups of one key share one query, except while the store is
    /// failing. Then each asks the store's breaker, which lets one probe and
    /// answers the rest at once, where sharing would make them all wait
    /// for the probe.
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Arc<Found>, Arc<Lookup>> {
        let up = self.store.is_up();
        shared_while_up(&self.records, *hash, up, self.lookup_once(hash)).await
    }

    /// One lookup: the shared negative cache, then the store.
    async fn lookup_once(&self, hash: &[u8; 32]) -> Result<Arc<Found>, Lookup> {
        if let Some(refused) = self.shared_refusal(hash).await {
            return Err(Lookup::Refused(refused));
        }
        match self.store.find_by_hash(hash, unix_now() as i64).await {
            Ok(Some((record, matched))) => {
                let (rate, quota) = self.limits_of(&record).map_err(Lookup::Store)?;
                Ok(Arc::new(Found {
                    record,
                    previous: matches!(matched, HashMatch::Previous),
                    rate,
                    quota,
                }))
            }
            Ok(None) => Err(Lookup::Refused(KeyRefusal::Unknown)),
            Err(e) => Err(Lookup::Store(e)),
        }
    }

    /// [`ApiKeys::record`] when the record is not cached.
    async fn record_from_store(&self, hash: &[u8; 32]) -> Result<(Arc<Found>, bool), KeyError> {
        let found = self.lookup(hash).await;
        match found {
            Ok(found) => {
                self.stale.insert(*hash, Arc::clone(&found)).await;
                Ok((found, false))
            }
            Err(e) => match &*e {
                Lookup::Refused(refused) => {
                    self.remember_refusal(*hash, refused.clone()).await;
                    Err(refused.clone().into())
                }
                Lookup::Store(e) => {
                    if let Some(stale) = self.stale.get(hash).await
                        && self.tokens.contains_key(&stale.record.id)
                    {
                        tracing::debug!(error = %e, key_id = %stale.record.id, "API-key store unavailable; using the cached record and token");
                        return Ok((stale, true));
                    }
                    if e.is_unavailable() {
                        // The store's breaker warned once for the outage.
                        tracing::debug!(error = %e, "API-key store lookup failed");
                    } else {
                        tracing::warn!(error = %e, "API-key store lookup failed");
                    }
                    Err(KeyError::StoreUnavailable)
                }
            },
        }
    }

    /// The rate limit and quota in force for a record: its own, else its
    /// kind's default. A stored value that does not parse (written around
    /// keygate) makes the key unusable, never unlimited.
    fn limits_of(
        &self,
        record: &KeyRecord,
    ) -> Result<(Option<RateLimit>, Option<Quota>), StoreError> {
        let (rate, quota) = match record.kind {
            KeyKind::Service => (self.config.rate_limit_service, self.config.quota_service),
            KeyKind::Personal => (self.config.rate_limit_personal, self.config.quota_personal),
        };
        let invalid = |e: String| StoreError::Corrupt {
            id: record.id.clone(),
            reason: format!("invalid stored limit: {e}"),
        };
        Ok((
            KeyLimit::<RateLimit>::parse(record.rate_limit.as_deref())
                .map_err(invalid)?
                .or_default(rate),
            KeyLimit::<Quota>::parse(record.quota.as_deref())
                .map_err(invalid)?
                .or_default(quota),
        ))
    }

    /// Remembers a refused key here and, with Redis, for every replica.
    pub(crate) async fn remember_refusal(&self, hash: [u8; 32], refused: KeyRefusal) {
        if let Some(redis) = &self.redis {
            let ttl = self.config.negative_cache_ttl;
            if let Err(e) = redis
                .set(
                    &redis.key(&negative_key(&hash)),
                    refused.encode().as_bytes(),
                    ttl,
                )
                .await
            {
                tracing::debug!(error = %e, "cannot share a refused API key");
            }
        }
        self.negative.insert(hash, refused).await;
    }

    /// What the shared negative cache says of a key; `None` when it says
    /// nothing or Redis cannot be asked (the store decides then).
    pub(crate) async fn shared_refusal(&self, hash: &[u8; 32]) -> Option<KeyRefusal> {
        let redis = self.redis.as_ref()?;
        match redis.get(&redis.key(&negative_key(hash))).await {
            Ok(Some(v)) => KeyRefusal::decode(std::str::from_utf8(&v).ok()?),
            _ => None,
        }
    }

    /// Drops what this process cached about a changed key, so its next use
    /// reads the store: called for every change PostgreSQL announces.
    pub(crate) async fn forget_changed(&self, id: &str, hashes: &[Vec<u8>]) {
        for hash in hashes {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                self.negative.invalidate(&hash).await;
            }
        }
        self.tokens.invalidate(id).await;
    }

    /// Follows the changes the store announces (PostgreSQL; other backends
    /// announce none, and other processes' changes are then seen within
    /// `record-cache-ttl`). Runs until the process ends.
    pub async fn watch_store_changes(self: Arc<Self>) {
        let mut listener = match self.store.listen_changes().await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for key changes yet; retrying");
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(Some(l)) = self.store.listen_changes().await {
                        self.resync().await;
                        break l;
                    }
                }
            }
        };
        let mut failing = false;
        loop {
            match listener.next().await {
                Ok(KeyChange::Key { id, hashes }) => self.forget_changed(&id, &hashes).await,
                Ok(_) => {
                    if failing {
                        tracing::info!("listening for key changes again");
                        failing = false;
                    }
                    self.resync().await;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "lost the key-change listener; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Changes may have been missed: forget every record, so each key's next
    /// use reads the store.
    pub(crate) async fn resync(&self) {
        self.records.invalidate_all();
        self.negative.invalidate_all();
    }

    pub(crate) async fn forget(&self, record: &KeyRecord) {
        let mut exchanged = Vec::new();
        for hash in [Some(&record.key_hash), record.previous_hash.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                self.remember_refusal(hash, KeyRefusal::Revoked).await;
                exchanged.push(exchange_key(&record.id, &hash));
            }
        }
        self.tokens.invalidate(&record.id).await;
        if let Some(redis) = &self.redis {
            let keys: Vec<String> = exchanged.iter().map(|k| redis.key(k)).collect();
            let _ = redis.del(&keys).await;
        }
    }

    pub(crate) async fn forget_record_cache(&self, record: &KeyRecord) {
        for hash in [Some(&record.key_hash), record.previous_hash.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                // A renewed key may have been remembered as expired.
                self.negative.invalidate(&hash).await;
                if let Some(redis) = &self.redis {
                    let _ = redis.del(&[redis.key(&negative_key(&hash))]).await;
                }
            }
        }
    }
}
