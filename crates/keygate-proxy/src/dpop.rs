//! DPoP (RFC 9449) in phase 3: a token bound to a key (`cnf.jkt`) is
//! accepted only as `Authorization: DPoP <token>` with a valid proof of that
//! key in the `DPoP` header ([`keygate_auth::dpop::verify_proof`]), and each
//! proof only once: its `jti` is remembered, per replica and, with
//! `redis-url`, across replicas, for as long as the proof could be accepted.
//! When Redis cannot say whether a proof is new, the request is refused
//! (503), never let through.
//!
//! The proof is keygate's: it is removed in phase 1 and never reaches the
//! upstream. The upstream gets the token in `Authorization: Bearer` (it is
//! still bound: an upstream that checks `cnf` itself refuses it without a
//! proof, one that trusts keygate's check reads `X-Auth-Dpop-Jkt`).

use crate::context::{DpopCredential, RequestCtx};
use crate::respond::{Refusal, Refused};
use keygate_auth::dpop::{self, DpopError, Expected, ProofSettings};
use keygate_core::config::Config;
use keygate_core::{Identity, Reason, unix_now};
use moka::sync::Cache;
use std::time::Duration;

/// Bound on the `jti`s remembered by one replica.
const REPLAY_CACHE_SIZE: u64 = 1_000_000;

/// Proof checking and the replay memory.
pub struct Dpop {
    settings: ProofSettings,
    /// `require-dpop`.
    required: bool,
    /// SHA-256 of `jkt` and `jti` of the proofs seen, each kept for the
    /// replay window.
    seen: Cache<[u8; 32], ()>,
    redis: Option<keygate_store::Redis>,
}

impl Dpop {
    /// From `signing-algorithms`, `dpop-max-age`, `clock-skew`,
    /// `require-dpop` and the shared Redis.
    pub fn from_config(
        config: &Config,
        verifier: &keygate_auth::JwtVerifier,
        redis: Option<keygate_store::Redis>,
    ) -> Dpop {
        let settings = ProofSettings {
            algorithms: verifier.algorithms().to_vec(),
            max_age: config.dpop_max_age,
            leeway: config.clock_skew,
        };
        let seen = Cache::builder()
            .max_capacity(REPLAY_CACHE_SIZE)
            .time_to_live(settings.replay_window())
            .build();
        Dpop {
            settings,
            required: config.require_dpop,
            seen,
            redis,
        }
    }

    /// A token presented as `Bearer` (or an identity from an API key or a
    /// session): refused when it is bound to a key, or when `require-dpop`
    /// asks for bound tokens (`jwt`: a caller's bearer JWT).
    pub fn check_unbound(&self, identity: &Identity, jwt: bool) -> Result<(), Refused> {
        if dpop::bound_key(&identity.claims).is_some() {
            return Err(self.refuse(
                "invalid_token",
                "this token is bound to a key (DPoP): send it as `Authorization: DPoP <token>` with a DPoP proof",
                Reason::DpopBoundToken,
            ));
        }
        if self.required && jwt {
            return Err(self.refuse(
                "invalid_token",
                "keygate accepts only DPoP-bound tokens (require-dpop): request the token with a DPoP proof and send it as `Authorization: DPoP <token>`",
                Reason::DpopRequired,
            ));
        }
        Ok(())
    }

    /// `Authorization: DPoP`: the token must be bound, the proof valid for
    /// this request, token and key, and new.
    pub async fn check_proof(
        &self,
        ctx: &RequestCtx,
        credential: &DpopCredential,
        identity: &Identity,
    ) -> Result<(), Refused> {
        let Some(jkt) = dpop::bound_key(&identity.claims) else {
            return Err(self.refuse(
                "invalid_token",
                "the DPoP scheme is for DPoP-bound tokens; this one is not bound to a key: send it as `Authorization: Bearer <token>`",
                Reason::DpopUnboundToken,
            ));
        };
        let proof = credential
            .proof
            .as_deref()
            .map_err(|e| self.proof_error(e))?;
        let verified = dpop::verify_proof(
            proof,
            &Expected {
                method: ctx.method.as_str(),
                url: &credential.url,
                access_token: credential.token.expose(),
                jkt,
                now: unix_now(),
            },
            &self.settings,
        )
        .map_err(|e| self.proof_error(&e))?;
        match self.first_use(jkt, &verified.jti).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.proof_error(&DpopError::Replayed)),
            Err(()) => Err(Refused::new(
                Refusal::Unavailable(
                    "keygate cannot check now whether this DPoP proof was used before; try again shortly"
                        .into(),
                ),
                Reason::TemporarilyUnavailable,
            )),
        }
    }

    /// True the first time a proof's `jti` is seen for `jkt` (here and,
    /// with Redis, on every replica); `Err` when Redis cannot say.
    async fn first_use(&self, jkt: &str, jti: &str) -> Result<bool, ()> {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{jkt}\n{jti}").as_bytes(),
        );
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        if !self.seen.entry(id).or_insert(()).is_fresh() {
            return Ok(false);
        }
        let Some(redis) = &self.redis else {
            return Ok(true);
        };
        let key = redis.key(&format!("dpop:{}", keygate_core::encoding::hex(&id)));
        let ttl = self.settings.replay_window() + Duration::from_secs(1);
        redis.set_nx(&key, b"1", ttl).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot check a DPoP proof's jti in Redis; the request is refused");
        })
    }

    fn proof_error(&self, e: &DpopError) -> Refused {
        let error = match e {
            DpopError::WrongKey => "invalid_token",
            _ => "invalid_dpop_proof",
        };
        self.refuse(error, &e.to_string(), e.reason())
    }

    fn refuse(&self, error: &'static str, description: &str, reason: Reason) -> Refused {
        Refused::new(
            Refusal::Dpop {
                error,
                description: description.to_owned(),
                algs: self.settings.algs(),
            },
            reason,
        )
    }
}
