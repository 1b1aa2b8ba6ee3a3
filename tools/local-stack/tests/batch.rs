//! Batch and bulk enrichment through the local gateway, which calls the batch function's
//! handler (spec operations-api, "Batch enrichment" and "Bulk enrichment"), and the protocol's
//! guarantees under concurrency, a balance spent mid-way and a crash between writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextMut, BeforeSerializationInterceptorContextRef,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use enrichment::auth::Principal;
use enrichment::batch::Selection;
use enrichment::domain::{CacheUse, ContactPoint, Field, Person, timestamp};
use enrichment::enrichment::Enrichments;
use enrichment::error::ApiError;
use enrichment::queue::SqsJobQueue;
use enrichment::store::Store;
use local_stack::Stack;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

mod helpers;
use helpers::{ledger, private_options};

const ORG: &str = "org_batch";
const BATCH: &str = "/api/v1/operations/enrichment/batch";
const BULK: &str = "/api/v1/operations/enrichment/bulk";
const QUERY: &str = "/api/v1/operations/enrichment/batch/query";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(stack: &Stack, org: &str) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: stack.info.gateway_url.clone(),
            token: stack
                .token("user_b", org, Duration::from_secs(600))
                .unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, body, _) = self
            .send(reqwest::Method::POST, path, Some(body.to_string()))
            .await;
        (status, body)
    }

    async fn batch(&self, ids: &[Uuid], field: &str) -> (u16, Value) {
        self.post(BATCH, &json!({"personIds": ids, "field": field}))
            .await
    }

    async fn single(&self, id: Uuid) -> (u16, Value) {
        let (status, body, _) = self
            .send(
                reqwest::Method::POST,
                &format!("/api/v1/operations/enrichment/{id}?field=emails"),
                None,
            )
            .await;
        (status, body)
    }

    /// Creates `people` over the people API (in this order: the list's order) and returns
    /// their ids.
    async fn create_people(&self, people: &[Value]) -> Vec<Uuid> {
        let (status, body) = self
            .post(
                "/api/v1/entities/persons/batch",
                &json!({ "persons": people }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["persons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

async fn stack(local_worker: bool) -> Stack {
    let mut options = private_options();
    options.local_worker = local_worker;
    Stack::start(options).await.expect("local stack starts")
}

/// `n` people the simulator does not know, named `P0`, `P1`... at `domain`.
fn named(n: usize, domain: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"firstName": format!("P{i}"), "lastName": "Test", "companyDomain": domain}))
        .collect()
}

fn ids_of(answer: &Value) -> Vec<Uuid> {
    answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {answer}"))
        .iter()
        .map(|e| e["entityId"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The enrichment ids of the org's current enrichments of `people` (batch query), by person.
async fn current(api: &Api, people: &[Uuid]) -> HashMap<Uuid, Value> {
    let mut found = HashMap::new();
    for group in people.chunks(200) {
        let tasks: Vec<Value> = group
            .iter()
            .map(|id| json!({"entityId": id, "field": "emails"}))
            .collect();
        let (status, body) = api.post(QUERY, &json!({ "tasks": tasks })).await;
        assert_eq!(status, 200, "{body}");
        for enrichment in body.as_array().unwrap() {
            let person = enrichment["entityId"].as_str().unwrap().parse().unwrap();
            found.insert(person, enrichment.clone());
        }
    }
    found
}

#[tokio::test]
async fn a_batch_reuses_what_exists_charges_the_rest_once_and_answers_in_input_order() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let ids = api.create_people(&named(3, "northwind.example")).await;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let (status, single) = api.single(a).await;
    assert_eq!(status, 200, "{single}");

    let (status, answer) = api.batch(&[b, a, c, b], "emails").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ids_of(&answer),
        vec![b, a, c],
        "one per distinct id, input order"
    );
    assert_eq!(answer[1], single, "the existing pending one, as it is");
    for new in [&answer[0], &answer[2]] {
        assert_eq!(new["status"], "pending");
        assert_eq!(new["field"], "emails");
        assert_eq!(new["orgId"], ORG);
        assert!(new["creditTransactionId"].is_string(), "{new}");
        assert_eq!(new.as_object().unwrap().len(), 13, "{new}");
    }
    assert_eq!(ledger(&stack.store, ORG, 100).await, (85, vec![-5, -5, -5]));

    let (status, replay) = api.batch(&[b, a, c], "emails").await;
    assert_eq!(status, 200);
    assert_eq!(
        replay, answer,
        "a replay is free and answers the same enrichments"
    );
    assert_eq!(ledger(&stack.store, ORG, 100).await.0, 85);

    let (status, phones) = api.batch(&[c], "phones").await;
    assert_eq!(status, 200, "{phones}");
    assert_eq!(phones[0]["field"], "phones");
    assert_eq!(
        ledger(&stack.store, ORG, 100).await.0,
        65,
        "a phone costs 20"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn unknown_people_or_a_short_balance_refuse_the_whole_request_and_write_nothing() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    let other = Api::new(&stack, "org_other");
    stack.store.grant_credits(ORG, 14).await.unwrap();
    let ids = api.create_people(&named(3, "northwind.example")).await;
    let theirs = other.create_people(&named(1, "northwind.example")).await[0];
    let unknown = Uuid::new_v4();

    let (status, body) = api.batch(&[ids[0], unknown, theirs], "emails").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert_eq!(body["error"]["message"], "Person not found");
    assert_eq!(
        body["error"]["details"]["personIds"],
        json!([unknown, theirs]),
        "another org's person is as unknown as a missing one"
    );
    let (status, body) = api
        .post(
            BULK,
            &json!({"selection": {"mode": "manual", "includedIds": [ids[0], unknown]},
                    "field": "emails"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["details"]["personIds"], json!([unknown]));

    let (status, body) = api.batch(&ids, "emails").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        body["error"],
        json!({"code": "INSUFFICIENT_CREDITS",
               "message": "Insufficient credits for enrichment_email. Required: 15 credits.",
               "details": {"operationType": "enrichment_email", "count": 3, "required": 15}})
    );
    let (status, body) = api
        .post(
            BULK,
            &json!({"selection": {"mode": "bulk", "targetCount": 10}, "field": "emails"}),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        body["error"]["message"],
        "Not enough credits to complete the bulk enrichment"
    );
    assert_eq!(
        body["error"]["details"],
        json!({"operationType": "enrichment_email", "count": 3, "required": 15})
    );
    assert!(current(&api, &ids).await.is_empty(), "nothing was created");
    assert_eq!(ledger(&stack.store, ORG, 14).await, (14, vec![]));
    // Nothing was queued either: the bulk queue is empty, delayed messages included.
    assert_eq!(queued(&stack).await, 0);
    stack.shutdown().await;
}

/// Messages in the bulk queue, visible, in flight or delayed (a batch's jobs are held in one
/// message per 500).
async fn queued(stack: &Stack) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.info.bulk_queue_url)
        .attribute_names(Name::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    [
        Name::ApproximateNumberOfMessages,
        Name::ApproximateNumberOfMessagesNotVisible,
        Name::ApproximateNumberOfMessagesDelayed,
    ]
    .iter()
    .map(|name| {
        attributes
            .get(name)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

#[tokio::test]
async fn a_bulk_selection_takes_the_people_list_filtered_less_exclusions_from_start_index() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 1000).await.unwrap();
    let mut people = named(6, "northwind.example");
    people[1]["companyDomain"] = json!("contoso.example");
    people[2]["companyName"] = json!("NorthWind Traders");
    people[4]["companyName"] = json!("northwind traders");
    let ids = api.create_people(&people).await;
    // Person 5 already has an email: `missing: emails` leaves it out.
    let mut with_email: Person = stack.store.get_person(ORG, ids[5]).await.unwrap().unwrap();
    with_email.emails = vec![ContactPoint {
        value: "p5@northwind.example".into(),
        kind: None,
        status: None,
        provider: "hunter".into(),
        found_at: timestamp(chrono::Utc::now()),
        confidence: None,
    }];
    stack
        .store
        .delete_person(ORG, ids[5], &timestamp(chrono::Utc::now()))
        .await
        .unwrap();
    stack.store.create_people(ORG, &[with_email]).await.unwrap();
    // Index order: people 0..4, then 5 again (re-created last, with its creation time kept).
    let bulk = |selection: Value| {
        let api = &api;
        async move {
            api.post(BULK, &json!({"selection": selection, "field": "emails"}))
                .await
        }
    };

    let (status, answer) = bulk(json!({"mode": "bulk", "startIndex": 1, "targetCount": 2,
        "excludedIds": [ids[3]],
        "filters": {"companyDomain": "WWW.Northwind.example", "missing": "emails"}}))
    .await;
    assert_eq!(status, 200, "{answer}");
    // Kept: 0, 2, 4 (1 is contoso, 3 excluded, 5 has an email); start at 1, take 2.
    assert_eq!(ids_of(&answer), vec![ids[2], ids[4]]);

    let (status, answer) = bulk(json!({"mode": "bulk", "targetCount": 10,
        "filters": {"companyName": "NORTHWIND TRADERS"}}))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ids_of(&answer),
        vec![ids[2], ids[4]],
        "reused, in list order"
    );
    assert_eq!(ledger(&stack.store, ORG, 1000).await.0, 990);

    let (status, answer) = bulk(json!({"mode": "bulk", "startIndex": 50, "targetCount": 10})).await;
    assert_eq!(
        (status, answer),
        (200, json!([])),
        "past the end: empty, free"
    );
    let (status, answer) = bulk(json!({"mode": "manual", "includedIds": [ids[0], ids[1]],
        "excludedIds": [ids[0], ids[1]]}))
    .await;
    assert_eq!((status, answer), (200, json!([])), "everything excluded");

    let (status, answer) = bulk(
        json!({"mode": "manual", "includedIds": [ids[1], ids[0], ids[1]],
        "excludedIds": [ids[3]]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ids_of(&answer),
        vec![ids[1], ids[0]],
        "included order, once each"
    );
    assert_eq!(ledger(&stack.store, ORG, 1000).await.0, 980);
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_never_a_5xx() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    let id = Uuid::new_v4();
    let cases: Vec<(&str, String, &str)> = vec![
        (BATCH, "not json".into(), "body"),
        (BATCH, "[]".into(), "body"),
        (BATCH, json!({"field": "emails"}).to_string(), "personIds"),
        (
            BATCH,
            json!({"personIds": [], "field": "emails"}).to_string(),
            "personIds",
        ),
        (
            BATCH,
            json!({"personIds": [id, "abc"], "field": "emails"}).to_string(),
            "personIds[1]",
        ),
        (
            BATCH,
            json!({"personIds": [id], "field": "email"}).to_string(),
            "field",
        ),
        (
            BATCH,
            json!({"personIds": vec![id; 101], "field": "emails"}).to_string(),
            "personIds",
        ),
        (BULK, json!({"field": "emails"}).to_string(), "selection"),
        (
            BULK,
            json!({"selection": {"mode": "some"}, "field": "emails"}).to_string(),
            "selection.mode",
        ),
        (
            BULK,
            json!({"selection": {"mode": "manual", "includedIds": vec![id; 1001]},
                   "field": "emails"})
            .to_string(),
            "selection.includedIds",
        ),
        (
            BULK,
            json!({"selection": {"mode": "bulk", "targetCount": "5"}, "field": "emails"})
                .to_string(),
            "selection.targetCount",
        ),
        (
            BULK,
            json!({"selection": {"mode": "bulk", "targetCount": 5, "startIndex": -2},
                   "field": "emails"})
            .to_string(),
            "selection.startIndex",
        ),
        (
            BULK,
            json!({"selection": {"mode": "bulk", "targetCount": 5,
                   "filters": {"missing": "names"}}, "field": "emails"})
            .to_string(),
            "selection.filters.missing",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer, _) = api
            .send(reqwest::Method::POST, path, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(answer["error"]["details"]["field"], field, "{body}");
    }
    for path in [BATCH, BULK] {
        let (status, answer, headers) = api.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 405, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "METHOD_NOT_ALLOWED");
        assert_eq!(headers["allow"], "POST");
        let huge = format!(
            "{{\"personIds\": [], \"pad\": \"{}\"}}",
            "x".repeat(7 * 1024 * 1024)
        );
        let (status, answer, _) = api.send(reqwest::Method::POST, path, Some(huge)).await;
        assert_eq!(status, 413, "{path}: {answer}");
    }
    let anonymous = reqwest::Client::new()
        .post(format!("{}{BATCH}", stack.info.gateway_url))
        .body(json!({"personIds": [id], "field": "emails"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_bulk_is_worked_once_its_hold_ends_and_the_person_shows_what_was_found() {
    let stack = stack(true).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    // Ada is known to the simulator (Hunter finds her email by name and domain).
    let ada = json!({"firstName": "Ada", "lastName": "Lovelace",
                     "companyName": "Analytical Engines", "companyDomain": "analytical-engines.test"});
    let mut people = named(2, "northwind.example");
    people.insert(0, ada);
    let ids = api.create_people(&people).await;
    let (status, answer) = api
        .post(
            BULK,
            &json!({"selection": {"mode": "manual", "includedIds": ids}, "field": "emails"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ledger(&stack.store, ORG, 100).await.0, 85);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let found = current(&api, &ids).await;
        if found.values().all(|e| e["status"] != "pending") && found.len() == 3 {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(done[&ids[0]]["status"], "finished");
    assert_eq!(done[&ids[0]]["dataFound"], true);
    assert_eq!(
        done[&ids[0]]["id"], answer[0]["id"],
        "the job ran the enrichment the bulk answered"
    );
    let (status, person, _) = api
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/entities/persons/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, 200, "{person}");
    assert_eq!(person["emails"], json!(["ada@analytical-engines.test"]));
    assert_eq!(person["emailDetails"][0]["provider"], "hunter");
    // The two unknown people finished without data; each enrichment was charged once.
    assert_eq!(ledger(&stack.store, ORG, 100).await, (85, vec![-5, -5, -5]));
    stack.shutdown().await;
}

/// The org's enrichments of `people` (batch query) with their charges: each one charged once
/// (its `creditTransactionId` a debit of the ledger), no debit without an enrichment, and the
/// balance = grants − debits + refunds, never below zero.
async fn check_charged_once(stack: &Stack, api: &Api, org: &str, people: &[Uuid], granted: i64) {
    let found = current(api, people).await;
    let (balance, amounts) = ledger(&stack.store, org, granted).await;
    assert!(balance >= 0);
    assert!(amounts.iter().all(|a| *a == -5), "only debits: {amounts:?}");
    assert_eq!(
        amounts.len(),
        found.len(),
        "one debit per enrichment and no debit without one"
    );
    assert!(found.values().all(|e| e["status"] == "pending"));
}

#[tokio::test]
async fn overlapping_batches_bulks_and_single_posts_charge_each_enrichment_once() {
    let stack = stack(false).await;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for run in 0..4u64 {
        let org = format!("org_race_{run}");
        let api = Arc::new(Api::new(&stack, &org));
        let ids = api.create_people(&named(80, "northwind.example")).await;
        // Credits for 50 of the 80: some requests must be refused, all or nothing.
        let granted = 250;
        stack.store.grant_credits(&org, granted).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6u64 {
            let api = api.clone();
            // Overlapping windows of 40 people, in a rotating order.
            let start = ((i + run) * 13 % 80) as usize;
            let window: Vec<Uuid> = (0..40).map(|k| ids[(start + k * 3) % 80]).collect();
            tasks.spawn(async move {
                let (status, body) = if i % 2 == 0 {
                    api.batch(&window, "emails").await
                } else {
                    api.post(
                        BULK,
                        &json!({"selection": {"mode": "manual", "includedIds": window},
                                "field": "emails"}),
                    )
                    .await
                };
                (status, body, window)
            });
        }
        for k in 0..20 {
            let api = api.clone();
            let id = ids[(k * 7 + run as usize) % 80];
            tasks.spawn(async move {
                let (status, body) = api.single(id).await;
                (status, json!([body]), vec![id])
            });
        }
        let mut answered: HashMap<Uuid, String> = HashMap::new();
        while let Some(result) = tasks.join_next().await {
            let (status, body, asked) = result.unwrap();
            *statuses.entry(status).or_default() += 1;
            match status {
                200 => {
                    assert_eq!(ids_of(&body).len(), asked.len(), "{body}");
                    for enrichment in body.as_array().unwrap() {
                        let person = enrichment["entityId"].as_str().unwrap().parse().unwrap();
                        let id = enrichment["id"].as_str().unwrap().to_string();
                        let before = answered.insert(person, id.clone());
                        assert!(
                            before.is_none_or(|b| b == id),
                            "run {run}: two enrichments answered for {person}"
                        );
                    }
                }
                402 => assert_eq!(
                    body[0]["error"]["code"]
                        .as_str()
                        .or(body["error"]["code"].as_str()),
                    Some("INSUFFICIENT_CREDITS"),
                    "{body}"
                ),
                other => panic!("run {run}: unexpected {other}: {body}"),
            }
        }
        let found = current(&api, &ids).await;
        for (person, id) in &answered {
            assert_eq!(
                found[person]["id"],
                json!(id),
                "an answered enrichment exists"
            );
        }
        check_charged_once(&stack, &api, &org, &ids, granted).await;
    }
    // The runs raced for real: some requests were served, some refused for credits.
    assert!(statuses[&200] > 0 && statuses[&402] > 0, "{statuses:?}");
    stack.shutdown().await;
}

/// Rewrites the `n`-th `TransactWriteItems` (1-based) so that its balance condition cannot
/// hold, as if another request had spent the balance just before it.
#[derive(Debug)]
struct SpendBalanceBefore {
    n: usize,
    seen: AtomicUsize,
}

impl Intercept for SpendBalanceBefore {
    fn name(&self) -> &'static str {
        "SpendBalanceBefore"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(input) = context
            .input_mut()
            .downcast_mut::<TransactWriteItemsInput>()
        else {
            return Ok(());
        };
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 != self.n {
            return Ok(());
        }
        for item in input.transact_items.iter_mut().flatten() {
            if let Some(values) = item
                .update
                .as_mut()
                .and_then(|u| u.expression_attribute_values.as_mut())
                && values.contains_key(":total")
            {
                values.insert(":total".into(), AttributeValue::N("1000000000".into()));
            }
        }
        Ok(())
    }
}

/// Signals when the `n`-th `TransactWriteItems` (1-based) is about to be sent.
#[derive(Debug)]
struct CrashAt {
    n: usize,
    seen: AtomicUsize,
    reached: Arc<Notify>,
}

impl Intercept for CrashAt {
    fn name(&self) -> &'static str {
        "CrashAt"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context
            .input()
            .downcast_ref::<TransactWriteItemsInput>()
            .is_some()
            && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.n
        {
            self.reached.notify_one();
        }
        Ok(())
    }
}

fn intercepted_store(stack: &Stack, interceptor: impl Intercept + 'static) -> Store {
    let config = local_stack::dynamodb_config(&stack.info.dynamodb_url)
        .interceptor(interceptor)
        .build();
    Store::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        stack.store.table(),
    )
}

fn principal(org: &str) -> Principal {
    Principal {
        user_id: "user_b".into(),
        org_id: org.into(),
    }
}

#[tokio::test]
async fn a_balance_spent_during_a_batch_undoes_its_written_chunks_before_the_402() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    let ids = api.create_people(&named(100, "northwind.example")).await;
    stack.store.grant_credits(ORG, 500).await.unwrap();
    // The third chunk (people 67..99) finds the balance spent: chunks one and two are undone.
    let store = intercepted_store(
        &stack,
        SpendBalanceBefore {
            n: 3,
            seen: AtomicUsize::new(0),
        },
    );
    let enrichments = Enrichments::new(store, stack.config.clone());
    let queue = SqsJobQueue::new(stack.sqs.clone(), stack.info.bulk_queue_url.clone());
    let error = enrichments
        .enrich_batch(
            &queue,
            &principal(ORG),
            &ids,
            Field::Emails,
            CacheUse::Allowed,
            tokio::time::Instant::now() + Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ApiError::InsufficientCredits {
            operation_type: enrichment::domain::OperationType::EnrichmentEmail,
            count: 100,
            required: 500,
            bulk: false,
        }
    );
    assert!(
        current(&api, &ids).await.is_empty(),
        "the written chunks were undone"
    );
    assert_eq!(ledger(&stack.store, ORG, 500).await, (500, vec![]));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_crash_between_writes_leaves_each_written_enrichment_charged_once_with_its_job() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    for crash_at in 1..=4 {
        let org = format!("org_crash_{crash_at}");
        let api = Api::new(&stack, &org);
        let ids = api.create_people(&named(100, "northwind.example")).await;
        stack.store.grant_credits(&org, 1000).await.unwrap();
        let reached = Arc::new(Notify::new());
        let store = intercepted_store(
            &stack,
            CrashAt {
                n: crash_at,
                seen: AtomicUsize::new(0),
                reached: reached.clone(),
            },
        );
        let enrichments = Enrichments::new(store, stack.config.clone());
        let queue = SqsJobQueue::new(stack.sqs.clone(), stack.info.bulk_queue_url.clone());
        let principal = principal(&org);
        // The process dies as the `crash_at`-th chunk goes out: nothing of the request runs
        // after that (the future is dropped), whether or not that chunk reached the table.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        tokio::select! {
            result = enrichments.enrich_batch(&queue, &principal, &ids, Field::Emails, CacheUse::Allowed, deadline) => {
                panic!("the request ended before its crash point: {result:?}")
            }
            _ = reached.notified() => {}
        }
        check_charged_once(&stack, &api, &org, &ids, 1000).await;
        let written: HashSet<String> = current(&api, &ids)
            .await
            .values()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert!(
            written.len() >= 33 * (crash_at - 1),
            "{} written before chunk {crash_at}",
            written.len()
        );
        // Every job was sent before the first write, held past the deadline: the written
        // enrichments all have theirs; the others' jobs will find nothing to run.
        let jobs = drain_jobs(&stack, 100).await;
        assert_eq!(jobs.len(), 100);
        assert!(written.is_subset(&jobs), "an enrichment without its job");
    }
    drop(api);
    stack.shutdown().await;
}

/// Receives and deletes the job batches of the bulk queue (waiting out their hold) until they
/// hold `count` jobs, returning their enrichment ids.
async fn drain_jobs(stack: &Stack, count: usize) -> HashSet<String> {
    let mut jobs = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs.len() < count && tokio::time::Instant::now() < deadline {
        let output = stack
            .sqs
            .receive_message()
            .queue_url(&stack.info.bulk_queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in output.messages.unwrap_or_default() {
            let body: Value = serde_json::from_str(message.body().unwrap()).unwrap();
            for job in body["jobs"].as_array().unwrap() {
                jobs.insert(job["enrichmentId"].as_str().unwrap().to_string());
            }
            stack
                .sqs
                .delete_message()
                .queue_url(&stack.info.bulk_queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    jobs
}

/// The org's people ids in the order of `GET /api/v1/entities/persons`, every page.
async fn list_all(api: &Api) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut path = "/api/v1/entities/persons?limit=100".to_string();
    loop {
        let (status, page, _) = api.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(
            page["persons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/entities/persons?limit=100&cursor={cursor}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn a_bulk_of_a_whole_selection_takes_the_people_list_across_pages() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 10_000).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(api.create_people(&named(500, "northwind.example")).await);
    }
    let (status, answer) = api
        .post(
            BULK,
            &json!({"selection": {"mode": "bulk", "startIndex": 400, "targetCount": 1000},
                    "field": "emails"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // The people list's order (oldest first; a people batch's creation times run a millisecond
    // apart, so two batches may interleave), across its pages.
    let listed = list_all(&api).await;
    let created: HashSet<Uuid> = ids.into_iter().collect();
    assert_eq!(listed.len(), 1500);
    assert!(listed.iter().all(|id| created.contains(id)));
    assert!(
        ids_of(&answer) == listed[400..1400],
        "not the list's 400..1400"
    );
    assert_eq!(ledger(&stack.store, ORG, 10_000).await.0, 5000);
    assert_eq!(
        queued(&stack).await,
        4,
        "two held messages of 500 jobs, each with its timeout check"
    );
    stack.shutdown().await;
}

/// Holds each `TransactWriteItems` back for `delay` before it is sent: a slow table.
#[derive(Debug)]
struct SlowTransactions {
    delay: Duration,
}

impl Intercept for SlowTransactions {
    fn name(&self) -> &'static str {
        "SlowTransactions"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context
            .input()
            .downcast_ref::<TransactWriteItemsInput>()
            .is_some()
        {
            std::thread::sleep(self.delay);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_that_cannot_finish_before_its_deadline_undoes_what_it_wrote_and_answers_503() {
    let stack = stack(false).await;
    let api = Api::new(&stack, ORG);
    let mut ids = api.create_people(&named(150, "northwind.example")).await;
    ids.extend(api.create_people(&named(150, "contoso.example")).await);
    stack.store.grant_credits(ORG, 5000).await.unwrap();
    let store = intercepted_store(
        &stack,
        SlowTransactions {
            delay: Duration::from_millis(200),
        },
    );
    let enrichments = Enrichments::new(store, stack.config.clone());
    let queue = SqsJobQueue::new(stack.sqs.clone(), stack.info.bulk_queue_url.clone());
    let selection = Selection::Manual {
        included: ids.clone(),
        excluded: HashSet::new(),
    };
    // 10 chunks at 200 ms each do not fit in 3 s with the time to undo them kept back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let error = enrichments
        .enrich_bulk(
            &queue,
            &principal(ORG),
            &selection,
            Field::Emails,
            CacheUse::Allowed,
            deadline,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Unavailable(_)), "{error:?}");
    assert!(
        current(&api, &ids).await.is_empty(),
        "what was written was undone"
    );
    assert_eq!(ledger(&stack.store, ORG, 5000).await, (5000, vec![]));
    stack.shutdown().await;
}
