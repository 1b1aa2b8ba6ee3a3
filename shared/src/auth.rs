//! Clerk session token verification (RS256 JWTs in `Authorization: Bearer`).
//!
//! Keys come from the Clerk JWKS URL (cached across warm invocations, refetched at most once per
//! [`JWKS_REFETCH_INTERVAL`] when a token names an unknown `kid`) or from a PEM public key (Clerk's
//! networkless `jwtKey`). Claims follow Clerk's session token docs: `sub` is the user, the org is
//! `org_id` (v1) or `o.id` (v2); `azp`, when present, must be an allowed authorized party.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::error::ApiError;

/// The shortest time between two JWKS fetches caused by unknown `kid`s.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The authenticated caller: Clerk user id and active organization id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// JWT `sub` (`user_2abc...`), the enrichment's `createdBy`.
    pub user_id: String,
    /// JWT `org_id` or `o.id` (`org_xyz...`), the enrichment's `orgId`.
    pub org_id: String,
}

/// Where the verification keys come from.
enum Keys {
    /// One PEM public key: every token must be signed by it.
    Pem(DecodingKey),
    /// A JWKS URL, with the keys by `kid` and when they were last fetched.
    Jwks {
        url: String,
        http: reqwest::Client,
        keys: RwLock<HashMap<String, DecodingKey>>,
        last_fetch: Mutex<Option<Instant>>,
    },
}

/// Verifies bearer tokens. Build once per process; `authenticate` is cheap when the key is cached.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    authorized_parties: Vec<String>,
}

/// Configuration errors, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither `AUTH_JWKS_URL` nor `AUTH_JWT_KEY` is set: no token could ever be verified.
    #[error(
        "set AUTH_JWKS_URL or AUTH_JWT_KEY: without a key source no request can be authenticated"
    )]
    NoKeySource,
    /// The PEM key did not parse as an RSA public key.
    #[error("AUTH_JWT_KEY is not an RSA public key in PEM: {0}")]
    BadPem(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    azp: Option<String>,
    org_id: Option<String>,
    o: Option<OrgClaim>,
}

#[derive(Debug, Deserialize)]
struct OrgClaim {
    id: Option<String>,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized(message.to_string())
}

impl Authenticator {
    /// Reads `AUTH_JWKS_URL` or `AUTH_JWT_KEY` (PEM), `AUTH_ISSUER`, `AUTH_AUTHORIZED_PARTIES`
    /// (comma-separated) and `AUTH_CLOCK_LEEWAY_SECONDS` (default 5). Fails closed: with no key
    /// source configured the function does not start.
    pub fn from_env(http: reqwest::Client) -> Result<Self, AuthConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let issuer = var("AUTH_ISSUER");
        let parties: Vec<String> = var("AUTH_AUTHORIZED_PARTIES")
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let leeway = var("AUTH_CLOCK_LEEWAY_SECONDS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        if let Some(pem) = var("AUTH_JWT_KEY") {
            Self::with_pem(pem.as_bytes(), issuer, parties, leeway)
        } else if let Some(url) = var("AUTH_JWKS_URL") {
            Ok(Self::with_jwks(url, http, issuer, parties, leeway))
        } else {
            Err(AuthConfigError::NoKeySource)
        }
    }

    /// Verifies with one RSA public key in PEM (Clerk's `jwtKey`).
    pub fn with_pem(
        pem: &[u8],
        issuer: Option<String>,
        authorized_parties: Vec<String>,
        leeway_seconds: u64,
    ) -> Result<Self, AuthConfigError> {
        let key =
            DecodingKey::from_rsa_pem(pem).map_err(|e| AuthConfigError::BadPem(e.to_string()))?;
        Ok(Self::new(
            Keys::Pem(key),
            issuer,
            authorized_parties,
            leeway_seconds,
        ))
    }

    /// Verifies with the keys of a JWKS URL, fetched on first use.
    pub fn with_jwks(
        url: String,
        http: reqwest::Client,
        issuer: Option<String>,
        authorized_parties: Vec<String>,
        leeway_seconds: u64,
    ) -> Self {
        let keys = Keys::Jwks {
            url,
            http,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
        };
        Self::new(keys, issuer, authorized_parties, leeway_seconds)
    }

    fn new(
        keys: Keys,
        issuer: Option<String>,
        authorized_parties: Vec<String>,
        leeway: u64,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
        }
        Self {
            keys,
            validation,
            authorized_parties,
        }
    }

    /// Verifies the `Authorization` header value and returns the caller.
    ///
    /// Errors: [`ApiError::Unauthorized`] (401) for a missing header, another scheme, a malformed
    /// token, any algorithm but RS256 (`none`, HS256...), a bad signature, an unknown `kid`,
    /// `exp`/`nbf` outside the leeway, a wrong issuer, a disallowed `azp`, no `sub`, or no
    /// active organization.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let header = authorization.ok_or_else(|| unauthorized("Missing Authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authorization header must be 'Bearer <token>'"))?;
        let jwt_header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("Malformed token"))?;
        if jwt_header.alg != Algorithm::RS256 {
            return Err(unauthorized("Unsupported token algorithm"));
        }
        let key = self.key_for(jwt_header.kid.as_deref()).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "Token has expired",
                ErrorKind::ImmatureSignature => "Token is not yet valid",
                ErrorKind::InvalidIssuer => "Token issuer is not allowed",
                ErrorKind::InvalidSignature => "Token signature is invalid",
                ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => "Token has no subject",
                ErrorKind::InvalidAlgorithm => "Unsupported token algorithm",
                _ => "Malformed token",
            })
        })?;
        let claims = data.claims;
        if let (Some(azp), false) = (&claims.azp, self.authorized_parties.is_empty())
            && !self.authorized_parties.iter().any(|p| p == azp)
        {
            return Err(unauthorized("Token authorized party is not allowed"));
        }
        let user_id = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("Token has no subject"))?;
        let org_id = claims
            .org_id
            .or_else(|| claims.o.and_then(|o| o.id))
            .filter(|o| !o.is_empty())
            .ok_or_else(|| unauthorized("Token has no active organization"))?;
        Ok(Principal { user_id, org_id })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, ApiError> {
        let (url, http, keys, last_fetch) = match &self.keys {
            Keys::Pem(key) => return Ok(key.clone()),
            Keys::Jwks {
                url,
                http,
                keys,
                last_fetch,
            } => (url, http, keys, last_fetch),
        };
        let kid = kid.ok_or_else(|| unauthorized("Token has no key id"))?;
        if let Some(key) = keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        {
            let mut last = last_fetch.lock().await;
            // Another request may have refreshed the keys while this one waited for the lock.
            if let Some(key) = keys.read().await.get(kid) {
                return Ok(key.clone());
            }
            if last.is_none_or(|at| at.elapsed() >= JWKS_REFETCH_INTERVAL) {
                *last = Some(Instant::now());
                match fetch_jwks(http, url).await {
                    Ok(fresh) => *keys.write().await = fresh,
                    Err(e) => tracing::error!(error = %e, "JWKS fetch failed"),
                }
            }
        }
        keys.read()
            .await
            .get(kid)
            .cloned()
            .ok_or_else(|| unauthorized("Token signing key is unknown"))
    }
}

/// Fetches a JWKS document and keeps its RSA signing keys by `kid`.
async fn fetch_jwks(
    http: &reqwest::Client,
    url: &str,
) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
        })
        .collect())
}
