//! Provider API keys from AWS Secrets Manager: in AWS the template passes each key as a secret
//! reference (`<NAME>_API_KEY_SECRET_ARN`), never as plaintext. Read once per cold start
//! (AWS docs, "GetSecretValue"; the secret is the key itself, as a plain `SecretString`).

use std::collections::HashMap;

use aws_sdk_secretsmanager::error::DisplayErrorContext;

/// The Secrets Manager client, built from the process's SDK configuration.
pub use aws_sdk_secretsmanager::Client as SecretsClient;

/// The suffix of a variable that names a secret holding an API key.
pub const SECRET_SUFFIX: &str = "_API_KEY_SECRET_ARN";

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct SecretError {
    /// The `*_API_KEY_SECRET_ARN` variable.
    pub variable: String,
    /// What went wrong.
    pub message: String,
}

/// For each `(NAME_API_KEY_SECRET_ARN, arn)` in `vars` with a non-empty ARN, reads the secret and
/// returns it as `NAME_API_KEY` (so the cascade's configuration reads keys the same way in AWS and
/// in local mode, where `NAME_API_KEY` is set directly).
///
/// Errors: a secret that does not exist, is not readable by the function's role, or holds no
/// `SecretString`.
pub async fn resolve_api_keys(
    client: &SecretsClient,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, SecretError> {
    let mut keys = HashMap::new();
    for (variable, arn) in vars {
        let Some(prefix) = variable.strip_suffix(SECRET_SUFFIX) else {
            continue;
        };
        if arn.trim().is_empty() {
            continue;
        }
        let error = |message: String| SecretError {
            variable: variable.clone(),
            message,
        };
        let secret = client
            .get_secret_value()
            .secret_id(arn.trim())
            .send()
            .await
            .map_err(|e| error(DisplayErrorContext(&e).to_string()))?
            .secret_string
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| error("the secret holds no SecretString".into()))?;
        keys.insert(format!("{prefix}_API_KEY"), secret);
    }
    Ok(keys)
}
