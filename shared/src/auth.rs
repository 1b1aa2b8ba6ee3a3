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

use crate::config::{AuthSettings, ConfigError, Vars};
use crate::error::ApiError;

/// The shortest time between two JWKS fetches caused by unknown `kid`s, after a fetch that
/// succeeded.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest time between two JWKS fetches after a fetch that failed: an identity-provider
/// outage is retried soon, and the requests in between get `503 UNAVAILABLE`, not `401`.
pub const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

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
        last_fetch: Mutex<Option<Fetch>>,
    },
}

/// When the JWKS was last fetched, and whether that fetch succeeded.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    at: Instant,
    ok: bool,
}

/// Verifies bearer tokens. Build once per process; `authenticate` is cheap when the key is cached.
pub struct Authenticator {
    keys: Keys,
    refetch_interval: Duration,
    validation: Validation,
    authorized_parties: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
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
    /// The authenticator [`AuthSettings`] describes, read from `vars`: the PEM key of
    /// `AUTH_JWT_KEY` when set, else the JWKS of `AUTH_JWKS_URL`. Fails closed: with no key
    /// source configured the function does not start.
    ///
    /// Errors: [`ConfigError::MissingEither`] when neither key source is set; those of
    /// [`AuthSettings::from_vars`] and [`Authenticator::with_pem`].
    pub fn from_vars(vars: &Vars, http: reqwest::Client) -> Result<Self, ConfigError> {
        let settings = AuthSettings::from_vars(vars)?;
        let AuthSettings {
            jwt_key,
            jwks_url,
            issuer,
            authorized_parties,
            clock_leeway_seconds,
        } = settings;
        if let Some(pem) = jwt_key {
            Self::with_pem(
                pem.as_bytes(),
                issuer,
                authorized_parties,
                clock_leeway_seconds,
            )
        } else if let Some(url) = jwks_url {
            Ok(Self::with_jwks(
                url,
                http,
                issuer,
                authorized_parties,
                clock_leeway_seconds,
            ))
        } else {
            Err(ConfigError::MissingEither {
                first: "AUTH_JWKS_URL",
                second: "AUTH_JWT_KEY",
                why: "without a key source no request can be authenticated",
            })
        }
    }

