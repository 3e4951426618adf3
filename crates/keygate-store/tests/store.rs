//! One behavioural suite for [`KeyStore`], run against both backends: SQLite in
//! a temporary directory and a real PostgreSQL server started on loopback for
//! each test (Debian's `postgresql` package; `./dev/test.sh` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_store::{
    AuditEntry, Backing, HashMatch, KeyFilter, KeyKind, KeyRecord, KeyStore, StoreError,
    StoreTimeouts,
};
use keygate_testkit::PgServer;
use sqlx::Connection;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A store under test, its URL (to connect again) and what keeps it alive.
struct Fixture {
    store: KeyStore,
    url: String,
    _guard: Guard,
}

enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] PgServer),
}

async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("keygate-store-")
        .tempdir()
        .unwrap();
    let url = format!("sqlite://{}/keys.db", dir.path().display());
    let store = KeyStore::connect(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    Fixture {
        store,
        url,
        _guard: Guard::Sqlite(dir),
    }
}

async fn postgres_fixture() -> Fixture {
    let server = PgServer::start().await;
    let url = server.create_database("keygate").await;
    let store = KeyStore::connect(&url).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    Fixture {
        store,
        url,
        _guard: Guard::Postgres(server),
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` for every case of the suite.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::sqlite_fixture().await;
                    super::$name(&f).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::postgres_fixture().await;
                    super::$name(&f).await;
                }
            )*
        }
    };
}

suite!(
    insert_get_round_trips_every_field,
    find_by_hash_current_previous_and_unknown,
    duplicate_hash_or_id_is_an_error,
    list_filters_and_orders_newest_first,
    revoke_clears_secrets_keeps_audit_and_is_once_only,
    rotate_keeps_old_key_for_grace_period,
    renew_sets_expiry,
    update_secret_is_compare_and_swap,
    update_secret_concurrent_exactly_one_wins,
    touch_batches_keep_the_latest_use,
    keepalive_due_and_claims,
    audit_trail_in_order_with_actors,
    migrations_are_idempotent,
);

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

/// A minimal record: no secret, no restrictions, no expiry.
fn record(owner: &str, kind: KeyKind, created_at: i64) -> KeyRecord {
    KeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        prefix: format!("{}AbC1", kind.prefix()),
        kind,
        owner: owner.to_owned(),
        description: String::new(),
        client_id: None,
        scopes: vec![],
        allowed_methods: vec![],
        allowed_prefixes: vec![],
        allowed_cidrs: vec![],
        key_hash: random_bytes(32),
        sealed_secret: None,
        secret_version: 0,
        previous_hash: None,
        previous_sealed_secret: None,
        previous_valid_until: None,
        created_at,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
        rate_limit: None,
        quota: None,
        backing: match kind {
            KeyKind::Service => Backing::ClientCredentials,
            KeyKind::Personal => Backing::OfflineSession,
        },
    }
}

/// A record with every field set.
fn full_record() -> KeyRecord {
    KeyRecord {
        description: "nightly export — ünïcode".into(),
        client_id: Some("reporting-svc".into()),
        scopes: vec!["openid".into(), "reports:read".into()],
        allowed_methods: vec!["GET".into(), "HEAD".into()],
        allowed_prefixes: vec!["/api/reports/".into()],
        allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        sealed_secret: Some(random_bytes(60)),
        secret_version: 7,
        previous_hash: Some(random_bytes(32)),
        previous_sealed_secret: Some(random_bytes(60)),
        previous_valid_until: Some(1_700_000_500),
        expires_at: Some(1_800_000_000),
        last_used_at: Some(1_700_000_100),
        revoked_at: None,
        rate_limit: Some("100/s burst 200".into()),
        quota: Some("10000/day".into()),
        ..record("reporting", KeyKind::Service, 1_700_000_000)
    }
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

async fn insert_get_round_trips_every_field(f: &Fixture) {
    let full = full_record();
    f.store.insert(&full, "cli").await.unwrap();
    assert_eq!(f.store.get(&full.id).await.unwrap(), Some(full.clone()));

    let mut revoked = record("f:1234:alice", KeyKind::Personal, 1_700_000_001);
    revoked.revoked_at = Some(1_700_000_002);
    f.store.insert(&revoked, "alice").await.unwrap();
    assert_eq!(f.store.get(&revoked.id).await.unwrap(), Some(revoked));

    let minimal = record("f:1234:bob", KeyKind::Personal, 1_700_000_003);
    f.store.insert(&minimal, "bob").await.unwrap();
    assert_eq!(f.store.get(&minimal.id).await.unwrap(), Some(minimal));

    let mut granted = record("f:1234:carol", KeyKind::Personal, 1_700_000_004);
    granted.backing = Backing::JwtGrant;
    granted.sealed_secret = Some(random_bytes(40));
    f.store.insert(&granted, "carol").await.unwrap();
    assert_eq!(
        f.store.get(&granted.id).await.unwrap(),
        Some(granted.clone())
    );
    let audit = f.store.audit(&granted.id).await.unwrap();
    assert!(audit[0].detail.ends_with("backing=jwt-grant"), "{audit:?}");

    // A backing that does not fit the kind is never stored.
    let mut misfit = record("svc", KeyKind::Service, 1_700_000_005);
    misfit.backing = Backing::JwtGrant;
    assert!(matches!(
        f.store.insert(&misfit, "cli").await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(f.store.get(&misfit.id).await.unwrap(), None);

    assert_eq!(f.store.get("no-such-id").await.unwrap(), None);
}

async fn find_by_hash_current_previous_and_unknown(f: &Fixture) {
    let now = 1_700_000_000;
    let full = full_record();
    f.store.insert(&full, "cli").await.unwrap();
    let previous = full.previous_hash.clone().unwrap();
    let grace_end = full.previous_valid_until.unwrap();

    let (rec, how) = f
        .store
        .find_by_hash(&full.key_hash, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rec, how), (full.clone(), HashMatch::Current));
    // The current key does not depend on the grace period.
    let (_, how) = f
        .store
        .find_by_hash(&full.key_hash, grace_end + 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(how, HashMatch::Current);

    let (rec, how) = f
        .store
        .find_by_hash(&previous, grace_end - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.id.as_str(), how),
        (full.id.as_str(), HashMatch::Previous)
    );
    // Grace is over at previous_valid_until.
    assert!(
        f.store
            .find_by_hash(&previous, grace_end)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.store
            .find_by_hash(&previous, grace_end + 1)
            .await
            .unwrap()
            .is_none()
    );

    assert!(
        f.store
            .find_by_hash(&random_bytes(32), now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(f.store.find_by_hash(b"", now).await.unwrap().is_none());

    // Revoked and expired records are returned; the caller refuses them.
    let mut expired = record("svc", KeyKind::Service, now - 100);
    expired.expires_at = Some(now - 1);
    f.store.insert(&expired, "cli").await.unwrap();
    let (rec, how) = f
        .store
        .find_by_hash(&expired.key_hash, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rec, how), (expired, HashMatch::Current));

    let revoked = record("svc", KeyKind::Service, now - 50);
    f.store.insert(&revoked, "cli").await.unwrap();
    assert!(f.store.revoke(&revoked.id, "admin", now).await.unwrap());
    let (rec, how) = f
        .store
        .find_by_hash(&revoked.key_hash, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rec.revoked_at, how), (Some(now), HashMatch::Current));
}

async fn duplicate_hash_or_id_is_an_error(f: &Fixture) {
    let first = record("svc", KeyKind::Service, 100);
    f.store.insert(&first, "cli").await.unwrap();

    let mut same_hash = record("other", KeyKind::Personal, 101);
    same_hash.key_hash = first.key_hash.clone();
    let err = f.store.insert(&same_hash, "cli").await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    // Nothing of the failed insert remains, not even its audit line.
    assert_eq!(f.store.get(&same_hash.id).await.unwrap(), None);
    assert!(f.store.audit(&same_hash.id).await.unwrap().is_empty());

    let mut same_id = record("other", KeyKind::Service, 102);
    same_id.id = first.id.clone();
    let err = f.store.insert(&same_id, "cli").await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(f.store.get(&first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(f.store.audit(&first.id).await.unwrap().len(), 1);
}

async fn list_filters_and_orders_newest_first(f: &Fixture) {
    let a1 = record("alice", KeyKind::Personal, 100);
    let s1 = record("billing", KeyKind::Service, 200);
    let a2 = record("alice", KeyKind::Personal, 300);
    let a3 = record("alice", KeyKind::Service, 400);
    let b1 = record("bob", KeyKind::Personal, 500);
    for r in [&a1, &s1, &a2, &a3, &b1] {
        f.store.insert(r, "cli").await.unwrap();
    }
    assert!(f.store.revoke(&a2.id, "alice", 600).await.unwrap());
    let ids = |v: Vec<KeyRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();

    let all = f.store.list(&KeyFilter::default()).await.unwrap();
    assert_eq!(
        ids(all),
        [
            b1.id.as_str(),
            a3.id.as_str(),
            s1.id.as_str(),
            a1.id.as_str()
        ]
    );

    let with_revoked = f
        .store
        .list(&KeyFilter {
            include_revoked: true,
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(with_revoked),
        [
            b1.id.as_str(),
            a3.id.as_str(),
            a2.id.as_str(),
            s1.id.as_str(),
            a1.id.as_str()
        ]
    );

    let alice = KeyFilter {
        owner: Some("alice".into()),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(f.store.list(&alice).await.unwrap()),
        [a3.id.as_str(), a1.id.as_str()]
    );

    let alice_personal = KeyFilter {
        kind: Some(KeyKind::Personal),
        include_revoked: true,
        ..alice.clone()
    };
    assert_eq!(
        ids(f.store.list(&alice_personal).await.unwrap()),
        [a2.id.as_str(), a1.id.as_str()]
    );

    let services = KeyFilter {
        kind: Some(KeyKind::Service),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(f.store.list(&services).await.unwrap()),
        [a3.id.as_str(), s1.id.as_str()]
    );

    let newest = KeyFilter {
        limit: Some(2),
        include_revoked: true,
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(f.store.list(&newest).await.unwrap()),
        [b1.id.as_str(), a3.id.as_str()]
    );

    let nobody = KeyFilter {
        owner: Some("nobody".into()),
        ..KeyFilter::default()
    };
    assert!(f.store.list(&nobody).await.unwrap().is_empty());

    // Listed records are whole records.
    let one = f
        .store
        .list(&KeyFilter {
            owner: Some("bob".into()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(one, [b1]);
}

async fn revoke_clears_secrets_keeps_audit_and_is_once_only(f: &Fixture) {
    let full = full_record();
    f.store.insert(&full, "cli").await.unwrap();

    assert!(
        f.store
            .revoke(&full.id, "admin@example.org", 1_700_000_200)
            .await
            .unwrap()
    );
    let got = f.store.get(&full.id).await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(1_700_000_200));
    assert_eq!(got.sealed_secret, None);
    assert_eq!(got.previous_hash, None);
    assert_eq!(got.previous_sealed_secret, None);
    assert_eq!(got.previous_valid_until, None);
    // Everything else is kept for the record.
    assert_eq!(
        KeyRecord {
            revoked_at: None,
            sealed_secret: full.sealed_secret.clone(),
            previous_hash: full.previous_hash.clone(),
            previous_sealed_secret: full.previous_sealed_secret.clone(),
            previous_valid_until: full.previous_valid_until,
            ..got
        },
        full
    );

    // The old (rotated-out) key no longer finds the record.
    let prev = full.previous_hash.clone().unwrap();
    assert!(
        f.store
            .find_by_hash(&prev, 1_700_000_000)
            .await
            .unwrap()
            .is_none()
    );

    assert!(
        !f.store
            .revoke(&full.id, "admin@example.org", 1_700_000_300)
            .await
            .unwrap()
    );
    assert!(!f.store.revoke("no-such-id", "admin", 1).await.unwrap());
    assert_eq!(
        f.store.get(&full.id).await.unwrap().unwrap().revoked_at,
        Some(1_700_000_200)
    );

    // A revoked key can be neither rotated, renewed nor given a secret.
    assert!(
        !f.store
            .rotate(&full.id, &random_bytes(32), "kgs_Zzzz", None, None, "x")
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .renew(&full.id, Some(1_900_000_000), "x")
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .update_secret(&full.id, full.secret_version, b"sealed")
            .await
            .unwrap()
    );

    let audit = f.store.audit(&full.id).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.at))
        .collect();
    assert_eq!(
        actions,
        [
            ("create", "cli", full.created_at),
            ("revoke", "admin@example.org", 1_700_000_200)
        ]
    );
}

async fn rotate_keeps_old_key_for_grace_period(f: &Fixture) {
    let now = 1_700_000_000;
    let mut rec = record("reporting", KeyKind::Service, now - 10);
    rec.sealed_secret = Some(b"sealed-under-key-1".to_vec());
    f.store.insert(&rec, "cli").await.unwrap();
    let h1 = rec.key_hash.clone();
    let h2 = random_bytes(32);
    let h3 = random_bytes(32);

    let grace = now + 3600;
    assert!(
        f.store
            .rotate(
                &rec.id,
                &h2,
                "kgs_NeW2",
                Some(b"sealed-under-key-2"),
                Some(grace),
                "ops"
            )
            .await
            .unwrap()
    );
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.key_hash, h2);
    assert_eq!(got.prefix, "kgs_NeW2");
    assert_eq!(
        got.sealed_secret.as_deref(),
        Some(&b"sealed-under-key-2"[..])
    );
    assert_eq!(got.secret_version, 1);
    assert_eq!(got.previous_hash.as_deref(), Some(&h1[..]));
    assert_eq!(
        got.previous_sealed_secret.as_deref(),
        Some(&b"sealed-under-key-1"[..])
    );
    assert_eq!(got.previous_valid_until, Some(grace));
    // Untouched by a rotation.
    assert_eq!(
        (got.owner.as_str(), got.created_at, got.expires_at),
        ("reporting", rec.created_at, None)
    );

    let (_, how) = f.store.find_by_hash(&h2, now).await.unwrap().unwrap();
    assert_eq!(how, HashMatch::Current);
    let (old, how) = f.store.find_by_hash(&h1, now).await.unwrap().unwrap();
    assert_eq!(
        (how, old.previous_sealed_secret.as_deref()),
        (HashMatch::Previous, Some(&b"sealed-under-key-1"[..]))
    );
    assert!(f.store.find_by_hash(&h1, grace).await.unwrap().is_none());

    // Without a grace period the old key dies at once and its secret is deleted.
    assert!(
        f.store
            .rotate(&rec.id, &h3, "kgs_NeW3", None, None, "ops")
            .await
            .unwrap()
    );
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.key_hash, h3);
    assert_eq!(got.sealed_secret, None);
    assert_eq!(got.secret_version, 2);
    assert_eq!(
        (
            got.previous_hash,
            got.previous_sealed_secret,
            got.previous_valid_until
        ),
        (None, None, None)
    );
    assert!(f.store.find_by_hash(&h2, now).await.unwrap().is_none());
    assert!(f.store.find_by_hash(&h1, now).await.unwrap().is_none());
    assert_eq!(
        f.store
            .find_by_hash(&h3, now)
            .await
            .unwrap()
            .map(|(_, m)| m),
        Some(HashMatch::Current)
    );

    assert!(
        !f.store
            .rotate(
                "no-such-id",
                &random_bytes(32),
                "kgs_Xxxx",
                None,
                None,
                "ops"
            )
            .await
            .unwrap()
    );

    // A new hash that is already some key's hash is refused.
    let other = record("other", KeyKind::Service, now);
    f.store.insert(&other, "cli").await.unwrap();
    let err = f
        .store
        .rotate(&rec.id, &other.key_hash, "kgs_Dupe", None, None, "ops")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate), "{err:?}");
    assert_eq!(f.store.get(&rec.id).await.unwrap().unwrap().key_hash, h3);
}

async fn renew_sets_expiry(f: &Fixture) {
    let mut rec = record("alice", KeyKind::Personal, 100);
    rec.expires_at = Some(1000);
    f.store.insert(&rec, "alice").await.unwrap();

    assert!(f.store.renew(&rec.id, Some(5000), "alice").await.unwrap());
    assert_eq!(
        f.store.get(&rec.id).await.unwrap().unwrap().expires_at,
        Some(5000)
    );
    assert!(f.store.renew(&rec.id, None, "admin").await.unwrap());
    assert_eq!(
        f.store.get(&rec.id).await.unwrap().unwrap().expires_at,
        None
    );
    assert!(!f.store.renew("no-such-id", Some(1), "admin").await.unwrap());

    let details: Vec<_> = f
        .store
        .audit(&rec.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.action, a.actor, a.detail))
        .collect();
    assert_eq!(
        details[1],
        ("renew".into(), "alice".into(), "expires_at=5000".into())
    );
    assert_eq!(
        details[2],
        ("renew".into(), "admin".into(), "expires_at=never".into())
    );
}

async fn update_secret_is_compare_and_swap(f: &Fixture) {
    let mut rec = record("alice", KeyKind::Personal, 100);
    rec.sealed_secret = Some(b"refresh-0".to_vec());
    f.store.insert(&rec, "alice").await.unwrap();

    assert!(
        !f.store
            .update_secret(&rec.id, 1, b"refresh-x")
            .await
            .unwrap()
    );
    assert!(
        f.store
            .update_secret(&rec.id, 0, b"refresh-1")
            .await
            .unwrap()
    );
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(
        (got.secret_version, got.sealed_secret.as_deref()),
        (1, Some(&b"refresh-1"[..]))
    );

    // A writer that read version 0 lost the race: refused, nothing changes.
    assert!(
        !f.store
            .update_secret(&rec.id, 0, b"refresh-stale")
            .await
            .unwrap()
    );
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(
        (got.secret_version, got.sealed_secret.as_deref()),
        (1, Some(&b"refresh-1"[..]))
    );

    assert!(
        f.store
            .update_secret(&rec.id, 1, b"refresh-2")
            .await
            .unwrap()
    );
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(
        (got.secret_version, got.sealed_secret.as_deref()),
        (2, Some(&b"refresh-2"[..]))
    );

    assert!(!f.store.update_secret("no-such-id", 0, b"x").await.unwrap());
    // Not audited: it happens on use, not by an operator.
    assert_eq!(f.store.audit(&rec.id).await.unwrap().len(), 1);
}

async fn update_secret_concurrent_exactly_one_wins(f: &Fixture) {
    let mut rec = record("alice", KeyKind::Personal, 100);
    rec.sealed_secret = Some(b"refresh-0".to_vec());
    rec.secret_version = 41;
    f.store.insert(&rec, "alice").await.unwrap();

    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let store = f.store.clone();
            let id = rec.id.clone();
            tokio::spawn(async move {
                let sealed = vec![i; 16];
                (store.update_secret(&id, 41, &sealed).await.unwrap(), sealed)
            })
        })
        .collect();
    let mut winners = vec![];
    for t in tasks {
        let (won, sealed) = t.await.unwrap();
        if won {
            winners.push(sealed);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one concurrent update must win");
    let got = f.store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.secret_version, 42);
    assert_eq!(got.sealed_secret, Some(winners.remove(0)));
}

/// The offline-session keep-alive's queries: which personal keys are due
/// (backed by an offline session, live, unexpired, with a secret, not
/// refreshed since `before`, oldest first), claims that exactly one of many concurrent sweepers wins, and
/// exchanges that push a key's next keep-alive out.
async fn keepalive_due_and_claims(f: &Fixture) {
    let now = 10_000;
    let mut due_old = record("alice", KeyKind::Personal, 100);
    due_old.sealed_secret = Some(b"r1".to_vec());
    let mut due_new = record("alice", KeyKind::Personal, 200);
    due_new.sealed_secret = Some(b"r2".to_vec());
    let mut fresh = record("bob", KeyKind::Personal, 9_500);
    fresh.sealed_secret = Some(b"r3".to_vec());
    let mut expired = record("bob", KeyKind::Personal, 100);
    expired.sealed_secret = Some(b"r4".to_vec());
    expired.expires_at = Some(now - 1);
    let mut revoked = record("bob", KeyKind::Personal, 100);
    revoked.sealed_secret = Some(b"r5".to_vec());
    let mut service = record("svc", KeyKind::Service, 100);
    service.sealed_secret = Some(b"s".to_vec());
    // Backed by the JWT grant: no session at the provider to keep alive.
    let mut granted = record("carol", KeyKind::Personal, 100);
    granted.sealed_secret = Some(b"g".to_vec());
    granted.backing = Backing::JwtGrant;
    for r in [
        &due_old, &due_new, &fresh, &expired, &revoked, &service, &granted,
    ] {
        f.store.insert(r, "test").await.unwrap();
    }
    f.store.revoke(&revoked.id, "test", 150).await.unwrap();
    let ids = |v: Vec<KeyRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();

    let before = now - 1_000;
    let due = ids(f.store.keepalive_due(before, now, 100).await.unwrap());
    assert_eq!(due, vec![due_old.id.clone(), due_new.id.clone()]);
    assert_eq!(
        ids(f.store.keepalive_due(before, now, 1).await.unwrap()),
        vec![due_old.id.clone()]
    );

    // Twenty sweepers claim the same key: one wins.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = f.store.clone();
            let id = due_old.id.clone();
            tokio::spawn(async move { store.claim_keepalive(&id, before, now).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one claim must win");
    assert_eq!(
        ids(f.store.keepalive_due(before, now, 100).await.unwrap()),
        vec![due_new.id.clone()]
    );
    // A lease that ran out (the refresh failed): due again later.
    assert!(
        !f.store
            .claim_keepalive(&due_old.id, before, now)
            .await
            .unwrap()
    );
    assert_eq!(
        ids(f.store.keepalive_due(now + 1, now, 100).await.unwrap()),
        vec![due_new.id.clone(), fresh.id.clone(), due_old.id.clone()]
    );
    // An exchange refreshed due_new's session: not due any more; an
    // older refresh time never moves it back.
    f.store.session_refreshed(&due_new.id, now).await.unwrap();
    f.store.session_refreshed(&due_new.id, 300).await.unwrap();
    assert!(ids(f.store.keepalive_due(before, now, 100).await.unwrap()).is_empty());
    assert!(
        !f.store
            .claim_keepalive(&revoked.id, now, now)
            .await
            .unwrap(),
        "a revoked key is never claimed"
    );
}

async fn touch_batches_keep_the_latest_use(f: &Fixture) {
    let a = record("alice", KeyKind::Personal, 100);
    let mut b = record("bob", KeyKind::Personal, 100);
    b.last_used_at = Some(500);
    let c = record("carol", KeyKind::Personal, 100);
    for r in [&a, &b, &c] {
        f.store.insert(r, "cli").await.unwrap();
    }
    let last_used = async |id: &str| f.store.get(id).await.unwrap().unwrap().last_used_at;

    f.store.touch(&[]).await.unwrap();
    f.store
        .touch(&[
            (a.id.clone(), 300),
            (b.id.clone(), 400), // older than what is stored
            (a.id.clone(), 200), // older entry for the same key in one batch
            ("no-such-id".into(), 999),
        ])
        .await
        .unwrap();
    assert_eq!(last_used(&a.id).await, Some(300));
    assert_eq!(last_used(&b.id).await, Some(500));
    assert_eq!(last_used(&c.id).await, None);

    f.store
        .touch(&[(a.id.clone(), 250), (b.id.clone(), 600), (c.id.clone(), 50)])
        .await
        .unwrap();
    assert_eq!(last_used(&a.id).await, Some(300));
    assert_eq!(last_used(&b.id).await, Some(600));
    assert_eq!(last_used(&c.id).await, Some(50));

    // A large batch goes through in one transaction.
    let batch: Vec<_> = (0..500).map(|i| (a.id.clone(), 1000 + i)).collect();
    f.store.touch(&batch).await.unwrap();
    assert_eq!(last_used(&a.id).await, Some(1499));
}

async fn audit_trail_in_order_with_actors(f: &Fixture) {
    let rec = record("reporting", KeyKind::Service, 1_700_000_000);
    let other = record("other", KeyKind::Service, 1_700_000_000);
    f.store.insert(&rec, "cli:root").await.unwrap();
    f.store.insert(&other, "cli:root").await.unwrap();
    let before = unix_now();
    assert!(
        f.store
            .rotate(
                &rec.id,
                &random_bytes(32),
                "kgs_Rot8",
                None,
                Some(1_700_009_999),
                "ops"
            )
            .await
            .unwrap()
    );
    assert!(
        f.store
            .renew(&rec.id, Some(1_800_000_000), "admin")
            .await
            .unwrap()
    );
    assert!(
        f.store
            .revoke(&rec.id, "sec-team", 1_700_000_500)
            .await
            .unwrap()
    );
    let after = unix_now();

    let audit = f.store.audit(&rec.id).await.unwrap();
    let summary: Vec<_> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("create", "cli:root"),
            ("rotate", "ops"),
            ("renew", "admin"),
            ("revoke", "sec-team")
        ]
    );
    assert!(audit.iter().all(|a| a.key_id == rec.id));
    assert_eq!(audit[0].at, 1_700_000_000);
    assert!((before..=after).contains(&audit[1].at), "{:?}", audit[1]);
    assert!((before..=after).contains(&audit[2].at), "{:?}", audit[2]);
    assert_eq!(audit[3].at, 1_700_000_500);
    assert_eq!(audit[1].detail, "prefix=kgs_Rot8 grace_until=1700009999");
    assert_eq!(audit[2].detail, "expires_at=1800000000");

    // Other keys' trails are separate; unknown keys have none.
    let theirs: Vec<AuditEntry> = f.store.audit(&other.id).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert!(f.store.audit("no-such-id").await.unwrap().is_empty());
}

async fn migrations_are_idempotent(f: &Fixture) {
    let rec = full_record();
    f.store.insert(&rec, "cli").await.unwrap();
    // Starting again (and a second replica starting at the same time) finds
    // the schema in place and the data intact.
    let (again, twice) = tokio::join!(KeyStore::connect(&f.url), KeyStore::connect(&f.url));
    for store in [again.unwrap(), twice.unwrap()] {
        assert_eq!(store.backend(), f.store.backend());
        assert_eq!(store.get(&rec.id).await.unwrap(), Some(rec.clone()));
        let other = record("x", KeyKind::Service, 1);
        store.insert(&other, "cli").await.unwrap();
    }
    assert_eq!(f.store.list(&KeyFilter::default()).await.unwrap().len(), 3);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

// ---------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_file_created_on_first_start_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("keys.db");
    assert!(!path.exists());
    let url = format!("sqlite://{}", path.display());
    let store = KeyStore::connect(&url).await.unwrap();
    assert!(path.exists(), "the database file is created");
    store
        .insert(&record("a", KeyKind::Service, 1), "cli")
        .await
        .unwrap();

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (versions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keygate_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, 4);
}

#[tokio::test]
async fn store_url_errors_do_not_echo_passwords() {
    let err = KeyStore::connect("redis://:s3cret-pw@localhost/0")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store-url") && !err.contains("s3cret-pw"),
        "{err}"
    );
    let err = KeyStore::connect("postgres://kg:s3cret-pw@localhost:99999/keys")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store-url") && !err.contains("s3cret-pw"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// PostgreSQL only
// ---------------------------------------------------------------------------

/// The next change heard within 5 s.
async fn next_change(listener: &mut keygate_store::ChangeListener) -> keygate_store::KeyChange {
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.next())
        .await
        .expect("a change is announced")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_key_changes_to_listeners() {
    use keygate_store::KeyChange;
    let mut server = PgServer::start().await;
    let url = server.create_database("keygate").await;
    let store = KeyStore::connect(&url).await.unwrap();
    let mut listener = store
        .listen_changes()
        .await
        .unwrap()
        .expect("postgres listens");
    let rec = full_record();
    store.insert(&rec, "admin").await.unwrap();

    // A last-use update changes nothing that matters: no announcement.
    store
        .touch(&[(rec.id.clone(), 1_700_000_900)])
        .await
        .unwrap();
    // A revoke by another process (a second pool, as the CLI would be) is heard.
    let other = KeyStore::connect(&url).await.unwrap();
    other
        .revoke(&rec.id, "cli:ops", 1_700_001_000)
        .await
        .unwrap();
    match next_change(&mut listener).await {
        KeyChange::Key { id, hashes } => {
            assert_eq!(id, rec.id, "the touch was not announced first");
            assert!(hashes.contains(&rec.key_hash));
            assert!(hashes.contains(rec.previous_hash.as_ref().unwrap()));
        }
        other => panic!("{other:?}"),
    }

    // Rotation and renewal are announced with the new hash too.
    let rec2 = record("b", KeyKind::Service, 5);
    store.insert(&rec2, "admin").await.unwrap();
    let new_hash = random_bytes(32);
    store
        .rotate(&rec2.id, &new_hash, "kgs_New1", None, None, "admin")
        .await
        .unwrap();
    match next_change(&mut listener).await {
        KeyChange::Key { id, hashes } => {
            assert_eq!(id, rec2.id);
            assert!(hashes.contains(&rec2.key_hash) && hashes.contains(&new_hash));
        }
        other => panic!("{other:?}"),
    }
    store
        .renew(&rec2.id, Some(9_999_999_999), "admin")
        .await
        .unwrap();
    assert!(matches!(next_change(&mut listener).await, KeyChange::Key { id, .. } if id == rec2.id));

    // An operator's own SQL is announced as well.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(&rec2.id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(matches!(next_change(&mut listener).await, KeyChange::Key { id, .. } if id == rec2.id));

    // The server goes away: errors while it is down, then one Resync. The
    // error comes once the pool gives up reconnecting (store-acquire-timeout,
    // 1 s by default), so the bound is well above that.
    server.stop_server();
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match listener.next().await {
                Err(e) => return e,
                Ok(KeyChange::Resync) => continue,
                Ok(other) => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the outage is reported");
    assert!(err.is_unavailable(), "{err}");
    server.start_again().await;
    let resync = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match listener.next().await {
                Ok(change) => return change,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the listener reconnects");
    assert_eq!(resync, KeyChange::Resync);
    // And hears changes again.
    let rec3 = record("c", KeyKind::Service, 6);
    store.insert(&rec3, "admin").await.unwrap();
    store.revoke(&rec3.id, "admin", 7).await.unwrap();
    assert!(matches!(next_change(&mut listener).await, KeyChange::Key { id, .. } if id == rec3.id));
}

/// Applies schema versions 1 to 3 as an older keygate did and stores a
/// service and a personal key in it, on `conn`.
macro_rules! v3_database_with_two_keys {
    ($conn:expr, $dir:literal) => {{
        for (v, sql) in [
            (1, include_str!(concat!("../migrations/", $dir, "/0001_api_keys.sql"))),
            (2, include_str!(concat!("../migrations/", $dir, "/0002_limits_and_changes.sql"))),
            (3, include_str!(concat!("../migrations/", $dir, "/0003_offline_keepalive.sql"))),
        ] {
            sqlx::raw_sql(sql).execute(&mut *$conn).await.unwrap();
            sqlx::raw_sql(&format!(
                "CREATE TABLE IF NOT EXISTS keygate_migrations (version BIGINT PRIMARY KEY NOT NULL, \
                 applied_at BIGINT NOT NULL); INSERT INTO keygate_migrations VALUES ({v}, 1)"
            ))
            .execute(&mut *$conn)
            .await
            .unwrap();
        }
        for (id, kind, hash) in [("svc-1", "service", "01"), ("per-1", "personal", "02")] {
            let hash = if $dir == "sqlite" { format!("X'{hash}'") } else { format!("'\\x{hash}'") };
            sqlx::raw_sql(&format!(
                "INSERT INTO api_keys (id, prefix, kind, owner, key_hash, sealed_secret, created_at) \
                 VALUES ('{id}', 'kg_x', '{kind}', 'o', {hash}, {hash}, 1)"
            ))
            .execute(&mut *$conn)
            .await
            .unwrap();
        }
    }};
}

/// Schema version 4 gives the keys made before it their backing: client
/// credentials for service keys, the offline session for personal keys.
#[tokio::test]
async fn sqlite_v3_keys_get_their_backing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keys.db", dir.path().display());
    let mut conn = sqlx::SqliteConnection::connect_with(
        &url.parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true),
    )
    .await
    .unwrap();
    v3_database_with_two_keys!(&mut conn, "sqlite");
    conn.close().await.unwrap();
    let store = KeyStore::connect(&url).await.unwrap();
    let svc = store.get("svc-1").await.unwrap().unwrap();
    assert_eq!(svc.backing, Backing::ClientCredentials);
    let per = store.get("per-1").await.unwrap().unwrap();
    assert_eq!(per.backing, Backing::OfflineSession);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_v3_keys_get_their_backing() {
    let server = PgServer::start().await;
    let url = server.create_database("keygate_v3").await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    v3_database_with_two_keys!(&mut conn, "postgres");
    conn.close().await.unwrap();
    let store = KeyStore::connect(&url).await.unwrap();
    assert_eq!(
        store.get("svc-1").await.unwrap().unwrap().backing,
        Backing::ClientCredentials
    );
    assert_eq!(
        store.get("per-1").await.unwrap().unwrap().backing,
        Backing::OfflineSession
    );
    // A changed backing is announced to the replicas like any change.
    let mut listener = store.listen_changes().await.unwrap().unwrap();
    sqlx::raw_sql("UPDATE api_keys SET backing = 'jwt-grant' WHERE id = 'per-1'")
        .execute(&mut sqlx::PgConnection::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert!(
        matches!(next_change(&mut listener).await, keygate_store::KeyChange::Key { id, .. } if id == "per-1")
    );
}

#[tokio::test]
async fn sqlite_has_no_change_listener() {
    let f = sqlite_fixture().await;
    assert!(f.store.listen_changes().await.unwrap().is_none());
}

/// `n` lookups of `id` at once; how many took at least `slow` (the rest were
/// answered at once) and how many failed with `StoreError::Unavailable`.
async fn burst(store: &KeyStore, id: &str, n: usize, slow: Duration) -> (usize, usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (store, id) = (store.clone(), id.to_owned());
            tokio::spawn(async move {
                let start = Instant::now();
                let result = store.get(&id).await;
                (start.elapsed(), result)
            })
        })
        .collect();
    let (mut slow_calls, mut unavailable) = (0, 0);
    for t in tasks {
        let (took, result) = t.await.unwrap();
        slow_calls += usize::from(took >= slow);
        match result {
            Err(StoreError::Unavailable(_)) => unavailable += 1,
            Err(e) if e.is_unavailable() => unavailable += 1,
            other => panic!("a hung store answered {other:?}"),
        }
    }
    (slow_calls, unavailable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_postgres_is_probed_by_one_operation_at_a_time_and_used_again_within_a_second() {
    let mut server = PgServer::start().await;
    let url = server.create_database("keygate").await;
    let timeouts = StoreTimeouts {
        acquire: Duration::from_millis(300),
        query: Duration::from_millis(500),
    };
    let store = KeyStore::connect_with(&url, timeouts).await.unwrap();
    let rec = record("a", KeyKind::Service, 1);
    store.insert(&rec, "admin").await.unwrap();

    server.freeze();
    // The first operation waits out its timeouts and opens the breaker.
    let start = Instant::now();
    let err = store.get(&rec.id).await.unwrap_err();
    let took = start.elapsed();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        took >= timeouts.acquire.min(timeouts.query),
        "a hung server cannot answer in {took:?}"
    );
    assert!(!store.is_up());

    // Rounds of 50 concurrent lookups, each after the open window (500 ms)
    // closed: one probes and waits, the 49 others fail at once.
    let slow = timeouts.acquire.min(timeouts.query) / 2;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = store.breaker_stats();
        let (waited, unavailable) = burst(&store, &rec.id, 50, slow).await;
        let after = store.breaker_stats();
        eprintln!("round {round}: {waited} of 50 waited");
        assert_eq!(unavailable, 50);
        assert_eq!(after.probes - before.probes, 1, "round {round}: one probe");
        assert_eq!(after.fail_fast - before.fail_fast, 49, "round {round}");
        assert!(waited <= 1, "round {round}: {waited} operations waited");
    }

    // Writes fail fast as well (keygate keys create, the admin API).
    let start = Instant::now();
    assert!(
        store
            .insert(&record("b", KeyKind::Service, 2), "admin")
            .await
            .unwrap_err()
            .is_unavailable()
    );
    assert!(start.elapsed() < slow, "{:?}", start.elapsed());

    server.thaw();
    let thawed = Instant::now();
    loop {
        match store.get(&rec.id).await {
            Ok(found) => {
                assert_eq!(found.unwrap().id, rec.id);
                break;
            }
            Err(e) => assert!(
                thawed.elapsed() < Duration::from_secs(5),
                "PostgreSQL never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = thawed.elapsed();
    eprintln!(
        "PostgreSQL used again {:.0} ms after it answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(store.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_is_down_costs_keys_create_one_short_wait() {
    // Nothing listens: connecting is refused at once. A server that accepts
    // but never answers costs at most store-acquire-timeout.
    let mut server = PgServer::start().await;
    let url = server.create_database("keygate").await;
    server.freeze();
    let timeouts = StoreTimeouts {
        acquire: Duration::from_millis(500),
        query: Duration::from_secs(1),
    };
    let start = Instant::now();
    let err = KeyStore::connect_with(&url, timeouts).await.unwrap_err();
    let took = start.elapsed();
    eprintln!("connect to a hung server: {err} after {took:?}");
    assert!(err.is_unavailable(), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.thaw();
}
