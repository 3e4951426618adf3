//! The session service's one error type.

use keygate_core::Reason;
use std::sync::Arc;

/// Why a session cannot be used or kept. The proxy's error edge turns it
/// into a 401 (the session ended: log in again) or a 503.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session has ended; the reason is for logs and metrics
    /// (`session_ended`, `session_logged_out`, `session_expired`,
    /// `session_refresh_refused`).
    #[error("the session has ended ({0})")]
    Ended(Reason),
    /// `session-store: redis` without a Redis.
    #[error("the session store is unavailable")]
    NoStore,
    /// Redis cannot be asked.
    #[error("the session store is unavailable; try again shortly")]
    StoreUnavailable,
    /// The provider cannot be reached for a refresh.
    #[error("the OpenID provider is unavailable; try again shortly")]
    ProviderUnavailable,
    /// A session could not be sealed.
    #[error("{0}")]
    Sealing(#[source] Arc<keygate_auth::session::SessionError>),
}

impl SessionError {
    /// The short reason for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            SessionError::Ended(reason) => *reason,
            SessionError::NoStore | SessionError::StoreUnavailable => {
                Reason::SessionStoreUnavailable
            }
            SessionError::ProviderUnavailable => Reason::ProviderUnavailable,
            SessionError::Sealing(_) => Reason::SessionFailed,
        }
    }
}
