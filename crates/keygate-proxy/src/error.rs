//! Start-up errors: each names the config key at fault.

/// Start-up failures, each naming the config key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A key's value cannot be used.
    #[error("`{key}`: {message}")]
    Config {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl GatewayError {
    pub(crate) fn config(key: &'static str, message: impl std::fmt::Display) -> Self {
        GatewayError::Config {
            key,
            message: message.to_string(),
        }
    }
}

impl From<keygate_core::config::ConfigError> for GatewayError {
    fn from(e: keygate_core::config::ConfigError) -> Self {
        match e {
            keygate_core::config::ConfigError::Invalid { key, message } => {
                GatewayError::Config { key, message }
            }
            other => GatewayError::Config {
                key: "config",
                message: other.to_string(),
            },
        }
    }
}
