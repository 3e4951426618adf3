//! Credential verification for keygate, with no HTTP-server dependency:
//! OpenID provider discovery and its signing keys ([`provider`]), bearer
//! JWT validation with a cache of verified identities ([`jwt`]), the API-key
//! format, hashing and sealing ([`apikey`]) and the secrets a key record
//! stores ([`stored`]), the provider's token-endpoint
//! grants that API keys are exchanged with ([`grants`]), keygate's own
//! signing key and the assertions of the JWT authorization grant
//! ([`assertion`]), the link of a user to keygate's identity provider at
//! Keycloak ([`links`]), token exchange toward an upstream's audience
//! ([`token_exchange`]) and DPoP proofs ([`dpop`]).

#![forbid(unsafe_code)]

pub mod apikey;
pub mod assertion;
pub mod client;
pub mod dpop;
pub mod error;
pub mod grants;
pub mod jws;
pub mod jwt;
pub mod links;
pub mod login;
pub mod logout;
pub mod oauth;
pub mod provider;
pub mod session;
pub mod stored;
pub mod token_exchange;

pub use error::AuthError;
pub use jwt::{JwtVerifier, VerifierSettings};
pub use provider::{Provider, ProviderSettings};
