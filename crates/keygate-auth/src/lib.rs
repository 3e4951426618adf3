//! Credential verification for keygate, with no HTTP-server dependency:
//! OpenID provider discovery and its signing keys ([`provider`]), and bearer
//! JWT validation with a cache of verified identities ([`jwt`]).

#![forbid(unsafe_code)]

pub mod error;
pub mod jwt;
pub mod provider;

pub use error::AuthError;
pub use jwt::{JwtVerifier, VerifierSettings};
pub use provider::{Provider, ProviderSettings};
