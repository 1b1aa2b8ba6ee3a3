//! One test per rule of the store, against the embedded DynamoDB emulator (dynoxide, a private
//! in-memory server per test on loopback).

use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use chrono::Utc;

use super::*;
use crate::domain::{timestamp, timestamp_before};

const ORG: &str = "org_store";

/// A store over a fresh table of a private emulator; the server stops with the runtime.
async fn table() -> Store {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let db = dynoxide::Database::memory().unwrap();
    tokio::spawn(dynoxide::server::serve_with_shutdown(
        listener,
        db,
        std::future::pending(),
    ));
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "test"))
        .endpoint_url(endpoint)
        .timeout_config(crate::config::sdk_timeouts())
        .build();
    let store = Store::new(Client::from_conf(config), "enrichment-test");
    store.create_table().await.unwrap();
    store
}

async fn person(store: &Store) -> Person {
    let person = Person {
        id: Uuid::new_v4(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        company_domain: Some("analytical-engines.test".into()),
        ..Person::default()
    };
    store
        .create_people(ORG, std::slice::from_ref(&person))
        .await
        .unwrap();
    person
}

fn new_enrichment(person_id: Uuid, created_at: String) -> Enrichment {
    Enrichment {
        id: Uuid::new_v4(),
        created_at: created_at.clone(),
        updated_at: created_at,
        entity_id: person_id,
        entity_type: "person".into(),
        field: Field::Emails,
        status: Status::Pending,
        error: None,
        data_found: None,
        created_by: "user_store".into(),
        org_id: ORG.into(),
        global_enrichment_id: None,
        credit_transaction_id: Some(Uuid::new_v4()),
    }
}

fn now() -> String {
    timestamp(Utc::now())
}

const NO_LIMIT: RateLimit = RateLimit { per_minute: 0 };

/// A person of the org granted 10 credits, and its `pending` emails enrichment charged 5.
async fn charged(store: &Store) -> (Person, Enrichment) {
    store.grant_credits(ORG, 10).await.unwrap();
    pending(store).await
}

/// A new person of the org and its `pending` emails enrichment, charged 5 credits the org has.
async fn pending(store: &Store) -> (Person, Enrichment) {
    let person = person(store).await;
    let enrichment = new_enrichment(person.id, now());
    assert_eq!(
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    (person, enrichment)
}

/// The org's balance and the signed amounts of its debits and refunds, sorted; asserts the
/// ledger's invariant ([`Store::check_ledger`]) and that the grants add up to `granted`.
async fn ledger(store: &Store, granted: i64) -> (i64, Vec<i64>) {
    let check = store
        .check_ledger(ORG)
        .await
        .unwrap_or_else(|broken| panic!("{broken}"));
    assert_eq!(check.granted, granted, "grants");
    let mut amounts = check.enrichment_amounts;
    amounts.sort();
    (check.balance, amounts)
}

#[tokio::test]
async fn a_replay_returns_the_existing_enrichment_and_charges_once() {
    let store = table().await;
    let person = person(&store).await;
    store.grant_credits(ORG, 10).await.unwrap();
    let first = new_enrichment(person.id, now());
    assert_eq!(
        store.create_enrichment(&first, 5, NO_LIMIT).await.unwrap(),
        CreateOutcome::Created
    );
    let replay = new_enrichment(person.id, now());
    let CreateOutcome::Existing(existing) =
        store.create_enrichment(&replay, 5, NO_LIMIT).await.unwrap()
    else {
        panic!("a replay created a second enrichment")
    };
    assert_eq!(existing.enrichment, first);
    assert_eq!(existing.credits_charged, 5);
    assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
}

#[tokio::test]
async fn a_debit_never_takes_the_balance_below_zero() {
    let store = table().await;
    let person = person(&store).await;
    store.grant_credits(ORG, 4).await.unwrap();
    let enrichment = new_enrichment(person.id, now());
    assert_eq!(
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap(),
        CreateOutcome::InsufficientCredits
    );
    assert!(
        store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ledger(&store, 4).await, (4, vec![]));
}

#[tokio::test]
async fn an_unknown_person_is_refused_and_charges_nothing() {
    let store = table().await;
    store.grant_credits(ORG, 10).await.unwrap();
    let enrichment = new_enrichment(Uuid::new_v4(), now());
    assert_eq!(
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap(),
        CreateOutcome::PersonNotFound
    );
    assert_eq!(ledger(&store, 10).await, (10, vec![]));
}

#[tokio::test]
async fn a_refund_is_given_once_per_enrichment() {
    let store = table().await;
    let (person, enrichment) = charged(&store).await;
    let record = store
        .get_enrichment(ORG, person.id, Field::Emails)
        .await
        .unwrap()
        .unwrap();

    let timed_out = store.mark_timeout(&record, &now()).await.unwrap();
    assert_eq!(timed_out.status, Status::Timeout);
    // A second timeout (another GET racing) returns the enrichment as it is, refunds nothing.
    let again = store.mark_timeout(&record, &now()).await.unwrap();
    assert_eq!(again.status, Status::Timeout);
    // Nor does a failure after the timeout.
    assert!(
        store
            .fail_and_refund(&enrichment, 5, "late", &now())
            .await
            .is_err()
    );
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

#[tokio::test]
async fn a_lost_claim_cannot_write() {
    let store = table().await;
    let (person, enrichment) = charged(&store).await;
    let job = Job::from(&enrichment);
    // Worker A's claim lapsed (it died); worker B takes the job over.
    let lapsed = timestamp_before(Utc::now(), Duration::from_secs(1));
    let Claim::Claimed(record) = store.claim(&job, "a", &now(), &lapsed).await.unwrap() else {
        panic!("A could not claim a fresh job")
    };
    let later = timestamp(Utc::now() + chrono::Duration::seconds(60));
    assert!(matches!(
        store.claim(&job, "b", &now(), &later).await.unwrap(),
        Claim::Claimed(_)
    ));

    assert!(!store.renew_claim(&enrichment, "a", &later).await.unwrap());
    let failed = Completion::failed("A's outcome");
    assert!(!store.complete(&record, "a", &failed, &now()).await.unwrap());
    let stored = store
        .get_enrichment(ORG, person.id, Field::Emails)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.enrichment.status, Status::Pending);
    assert_eq!(
        ledger(&store, 10).await,
        (5, vec![-5]),
        "A's refund was not written"
    );

    let nothing = Completion::searched(None, None);
    assert!(
        store
            .complete(&record, "b", &nothing, &now())
            .await
            .unwrap()
    );
    assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
}

#[tokio::test]
async fn a_live_claim_defers_a_duplicate_and_an_ended_job_is_gone() {
    let store = table().await;
    let (_, enrichment) = charged(&store).await;
    let job = Job::from(&enrichment);
    let until = timestamp(Utc::now() + chrono::Duration::seconds(60));
    let Claim::Claimed(record) = store.claim(&job, "a", &now(), &until).await.unwrap() else {
        panic!("no claim")
    };
    assert_eq!(
        store.claim(&job, "b", &now(), &until).await.unwrap(),
        Claim::Busy {
            until: until.clone()
        }
    );
    store.mark_timeout(&record, &now()).await.unwrap();
    assert_eq!(
        store.claim(&job, "b", &now(), &until).await.unwrap(),
        Claim::Gone
    );
    // A job whose enrichment was replaced (another id) is gone too.
    let other = Job {
        enrichment_id: Uuid::new_v4(),
        ..job
    };
    assert_eq!(
        store.claim(&other, "b", &now(), &until).await.unwrap(),
        Claim::Gone
    );
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

#[tokio::test]
async fn a_cache_lease_lapses_and_another_owner_takes_it() {
    let store = table().await;
    let now = Utc::now().timestamp();
    assert_eq!(
        store
            .acquire_cache_lease("fp", Field::Emails, "a", now, now + 30)
            .await
            .unwrap(),
        CacheLease::Acquired
    );
    assert_eq!(
        store
            .acquire_cache_lease("fp", Field::Emails, "b", now, now + 30)
            .await
            .unwrap(),
        CacheLease::Busy {
            until_unix: now + 30
        }
    );
    // The holder renews; then it dies and its lease lapses: B takes it, A cannot renew.
    assert!(
        store
            .renew_cache_lease("fp", Field::Emails, "a", now + 40)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .acquire_cache_lease("fp", Field::Emails, "b", now + 41, now + 71)
            .await
            .unwrap(),
        CacheLease::Acquired
    );
    assert!(
        !store
            .renew_cache_lease("fp", Field::Emails, "a", now + 80)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn the_rate_limit_counts_new_enrichments_only() {
    let store = table().await;
    let first = person(&store).await;
    let second = person(&store).await;
    store.grant_credits(ORG, 100).await.unwrap();
    let limit = RateLimit { per_minute: 1 };
    // Both in the same minute: the second's createdAt is the first's.
    let at = now();
    let a = new_enrichment(first.id, at.clone());
    assert_eq!(
        store.create_enrichment(&a, 5, limit).await.unwrap(),
        CreateOutcome::Created
    );
    let replay = new_enrichment(first.id, at.clone());
    assert!(matches!(
        store.create_enrichment(&replay, 5, limit).await.unwrap(),
        CreateOutcome::Existing(_)
    ));
    let b = new_enrichment(second.id, at);
    assert!(matches!(
        store.create_enrichment(&b, 5, limit).await.unwrap(),
        CreateOutcome::RateLimited { retry_after_seconds } if (1..=60).contains(&retry_after_seconds)
    ));
    assert_eq!(ledger(&store, 100).await, (95, vec![-5]));
}

#[tokio::test]
async fn deleting_a_person_refunds_its_pending_enrichment_once() {
    let store = table().await;
    let (person, enrichment) = charged(&store).await;
    assert!(store.delete_person(ORG, person.id, &now()).await.unwrap());
    assert!(store.get_person(ORG, person.id).await.unwrap().is_none());
    assert!(
        store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .is_none()
    );
    // Its job finds nothing to run; a second deletion finds no person.
    let until = timestamp(Utc::now() + chrono::Duration::seconds(60));
    assert_eq!(
        store
            .claim(&Job::from(&enrichment), "w", &now(), &until)
            .await
            .unwrap(),
        Claim::Gone
    );
    assert!(!store.delete_person(ORG, person.id, &now()).await.unwrap());
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

#[tokio::test]
async fn the_people_list_pages_in_creation_order() {
    let store = table().await;
    let start = Utc::now();
    let people: Vec<Person> = (0..5)
        .map(|i| {
            let at = timestamp(start + chrono::Duration::milliseconds(i));
            Person {
                id: Uuid::new_v4(),
                created_at: Some(at.clone()),
                updated_at: Some(at),
                first_name: Some(format!("P{i}")),
                ..Person::default()
            }
        })
        .collect();
    // Created newest first: the list still reads oldest first.
    for person in people.iter().rev() {
        store
            .create_people(ORG, std::slice::from_ref(person))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store.list_people(ORG, 2, after.as_ref()).await.unwrap();
        seen.extend(page.into_iter().map(|p| p.id));
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, people.iter().map(|p| p.id).collect::<Vec<_>>());
    let (other_org, _) = store.list_people("org_other", 10, None).await.unwrap();
    assert!(other_org.is_empty());
}

#[tokio::test]
async fn a_deletion_read_before_a_new_enrichment_cannot_commit() {
    let store = table().await;
    let person = person(&store).await;
    store.grant_credits(ORG, 10).await.unwrap();
    // The deletion reads the person without enrichments...
    let stale = store
        .deletion(ORG, person.id, &now())
        .await
        .unwrap()
        .unwrap();
    // ...then a POST creates and charges one...
    let enrichment = new_enrichment(person.id, now());
    assert_eq!(
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    // ...so the transaction from that read is refused: no charged enrichment of a gone person.
    assert!(store.transact(stale).await.unwrap().is_some());
    assert!(store.get_person(ORG, person.id).await.unwrap().is_some());
    // The deletion itself reads again and refunds it.
    assert!(store.delete_person(ORG, person.id, &now()).await.unwrap());
    assert!(
        store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

fn planned(person_id: Uuid, replaces: Option<EnrichmentRecord>) -> PlannedEnrichment {
    PlannedEnrichment {
        enrichment: new_enrichment(person_id, now()),
        replaces,
    }
}

async fn people(store: &Store, count: usize) -> Vec<Person> {
    let mut people = Vec::with_capacity(count);
    for _ in 0..count {
        people.push(person(store).await);
    }
    people
}

async fn current(store: &Store, person_id: Uuid) -> Option<EnrichmentRecord> {
    store
        .get_enrichment(ORG, person_id, Field::Emails)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_chunk_creates_and_charges_every_enrichment_with_one_debit() {
    let store = table().await;
    let people = people(&store, CHUNK).await;
    store.grant_credits(ORG, 200).await.unwrap();
    let chunk: Vec<_> = people.iter().map(|p| planned(p.id, None)).collect();
    // 3 × 33 + 1 = 100 items: the transaction limit, reached and not passed.
    assert_eq!(
        store.create_enrichments(&chunk, 5).await.unwrap(),
        ChunkOutcome::Created
    );
    let (balance, amounts) = ledger(&store, 200).await;
    assert_eq!(balance, 200 - 5 * CHUNK as i64);
    assert_eq!(amounts, vec![-5; CHUNK]);
    for planned in &chunk {
        let record = current(&store, planned.enrichment.entity_id).await.unwrap();
        assert_eq!(record.enrichment, planned.enrichment);
        assert_eq!(record.credits_charged, 5);
    }
    let one_more = planned(Uuid::new_v4(), None);
    let too_many: Vec<_> = chunk.iter().cloned().chain([one_more]).collect();
    assert!(matches!(
        store.create_enrichments(&too_many, 5).await,
        Err(StoreError::Shape(_))
    ));
}

#[tokio::test]
async fn a_chunk_the_balance_does_not_cover_writes_nothing() {
    let store = table().await;
    let people = people(&store, 3).await;
    store.grant_credits(ORG, 14).await.unwrap();
    let chunk: Vec<_> = people.iter().map(|p| planned(p.id, None)).collect();
    assert_eq!(
        store.create_enrichments(&chunk, 5).await.unwrap(),
        ChunkOutcome::InsufficientCredits
    );
    assert_eq!(ledger(&store, 14).await, (14, vec![]));
    for person in &people {
        assert_eq!(current(&store, person.id).await, None);
    }
}

#[tokio::test]
async fn a_chunk_over_a_changed_item_or_a_gone_person_writes_nothing_and_says_which() {
    let store = table().await;
    let (taken, existing) = charged(&store).await;
    let free = person(&store).await;
    // The batch read no enrichment of `taken`, but a single POST created one meanwhile.
    let chunk = vec![planned(free.id, None), planned(taken.id, None)];
    let ChunkOutcome::Changed(changed) = store.create_enrichments(&chunk, 5).await.unwrap() else {
        panic!("the changed item was not reported")
    };
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, 1);
    assert_eq!(changed[0].1.as_ref().unwrap().enrichment, existing);
    assert_eq!(current(&store, free.id).await, None);
    let gone = Uuid::new_v4();
    let chunk = vec![planned(free.id, None), planned(gone, None)];
    assert_eq!(
        store.create_enrichments(&chunk, 5).await.unwrap(),
        ChunkOutcome::PersonNotFound(vec![gone])
    );
    assert_eq!(current(&store, free.id).await, None);
    assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
}

#[tokio::test]
async fn an_undo_leaves_the_table_and_the_ledger_as_before_the_chunk() {
    let store = table().await;
    let (again, first) = charged(&store).await;
    let failed = store
        .fail_and_refund(&first, 5, "provider down", &now())
        .await
        .unwrap();
    let fresh = person(&store).await;
    let before = ledger(&store, 10).await;
    assert_eq!(before, (10, vec![-5, 5]));
    let replaced = current(&store, again.id).await.unwrap();
    assert_eq!(replaced.enrichment, failed);
    let chunk = vec![
        planned(again.id, Some(replaced.clone())),
        planned(fresh.id, None),
    ];
    assert_eq!(
        store.create_enrichments(&chunk, 5).await.unwrap(),
        ChunkOutcome::Created
    );
    assert_eq!(ledger(&store, 10).await.0, 0);
    store.undo_enrichments(&chunk, 5).await.unwrap();
    assert_eq!(
        ledger(&store, 10).await,
        before,
        "no charge, no refund left"
    );
    assert_eq!(current(&store, again.id).await, Some(replaced));
    assert_eq!(current(&store, fresh.id).await, None);
    // An ended enrichment replaced under the batch is not what it read: refused, nothing written.
    let stale = EnrichmentRecord {
        enrichment: new_enrichment(again.id, now()),
        credits_charged: 5,
        providers_answered: Vec::new(),
        provider_jobs: Vec::new(),
        providers_failed: Vec::new(),
    };
    let ChunkOutcome::Changed(changed) = store
        .create_enrichments(&[planned(again.id, Some(stale))], 5)
        .await
        .unwrap()
    else {
        panic!("an item other than the one read was replaced")
    };
    assert_eq!(changed[0].1.as_ref().unwrap().enrichment, failed);
}

#[tokio::test]
async fn an_undo_refuses_an_enrichment_a_worker_claimed() {
    let store = table().await;
    let person = person(&store).await;
    store.grant_credits(ORG, 10).await.unwrap();
    let chunk = vec![planned(person.id, None)];
    store.create_enrichments(&chunk, 5).await.unwrap();
    let job = Job::from(&chunk[0].enrichment);
    let until = timestamp(Utc::now() + chrono::Duration::seconds(30));
    assert!(matches!(
        store.claim(&job, "worker", &now(), &until).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert!(store.undo_enrichments(&chunk, 5).await.is_err());
    assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
}

#[tokio::test]
async fn existing_people_reads_only_the_orgs_people() {
    let store = table().await;
    let people = people(&store, 2).await;
    let unknown = Uuid::new_v4();
    let ids: Vec<Uuid> = people.iter().map(|p| p.id).chain([unknown]).collect();
    let found = store.existing_people(ORG, &ids).await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(!found.contains(&unknown));
    assert!(
        store
            .existing_people("org_other", &ids)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_suppression_between_the_check_and_the_write_cancels_the_write() {
    let store = table().await;
    let (person, enrichment) = charged(&store).await;
    let job = Job::from(&enrichment);
    let until = timestamp(Utc::now() + chrono::Duration::seconds(60));
    let Claim::Claimed(record) = store.claim(&job, "w", &now(), &until).await.unwrap() else {
        panic!("could not claim a fresh job")
    };
    let found = ContactPoint {
        value: "ada@analytical-engines.test".into(),
        kind: None,
        status: Some("valid".into()),
        confidence: None,
        provider: "hunter".into(),
        found_at: now(),
    };
    let held = HeldValues {
        keys: vec![
            "nd:ada lovelace@analytical-engines.test".into(),
            "em:ada@analytical-engines.test".into(),
        ],
        values: vec![found.value.clone()],
        cache_key: Some("nd:ada lovelace@analytical-engines.test".into()),
    };
    // The worker checked, found nothing suppressed, asked the providers; meanwhile the email
    // is suppressed.
    store
        .suppress("em:ada@analytical-engines.test", false, &now())
        .await
        .unwrap();
    let completion = Completion {
        held: Some(held),
        ..Completion::searched(Some(vec![found]), None)
    };
    let error = store
        .complete(&record, "w", &completion, &now())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Suppressed), "{error:?}");
    let stored = store.get_person(ORG, person.id).await.unwrap().unwrap();
    assert!(stored.emails.is_empty(), "nothing written: {stored:?}");
    assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
    // The suppressed outcome is written instead, refunded.
    let suppressed = Completion::suppressed();
    assert!(
        store
            .complete(&record, "w", &suppressed, &now())
            .await
            .unwrap()
    );
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

/// The org's outbox events, parsed, in no particular order.
async fn outbox(store: &Store) -> Vec<(OutboxItem, crate::webhooks::WebhookEvent)> {
    let items = store
        .client
        .query()
        .table_name(store.table())
        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
        .expression_attribute_values(":pk", s(org_pk(ORG)))
        .expression_attribute_values(":prefix", s(OUTBOX_SK_PREFIX))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    items
        .into_iter()
        .map(|item| {
            let item: OutboxItem = serde_dynamo::from_item(item).unwrap();
            let event = serde_json::from_str(&item.body).unwrap();
            (item, event)
        })
        .collect()
}

#[tokio::test]
async fn every_ending_puts_one_event_in_its_own_transaction_and_a_losing_write_none() {
    use crate::webhooks::EventType;
    let store = table().await;
    store.grant_credits(ORG, 100).await.unwrap();
    let mut expected = Vec::new();

    // finished: the worker's outcome; the same outcome again (a lost claim) writes nothing.
    let (_, enrichment) = pending(&store).await;
    let until = timestamp(Utc::now() + chrono::Duration::seconds(60));
    let Claim::Claimed(record) = store
        .claim(&Job::from(&enrichment), "a", &now(), &until)
        .await
        .unwrap()
    else {
        panic!("could not claim")
    };
    let outcome = Completion::searched(None, None);
    assert!(
        store
            .complete(&record, "a", &outcome, &now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete(&record, "a", &outcome, &now())
            .await
            .unwrap()
    );
    expected.push((enrichment.id, EventType::Finished, Status::Finished));

    // timeout, twice: one event.
    let (person, enrichment) = pending(&store).await;
    let record = current(&store, person.id).await.unwrap();
    store.mark_timeout(&record, &now()).await.unwrap();
    store.mark_timeout(&record, &now()).await.unwrap();
    expected.push((enrichment.id, EventType::Timeout, Status::Timeout));

    // cancelled, twice: one event; a failure after it: none.
    let (person, enrichment) = pending(&store).await;
    let record = current(&store, person.id).await.unwrap();
    assert!(store.cancel_pending(&record, &now()).await.unwrap().is_ok());
    assert!(
        store
            .cancel_pending(&record, &now())
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        store
            .fail_and_refund(&enrichment, 5, "late", &now())
            .await
            .is_err()
    );
    expected.push((enrichment.id, EventType::Cancelled, Status::Cancelled));

    // failed.
    let (_, enrichment) = pending(&store).await;
    let failed = store
        .fail_and_refund(&enrichment, 5, "queue down", &now())
        .await
        .unwrap();
    expected.push((enrichment.id, EventType::Failed, Status::Failed));

    let mut events: Vec<_> = outbox(&store)
        .await
        .into_iter()
        .map(|(item, event)| {
            assert_eq!(item.event_id, event.id);
            assert_eq!(item.enrichment_id, event.data.id);
            assert_eq!(item.event_type, event.event_type);
            assert_eq!(item.created_at, event.created_at);
            assert_eq!(event.data.updated_at, event.created_at);
            assert_eq!(item.org_id, ORG);
            (event.data.id, event.event_type, event.data.status)
        })
        .collect();
    events.sort_by_key(|e| e.0);
    expected.sort_by_key(|e| e.0);
    assert_eq!(events, expected);
    // The event carries the enrichment as stored.
    let (_, event) = outbox(&store)
        .await
        .into_iter()
        .find(|(item, _)| item.enrichment_id == failed.id)
        .unwrap();
    assert_eq!(event.data, failed);
    // Charged 4 × 5; refunded the timeout, the cancel and the failure once each.
    assert_eq!(
        ledger(&store, 100).await,
        (95, vec![-5, -5, -5, -5, 5, 5, 5])
    );
}

#[tokio::test]
async fn a_delivery_is_written_once_and_its_attempts_only_forward() {
    use crate::webhooks::Webhook;
    let store = table().await;
    let (person, _) = charged(&store).await;
    let record = current(&store, person.id).await.unwrap();
    store
        .cancel_pending(&record, &now())
        .await
        .unwrap()
        .unwrap();
    let (item, _) = outbox(&store).await.pop().unwrap();

    assert_eq!(store.get_webhook(ORG).await.unwrap(), None);
    let webhook = Webhook {
        url: "https://hooks.example/x".into(),
        secret: "whsec_c2VjcmV0".into(),
        created_at: now(),
    };
    store.put_webhook(ORG, &webhook).await.unwrap();
    assert_eq!(store.get_webhook(ORG).await.unwrap(), Some(webhook));
    assert!(!format!("{:?}", store.get_webhook(ORG).await.unwrap()).contains("c2VjcmV0"));

    let first = store.create_delivery(&item).await.unwrap();
    assert_eq!((first.attempts, first.delivered), (0, false));
    let mut attempt = first.clone();
    attempt.attempts = 1;
    attempt.last_status = Some(500);
    attempt.last_attempt_at = Some(now());
    assert!(store.record_attempt(ORG, &attempt, false).await.unwrap());
    // The stream gives the record again: the delivery as it is comes back.
    assert_eq!(store.create_delivery(&item).await.unwrap(), attempt);
    // A duplicate message of attempt 1 records nothing.
    assert!(!store.record_attempt(ORG, &attempt, false).await.unwrap());
    attempt.attempts = 2;
    attempt.last_status = Some(204);
    attempt.delivered = true;
    assert!(store.record_attempt(ORG, &attempt, true).await.unwrap());
    let (stored, body, done) = store
        .get_delivery(ORG, &item.created_at, item.event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored, body, done),
        (attempt.clone(), item.body.clone(), true)
    );
    assert_eq!(store.list_deliveries(ORG, 20).await.unwrap(), [attempt]);
    assert!(
        store
            .list_deliveries("org_other", 20)
            .await
            .unwrap()
            .is_empty()
    );

    store.delete_webhook(ORG).await.unwrap();
    assert_eq!(store.get_webhook(ORG).await.unwrap(), None);
    // Charged once, refunded once by the cancel; the webhook writes moved no credits.
    assert_eq!(ledger(&store, 10).await, (10, vec![-5, 5]));
}

#[tokio::test]
async fn provider_slots_are_spaced_by_the_interval_across_concurrent_workers() {
    let store = table().await;
    let now = Utc::now().timestamp_millis();
    // 30 workers reserve at the same moment, each guessing differently whether calls queue.
    let reservations = (0..30).map(|i| {
        let store = store.clone();
        async move {
            let mut state = ProviderState::default();
            if i % 2 == 0 {
                state.next_ms = Some(now + 60_000);
            }
            store
                .reserve_provider_slot("hunter", 100, now, None, None, &mut state)
                .await
                .unwrap()
        }
    });
    let mut slots: Vec<i64> = futures::future::join_all(reservations)
        .await
        .into_iter()
        .map(|reservation| match reservation {
            Reservation::Slot(slot) => slot - now,
            ticket => panic!("an interactive job got {ticket:?}"),
        })
        .collect();
    slots.sort();
    assert_eq!(slots, (0..30).map(|i| i * 100).collect::<Vec<i64>>());
    // Another provider has its own line.
    let mut state = ProviderState::default();
    let other = store
        .reserve_provider_slot("pdl", 100, now, None, None, &mut state)
        .await
        .unwrap();
    assert_eq!(other, Reservation::Slot(now));
    // Idle again later: the next slot is now, not in the past (no saved-up burst), and the
    // state a worker keeps is the item's.
    let later = now + 10_000;
    let mut state = ProviderState::default();
    let slot = store
        .reserve_provider_slot("hunter", 100, later, None, None, &mut state)
        .await
        .unwrap();
    assert_eq!(
        (slot, state.next_ms),
        (Reservation::Slot(later), Some(later + 100))
    );
    let mut stale = ProviderState::default();
    let slot = store
        .reserve_provider_slot("hunter", 100, later, None, None, &mut stale)
        .await
        .unwrap();
    assert_eq!(
        (slot, stale.next_ms),
        (Reservation::Slot(later + 100), Some(later + 200))
    );
}

#[tokio::test]
async fn a_bulks_jobs_take_slots_within_their_horizon_and_tickets_in_their_own_line_past_it() {
    let store = table().await;
    let now = Utc::now().timestamp_millis();
    let reserve = |horizon_ms: Option<i64>, at: i64| {
        let store = store.clone();
        async move {
            let mut state = ProviderState::default();
            store
                .reserve_provider_slot("hunter", 100, at, horizon_ms, None, &mut state)
                .await
                .unwrap()
        }
    };
    // 20 of a bulk's jobs at once, a horizon of 1 s: slots up to 1 s ahead, then tickets from
    // the queue's end, spaced as the slots are.
    let bulk = (0..20).map(|_| reserve(Some(1_000), now));
    let (mut slots, mut tickets) = (Vec::new(), Vec::new());
    for reservation in futures::future::join_all(bulk).await {
        match reservation {
            Reservation::Slot(at) => slots.push(at - now),
            Reservation::Ticket(at) => tickets.push(at - now),
            Reservation::Counted(_) => panic!("counted without a count"),
        }
    }
    slots.sort();
    tickets.sort();
    assert_eq!(slots, (0..=10).map(|i| i * 100).collect::<Vec<i64>>());
    assert_eq!(tickets, (11..=19).map(|i| i * 100).collect::<Vec<i64>>());
    // A single that comes later is next in the queue, not behind the nine tickets.
    assert_eq!(reserve(None, now).await, Reservation::Slot(now + 1_100));
    // A ticket's job comes back while the queue's end is still past its horizon: it goes to
    // the end of the bulks' line.
    assert_eq!(
        reserve(Some(1_000), now + 100).await,
        Reservation::Ticket(now + 2_000)
    );
    // Within the horizon again: a slot at the queue's end.
    assert_eq!(
        reserve(Some(1_000), now + 300).await,
        Reservation::Slot(now + 1_200)
    );
    // An open circuit past the horizon gives tickets too; the probe's slot stays a single's.
    store
        .open_provider_circuit("hunter", now + 10_000, now + 400)
        .await
        .unwrap();
    assert_eq!(
        reserve(Some(1_000), now + 500).await,
        Reservation::Ticket(now + 10_000)
    );
    assert_eq!(
        reserve(None, now + 500).await,
        Reservation::Slot(now + 10_000)
    );
}

#[tokio::test]
async fn a_providers_window_passes_its_limit_and_no_more_across_concurrent_workers() {
    let store = table().await;
    // 10 ms into a minute: the next second is in the same minute.
    let minute = Utc::now().timestamp_millis().div_euclid(60_000) * 60_000;
    let now = minute + 10;
    let windows = [(Window::Second, 5), (Window::Minute, 6)];
    let gates = (0..12).map(|_| {
        let store = store.clone();
        async move {
            let mut state = ProviderState::default();
            store
                .pass_provider_gate("pdl", &windows, now, &mut state)
                .await
                .unwrap()
        }
    });
    let gates = futures::future::join_all(gates).await;
    let passed = gates
        .iter()
        .filter(|g| **g == Gate::Pass { failures: 0 })
        .count();
    assert_eq!(passed, 5, "{gates:?}");
    assert!(
        gates
            .iter()
            .filter(|g| **g != Gate::Pass { failures: 0 })
            .all(|g| *g
                == Gate::Full {
                    until_ms: minute + 1_000
                }),
        "the others wait for the next second: {gates:?}"
    );
    // The next second has room for one more of the minute's 6, then the minute is full.
    let mut state = ProviderState::default();
    let next = minute + 1_000;
    assert_eq!(
        store
            .pass_provider_gate("pdl", &windows, next, &mut state)
            .await
            .unwrap(),
        Gate::Pass { failures: 0 }
    );
    assert_eq!(state.second, Some((next / 1_000, 1)));
    assert_eq!(state.minute, Some((minute / 60_000, 6)));
    assert_eq!(
        store
            .pass_provider_gate("pdl", &windows, next + 1_000, &mut state)
            .await
            .unwrap(),
        Gate::Full {
            until_ms: minute + 60_000
        }
    );
    // Another provider has its own windows.
    let mut state = ProviderState::default();
    assert_eq!(
        store
            .pass_provider_gate("hunter", &windows, now, &mut state)
            .await
            .unwrap(),
        Gate::Pass { failures: 0 }
    );
}

#[tokio::test]
async fn a_call_gated_in_a_seconds_last_milliseconds_leaves_well_inside_the_second_it_is_counted_in()
 {
    use crate::limiter::{Admission, Lane, Limiter, ProviderLimit, WINDOW_GUARD};
    let store = table().await;
    let limit = ProviderLimit {
        per_second: Some(10),
        per_minute: None,
    };
    let limiter = Limiter::new(store.clone(), [("pdl", limit)]);
    let guard = WINDOW_GUARD.as_millis() as i64;
    for fraction in [10, 500, 1_000 - guard / 2, 1_000 - guard + 1] {
        // `fraction` ms into the second after the next.
        let now = Utc::now().timestamp_millis();
        let at = now - now.rem_euclid(1_000) + 2_000 + fraction;
        tokio::time::sleep(Duration::from_millis((at - now) as u64)).await;
        assert_eq!(
            limiter.gate("pdl", Lane::Interactive, None).await.unwrap(),
            Admission::Go { failures: 0 }
        );
        let left = Utc::now().timestamp_millis();
        let item = store
            .client
            .get_item()
            .table_name(&store.table)
            .set_key(Some(Store::key("PROVIDER#pdl", "LIMIT")))
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        let counted: i64 = item["secondIndex"].as_n().unwrap().parse().unwrap();
        // The request leaves in the second it was counted in, at least the guard before its
        // end: it reaches the provider in that second.
        assert_eq!(left.div_euclid(1_000), counted, "{fraction} ms in");
        assert!(
            left + guard <= (counted + 1) * 1_000,
            "{fraction} ms in: left {left}"
        );
    }
}

#[tokio::test]
async fn a_slot_in_the_current_second_is_counted_with_its_reservation_up_to_the_windows_limit() {
    let store = table().await;
    let second = Utc::now().timestamp_millis().div_euclid(1_000) * 1_000;
    let now = second + 10;
    let windows = [(Window::Second, 10)];
    let count = Count {
        windows: &windows,
        at_ms: now + 25,
    };
    // 12 workers at once, 10 a second spaced 105 ms apart, each guessing differently whether
    // calls queue: the 10 slots of this second are counted with their reservation, the two
    // of the next one are not (the gate counts them then).
    let reservations = (0..12).map(|i| {
        let store = store.clone();
        async move {
            let mut state = ProviderState::default();
            if i % 2 == 0 {
                state.next_ms = Some(now + 500);
            }
            store
                .reserve_provider_slot("pdl", 105, now, None, Some(count), &mut state)
                .await
                .unwrap()
        }
    });
    let mut reservations = futures::future::join_all(reservations).await;
    reservations.sort_by_key(|reservation| match reservation {
        Reservation::Slot(at) | Reservation::Counted(at) | Reservation::Ticket(at) => *at,
    });
    let mut expected: Vec<Reservation> = (0..10)
        .map(|k| Reservation::Counted(now + k * 105))
        .collect();
    expected.extend([
        Reservation::Slot(now + 1_050),
        Reservation::Slot(now + 1_155),
    ]);
    assert_eq!(reservations, expected);
    // The window is full: a late job's gate in this second waits for the next one, where it
    // passes.
    let mut state = ProviderState::default();
    assert_eq!(
        store
            .pass_provider_gate("pdl", &windows, now + 500, &mut state)
            .await
            .unwrap(),
        Gate::Full {
            until_ms: second + 1_000
        }
    );
    assert_eq!(state.second, Some((second / 1_000, 10)));
    assert_eq!(
        store
            .pass_provider_gate("pdl", &windows, second + 1_050, &mut state)
            .await
            .unwrap(),
        Gate::Pass { failures: 0 }
    );
    // A full window leaves the next reservation uncounted, its slot still given; so does an
    // open circuit.
    let reserve_counted = |provider: &'static str, windows: &'static [(Window, u32)], at: i64| {
        let store = store.clone();
        async move {
            let mut state = ProviderState::default();
            let count = Count { windows, at_ms: at };
            let reservation = store
                .reserve_provider_slot(provider, 105, at, None, Some(count), &mut state)
                .await
                .unwrap();
            (reservation, state)
        }
    };
    let (reservation, _) = reserve_counted("pdl", &[(Window::Second, 1)], second + 1_100).await;
    assert_eq!(reservation, Reservation::Slot(now + 1_260));
    store
        .open_provider_circuit("hunter", second + 5_000, second)
        .await
        .unwrap();
    let (reservation, state) =
        reserve_counted("hunter", &[(Window::Second, 10)], second + 100).await;
    assert_eq!(reservation, Reservation::Slot(second + 5_000));
    assert_eq!(state.second, None);
}

#[tokio::test]
async fn a_call_counted_with_its_slot_passes_the_gate_without_an_update_while_in_its_second() {
    use crate::limiter::{Admission, Lane, Limiter, ProviderLimit};
    let store = table().await;
    let limit = ProviderLimit {
        per_second: Some(10),
        per_minute: Some(600),
    };
    let limiter = Limiter::new(store.clone(), [("pdl", limit)]);
    let windows = || async {
        let item = store
            .client
            .get_item()
            .table_name(&store.table)
            .set_key(Some(Store::key("PROVIDER#pdl", "LIMIT")))
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        let n = |name: &str| -> i64 { item[name].as_n().unwrap().parse().unwrap() };
        (n("secondIndex"), n("secondUsed"), n("minuteUsed"))
    };
    // The queue is idle: the slot is now, counted in its second and minute by the reservation.
    let call = match limiter.admit("pdl", None, Lane::Interactive).await.unwrap() {
        Admission::Counted(call) => call,
        other => panic!("an idle queue's slot not counted: {other:?}"),
    };
    assert_eq!((call.provider.as_str(), call.failures), ("pdl", 0));
    let counted = windows().await;
    assert_eq!(counted, (call.at_ms.div_euclid(1_000), 1, 1));
    // The gate in that second passes it without counting it again.
    assert_eq!(
        limiter
            .gate("pdl", Lane::Interactive, Some(&call))
            .await
            .unwrap(),
        Admission::Go { failures: 0 }
    );
    assert_eq!(windows().await, counted);
    // A call that starts in a later second (its renewals took long) is counted there.
    let next_second = (call.at_ms.div_euclid(1_000) + 1) * 1_000;
    let wait = next_second - Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    assert_eq!(
        limiter
            .gate("pdl", Lane::Interactive, Some(&call))
            .await
            .unwrap(),
        Admission::Go { failures: 0 }
    );
    let (second, used, minute_used) = windows().await;
    assert!(second > counted.0, "{second} after {counted:?}");
    assert_eq!(used, 1);
    assert!(minute_used == 2 || (minute_used == 1 && second % 60 == 0));
}

#[tokio::test]
async fn at_a_full_window_a_bulks_job_is_deferred_a_horizon_later_and_an_interactive_one_to_the_next()
 {
    use crate::limiter::{Admission, BULK_HORIZON, Lane, Limiter, ProviderLimit, ProviderSlot};
    let store = table().await;
    let limit = ProviderLimit {
        per_second: Some(1),
        per_minute: None,
    };
    let limiter = Limiter::new(store.clone(), [("fullenrich", limit)]);
    // 100 ms into a second, so that the three gates fall in it.
    let now = Utc::now().timestamp_millis();
    let second = now - now.rem_euclid(1_000) + 1_000;
    tokio::time::sleep(Duration::from_millis((second + 100 - now) as u64)).await;
    assert_eq!(
        limiter
            .gate("fullenrich", Lane::Interactive, None)
            .await
            .unwrap(),
        Admission::Go { failures: 0 }
    );
    let deferred = |at_ms| {
        Admission::Defer(ProviderSlot {
            provider: "fullenrich".to_string(),
            at_ms,
        })
    };
    assert_eq!(
        limiter.gate("fullenrich", Lane::Bulk, None).await.unwrap(),
        deferred(second + BULK_HORIZON.as_millis() as i64)
    );
    assert_eq!(
        limiter
            .gate("fullenrich", Lane::Interactive, None)
            .await
            .unwrap(),
        deferred(second + 1_000)
    );
}

#[tokio::test]
async fn an_open_circuit_passes_no_call_gives_slots_after_it_and_counts_one_failure_an_opening() {
    let store = table().await;
    let now = Utc::now().timestamp_millis();
    let windows = [(Window::Second, 100)];
    assert_eq!(
        store
            .open_provider_circuit("prospeo", now + 5_000, now)
            .await
            .unwrap(),
        now + 5_000
    );
    // A call that was under way when it opened fails too: the circuit stays as it is and the
    // failure is not counted again.
    assert_eq!(
        store
            .open_provider_circuit("prospeo", now + 1_000, now + 10)
            .await
            .unwrap(),
        now + 5_000
    );
    // A job holding an earlier slot meets the open circuit at the gate.
    let mut state = ProviderState::default();
    assert_eq!(
        store
            .pass_provider_gate("prospeo", &windows, now + 20, &mut state)
            .await
            .unwrap(),
        Gate::Open {
            until_ms: now + 5_000
        }
    );
    // Slots are given after it: the first is the probe's.
    let mut state = ProviderState::default();
    let probe = store
        .reserve_provider_slot("prospeo", 200, now, None, None, &mut state)
        .await
        .unwrap();
    assert_eq!(probe, Reservation::Slot(now + 5_000));
    let next = store
        .reserve_provider_slot("prospeo", 200, now, None, None, &mut state)
        .await
        .unwrap();
    assert_eq!(next, Reservation::Slot(now + 5_200));
    // Closed at its end: the probe passes and sees the one failure.
    let gate = store
        .pass_provider_gate("prospeo", &windows, now + 5_000, &mut state)
        .await
        .unwrap();
    assert_eq!(gate, Gate::Pass { failures: 1 });
    store
        .close_provider_circuit("prospeo", now + 5_001)
        .await
        .unwrap();
    let gate = store
        .pass_provider_gate("prospeo", &windows, now + 5_200, &mut state)
        .await
        .unwrap();
    assert_eq!(gate, Gate::Pass { failures: 0 });
    // Failing again later opens it again, counted once more.
    store
        .open_provider_circuit("prospeo", now + 9_000, now + 6_000)
        .await
        .unwrap();
    store
        .open_provider_circuit("prospeo", now + 9_000, now + 6_100)
        .await
        .unwrap();
    let gate = store
        .pass_provider_gate("prospeo", &windows, now + 9_000, &mut state)
        .await
        .unwrap();
    assert_eq!(gate, Gate::Pass { failures: 1 });
}
