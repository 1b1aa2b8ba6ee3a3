//! The people API through the local gateway, which calls the people function's handler: create
//! one or a batch, read, list in pages, delete (spec operations-api, "People").

use std::time::Duration;

use enrichment::domain::Field;
use local_stack::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{ledger, private_options};

const ORG: &str = "org_people";

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(stack: &Stack, org: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: stack.info.gateway_url.clone(),
            token: stack
                .token("user_p", org, Duration::from_secs(300))
                .unwrap(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(&body.to_string()))
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

async fn stack() -> Stack {
    Stack::start(private_options())
        .await
        .expect("local stack starts")
}

const PERSONS: &str = "/api/v1/entities/persons";

#[tokio::test]
async fn a_created_person_is_read_back_and_hidden_from_other_orgs() {
    let stack = stack().await;
    let api = Client::new(&stack, ORG);
    let (status, created) = api
        .post(
            PERSONS,
            &json!({"firstName": " Ada ", "lastName": "Quill", "companyName": "Northwind",
                    "companyDomain": "https://www.northwind.example/",
                    "linkedinUrl": "https://www.linkedin.com/in/ada-quill"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["firstName"], "Ada");
    assert_eq!(created["companyDomain"], "northwind.example");
    assert_eq!(created["emails"], json!([]));
    assert_eq!(created["phones"], json!([]));
    assert_eq!(created["emailDetails"], json!([]));
    assert_eq!(created["createdAt"], created["updatedAt"]);
    let id = created["id"].as_str().unwrap();

    let (status, read) = api.get(&format!("{PERSONS}/{id}")).await;
    assert_eq!((status, &read), (200, &created));
    let other = Client::new(&stack, "org_elsewhere");
    let (status, body) = other.get(&format!("{PERSONS}/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"code": "NOT_FOUND", "message": "Person not found"}})
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_people_input_is_a_400_naming_the_field() {
    let stack = stack().await;
    let api = Client::new(&stack, ORG);
    let cases = [
        (json!({"lastName": "Quill"}), "firstName"),
        (
            json!({"firstName": "Ada", "lastName": "x".repeat(101)}),
            "lastName",
        ),
        (
            json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "nowhere"}),
            "companyDomain",
        ),
        (
            json!({"firstName": "Ada", "lastName": "Quill", "linkedinUrl": "https://evil.test/in/x"}),
            "linkedinUrl",
        ),
        (json!({"firstName": 3, "lastName": "Quill"}), "firstName"),
    ];
    for (body, field) in cases {
        let (status, answer) = api.post(PERSONS, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
    }
    let (status, answer) = api
        .send(reqwest::Method::POST, PERSONS, Some("{not json"))
        .await;
    assert_eq!(
        (status, answer["error"]["details"]["field"].clone()),
        (400, json!("body"))
    );
    let (status, answer) = api.get(&format!("{PERSONS}/not-a-uuid")).await;
    assert_eq!(
        (status, answer["error"]["details"]["field"].clone()),
        (400, json!("personId"))
    );
    // Unauthenticated: 401 before any validation.
    let (status, _) = reqwest::Client::new()
        .post(format!("{}{PERSONS}", stack.info.gateway_url))
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);
    // A method the path does not serve: 405 with Allow.
    let response = reqwest::Client::new()
        .put(format!("{}{PERSONS}", stack.info.gateway_url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    // A body over the limit: 413.
    let huge = format!(
        r#"{{"firstName": "{}"}}"#,
        "x".repeat(enrichment::http::MAX_BODY_BYTES)
    );
    let (status, answer) = api.send(reqwest::Method::POST, PERSONS, Some(&huge)).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (413, json!("PAYLOAD_TOO_LARGE"))
    );
    // Nothing was created by any of it.
    let (_, page) = api.get(PERSONS).await;
    assert_eq!(page, json!({"persons": [], "nextCursor": null}));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_the_list_pages_oldest_first() {
    let stack = stack().await;
    let api = Client::new(&stack, ORG);
    let person = |i: usize| json!({"firstName": format!("P{i}"), "lastName": "Batch"});

    let (status, refused) = api
        .post(
            &format!("{PERSONS}/batch"),
            &json!({"persons": [person(0), {"firstName": "No last name"}, person(2)]}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["error"]["details"],
        json!({"field": "persons[1].lastName", "index": 1})
    );
    for bad in [
        json!({"persons": []}),
        json!({"persons": (0..1001).map(person).collect::<Vec<_>>()}),
        json!({}),
    ] {
        let (status, answer) = api.post(&format!("{PERSONS}/batch"), &bad).await;
        assert_eq!(
            (status, answer["error"]["details"]["field"].clone()),
            (400, json!("persons"))
        );
    }
    assert_eq!(
        api.get(PERSONS).await.1["persons"],
        json!([]),
        "nothing created"
    );

    let (status, created) = api
        .post(
            &format!("{PERSONS}/batch"),
            &json!({"persons": (0..5).map(person).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let names: Vec<&str> = created["persons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["firstName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["P0", "P1", "P2", "P3", "P4"]);
    let (_, single) = api.post(PERSONS, &person(5)).await;

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("{PERSONS}?limit=2"),
            Some(c) => format!("{PERSONS}?limit=2&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for p in page["persons"].as_array().unwrap() {
            listed.push(p["firstName"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "the pages never end");
    }
    assert_eq!(listed, ["P0", "P1", "P2", "P3", "P4", "P5"]);
    assert_eq!(pages, 3);
    assert_eq!(single["firstName"], "P5");
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=nonsense"] {
        let (status, answer) = api.get(&format!("{PERSONS}?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn deleting_a_person_removes_its_enrichments_and_refunds_the_pending_one() {
    let stack = stack().await;
    let api = Client::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let (_, created) = api
        .post(PERSONS, &json!({"firstName": "Ada", "lastName": "Quill"}))
        .await;
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let enrichment = format!("/api/v1/operations/enrichment/{id}?field=emails");
    let (status, pending) = api.post(&enrichment, &json!({})).await;
    assert_eq!((status, pending["status"].clone()), (200, json!("pending")));
    assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));

    let response = reqwest::Client::new()
        .delete(format!("{}{PERSONS}/{id}", stack.info.gateway_url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(api.get(&format!("{PERSONS}/{id}")).await.0, 404);
    assert_eq!(api.get(&enrichment).await.0, 404);
    assert!(
        stack
            .store
            .get_enrichment(ORG, id, Field::Emails)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));
    let again = reqwest::Client::new()
        .delete(format!("{}{PERSONS}/{id}", stack.info.gateway_url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404);
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (100, vec![-5, 5]),
        "refunded once"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn deleting_a_person_with_both_fields_pending_refunds_both() {
    // One transaction cannot update the balance twice: this was a 500 (found by Schemathesis).
    let stack = stack().await;
    let api = Client::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let (_, created) = api
        .post(PERSONS, &json!({"firstName": "Ada", "lastName": "Quill"}))
        .await;
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    for field in ["emails", "phones"] {
        let path = format!("/api/v1/operations/enrichment/{id}?field={field}");
        let (status, pending) = api.post(&path, &json!({})).await;
        assert_eq!((status, pending["status"].clone()), (200, json!("pending")));
    }
    assert_eq!(ledger(&stack.store, ORG, 100).await.0, 75);

    let response = api
        .send(reqwest::Method::DELETE, &format!("{PERSONS}/{id}"), None)
        .await;
    assert_eq!(response.0, 204);
    assert_eq!(api.get(&format!("{PERSONS}/{id}")).await.0, 404);
    for field in [Field::Emails, Field::Phones] {
        let left = stack.store.get_enrichment(ORG, id, field).await.unwrap();
        assert!(left.is_none(), "{field:?}");
    }
    let (balance, mut moves) = ledger(&stack.store, ORG, 100).await;
    moves.sort_unstable();
    assert_eq!((balance, moves), (100, vec![-20, -5, 5, 20]));
    stack.shutdown().await;
}