    /// Verifies with one RSA public key in PEM (Clerk's `jwtKey`, the value of `AUTH_JWT_KEY`).
    ///
    /// Errors: [`ConfigError::Invalid`] for `AUTH_JWT_KEY` when `pem` is not an RSA public key
    /// in PEM.
    pub fn with_pem(
        pem: &[u8],
        issuer: Option<String>,
        authorized_parties: Vec<String>,
        leeway_seconds: u64,
    ) -> Result<Self, ConfigError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| ConfigError::Invalid {
            var: "AUTH_JWT_KEY",
            value: String::from_utf8_lossy(pem).into_owned(),
            expected: format!("an RSA public key in PEM ({e})"),
        })?;
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
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        } else {
            validation.set_required_spec_claims(&["exp", "sub"]);
        }
        Self {
            keys,
            refetch_interval: JWKS_REFETCH_INTERVAL,
            validation,
            authorized_parties,
        }
    }

    /// The same authenticator with another shortest time between two JWKS fetches caused by
    /// unknown `kid`s (default [`JWKS_REFETCH_INTERVAL`]).
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Verifies the `Authorization` header value and returns the caller.
    ///
    /// Errors: [`ApiError::Unauthorized`] (401) for a missing header, another scheme, a malformed
    /// token, any algorithm but RS256 (`none`, HS256...), a bad signature, an unknown `kid`,
    /// `exp`/`nbf` outside the leeway, a wrong issuer, a disallowed `azp`, no `sub`, no `sid`
    /// (not a Clerk session token), or no active organization. [`ApiError::Unavailable`] (503)
    /// when the token names a key this instance does not hold and the JWKS cannot be fetched
    /// (an identity-provider outage is not the client's fault); keys already fetched stay usable.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let header = authorization.ok_or_else(|| unauthorized("Missing Authorization header"))?;
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
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
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                    "Token issuer is not allowed"
                }
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
        // Clerk session tokens carry the session id; other Clerk JWTs (templates, M2M) do not.
        if claims.sid.as_deref().is_none_or(str::is_empty) {
            return Err(unauthorized("Token is not a session token"));
        }
        let user_id = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("Token has no subject"))?;
        let v2_org = claims.o.and_then(|o| o.id);
        if let (Some(v1), Some(v2)) = (&claims.org_id, &v2_org)
            && v1 != v2
        {
            return Err(unauthorized("Token names two different organizations"));
        }
        let org_id = claims
            .org_id
            .or(v2_org)
            .filter(|o| !o.is_empty())
            .ok_or_else(|| unauthorized("Token has no active organization"))?;
        if !is_clerk_id(&user_id) {
            return Err(unauthorized("Token subject is not a valid user id"));
        }
        if !is_clerk_id(&org_id) {
            return Err(unauthorized(
                "Token organization is not a valid organization id",
            ));
        }
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
        let fetch_failed = {
            let mut last = last_fetch.lock().await;
            // Another request may have refreshed the keys while this one waited for the lock.
            if let Some(key) = keys.read().await.get(kid) {
                return Ok(key.clone());
            }
            let due = last.is_none_or(|fetch| {
                let wait = if fetch.ok {
                    self.refetch_interval
                } else {
                    JWKS_RETRY_AFTER_FAILURE
                };
                fetch.at.elapsed() >= wait
            });
            if due {
                let result = fetch_jwks(http, url).await;
                *last = Some(Fetch {
                    at: Instant::now(),
                    ok: result.is_ok(),
                });
                match result {
                    Ok(fresh) => *keys.write().await = fresh,
                    Err(e) => tracing::error!(error = %e, "JWKS fetch failed"),
                }
            }
            last.is_some_and(|fetch| !fetch.ok)
        };
        match keys.read().await.get(kid) {
            Some(key) => Ok(key.clone()),
            None if fetch_failed => Err(ApiError::Unavailable(
                "the JWKS could not be fetched and the token's key is not cached".into(),
            )),
            None => Err(unauthorized("Token signing key is unknown")),
        }
    }
}

