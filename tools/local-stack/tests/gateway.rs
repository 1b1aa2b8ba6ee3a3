//! The gateway's answers to malformed and unmatched requests: always the JSON error envelope,
//! with the handlers' own order (401 before 400) wherever the enrichment path is involved.

use std::path::PathBuf;
use std::time::Duration;

use local_stack::{Options, Stack};
use serde_json::{Value, json};
use uuid::Uuid;

const ORG: &str = "org_acme";

async fn start() -> Stack {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut options = Options::for_repo(&root);
    options.state_dir = std::env::temp_dir().join(format!("gateway-test-{}", Uuid::new_v4()));
    options.persist = false;
    options.port = 0;
    options.local_worker = false;
    Stack::start(options).await.expect("local stack starts")
}

/// Sends `method` on the raw request target `target` (sent as written, without any
/// normalization), with or without a bearer token; returns the status and the body as JSON
/// (`Value::String` of the text when it is not JSON).
async fn send(stack: &Stack, method: &str, target: &str, token: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = stack.info.gateway_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk: `<size>\r\n<data>\r\n0\r\n\r\n`.
        body.split_once("\r\n")
            .map_or("", |(_, rest)| rest)
            .rsplit_once("\r\n0\r\n")
            .map_or("", |(data, _)| data)
            .trim_end_matches("\r\n")
            .to_string()
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

fn person_id_error() -> Value {
    json!({"error": {
        "code": "VALIDATION_ERROR",
        "message": enrichment::http::PERSON_ID_MESSAGE,
    }})
}

#[tokio::test]
async fn percent_encoded_person_ids_keep_method_and_headers_and_get_400() {
    let stack = start().await;
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    let id = Uuid::new_v4();
    for encoded in [
        format!("%20{id}"),
        format!("{id}%20"),
        format!("%3C{id}"),
        format!("{id}%3E"),
        format!("%0A{id}"),
        format!("{id}%00"),
        format!("%FF{id}"),
        format!("{id}%C3%28"),
        format!("a%2Fb{id}"),
        "%25".to_string(),
    ] {
        let target = format!("/api/v1/operations/enrichment/{encoded}?field=emails");
        for method in ["POST", "GET"] {
            // With the token: the handlers authenticate, then reject the personId.
            let (status, body) = send(&stack, method, &target, Some(&token)).await;
            assert_eq!(
                (status, &body),
                (400, &person_id_error()),
                "{method} {target}"
            );
            // Without it: 401, not the 405 of a request that lost its method.
            let (status, body) = send(&stack, method, &target, None).await;
            assert_eq!(status, 401, "{method} {target}: {body}");
            assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        }
        let (status, body) = send(&stack, "DELETE", &target, Some(&token)).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (405, &json!("METHOD_NOT_ALLOWED"))
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn unmatched_paths_answer_the_envelope() {
    let stack = start().await;
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    let not_found = json!({"error": {"code": "NOT_FOUND", "message": "Route not found"}});
    let id = Uuid::new_v4();
    for target in [
        "/".to_string(),
        format!("/api/v1/operations/enrichment/{id}/extra"),
        format!("/api/v1/operations/enrichment/{id}/"),
        "/api/v1/operations/enrichments".to_string(),
        "/api/v1/operations".to_string(),
        "/.well-known/other.json".to_string(),
    ] {
        for method in ["GET", "POST"] {
            let (status, body) = send(&stack, method, &target, Some(&token)).await;
            assert_eq!((status, &body), (404, &not_found), "{method} {target}");
        }
    }
    // The enrichment path without a personId: the handlers' 401, then 400.
    for target in [
        "/api/v1/operations/enrichment/?field=emails",
        "/api/v1/operations/enrichment?field=emails",
    ] {
        for method in ["GET", "POST"] {
            let (status, body) = send(&stack, method, target, Some(&token)).await;
            assert_eq!(
                (status, &body),
                (400, &person_id_error()),
                "{method} {target}"
            );
            let (status, body) = send(&stack, method, target, None).await;
            assert_eq!(status, 401, "{method} {target}: {body}");
        }
    }
    // The JWKS route with another method.
    let (status, body) = send(&stack, "POST", "/.well-known/jwks.json", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    // The same message as the handler's for a personId that is not a UUID.
    let (status, body) = send(
        &stack,
        "GET",
        "/api/v1/operations/enrichment/not-a-uuid?field=emails",
        Some(&token),
    )
    .await;
    assert_eq!((status, body), (400, person_id_error()));
    stack.shutdown().await;
}

#[tokio::test]
async fn an_overlong_uri_gets_414_in_the_envelope() {
    let stack = start().await;
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    let long = "a".repeat(local_stack::gateway::MAX_URI_BYTES);
    let target = format!("/api/v1/operations/enrichment/{long}?field=emails");
    let (status, body) = send(&stack, "POST", &target, Some(&token)).await;
    assert_eq!(status, 414, "{body}");
    assert_eq!(body["error"]["code"], "URI_TOO_LONG");
    let target = format!("/{long}");
    let (status, body) = send(&stack, "GET", &target, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (414, &json!("URI_TOO_LONG"))
    );
    // Just under the limit: the handlers answer.
    let long = "a".repeat(local_stack::gateway::MAX_URI_BYTES - 60);
    let target = format!("/api/v1/operations/enrichment/{long}?field=emails");
    let (status, body) = send(&stack, "GET", &target, Some(&token)).await;
    assert_eq!((status, body), (400, person_id_error()));
    stack.shutdown().await;
}
