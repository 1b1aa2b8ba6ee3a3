//! The API's errors and their one mapping to the spec's error envelope
//! (`{"error": {"code", "message", "details"?}}`, spec section "Error Codes").

use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::OperationType;

/// The spec's message for a missing or invalid `field` query parameter, to the letter.
pub const FIELD_MESSAGE: &str =
    r#"Field query parameter is required and must be "phones" or "emails""#;

/// The message of a `503 UNAVAILABLE`: the request can be sent again as it is.
pub const UNAVAILABLE_MESSAGE: &str = "Service temporarily unavailable; retry the request";

/// The `Retry-After` of a `503 UNAVAILABLE`, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 1;

/// An error a client sees. Each variant maps to one status code and error code of the spec's
/// "Error Codes" table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 400 `VALIDATION_ERROR`: missing or invalid `personId` or `field`.
    #[error("{0}")]
    Validation(String),
    /// 400 `VALIDATION_ERROR` about one value of a body or query: `details.field` is its path
    /// (`persons[2].lastName`, `limit`), and `details.index` the entry of a list it belongs to
    /// (spec operations-api, "Common rules").
    #[error("{message}")]
    InvalidField {
        /// What is wrong, for a person to read.
        message: String,
        /// The path of the value.
        field: String,
        /// The position of the entry in the body's list, when the value is in one.
        index: Option<usize>,
    },
    /// 413 `PAYLOAD_TOO_LARGE`: a body over the route's limit, in bytes.
    #[error("Request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 401 `UNAUTHORIZED`: missing or invalid token; the text says which class of problem, never
    /// the token itself.
    #[error("{0}")]
    Unauthorized(String),
    /// 402 `INSUFFICIENT_CREDITS`: the org's balance does not cover `required` credits for
    /// `count` new enrichments; `details: {"operationType", "count", "required"}`. The message is
    /// the spec's: `Insufficient credits for enrichment_email. Required: 15 credits.`, or for a
    /// bulk `Not enough credits to complete the bulk enrichment` (spec operations-api, "Bulk
    /// enrichment").
    #[error("{}", credits_message(*.operation_type, *.required, *.bulk))]
    InsufficientCredits {
        /// `enrichment_email` or `enrichment_phone`.
        operation_type: OperationType,
        /// New enrichments the request would have created.
        count: usize,
        /// Credits they cost together.
        required: i64,
        /// Whether the request was a bulk enrichment (its message differs).
        bulk: bool,
    },
    /// 404 `NOT_FOUND` `Person not found` for a batch or bulk naming ids that are no people of
    /// the org: `details.personIds` lists them (spec operations-api, "Batch enrichment").
    #[error("Person not found")]
    PeopleNotFound(Vec<uuid::Uuid>),
    /// 404 `NOT_FOUND`, with the message to show (`Enrichment not found`, `Person not found`).
    #[error("{0}")]
    NotFound(String),
    /// 405 `METHOD_NOT_ALLOWED`: a method the route does not serve.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 409 `CONFLICT`: the request cannot apply to the resource as it now is, with the message
    /// to show (`Enrichment is already finished`; spec operations-api, "Cancel").
    #[error("{0}")]
    Conflict(String),
    /// 429 `RATE_LIMITED`: the org sent more requests than its limit allows; the response
    /// carries `Retry-After` with `retry_after_seconds` (spec operations-api, "Common rules").
    #[error("Too many requests; retry after {retry_after_seconds} seconds")]
    RateLimited {
        /// Whole seconds until a new request can be accepted (at least 1).
        retry_after_seconds: u64,
    },
    /// 500 `INTERNAL_ERROR`; the detail goes to the logs, not to the client.
    #[error("{0}")]
    Internal(String),
    /// 503 `UNAVAILABLE`: a service this one depends on (DynamoDB, SQS, the identity provider's
    /// JWKS) did not answer in time; retryable. The detail goes to the logs, not to the client.
    #[error("{0}")]
    Unavailable(String),
}

fn credits_message(operation_type: OperationType, required: i64, bulk: bool) -> String {
    if bulk {
        "Not enough credits to complete the bulk enrichment".into()
    } else {
        format!("Insufficient credits for {operation_type}. Required: {required} credits.")
    }
}

