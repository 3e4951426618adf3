//! Browser sessions as a service, with no HTTP types: a session cookie
//! opened, its session loaded (from the cookie itself or from Redis),
//! refreshed once per session at a time, saved and ended, every new cookie
//! handed back as a `Set-Cookie` value. The login endpoints that start and
//! end sessions are keygate-proxy's `login` module; the sealing is
//! `keygate_auth::session`, logout-token checks `keygate_auth::logout`.
//!
//! | module | concern |
//! |---|---|
//! | `service` | settings, the cookie read, load and save |
//! | `refresh` | the current access token, refreshed once at a time |
//! | `logout` | sessions ended at logout and by back-channel logout; the `jti` replay memory |
//! | `error` | [`SessionError`] |

mod error;
mod logout;
mod refresh;
mod service;

pub use error::SessionError;
pub use refresh::current_access_token;
pub use service::{
    LOGIN_COOKIE, LOGOUT_TOKEN_MAX_AGE, SESSION_COOKIE, SessionCookie, Sessions, new_session_id,
    now, now_ms,
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use keygate_auth::session::SessionState;
    use keygate_core::Secret;
    use keygate_core::config::Config;
    use std::sync::Arc;
    use std::time::Duration;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "discovery-url: http://127.0.0.1:9/realms/test\nclient-id: keygate\n\
             client-secret: s\nupstream-url: http://127.0.0.1:9\n\
             encryption-key: 0123456789abcdefghijklmnopqrstuv\n{extra}"
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    fn sessions(extra: &str) -> Sessions {
        let provider = keygate_auth::Provider::new(keygate_auth::ProviderSettings {
            discovery_url: "http://127.0.0.1:9/realms/test".into(),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            skip_tls_verify: false,
        })
        .unwrap();
        Sessions::from_config(&config(extra), provider, None)
            .unwrap()
            .expect("encryption-key turns sessions on")
    }

    fn state(access_valid_for: i64) -> SessionState {
        let now = now() as i64;
        SessionState {
            access_token: Secret::new("at-1"),
            refresh_token: None,
            id_token: None,
            subject: "alice".into(),
            sid: Some("sid-1".into()),
            access_expires_at: (now + access_valid_for) as u64,
            session_expires_at: (now + 3600) as u64,
            created_at_ms: now_ms(),
            id: new_session_id().unwrap().expose().to_owned(),
            logout_checked: Default::default(),
        }
    }

    /// The `Cookie` header a browser sends back for these `Set-Cookie` values.
    fn cookie_header(set_cookies: &[String]) -> String {
        set_cookies
            .iter()
            .map(|c| c.split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn a_saved_cookie_session_reads_and_loads_back_and_a_tampered_one_does_not() {
        let sessions = sessions("");
        let saved = sessions.save(&state(60), None).await.unwrap();
        assert!(saved[0].starts_with("kg_session="), "{saved:?}");
        assert!(saved[0].contains("HttpOnly"), "{saved:?}");
        let header = cookie_header(&saved);
        let (cookie, chunks) = sessions.read(&[&header]).unwrap().unwrap();
        assert_eq!(chunks, 1);
        let loaded = sessions.load(&cookie).await.unwrap().unwrap();
        assert_eq!(loaded.subject, "alice");
        assert_eq!(loaded.access_token.expose(), "at-1");

        // Opened once: the second read is the same state, from the cache.
        let (again, _) = sessions.read(&[&header]).unwrap().unwrap();
        match (&cookie, &again) {
            (SessionCookie::State(a), SessionCookie::State(b)) => assert!(Arc::ptr_eq(a, b)),
            _ => panic!("a cookie session"),
        }

        // Same length and same first bytes as the cached cookie: found under
        // its cache key, refused by the whole comparison and the AEAD.
        let mut tampered = header.into_bytes();
        let at = tampered.len() - 5;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(sessions.read(&[&tampered]).err(), Some(1));
        assert!(sessions.read(&["other=1"]).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_session_found_not_ended_is_looked_up_again_after_any_logout() {
        use std::sync::atomic::Ordering;
        let sessions = sessions("");
        let generation = || sessions.ended_generation.load(Ordering::Acquire);
        let alice = state(60);
        assert!(!alice.logout_checked.is(generation()));
        assert!(!sessions.logged_out(&alice).await.unwrap());
        assert!(alice.logout_checked.is(generation()));
        // Another user's logout: the memo no longer holds, the lookup runs.
        sessions.end_by("sub:bob", now_ms()).await.unwrap();
        assert!(!alice.logout_checked.is(generation()));
        assert!(!sessions.logged_out(&alice).await.unwrap());
        assert!(alice.logout_checked.is(generation()));
        // Her own session's logout is found although she was checked before.
        sessions.end_by("sid:sid-1", now_ms()).await.unwrap();
        assert!(sessions.logged_out(&alice).await.unwrap());
        // A copy (a refreshed session) starts unchecked.
        let other = SessionState {
            sid: Some("sid-2".into()),
            ..state(60)
        };
        assert!(!sessions.logged_out(&other).await.unwrap());
        assert!(other.logout_checked.is(generation()));
        assert!(!other.clone().logout_checked.is(generation()));
    }

    #[tokio::test]
    async fn a_session_ended_at_logout_stays_ended_and_another_login_does_not() {
        let sessions = sessions("");
        let first = state(60);
        let saved = sessions.save(&first, None).await.unwrap();
        let (cookie, _) = sessions.read(&[&cookie_header(&saved)]).unwrap().unwrap();
        assert!(!sessions.logged_out(&first).await.unwrap());
        sessions.end(&cookie).await.unwrap();
        assert!(sessions.logged_out(&first).await.unwrap());
        let mut set_cookies = Vec::new();
        let err = current_access_token(&sessions, &cookie, &mut set_cookies)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), keygate_core::Reason::SessionLoggedOut);
        assert!(
            set_cookies[0].starts_with("kg_session=;"),
            "{set_cookies:?}"
        );
        // The same user's other login is not ended by this logout.
        assert!(!sessions.logged_out(&state(60)).await.unwrap());
    }

    #[tokio::test]
    async fn a_back_channel_logout_by_sid_or_by_user_ends_the_sessions_it_names() {
        let sessions = sessions("");
        let before = state(60);
        sessions.end_by("sid:sid-1", now_ms()).await.unwrap();
        assert!(sessions.logged_out(&before).await.unwrap());
        let other = SessionState {
            sid: Some("sid-2".into()),
            ..state(60)
        };
        assert!(!sessions.logged_out(&other).await.unwrap());
        sessions.end_by("sub:alice", now_ms()).await.unwrap();
        assert!(sessions.logged_out(&other).await.unwrap());
        // A login after the user's logout is not ended by it.
        std::thread::sleep(Duration::from_millis(2));
        let later = SessionState {
            sid: Some("sid-3".into()),
            ..state(60)
        };
        assert!(!sessions.logged_out(&later).await.unwrap());
    }

    #[tokio::test]
    async fn a_valid_access_token_is_used_and_an_expired_one_without_refresh_ends_the_session() {
        let sessions = sessions("");
        for (valid_for, expect) in [
            (60, Ok("at-1")),
            (-1, Err(keygate_core::Reason::SessionExpired)),
        ] {
            let saved = sessions.save(&state(valid_for), None).await.unwrap();
            let (cookie, _) = sessions.read(&[&cookie_header(&saved)]).unwrap().unwrap();
            let mut set_cookies = Vec::new();
            let got = current_access_token(&sessions, &cookie, &mut set_cookies).await;
            match expect {
                Ok(token) => {
                    assert_eq!(got.unwrap().expose(), token);
                    assert!(set_cookies.is_empty());
                }
                Err(reason) => {
                    assert_eq!(got.unwrap_err().reason(), reason);
                    assert!(set_cookies[0].starts_with("kg_session=;"));
                }
            }
        }
    }

    #[tokio::test]
    async fn a_logout_token_jti_is_accepted_once_per_issuer() {
        let sessions = sessions("");
        assert!(sessions.first_use_of_jti("https://a", "j1").await);
        assert!(!sessions.first_use_of_jti("https://a", "j1").await);
        assert!(sessions.first_use_of_jti("https://b", "j1").await);
    }

    #[test]
    fn server_side_sessions_without_redis_name_the_key_and_no_key_means_no_sessions() {
        let provider = keygate_auth::Provider::new(keygate_auth::ProviderSettings {
            discovery_url: "http://127.0.0.1:9/realms/test".into(),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            skip_tls_verify: false,
        })
        .unwrap();
        let err = Sessions::from_config(
            &config("session-store: redis\n"),
            Arc::clone(&provider),
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("session-store"), "{err}");
        let mut off = config("");
        off.encryption_key = Secret::new("");
        assert!(
            Sessions::from_config(&off, provider, None)
                .unwrap()
                .is_none()
        );
    }
}
