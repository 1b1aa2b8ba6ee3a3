//! The gateway's answers to malformed and unmatched requests: always the JSON error envelope,
//! with the handlers' own order (401 before 400) wherever the enrichment path is involved, and
//! also for what the HTTP layer refuses before any route (raw control bytes in the target, more
//! than 100 header fields, a target of 64 KiB, an oversized head, broken framing headers).

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

/// How long one exchange with the gateway may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `method` on the raw request target `target` (sent as written, without any
/// normalization), with or without a bearer token; returns the status and the body as JSON
/// (`Value::String` of the text when it is not JSON).
async fn send(stack: &Stack, method: &str, target: &str, token: Option<&str>) -> (u16, Value) {
    let address = stack.info.gateway_url.trim_start_matches("http://");
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    send_raw(stack, &[request.as_bytes()]).await
}

/// Sends `pieces` as they are, one write each (10 ms apart), then reads the answer to the end;
/// returns the status and the body as in [`send`].
async fn send_raw(stack: &Stack, pieces: &[&[u8]]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = stack.info.gateway_url.trim_start_matches("http://");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        for (n, piece) in pieces.iter().enumerate() {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stream.write_all(piece).await.unwrap();
        }
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("the gateway answers in time");
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
async fn the_openapi_document_is_served_without_a_token() {
    let stack = start().await;
    let (status, body) = send(&stack, "GET", "/openapi.yaml", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("the document is YAML, not JSON");
    assert!(text.starts_with("openapi: 3.1"), "{text:.80}");
    assert_eq!(text, local_stack::gateway::OPENAPI_DOCUMENT);
    let (status, body) = send(&stack, "POST", "/openapi.yaml", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
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

/// The envelope's code, with the status; the message must say something.
fn rejection(answer: &(u16, Value)) -> (u16, &str) {
    let (status, body) = answer;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{status} {body}"
    );
    (*status, body["error"]["code"].as_str().unwrap_or_default())
}

/// A request head: `request_line`, `Host`, `Connection: close`, then `fields`.
fn head(request_line: &[u8], fields: &[String]) -> Vec<u8> {
    let mut head = request_line.to_vec();
    head.extend_from_slice(b"\r\nHost: gateway.test\r\nConnection: close\r\n");
    for field in fields {
        head.extend_from_slice(field.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test]
async fn gateway_raw_control_bytes_in_the_target_get_the_400_envelope() {
    let stack = start().await;
    let id = Uuid::new_v4();
    let route = format!("/api/v1/operations/enrichment/{id}");
    for target in [
        format!("{route}\0?field=emails").into_bytes(),
        b"/a\0b".to_vec(),
        format!("{route}?field=emails\0").into_bytes(),
        format!("{route}\x01?field=emails").into_bytes(),
        format!("{route}\x1b?field=emails").into_bytes(),
        format!("{route}\x7f?field=emails").into_bytes(),
        format!("{route}\t?field=emails").into_bytes(),
        // Not UTF-8, and a `"` in the query: not a URI either.
        [route.as_bytes(), b"\xff?field=emails"].concat(),
        format!("{route}?field=\"emails\"").into_bytes(),
    ] {
        for method in ["GET", "POST"] {
            let line = [method.as_bytes(), b" ", &target, b" HTTP/1.1"].concat();
            let answer = send_raw(&stack, &[&head(&line, &["Content-Length: 0".into()])]).await;
            assert_eq!(
                rejection(&answer),
                (400, "VALIDATION_ERROR"),
                "{method} {}",
                String::from_utf8_lossy(&target)
            );
        }
    }
    // Percent-encoded, the same bytes reach the handlers, which answer 401 first.
    let (status, body) = send(&stack, "POST", &format!("{route}%00?field=emails"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("UNAUTHORIZED"))
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_more_than_100_headers_get_the_400_envelope() {
    let stack = start().await;
    let target = format!(
        "/api/v1/operations/enrichment/{}?field=emails",
        Uuid::new_v4()
    );
    let line = format!("GET {target} HTTP/1.1");
    // Host and Connection, then 98 more: 100 fields, served (401: no token).
    let fields: Vec<String> = (0..98).map(|n| format!("X-Field-{n}: {n}")).collect();
    let (status, body) = send_raw(&stack, &[&head(line.as_bytes(), &fields)]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("UNAUTHORIZED"))
    );
    // 101 fields.
    let fields: Vec<String> = (0..99).map(|n| format!("X-Field-{n}: {n}")).collect();
    let answer = send_raw(&stack, &[&head(line.as_bytes(), &fields)]).await;
    assert_eq!(rejection(&answer), (400, "VALIDATION_ERROR"));
    // Far more, as one client sending a header flood.
    let fields: Vec<String> = (0..1000).map(|n| format!("X-Field-{n}: {n}")).collect();
    let answer = send_raw(&stack, &[&head(line.as_bytes(), &fields)]).await;
    assert_eq!(rejection(&answer), (400, "VALIDATION_ERROR"));
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_a_64_kib_path_gets_the_414_envelope() {
    let stack = start().await;
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    for length in [64 * 1024, 64 * 1024 + 1, 300 * 1024] {
        let long = "a".repeat(length);
        for target in [
            format!("/{long}"),
            format!("/api/v1/operations/enrichment/{long}?field=emails"),
            format!(
                "/api/v1/operations/enrichment/{}?field={long}",
                Uuid::new_v4()
            ),
        ] {
            for method in ["GET", "POST"] {
                let (status, body) = send(&stack, method, &target, Some(&token)).await;
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (414, &json!("URI_TOO_LONG")),
                    "{method} of {} bytes: {body}",
                    target.len()
                );
            }
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_an_oversized_head_gets_the_413_envelope() {
    let stack = start().await;
    let line = b"GET / HTTP/1.1";
    let large = "v".repeat(local_stack::gateway::MAX_HEAD_BYTES);
    let answer = send_raw(&stack, &[&head(line, &[format!("X-Large: {large}")])]).await;
    assert_eq!(rejection(&answer), (413, "PAYLOAD_TOO_LARGE"));
    // Many fields within the count, together too large.
    let fields: Vec<String> = (0..40)
        .map(|n| format!("X-Field-{n}: {}", "v".repeat(2 * 1024)))
        .collect();
    let answer = send_raw(&stack, &[&head(line, &fields)]).await;
    assert_eq!(rejection(&answer), (413, "PAYLOAD_TOO_LARGE"));
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_malformed_heads_get_the_400_envelope() {
    let stack = start().await;
    let route = format!(
        "/api/v1/operations/enrichment/{}?field=emails",
        Uuid::new_v4()
    );
    let cases: Vec<(Vec<u8>, Vec<String>)> = vec![
        (format!("G(T {route} HTTP/1.1").into_bytes(), vec![]),
        (format!("GET {route} HTTP/2.0").into_bytes(), vec![]),
        (format!("GET {route} HTTP/1.1 extra").into_bytes(), vec![]),
        (format!("GET {route}").into_bytes(), vec![]),
        (
            format!("GET {route} HTTP/1.1").into_bytes(),
            vec!["Bad Name: x".into()],
        ),
        (
            format!("GET {route} HTTP/1.1").into_bytes(),
            vec!["X-Value: a\x01b".into()],
        ),
        (
            format!("POST {route} HTTP/1.1").into_bytes(),
            vec!["Content-Length: abc".into()],
        ),
        (
            format!("POST {route} HTTP/1.1").into_bytes(),
            vec!["Content-Length: -1".into()],
        ),
        (
            format!("POST {route} HTTP/1.1").into_bytes(),
            vec!["Content-Length: 0".into(), "Content-Length: 5".into()],
        ),
        (
            format!("POST {route} HTTP/1.1").into_bytes(),
            vec!["Transfer-Encoding: gzip".into()],
        ),
        (
            format!("POST {route} HTTP/1.0").into_bytes(),
            vec!["Transfer-Encoding: chunked".into()],
        ),
    ];
    for (line, fields) in cases {
        let answer = send_raw(&stack, &[&head(&line, &fields)]).await;
        assert_eq!(
            rejection(&answer),
            (400, "VALIDATION_ERROR"),
            "{} {fields:?}",
            String::from_utf8_lossy(&line)
        );
    }
    // An HTTP/2 preface on this HTTP/1 server.
    let answer = send_raw(&stack, &[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await;
    assert_eq!(rejection(&answer), (400, "VALIDATION_ERROR"));
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_serves_a_head_that_arrives_in_pieces_and_one_request_per_connection() {
    let stack = start().await;
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    let target = "/api/v1/operations/enrichment/not-a-uuid?field=emails";
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let bytes = request.as_bytes();
    let pieces: Vec<&[u8]> = vec![
        &bytes[..2],
        &bytes[2..20],
        &bytes[20..bytes.len() - 3],
        &bytes[bytes.len() - 3..],
    ];
    // No `Connection: close` from the client: the gateway closes after its answer.
    let (status, body) = send_raw(&stack, &pieces).await;
    assert_eq!((status, body), (400, person_id_error()));
    // A body sent with the head reaches hyper whole.
    let request =
        format!("POST {target} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\nhello");
    let (status, body) = send_raw(&stack, &[request.as_bytes()]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("UNAUTHORIZED"))
    );
    stack.shutdown().await;
}

/// The asterisk, authority and absolute forms of a request target (RFC 9112, section 3.2).
#[tokio::test]
async fn gateway_unusual_request_targets_get_the_envelope() {
    let stack = start().await;
    for line in [
        &b"OPTIONS * HTTP/1.1"[..],
        b"CONNECT gateway.test:443 HTTP/1.1",
        b"GET http://gateway.test/api/v1/operations HTTP/1.1",
        b"GET http://gateway.test/.well-known/other.json HTTP/1.0",
    ] {
        let (status, body) = send_raw(&stack, &[&head(line, &[])]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("NOT_FOUND")),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    stack.shutdown().await;
}