/// The whole number `text` of the parameter `name` (trimmed), within `range`; `default` when
/// not given.
///
/// Errors: 400 naming `name`: `limit must be a whole number from 1 to 1000`.
pub(crate) fn whole_number(
    name: &str,
    text: Option<&str>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    name,
                    format!(
                        "{name} must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

/// The body of an error response: `{"error": {...}}`.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

impl ApiError {
    /// A 400 about the value at `field` (see [`ApiError::InvalidField`]).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            message: message.into(),
            field: field.into(),
            index: None,
        }
    }

    /// The HTTP status code (spec, "Error Codes").
    pub fn status_code(&self) -> u16 {
        match self {
            ApiError::Validation(_) | ApiError::InvalidField { .. } => 400,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::Unauthorized(_) => 401,
            ApiError::InsufficientCredits { .. } => 402,
            ApiError::NotFound(_) | ApiError::PeopleNotFound(_) => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::Conflict(_) => 409,
            ApiError::RateLimited { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// The error code string (spec, "Error Codes").
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) | ApiError::InvalidField { .. } => "VALIDATION_ERROR",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::InsufficientCredits { .. } => "INSUFFICIENT_CREDITS",
            ApiError::NotFound(_) | ApiError::PeopleNotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Internal(_) => "INTERNAL_ERROR",
            ApiError::Unavailable(_) => "UNAVAILABLE",
        }
    }

    /// The `Retry-After` header value (seconds) the response carries, for 429 and 503.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_seconds,
            } => Some(*retry_after_seconds),
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECONDS),
            _ => None,
        }
    }

    /// The JSON envelope. An internal error's or an unavailable dependency's detail is replaced
    /// by a generic message.
    pub fn to_json(&self) -> String {
        let (message, details) = match self {
            ApiError::Internal(_) => ("Internal server error".to_string(), None),
            ApiError::Unavailable(_) => (UNAVAILABLE_MESSAGE.to_string(), None),
            ApiError::InvalidField { field, index, .. } => {
                let mut details = json!({ "field": field });
                if let Some(index) = index {
                    details["index"] = json!(index);
                }
                (self.to_string(), Some(details))
            }
            ApiError::InsufficientCredits {
                operation_type,
                count,
                required,
                ..
            } => (
                self.to_string(),
                Some(
                    json!({"operationType": operation_type, "count": count, "required": required}),
                ),
            ),
            ApiError::PeopleNotFound(ids) => (self.to_string(), Some(json!({ "personIds": ids }))),
            other => (other.to_string(), None),
        };
        let envelope = Envelope {
            error: Body {
                code: self.code(),
                message,
                details,
            },
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"error":{"code":"INTERNAL_ERROR","message":"Internal server error"}}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_credits_matches_the_spec_example() {
        let error = ApiError::InsufficientCredits {
            operation_type: OperationType::EnrichmentEmail,
            count: 1,
            required: 1,
            bulk: false,
        };
        let body: Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(error.status_code(), 402);
        assert_eq!(
            body,
            json!({"error": {
                "code": "INSUFFICIENT_CREDITS",
                "message": "Insufficient credits for enrichment_email. Required: 1 credits.",
                "details": {"operationType": "enrichment_email", "count": 1, "required": 1}
            }})
        );
    }

    #[test]
    fn a_bulk_refused_for_credits_has_its_own_message_and_the_same_details() {
        let error = ApiError::InsufficientCredits {
            operation_type: OperationType::EnrichmentPhone,
            count: 3,
            required: 60,
            bulk: true,
        };
        let body: Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(
            body,
            json!({"error": {
                "code": "INSUFFICIENT_CREDITS",
                "message": "Not enough credits to complete the bulk enrichment",
                "details": {"operationType": "enrichment_phone", "count": 3, "required": 60}
            }})
        );
        let batch = ApiError::InsufficientCredits {
            operation_type: OperationType::EnrichmentPhone,
            count: 3,
            required: 60,
            bulk: false,
        };
        assert_eq!(
            batch.to_string(),
            "Insufficient credits for enrichment_phone. Required: 60 credits."
        );
    }

    #[test]
    fn unknown_people_are_listed_in_the_details() {
        let id = uuid::Uuid::nil();
        let error = ApiError::PeopleNotFound(vec![id]);
        let body: Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(error.status_code(), 404);
        assert_eq!(
            body,
            json!({"error": {"code": "NOT_FOUND", "message": "Person not found",
                             "details": {"personIds": [id.to_string()]}}})
        );
    }

    #[test]
    fn validation_error_matches_the_spec_example() {
        let body: Value =
            serde_json::from_str(&ApiError::Validation(FIELD_MESSAGE.into()).to_json()).unwrap();
        assert_eq!(
            body,
            json!({"error": {
                "code": "VALIDATION_ERROR",
                "message": "Field query parameter is required and must be \"phones\" or \"emails\""
            }})
        );
    }

    #[test]
    fn unavailable_and_rate_limited_are_retryable_envelopes() {
        let unavailable = ApiError::Unavailable("dynamodb: timed out".into());
        let body: Value = serde_json::from_str(&unavailable.to_json()).unwrap();
        assert_eq!(unavailable.status_code(), 503);
        assert_eq!(
            body,
            json!({"error": {"code": "UNAVAILABLE", "message": UNAVAILABLE_MESSAGE}})
        );
        assert_eq!(unavailable.retry_after_seconds(), Some(1));
        let limited = ApiError::RateLimited {
            retry_after_seconds: 7,
        };
        let body: Value = serde_json::from_str(&limited.to_json()).unwrap();
        assert_eq!(limited.status_code(), 429);
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert_eq!(limited.retry_after_seconds(), Some(7));
        assert_eq!(ApiError::NotFound("x".into()).retry_after_seconds(), None);
    }

    #[test]
    fn conflict_is_409_with_its_message() {
        let error = ApiError::Conflict("Enrichment is already finished".into());
        let body: Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(error.status_code(), 409);
        assert_eq!(
            body,
            json!({"error": {"code": "CONFLICT", "message": "Enrichment is already finished"}})
        );
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let body = ApiError::Internal("dynamodb: connection refused".into()).to_json();
        assert!(!body.contains("dynamodb"));
        assert!(body.contains("INTERNAL_ERROR"));
    }
}
