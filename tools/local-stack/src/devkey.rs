//! The local stack's dev signing key: an RSA key made once (the `rsa` crate, 3072 bits, the
//! operating system's RNG) into the state folder,
//! served as a JWKS by the gateway and used by `enrichctl token`. The deployed functions never
//! see it: their key source is configuration (`AUTH_JWKS_URL` / `AUTH_JWT_KEY`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::DEV_KID;

/// The longest lifetime [`sign`] gives a token: one year (365 days).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(31_536_000);

/// Returns the path of `<state>/dev-key.pem`, creating an RSA key there (PKCS#8 PEM,
/// [`rsa::PrivateKey::DEFAULT_BITS`] bits) if absent.
///
/// Errors: the key cannot be made or written.
pub fn ensure(state_dir: &Path) -> Result<PathBuf, String> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let path = state_dir.join("dev-key.pem");
    if path.exists() {
        return Ok(path);
    }
    let key = <rsa::PrivateKey as rsa::Generate>::try_generate()
        .map_err(|e| format!("cannot make the dev key: {e}"))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the dev key: {e}"))?;
    std::fs::write(&path, pem.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The public half of the dev key at `path`, as a PEM (`AUTH_JWT_KEY` for a function that
/// trusts the local stack's tokens).
///
/// Errors: the key cannot be read.
pub fn public_pem(path: &Path) -> Result<String, String> {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rsa::PrivateKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{} is not an RSA key: {e}", path.display()))?
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())
}

fn encoding_key(path: &Path) -> Result<EncodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    EncodingKey::from_rsa_pem(&pem)
        .map_err(|e| format!("{} is not an RSA key: {e}", path.display()))
}

/// The JWKS document (`{"keys": [...]}`) with the dev key's public half, `kid` [`DEV_KID`].
pub fn jwks(path: &Path) -> Result<String, String> {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(path)?, Algorithm::RS256)
        .map_err(|e| e.to_string())?;
    jwk.common.key_id = Some(DEV_KID.into());
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(|e| e.to_string())
}

/// A Clerk-shaped session token (v2 claims: `sub`, `o.id`, `v: 2`) signed RS256 with the dev
/// key, issued by `issuer`, valid from now for `expires_in`.
///
/// Errors: `expires_in` is zero or longer than [`MAX_TOKEN_LIFETIME`]; the key cannot be read.
pub fn sign(
    path: &Path,
    issuer: &str,
    user_id: &str,
    org_id: &str,
    expires_in: Duration,
) -> Result<String, String> {
    let lifetime = expires_in.as_secs();
    if lifetime == 0 || lifetime > MAX_TOKEN_LIFETIME.as_secs() {
        return Err(format!(
            "a token's lifetime must be 1 to {} seconds, got {lifetime}",
            MAX_TOKEN_LIFETIME.as_secs()
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let expires_at = i64::try_from(lifetime)
        .ok()
        .and_then(|lifetime| now.checked_add(lifetime))
        .ok_or_else(|| format!("a lifetime of {lifetime} seconds is out of range"))?;
    let claims = json!({
        "iss": issuer,
        "sub": user_id,
        "sid": format!("sess_local_{now}"),
        "iat": now,
        "nbf": now,
        "exp": expires_at,
        "v": 2,
        "o": {"id": org_id, "rol": "admin"},
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(DEV_KID.into());
    jsonwebtoken::encode(&header, &claims, &encoding_key(path)?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("devkey-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        ensure(&dir).unwrap()
    }

    #[test]
    fn lifetimes_out_of_range_are_refused_without_overflow() {
        let key = key();
        let sign_for = |seconds: u64| {
            sign(
                &key,
                "http://127.0.0.1:3000",
                "user_a",
                "org_a",
                Duration::from_secs(seconds),
            )
        };
        for seconds in [
            0,
            31_536_001,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
        ] {
            let error = sign_for(seconds).unwrap_err();
            assert!(
                error.contains("1 to 31536000 seconds"),
                "{seconds}: {error}"
            );
        }
        let token = sign_for(31_536_000).unwrap();
        let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token)
            .unwrap()
            .claims;
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert_eq!(lifetime, 31_536_000);
    }
}