/// Whether `id` has the shape of a Clerk id (`user_2abc...`, `org_2abc...`): 1 to 128 ASCII
/// letters, digits, `_` or `-`. Ids end up in DynamoDB keys, which must stay short.
pub fn is_clerk_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const ISSUER: &str = "https://clerk.example.test";
    const PARTY: &str = "https://app.example.test";

    /// A fresh RSA key pair: (private PKCS#8 PEM, public PEM).
    fn key_pair() -> (Vec<u8>, Vec<u8>) {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = <rsa::PrivateKey as rsa::Generate>::generate();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (private.as_bytes().to_vec(), public.into_bytes())
    }

    fn keys() -> &'static [(Vec<u8>, Vec<u8>); 2] {
        static KEYS: OnceLock<[(Vec<u8>, Vec<u8>); 2]> = OnceLock::new();
        KEYS.get_or_init(|| [key_pair(), key_pair()])
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "sub": "user_1", "sid": "sess_1", "azp": PARTY, "org_id": "org_1",
               "iat": now(), "nbf": now() - 1, "exp": now() + 60})
    }

    fn sign(key: usize, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&keys()[key].0).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value;
        }
        claims
    }

    fn pem_authenticator() -> Authenticator {
        Authenticator::with_pem(&keys()[0].1, Some(ISSUER.into()), vec![PARTY.into()], 5).unwrap()
    }

    fn jwk(key: usize, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(
            &EncodingKey::from_rsa_pem(&keys()[key].0).unwrap(),
            Algorithm::RS256,
        )
        .unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    async fn message(auth: &Authenticator, header: Option<&str>) -> Result<Principal, String> {
        auth.authenticate(header).await.map_err(|e| {
            assert_eq!(e.status_code(), 401);
            assert_eq!(e.code(), "UNAUTHORIZED");
            e.to_string()
        })
    }

    #[tokio::test]
    async fn every_known_attack_and_mistake_is_a_401_naming_its_class() {
        let auth = pem_authenticator();
        let bearer = |token: String| format!("Bearer {token}");
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let alg_none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims())
        );
        let hs256_with_public_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&keys()[0].1).unwrap(),
        )
        .unwrap();
        let mut tampered = sign(0, "a", &claims()).into_bytes();
        let middle = tampered.len() - 20;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("missing header", None, "Missing Authorization header"),
            (
                "wrong scheme",
                Some(format!("Basic {}", sign(0, "a", &claims()))),
                "Bearer",
            ),
            ("empty bearer", Some("Bearer ".into()), "Bearer"),
            (
                "malformed",
                Some(bearer("not-a-jwt".into())),
                "Malformed token",
            ),
            ("alg none", Some(bearer(alg_none)), "Malformed token"),
            (
                "HS256 with the public key",
                Some(bearer(hs256_with_public_key)),
                "Unsupported token algorithm",
            ),
            (
                "signed by another key",
                Some(bearer(sign(1, "a", &claims()))),
                "Token signature is invalid",
            ),
            (
                "tampered signature",
                Some(bearer(tampered)),
                "Token signature is invalid",
            ),
            (
                "expired",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "exp", json!(now() - 30)),
                ))),
                "Token has expired",
            ),
            (
                "not yet valid",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "nbf", json!(now() + 30)),
                ))),
                "Token is not yet valid",
            ),
            (
                "wrong issuer",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "iss", json!("https://evil.test")),
                ))),
                "Token issuer is not allowed",
            ),
            (
                "azp not allowed",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "azp", json!("https://evil.test")),
                ))),
                "Token authorized party is not allowed",
            ),
            (
                "no sub",
                Some(bearer(sign(0, "a", &with(claims(), "sub", Value::Null)))),
                "Token has no subject",
            ),
            (
                "not a session token (no sid)",
                Some(bearer(sign(0, "a", &with(claims(), "sid", Value::Null)))),
                "Token is not a session token",
            ),
            (
                "two different organizations (v1 and v2 claims)",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "o", json!({"id": "org_other"})),
                ))),
                "Token names two different organizations",
            ),
            (
                "no organization",
                Some(bearer(sign(0, "a", &with(claims(), "org_id", Value::Null)))),
                "Token has no active organization",
            ),
            (
                "no issuer",
                Some(bearer(sign(0, "a", &with(claims(), "iss", Value::Null)))),
                "Token issuer is not allowed",
            ),
            (
                "oversized organization",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "org_id", json!("o".repeat(20_000))),
                ))),
                "not a valid organization id",
            ),
            (
                "organization with a key separator",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "org_id", json!("org_1#PERSON")),
                ))),
                "not a valid organization id",
            ),
            (
                "odd subject",
                Some(bearer(sign(
                    0,
                    "a",
                    &with(claims(), "sub", json!("user 1")),
                ))),
                "not a valid user id",
            ),
        ];
        for (case, header, expected) in cases {
            let error = message(&auth, header.as_deref()).await.expect_err(case);
            assert!(
                error.contains(expected),
                "{case}: {error:?} should name {expected:?}"
            );
            if let Some(header) = &header {
                let token = header.split(' ').nth(1).unwrap_or_default();
                assert!(
                    token.is_empty() || !error.contains(token),
                    "{case}: the message echoes the token"
                );
            }
        }
    }

    #[tokio::test]
    async fn v1_and_v2_claims_and_clock_leeway_are_accepted() {
        let auth = pem_authenticator();
        let expected = Principal {
            user_id: "user_1".into(),
            org_id: "org_1".into(),
        };
        let v1 = sign(0, "a", &claims());
        let v2 = sign(
            0,
            "a",
            &with(
                with(claims(), "org_id", Value::Null),
                "o",
                json!({"id": "org_1", "rol": "admin"}),
            ),
        );
        let no_azp = sign(0, "a", &with(claims(), "azp", Value::Null));
        let just_expired = sign(0, "a", &with(claims(), "exp", json!(now() - 2)));
        for scheme in ["bearer", "BEARER"] {
            let header = format!("{scheme} {v1}");
            assert_eq!(auth.authenticate(Some(&header)).await, Ok(expected.clone()));
        }
        for token in [v1, v2, no_azp, just_expired] {
            assert_eq!(
                auth.authenticate(Some(&format!("Bearer {token}"))).await,
                Ok(expected.clone())
            );
        }
    }

    #[tokio::test]
    async fn jwks_keys_rotate_and_unknown_kids_cannot_hammer_the_endpoint() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/.well-known/jwks.json"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk(0, "old")]})),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/.well-known/jwks.json"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"keys": [jwk(0, "old"), jwk(1, "new")]})),
            )
            .mount(&server)
            .await;
        let interval = Duration::from_millis(300);
        let auth = Authenticator::with_jwks(
            format!("{}/.well-known/jwks.json", server.uri()),
            reqwest::Client::new(),
            Some(ISSUER.into()),
            vec![],
            5,
        )
        .with_refetch_interval(interval);
        let fetches = || async { server.received_requests().await.unwrap().len() };

        let old = format!("Bearer {}", sign(0, "old", &claims()));
        let new = format!("Bearer {}", sign(1, "new", &claims()));
        assert!(auth.authenticate(Some(&old)).await.is_ok());
        assert!(auth.authenticate(Some(&old)).await.is_ok());
        assert_eq!(fetches().await, 1);

        // The new key is published but this instance fetched moments ago: refused, no fetch.
        assert!(
            message(&auth, Some(&new))
                .await
                .unwrap_err()
                .contains("unknown")
        );
        assert_eq!(fetches().await, 1);

        tokio::time::sleep(interval).await;
        assert!(auth.authenticate(Some(&new)).await.is_ok());
        assert!(auth.authenticate(Some(&old)).await.is_ok());
        assert_eq!(fetches().await, 2);

        // A burst of 100 tokens naming random kids costs at most one fetch per interval.
        tokio::time::sleep(interval).await;
        let burst: Vec<_> = (0..100)
            .map(|i| format!("Bearer {}", sign(0, &format!("random-{i}"), &claims())))
            .collect();
        for token in &burst {
            assert!(auth.authenticate(Some(token)).await.is_err());
        }
        assert_eq!(fetches().await, 3);
    }

    #[tokio::test]
    async fn a_jwks_outage_is_503_and_keys_already_fetched_stay_usable() {
        let server = MockServer::start().await;
        // First fetch fails (identity-provider outage), the next serves key "a", then the
        // endpoint fails again for good.
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk(0, "a")]})))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let auth = Authenticator::with_jwks(
            format!("{}/jwks", server.uri()),
            reqwest::Client::new(),
            Some(ISSUER.into()),
            vec![],
            5,
        );
        let token = format!("Bearer {}", sign(0, "a", &claims()));
        let fetches = || async { server.received_requests().await.unwrap().len() };

        let outage = auth.authenticate(Some(&token)).await.unwrap_err();
        assert_eq!((outage.status_code(), outage.code()), (503, "UNAVAILABLE"));
        // Within the retry delay: still 503, and no second fetch.
        let again = auth.authenticate(Some(&token)).await.unwrap_err();
        assert_eq!(again.status_code(), 503);
        assert_eq!(fetches().await, 1);

        tokio::time::sleep(JWKS_RETRY_AFTER_FAILURE).await;
        assert!(auth.authenticate(Some(&token)).await.is_ok());
        assert_eq!(fetches().await, 2);

        // The endpoint fails from now on: the cached key keeps working without a fetch, and a
        // token naming a key this instance never had is 503 (it may be valid), not 401.
        tokio::time::sleep(JWKS_RETRY_AFTER_FAILURE).await;
        assert!(auth.authenticate(Some(&token)).await.is_ok());
        assert_eq!(fetches().await, 2);
        let rotated = format!("Bearer {}", sign(1, "b", &claims()));
        // A successful fetch was less than the refetch interval ago: an unknown kid is 401.
        assert_eq!(
            auth.authenticate(Some(&rotated))
                .await
                .unwrap_err()
                .status_code(),
            401
        );
    }
}
