//! The DynamoDB adapter: one table, `pk`/`sk` strings, `expiresAt` as the TTL attribute.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | credits | `ORG#{orgId}` | `CREDITS` |
//! | credit transaction | `ORG#{orgId}` | `CREDITTX#{id}` |
//! | person | `ORG#{orgId}` | `PERSON#{personId}` |
//! | enrichment (current) | `ORG#{orgId}` | `ENRICHMENT#{personId}#{field}` |
//! | global cache | `GLOBAL#{fingerprint}` | `FIELD#{field}` |
//!
//! Every rule that must hold under concurrency (one enrichment per org, person and field; credits
//! never below zero; one worker per job) is a DynamoDB condition here, so it holds across Lambda
//! instances. Conditions and cancellation reasons: AWS docs, "Condition expressions" and
//! `TransactWriteItems` ("TransactionCanceledException").

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{ContactPoint, Enrichment, Field, Job, OperationType, Person, Status};

type Item = HashMap<String, AttributeValue>;

/// A DynamoDB failure, or an item that does not have the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call failed; `message` has the SDK's full error context.
    #[error("DynamoDB {operation} failed: {message}")]
    Dynamo {
        /// The API operation (`TransactWriteItems`...).
        operation: &'static str,
        /// `DisplayErrorContext` of the SDK error.
        message: String,
    },
    /// DynamoDB did not answer in time, or could not be reached (the SDK's timeout or dispatch
    /// failure): retryable, answered `503 UNAVAILABLE` by the API.
    #[error("DynamoDB {operation} unavailable: {message}")]
    Unavailable {
        /// The API operation.
        operation: &'static str,
        /// `DisplayErrorContext` of the SDK error.
        message: String,
    },
    /// A grant would take a balance past [`MAX_BALANCE`] (or was not positive): nothing was
    /// granted.
    #[error(
        "a grant must be positive and leave the balance at most {MAX_BALANCE} credits; nothing was granted"
    )]
    BalanceLimit,
    /// An item could not be converted to or from its domain type.
    #[error("item shape: {0}")]
    Shape(String),
}

fn dynamo_error<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |e| {
        let message = DisplayErrorContext(&e).to_string();
        match e {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                StoreError::Unavailable { operation, message }
            }
            _ => StoreError::Dynamo { operation, message },
        }
    }
}

/// Sorts a conditional `UpdateItem`'s result: `Ok(Ok(output))` when it was applied, `Ok(Err(item))`
/// when its condition failed, with the item as it is when the call asked for it
/// (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), and `Err` for any other failure.
fn conditional_update(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>,
) -> Result<Result<UpdateItemOutput, Option<Item>>, StoreError> {
    match result {
        Ok(output) => Ok(Ok(output)),
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                Ok(Err(failed.item().cloned()))
            }
            _ => Err(dynamo_error("UpdateItem")(e)),
        },
    }
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Shape(e.to_string())
}

fn shape_error(e: serde_dynamo::Error) -> StoreError {
    StoreError::Shape(e.to_string())
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// `ORG#{orgId}`: the partition of everything an organization owns.
pub fn org_pk(org_id: &str) -> String {
    format!("ORG#{org_id}")
}

fn enrichment_sk(person_id: Uuid, field: Field) -> String {
    format!("ENRICHMENT#{person_id}#{field}")
}

fn person_sk(person_id: Uuid) -> String {
    format!("PERSON#{person_id}")
}

const CREDITS_SK: &str = "CREDITS";

/// The highest credit balance an org can hold; far below `i64::MAX`, so balance arithmetic never
/// overflows.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;

/// How many times a transaction cancelled only by `TransactionConflict` (another transaction on
/// the same items in flight) is tried again before giving up.
const CONFLICT_ATTEMPTS: u32 = 4;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrichmentItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    enrichment: Enrichment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim_token: Option<String>,
    /// When the worker's claim lapses (ISO 8601); a worker renews it before each provider call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim_until: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    providers_answered: Vec<String>,
    #[serde(default)]
    credits_charged: i64,
}

#[derive(Serialize, Deserialize)]
struct PersonItem {
    pk: String,
    sk: String,
    /// The key of the creation-order index [`PEOPLE_INDEX`]: `ORG#{orgId}#PERSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1pk: Option<String>,
    /// Its sort key: `{createdAt}#{personId}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1sk: Option<String>,
    #[serde(flatten)]
    person: Person,
}

impl PersonItem {
    fn new(org_id: &str, person: &Person) -> Self {
        PersonItem {
            pk: org_pk(org_id),
            sk: person_sk(person.id),
            gsi1pk: person.created_at.as_ref().map(|_| people_index_pk(org_id)),
            gsi1sk: person
                .created_at
                .as_ref()
                .map(|at| format!("{at}#{}", person.id)),
            person: person.clone(),
        }
    }
}

/// The global secondary index that lists an org's people in creation order: partition
/// `gsi1pk` (`ORG#{orgId}#PERSON`), sort `gsi1sk` (`{createdAt}#{personId}`), all attributes
/// projected (`template.yaml`, `EnrichmentTable`).
pub const PEOPLE_INDEX: &str = "byCreation";

fn people_index_pk(org_id: &str) -> String {
    format!("ORG#{org_id}#PERSON")
}

/// Where a page of the people list ends: the last person's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonCursor {
    /// Its `createdAt`.
    pub created_at: String,
    /// Its id.
    pub id: Uuid,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreditTransactionItem<'a> {
    pk: String,
    sk: String,
    id: Uuid,
    operation_type: OperationType,
    /// Signed: negative for a debit, positive for a refund.
    amount: i64,
    enrichment_id: Uuid,
    created_by: &'a str,
    created_at: &'a str,
}

/// A global cache entry: what was found for one real person and field, for every org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The `globalEnrichmentId` of enrichments served from it.
    pub id: Uuid,
    /// The normalized values found; empty for "no provider knows this person".
    pub contacts: Vec<ContactPoint>,
    /// The provider that found them; empty for a miss.
    pub provider: String,
    /// When they were found (ISO 8601).
    pub found_at: String,
    /// Expiry in Unix seconds: DynamoDB's TTL attribute, also checked on read because TTL
    /// deletion lags (AWS docs, "Time to Live").
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct CacheItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    entry: CacheEntry,
}

fn cache_key(fingerprint: &str, field: Field) -> (String, String) {
    (format!("GLOBAL#{fingerprint}"), format!("FIELD#{field}"))
}

/// What happened to a POST's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The enrichment, the debit and the credit transaction were written.
    Created,
    /// A `pending` or `finished` enrichment exists (returned as it is; a stale `pending` one is
    /// for the caller to time out): nothing was written.
    Existing(Box<EnrichmentRecord>),
    /// The person does not exist in the org: nothing was written.
    PersonNotFound,
    /// The balance does not cover the cost: nothing was written.
    InsufficientCredits,
    /// The org already created its limit of enrichments this minute: nothing was written.
    RateLimited {
        /// Seconds until the next minute, when the org may create enrichments again.
        retry_after_seconds: u64,
    },
}

/// An org's limit of new enrichments per minute, kept in the creating transaction itself: one
/// counter item per org and minute (`pk = ORG#{orgId}`, `sk = RATE#{unix minute}`, `count`,
/// expiring through the TTL attribute two minutes later), incremented on condition it is below
/// the limit. It costs no round trip: the counter is one more item of the `TransactWriteItems`
/// that creates the enrichment, and a replay (cancelled on its first item) does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// New enrichments an org may create per calendar minute (UTC); 0 turns the limit off.
    pub per_minute: u32,
}

/// An enrichment as stored: the API object and what the API does not show.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichmentRecord {
    /// The API object.
    pub enrichment: Enrichment,
    /// Credits its creation took; given back if it ends `failed` or `timeout`.
    pub credits_charged: i64,
    /// Providers that answered "no match" in earlier attempts of its job.
    pub providers_answered: Vec<String>,
}

/// What a worker learns when it asks for the global cache lease of a person and field.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLease {
    /// No fresh entry and no other worker on it: this worker runs the providers.
    Acquired,
    /// A fresh entry exists: no provider call is needed.
    Cached(Box<CacheEntry>),
    /// Another worker (maybe another org's job for the same person) is running the providers;
    /// its lease lapses at `until_unix` (seconds) unless it renews it.
    Busy {
        /// When the holder's lease lapses (Unix seconds).
        until_unix: i64,
    },
}

/// What a worker learns when it claims a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The job is this worker's until its claim lapses: the enrichment as stored.
    Claimed(Box<EnrichmentRecord>),
    /// A live worker holds the job until `until` (ISO 8601): a duplicate delivery, or a
    /// redelivery that came before a dead worker's claim lapsed.
    Busy {
        /// When the holder's claim lapses unless it renews it.
        until: String,
    },
    /// Nothing to run: the enrichment ended, was replaced or does not exist.
    Gone,
}

/// The outcome a worker writes on a claimed enrichment.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// `finished` or `failed`.
    pub status: Status,
    /// `dataFound`.
    pub data_found: Option<bool>,
    /// `error`, for `failed`.
    pub error: Option<String>,
    /// `globalEnrichmentId`.
    pub global_enrichment_id: Option<Uuid>,
    /// The person's full, merged contact list for the field, when it changed.
    pub person_contacts: Option<Vec<ContactPoint>>,
    /// A new global cache entry with its fingerprint, when providers found data.
    pub cache: Option<(String, CacheEntry)>,
}

impl Completion {
    /// `failed` with `error`: nothing found, nothing cached; the credits are refunded in the
    /// same transaction.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            status: Status::Failed,
            data_found: None,
            error: Some(error.into()),
            global_enrichment_id: None,
            person_contacts: None,
            cache: None,
        }
    }

    /// `finished` from an existing global cache entry: `dataFound` as the entry says, its id as
    /// `globalEnrichmentId`, and the person's merged contacts when the entry holds any.
    pub fn from_cache(entry: &CacheEntry, person_contacts: Option<Vec<ContactPoint>>) -> Self {
        Self {
            status: Status::Finished,
            data_found: Some(!entry.contacts.is_empty()),
            error: None,
            global_enrichment_id: Some(entry.id),
            person_contacts,
            cache: None,
        }
    }

    /// `finished` after the providers answered: `dataFound` when `person_contacts` is given (what
    /// they found, merged into the person's), and the new global cache entry (found data or a
    /// miss), whose id is the `globalEnrichmentId`.
    pub fn searched(
        person_contacts: Option<Vec<ContactPoint>>,
        cache: Option<(String, CacheEntry)>,
    ) -> Self {
        Self {
            status: Status::Finished,
            data_found: Some(person_contacts.is_some()),
            error: None,
            global_enrichment_id: cache.as_ref().map(|(_, entry)| entry.id),
            person_contacts,
            cache,
        }
    }
}

/// The DynamoDB table. Cheap to clone; build once per process.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    table: String,
}

impl Store {
    /// A store over `table` with a configured client.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A store over `table` with a client of the process's SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), table)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table as `template.yaml` declares it (`pk`/`sk` strings, on demand, TTL on
    /// `expiresAt`, the [`PEOPLE_INDEX`] index) unless it exists: for the emulators (the local stack, the store's tests).
    /// On AWS the template creates it.
    ///
    /// Errors: a DynamoDB failure, with the operation that failed.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let tables = self
            .client
            .list_tables()
            .send()
            .await
            .map_err(dynamo_error("ListTables"))?;
        if tables.table_names().contains(&self.table) {
            return Ok(());
        }
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .attribute_definitions(attribute("gsi1pk")?)
            .attribute_definitions(attribute("gsi1sk")?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(PEOPLE_INDEX)
                    .key_schema(key("gsi1pk", KeyType::Hash)?)
                    .key_schema(key("gsi1sk", KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .await
            .map_err(dynamo_error("CreateTable"))?;
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("expiresAt")
            .enabled(true)
            .build()
            .map_err(build_error)?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(dynamo_error("UpdateTimeToLive"))?;
        Ok(())
    }

    fn enrichment_key(org_id: &str, person_id: Uuid, field: Field) -> Item {
        HashMap::from([
            ("pk".into(), s(org_pk(org_id))),
            ("sk".into(), s(enrichment_sk(person_id, field))),
        ])
    }

    /// Creates `enrichment` (status `pending`) and charges `cost` credits in ONE
    /// `TransactWriteItems`: (0) put the enrichment unless a `pending` or `finished` one exists,
    /// returning the old item on conflict (`ALL_OLD`),
    /// (1) check the person exists, (2) decrement the org's balance on condition it covers `cost`,
    /// (3) write the credit transaction `enrichment.credit_transaction_id`.
    ///
    /// With a [`RateLimit`], (4) increments the org's counter of the current minute on condition
    /// it is below the limit.
    ///
    /// A replay costs exactly this one call (spec, "Idempotency").
    pub async fn create_enrichment(
        &self,
        enrichment: &Enrichment,
        cost: i64,
        rate_limit: RateLimit,
    ) -> Result<CreateOutcome, StoreError> {
        let pk = org_pk(&enrichment.org_id);
        let tx_id = enrichment.credit_transaction_id.ok_or_else(|| {
            StoreError::Shape("a new enrichment needs its credit transaction id".into())
        })?;
        let item: Item = serde_dynamo::to_item(EnrichmentItem {
            pk: pk.clone(),
            sk: enrichment_sk(enrichment.entity_id, enrichment.field),
            enrichment: enrichment.clone(),
            claim_token: None,
            claim_until: None,
            providers_answered: Vec::new(),
            credits_charged: cost,
        })
        .map_err(shape_error)?;
        let put_enrichment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(pk) OR #status IN (:failed, :timeout, :cancelled)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":timeout", s(Status::Timeout.as_str()))
            .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let person_exists = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(person_sk(enrichment.entity_id)))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(build_error)?;
        let debit = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(CREDITS_SK))
            .update_expression("SET balance = balance - :cost")
            .condition_expression("balance >= :cost")
            .expression_attribute_values(":cost", n(cost))
            .build()
            .map_err(build_error)?;
        let transaction = self.credit_transaction(
            tx_id,
            enrichment.field.operation_type(),
            -cost,
            enrichment,
            &enrichment.created_at,
        )?;
        let mut items = vec![
            TransactWriteItem::builder().put(put_enrichment).build(),
            TransactWriteItem::builder()
                .condition_check(person_exists)
                .build(),
            TransactWriteItem::builder().update(debit).build(),
            TransactWriteItem::builder().put(transaction).build(),
        ];
        let now_unix = chrono::DateTime::parse_from_rfc3339(&enrichment.created_at)
            .map(|at| at.timestamp())
            .map_err(|e| StoreError::Shape(format!("createdAt: {e}")))?;
        let minute = now_unix.div_euclid(60);
        if rate_limit.per_minute > 0 {
            let counter = Update::builder()
                .table_name(&self.table)
                .key("pk", s(pk.clone()))
                .key("sk", s(format!("RATE#{minute}")))
                .update_expression("ADD #count :one SET expiresAt = :expires")
                .condition_expression("attribute_not_exists(#count) OR #count < :limit")
                .expression_attribute_names("#count", "count")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":limit", n(i64::from(rate_limit.per_minute)))
                .expression_attribute_values(":expires", n((minute + 2) * 60))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(counter).build());
        }
        match self.transact(items).await? {
            None => Ok(CreateOutcome::Created),
            Some(reasons) => {
                let failed = |i: usize| reasons.get(i).is_some_and(|r| r.failed);
                if failed(0) {
                    let old = reasons[0].item.clone().ok_or_else(|| {
                        StoreError::Shape("conflict without the old enrichment".into())
                    })?;
                    Ok(CreateOutcome::Existing(Box::new(record_from_item(old)?)))
                } else if failed(1) {
                    Ok(CreateOutcome::PersonNotFound)
                } else if failed(4) {
                    Ok(CreateOutcome::RateLimited {
                        retry_after_seconds: (60 - now_unix.rem_euclid(60)).unsigned_abs(),
                    })
                } else if failed(2) {
                    Ok(CreateOutcome::InsufficientCredits)
                } else {
                    Err(cancelled("enrichment creation", &reasons))
                }
            }
        }
    }

    fn credit_transaction(
        &self,
        id: Uuid,
        operation_type: OperationType,
        amount: i64,
        enrichment: &Enrichment,
        at: &str,
    ) -> Result<Put, StoreError> {
        let item: Item = serde_dynamo::to_item(CreditTransactionItem {
            pk: org_pk(&enrichment.org_id),
            sk: format!("CREDITTX#{id}"),
            id,
            operation_type,
            amount,
            enrichment_id: enrichment.id,
            created_by: &enrichment.created_by,
            created_at: at,
        })
        .map_err(shape_error)?;
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)
    }

    /// Marks a `pending` enrichment `failed` with `error` and gives `cost` credits back with a
    /// `refund` credit transaction, in one `TransactWriteItems`. Used when the job could not be
    /// queued after the enrichment was created, and when a job is given up on its last receive.
    /// Returns the enrichment as stored; an error if it was no longer pending.
    pub async fn fail_and_refund(
        &self,
        enrichment: &Enrichment,
        cost: i64,
        error: &str,
        now: &str,
    ) -> Result<Enrichment, StoreError> {
        self.end_pending(enrichment, cost, Status::Failed, error, now)
            .await?
            .map_err(|_| StoreError::Dynamo {
                operation: "TransactWriteItems",
                message: "refund cancelled: the enrichment is no longer pending".into(),
            })
    }

    /// Ends a `pending` enrichment as `status` with `error` and gives its `charged` credits back
    /// (a `refund` credit transaction), in one `TransactWriteItems`. Returns the ended
    /// enrichment, or `Err(current)` when it was no longer pending (nothing written; the
    /// current item comes back from the same call, `ALL_OLD`).
    async fn end_pending(
        &self,
        enrichment: &Enrichment,
        charged: i64,
        status: Status,
        error: &str,
        now: &str,
    ) -> Result<Result<Enrichment, Enrichment>, StoreError> {
        let end = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &enrichment.org_id,
                enrichment.entity_id,
                enrichment.field,
            )))
            .update_expression(
                "SET #status = :status, #error = :error, updatedAt = :now \
                 REMOVE claimToken, claimUntil, providersAnswered",
            )
            .condition_expression("id = :id AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":error", s(error))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":id", s(enrichment.id.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let mut items = vec![TransactWriteItem::builder().update(end).build()];
        items.extend(self.refund_items(enrichment, charged, now)?);
        match self.transact(items).await? {
            None => Ok(Ok(Enrichment {
                status,
                error: Some(error.to_string()),
                updated_at: now.to_string(),
                ..enrichment.clone()
            })),
            Some(mut reasons) if reasons.first().is_some_and(|r| r.failed) => {
                match reasons.swap_remove(0).item {
                    Some(current) => Ok(Err(enrichment_from_item(current)?)),
                    None => Err(StoreError::Shape("the enrichment disappeared".into())),
                }
            }
            Some(reasons) => Err(cancelled(status.as_str(), &reasons)),
        }
    }

    /// The two items that give `amount` credits of `enrichment` back: the balance increment and
    /// its `refund` credit transaction. None when nothing was charged.
    fn refund_items(
        &self,
        enrichment: &Enrichment,
        amount: i64,
        now: &str,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        if amount <= 0 {
            return Ok(Vec::new());
        }
        let refund = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(&enrichment.org_id)))
            .key("sk", s(CREDITS_SK))
            .update_expression("SET balance = balance + :amount")
            .expression_attribute_values(":amount", n(amount))
            .build()
            .map_err(build_error)?;
        let transaction = self.credit_transaction(
            Uuid::new_v4(),
            OperationType::Refund,
            amount,
            enrichment,
            now,
        )?;
        Ok(vec![
            TransactWriteItem::builder().update(refund).build(),
            TransactWriteItem::builder().put(transaction).build(),
        ])
    }

    /// Runs a transaction, trying again while it is cancelled only by `TransactionConflict`.
    /// Returns `None` when it committed, or the cancellation reasons (one per item, in order).
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<Reason>>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(None),
                Err(e) => e,
            };
            let reasons = match error.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|r| Reason {
                        failed: r.code() == Some("ConditionalCheckFailed"),
                        conflict: r.code() == Some("TransactionConflict"),
                        detail: r
                            .code()
                            .filter(|code| *code != "None")
                            .map(|code| format!("{code}: {}", r.message().unwrap_or_default())),
                        item: r.item().cloned(),
                    })
                    .collect::<Vec<_>>(),
                _ => return Err(dynamo_error("TransactWriteItems")(error)),
            };
            let only_conflicts =
                !reasons.iter().any(|r| r.failed) && reasons.iter().any(|r| r.conflict);
            if only_conflicts && attempt < CONFLICT_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                continue;
            }
            return Ok(Some(reasons));
        }
    }

    /// The current enrichment of (org, person, field), read consistently; `None` if none.
    pub async fn get_enrichment(
        &self,
        org_id: &str,
        person_id: Uuid,
        field: Field,
    ) -> Result<Option<EnrichmentRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(org_id, person_id, field)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        output.item.map(record_from_item).transpose()
    }

    /// Marks a `pending` enrichment `timeout` (spec, "Timeout Handling") and gives its credits
    /// back (a `refund` credit transaction), in one `TransactWriteItems`. If it is no longer
    /// pending (a worker just finished it), nothing is written and it comes back as it now is,
    /// from the same call (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
    pub async fn mark_timeout(
        &self,
        record: &EnrichmentRecord,
        now: &str,
    ) -> Result<Enrichment, StoreError> {
        let ended = self
            .end_pending(
                &record.enrichment,
                record.credits_charged,
                Status::Timeout,
                TIMEOUT_MESSAGE,
                now,
            )
            .await?;
        Ok(ended.unwrap_or_else(|current| current))
    }

    /// Claims a job for one worker until `until` (ISO 8601): sets `claimToken` and `claimUntil`
    /// on the job's enrichment if it is still `pending` and unclaimed, or its claim lapsed
    /// before `now` (a worker that died). One conditional `UpdateItem`; on conflict the item
    /// comes back in the same call (`ALL_OLD`) and tells whether a live worker holds the job
    /// ([`Claim::Busy`]) or the job is no longer to run ([`Claim::Gone`]: a duplicate of a
    /// finished job, a replaced or ended enrichment).
    pub async fn claim(
        &self,
        job: &Job,
        token: &str,
        now: &str,
        until: &str,
    ) -> Result<Claim, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &job.org_id,
                job.person_id,
                job.field,
            )))
            .update_expression("SET claimToken = :token, claimUntil = :until")
            .condition_expression(
                "id = :id AND #status = :pending \
                 AND (attribute_not_exists(claimToken) OR attribute_not_exists(claimUntil) \
                      OR claimUntil < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":id", s(job.enrichment_id.to_string()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":until", s(until))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(output) => Ok(Claim::Claimed(Box::new(record_from_item(
                output.attributes.unwrap_or_default(),
            )?))),
            Err(Some(current)) => {
                let current: EnrichmentItem =
                    serde_dynamo::from_item(current).map_err(shape_error)?;
                let live = current.enrichment.id == job.enrichment_id
                    && current.enrichment.status == Status::Pending;
                match current.claim_until {
                    Some(until) if live => Ok(Claim::Busy { until }),
                    _ => Ok(Claim::Gone),
                }
            }
            Err(None) => Ok(Claim::Gone),
        }
    }

    /// Extends a worker's claim to `until` (ISO 8601) before a provider call. Returns `false`
    /// when the claim is no longer `token`'s or the enrichment is no longer `pending` (it timed
    /// out, was replaced, or another worker took the job over): the worker must stop.
    pub async fn renew_claim(
        &self,
        enrichment: &Enrichment,
        token: &str,
        until: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &enrichment.org_id,
                enrichment.entity_id,
                enrichment.field,
            )))
            .update_expression("SET claimUntil = :until")
            .condition_expression("claimToken = :token AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", s(until))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Gives a claim up so that a redelivery can run the job again at once. A claim that is no
    /// longer `token`'s is left alone.
    pub async fn release_claim(
        &self,
        enrichment: &Enrichment,
        token: &str,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &enrichment.org_id,
                enrichment.entity_id,
                enrichment.field,
            )))
            .update_expression("REMOVE claimToken, claimUntil")
            .condition_expression("claimToken = :token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        // A claim or lease already taken over by another owner is theirs to keep.
        let _not_ours = conditional_update(result)?;
        Ok(())
    }

    /// Records on a claimed enrichment that `provider` answered "no match", so that a redelivery
    /// of the job does not ask it again. Returns `false` when the claim is no longer `token`'s.
    pub async fn record_no_match(
        &self,
        enrichment: &Enrichment,
        token: &str,
        provider: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &enrichment.org_id,
                enrichment.entity_id,
                enrichment.field,
            )))
            .update_expression(
                "SET providersAnswered = list_append(if_not_exists(providersAnswered, :none), :provider)",
            )
            .condition_expression("claimToken = :token")
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":provider", AttributeValue::L(vec![s(provider)]))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Single flight across orgs: takes the lease on the global cache item of (fingerprint,
    /// field) for `owner` (an enrichment id, so that a redelivery of the same job takes its own
    /// lease back) until `until_unix` (seconds), unless the item holds a fresh entry or another
    /// owner's unexpired lease. One conditional `UpdateItem`; on conflict the item comes back in
    /// the same call (`ALL_OLD`) and tells which.
    pub async fn acquire_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
        now_unix: i64,
        until_unix: i64,
    ) -> Result<CacheLease, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET leaseOwner = :owner, leaseUntil = :until")
            .condition_expression(
                "(attribute_not_exists(contacts) OR expiresAt <= :now) \
                 AND (attribute_not_exists(leaseUntil) OR leaseUntil <= :now OR leaseOwner = :owner)",
            )
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":until", n(until_unix))
            .expression_attribute_values(":now", n(now_unix))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(_) => Ok(CacheLease::Acquired),
            Err(current) => {
                let until_unix = current
                    .as_ref()
                    .and_then(|item| item.get("leaseUntil"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(now_unix);
                match current
                    .map(|item| cache_entry(item, now_unix))
                    .transpose()?
                {
                    Some(Some(entry)) => Ok(CacheLease::Cached(Box::new(entry))),
                    _ => Ok(CacheLease::Busy { until_unix }),
                }
            }
        }
    }

    /// Extends `owner`'s lease on the global cache item of (fingerprint, field) to `until_unix`
    /// (seconds) before a provider call. Returns `false` when the lease is no longer `owner`'s
    /// (it lapsed and another worker took it): the caller goes on without it.
    pub async fn renew_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
        until_unix: i64,
    ) -> Result<bool, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET leaseUntil = :until")
            .condition_expression("leaseOwner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":until", n(until_unix))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Gives the cache lease up (the providers found nothing, or failed), so that a waiting
    /// worker runs them itself. A lease that is no longer `owner`'s is left alone.
    pub async fn release_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("REMOVE leaseOwner, leaseUntil")
            .condition_expression("leaseOwner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        // A claim or lease already taken over by another owner is theirs to keep.
        let _not_ours = conditional_update(result)?;
        Ok(())
    }

    /// Writes a worker's outcome in one `TransactWriteItems`: the enrichment (on condition it is
    /// still `pending` and claimed by `token`), the person's merged contacts and the new global
    /// cache entry; an enrichment that ends `failed` gives its credits back in the same
    /// transaction (a `refund` credit transaction). Returns `false` when the claim was lost (the
    /// enrichment timed out or was replaced meanwhile): nothing is written then.
    pub async fn complete(
        &self,
        record: &EnrichmentRecord,
        token: &str,
        completion: &Completion,
        now: &str,
    ) -> Result<bool, StoreError> {
        let enrichment = &record.enrichment;
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &enrichment.org_id,
                enrichment.entity_id,
                enrichment.field,
            )))
            .update_expression(
                "SET #status = :status, dataFound = :dataFound, #error = :error, \
                 globalEnrichmentId = :global, updatedAt = :now REMOVE claimToken, claimUntil, providersAnswered",
            )
            .condition_expression("id = :id AND #status = :pending AND claimToken = :token")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":status", s(completion.status.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":id", s(enrichment.id.to_string()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":now", s(now));
        update = update
            .expression_attribute_values(
                ":dataFound",
                completion
                    .data_found
                    .map_or(AttributeValue::Null(true), AttributeValue::Bool),
            )
            .expression_attribute_values(
                ":error",
                completion
                    .error
                    .clone()
                    .map_or(AttributeValue::Null(true), s),
            )
            .expression_attribute_values(
                ":global",
                completion
                    .global_enrichment_id
                    .map_or(AttributeValue::Null(true), |id| s(id.to_string())),
            );
        let mut items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_error)?)
                .build(),
        ];
        if let Some(contacts) = &completion.person_contacts {
            let person = Update::builder()
                .table_name(&self.table)
                .key("pk", s(org_pk(&enrichment.org_id)))
                .key("sk", s(person_sk(enrichment.entity_id)))
                .update_expression("SET #field = :contacts, updatedAt = :now")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#field", enrichment.field.as_str())
                .expression_attribute_values(":now", s(now))
                .expression_attribute_values(
                    ":contacts",
                    serde_dynamo::to_attribute_value(contacts).map_err(shape_error)?,
                )
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(person).build());
        }
        if let Some((fingerprint, entry)) = &completion.cache {
            let (pk, sk) = cache_key(fingerprint, enrichment.field);
            let item: Item = serde_dynamo::to_item(CacheItem {
                pk,
                sk,
                entry: entry.clone(),
            })
            .map_err(shape_error)?;
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        if completion.status == Status::Failed {
            items.extend(self.refund_items(enrichment, record.credits_charged, now)?);
        }
        match self.transact(items).await? {
            None => Ok(true),
            Some(reasons) if reasons.first().is_some_and(|r| r.failed) => Ok(false),
            Some(reasons) => Err(cancelled("completion", &reasons)),
        }
    }

    /// The person `person_id` of the org, read consistently; `None` if absent.
    pub async fn get_person(
        &self,
        org_id: &str,
        person_id: Uuid,
    ) -> Result<Option<Person>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(person_sk(person_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        output
            .item
            .map(|item| {
                serde_dynamo::from_item::<_, PersonItem>(item)
                    .map(|p| p.person)
                    .map_err(shape_error)
            })
            .transpose()
    }

    /// Creates `people` in the org, all or nothing: groups of 100 (the `TransactWriteItems` item
    /// limit) are written one transaction each, each person on condition its id is new, and when
    /// a group fails the groups already written are deleted before the error is returned.
    ///
    /// Errors: DynamoDB failures or an id that exists (nothing is left written, unless the
    /// deletion fails too: then its error says so).
    pub async fn create_people(&self, org_id: &str, people: &[Person]) -> Result<(), StoreError> {
        let mut written = 0;
        for group in people.chunks(100) {
            if let Err(e) = self.put_group(org_id, group).await {
                if written > 0
                    && let Err(undo) = self.delete_people(org_id, &people[..written]).await
                {
                    return Err(StoreError::Dynamo {
                        operation: "TransactWriteItems",
                        message: format!(
                            "{e}; and deleting the {written} people written before it failed: {undo}"
                        ),
                    });
                }
                return Err(e);
            }
            written += group.len();
        }
        Ok(())
    }

    async fn put_group(&self, org_id: &str, group: &[Person]) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(group.len());
        for person in group {
            let item: Item =
                serde_dynamo::to_item(PersonItem::new(org_id, person)).map_err(shape_error)?;
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self.transact(items).await? {
            None => Ok(()),
            Some(reasons) => Err(cancelled("people creation", &reasons)),
        }
    }

    /// Deletes people just created (the undo of a failed [`Store::create_people`]), 25 per
    /// `BatchWriteItem`, trying the unprocessed ones again a few times.
    async fn delete_people(&self, org_id: &str, people: &[Person]) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        for group in people.chunks(25) {
            let mut requests = Vec::with_capacity(group.len());
            for person in group {
                let delete = DeleteRequest::builder()
                    .key("pk", s(org_pk(org_id)))
                    .key("sk", s(person_sk(person.id)))
                    .build()
                    .map_err(build_error)?;
                requests.push(WriteRequest::builder().delete_request(delete).build());
            }
            for attempt in 0..5 {
                let output = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(dynamo_error("BatchWriteItem"))?;
                requests = output
                    .unprocessed_items
                    .and_then(|mut left| left.remove(&self.table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            if !requests.is_empty() {
                return Err(StoreError::Dynamo {
                    operation: "BatchWriteItem",
                    message: format!("{} deletions left unprocessed", requests.len()),
                });
            }
        }
        Ok(())
    }

    /// A page of the org's people, oldest first: at most `limit` after `after`, and the cursor
    /// of the next page when there is one. One `Query` of [`PEOPLE_INDEX`] for `limit + 1` items
    /// (the extra one only says whether a next page exists). The index is eventually
    /// consistent: a person created a moment ago may show up a moment later.
    pub async fn list_people(
        &self,
        org_id: &str,
        limit: usize,
        after: Option<&PersonCursor>,
    ) -> Result<(Vec<Person>, Option<PersonCursor>), StoreError> {
        let index_pk = people_index_pk(org_id);
        let start = after.map(|cursor| {
            HashMap::from([
                ("pk".to_string(), s(org_pk(org_id))),
                ("sk".to_string(), s(person_sk(cursor.id))),
                ("gsi1pk".to_string(), s(index_pk.clone())),
                (
                    "gsi1sk".to_string(),
                    s(format!("{}#{}", cursor.created_at, cursor.id)),
                ),
            ])
        });
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PEOPLE_INDEX)
            .key_condition_expression("gsi1pk = :pk")
            .expression_attribute_values(":pk", s(index_pk))
            .scan_index_forward(true)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo_error("Query"))?;
        let mut people = output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                serde_dynamo::from_item::<_, PersonItem>(item)
                    .map(|p| p.person)
                    .map_err(shape_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next = if people.len() > limit {
            people.truncate(limit);
            people.last().map(|last| PersonCursor {
                created_at: last.created_at.clone().unwrap_or_default(),
                id: last.id,
            })
        } else {
            None
        };
        Ok((people, next))
    }

    /// Deletes the person `person_id` of the org and its enrichments in one
    /// `TransactWriteItems`; a `pending` enrichment gives its credits back in the same
    /// transaction (a `refund` credit transaction), so that its job, finding nothing, is
    /// dropped. Returns `false` when the person does not exist. The enrichments are read first
    /// and each deletion is conditioned on what was read; a race (a worker finishing one)
    /// makes it read and try again.
    pub async fn delete_person(
        &self,
        org_id: &str,
        person_id: Uuid,
        now: &str,
    ) -> Result<bool, StoreError> {
        for _ in 0..CONFLICT_ATTEMPTS {
            if self.get_person(org_id, person_id).await?.is_none() {
                return Ok(false);
            }
            let mut items = vec![
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .key("pk", s(org_pk(org_id)))
                            .key("sk", s(person_sk(person_id)))
                            .condition_expression("attribute_exists(pk)")
                            .build()
                            .map_err(build_error)?,
                    )
                    .build(),
            ];
            for field in [Field::Emails, Field::Phones] {
                let Some(record) = self.get_enrichment(org_id, person_id, field).await? else {
                    continue;
                };
                let enrichment = &record.enrichment;
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::enrichment_key(org_id, person_id, field)))
                    .condition_expression("id = :id AND #status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":id", s(enrichment.id.to_string()))
                    .expression_attribute_values(":status", s(enrichment.status.as_str()))
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().delete(delete).build());
                if enrichment.status == Status::Pending {
                    items.extend(self.refund_items(enrichment, record.credits_charged, now)?);
                }
            }
            match self.transact(items).await? {
                None => return Ok(true),
                Some(reasons) if reasons.iter().any(|r| r.failed) => continue,
                Some(reasons) => return Err(cancelled("person deletion", &reasons)),
            }
        }
        Err(StoreError::Dynamo {
            operation: "TransactWriteItems",
            message: "person deletion kept racing with its enrichments".into(),
        })
    }

    /// Adds `amount` credits (positive) to the org's balance (creating it at `amount`) unless the
    /// balance would pass [`MAX_BALANCE`]; returns the new balance.
    ///
    /// Errors: [`StoreError::BalanceLimit`] (nothing granted), DynamoDB failures.
    pub async fn grant_credits(&self, org_id: &str, amount: i64) -> Result<i64, StoreError> {
        let ceiling = MAX_BALANCE
            .checked_sub(amount)
            .filter(|_| amount > 0)
            .ok_or(StoreError::BalanceLimit)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(CREDITS_SK))
            .update_expression("ADD balance :amount")
            .condition_expression("attribute_not_exists(balance) OR balance <= :ceiling")
            .expression_attribute_values(":amount", n(amount))
            .expression_attribute_values(":ceiling", n(ceiling))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(output) => balance_of(output.attributes.as_ref()),
            Err(_) => Err(StoreError::BalanceLimit),
        }
    }

    /// The signed amounts of the org's credit transactions (a debit is negative, a refund
    /// positive), read consistently, in key order: with the grants, what the balance must equal
    /// (the ledger check of the tests and of an audit).
    ///
    /// Errors: DynamoDB failures; an item without a numeric `amount`.
    pub async fn credit_amounts(&self, org_id: &str) -> Result<Vec<i64>, StoreError> {
        let mut amounts = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :tx)")
                .expression_attribute_values(":pk", s(org_pk(org_id)))
                .expression_attribute_values(":tx", s("CREDITTX#"))
                .projection_expression("amount")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(dynamo_error("Query"))?;
            for item in page.items() {
                let amount = item
                    .get("amount")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| StoreError::Shape(format!("credit transaction {item:?}")))?;
                amounts.push(amount);
            }
            start = page.last_evaluated_key;
            if start.as_ref().is_none_or(|key| key.is_empty()) {
                return Ok(amounts);
            }
        }
    }

    /// The org's credit balance; 0 when it never had credits.
    pub async fn credit_balance(&self, org_id: &str) -> Result<i64, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(CREDITS_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        balance_of(output.item.as_ref())
    }
}

/// The `error` text of a timed-out enrichment.
pub const TIMEOUT_MESSAGE: &str = "Enrichment exceeded the maximum processing time";

fn balance_of(item: Option<&Item>) -> Result<i64, StoreError> {
    match item.and_then(|i| i.get("balance")) {
        None => Ok(0),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Shape(format!("balance {v:?}"))),
        Some(other) => Err(StoreError::Shape(format!("balance {other:?}"))),
    }
}

/// The cache entry an item holds, if it holds one (an item may hold only a lease) that has not
/// expired at `now_unix`.
fn cache_entry(item: Item, now_unix: i64) -> Result<Option<CacheEntry>, StoreError> {
    if !item.contains_key("contacts") {
        return Ok(None);
    }
    let entry = serde_dynamo::from_item::<_, CacheItem>(item)
        .map_err(shape_error)?
        .entry;
    Ok((entry.expires_at > now_unix).then_some(entry))
}

fn record_from_item(item: Item) -> Result<EnrichmentRecord, StoreError> {
    let item: EnrichmentItem = serde_dynamo::from_item(item).map_err(shape_error)?;
    Ok(EnrichmentRecord {
        enrichment: item.enrichment,
        credits_charged: item.credits_charged,
        providers_answered: item.providers_answered,
    })
}

/// The error of a transaction cancelled for a reason the caller did not expect.
fn cancelled(what: &str, reasons: &[Reason]) -> StoreError {
    StoreError::Dynamo {
        operation: "TransactWriteItems",
        message: format!(
            "{what} cancelled: [{}]",
            reasons
                .iter()
                .map(|r| r.detail.as_deref().unwrap_or("None"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn enrichment_from_item(item: Item) -> Result<Enrichment, StoreError> {
    serde_dynamo::from_item::<_, EnrichmentItem>(item)
        .map(|i| i.enrichment)
        .map_err(shape_error)
}

/// One cancellation reason of a `TransactionCanceledException`, per item in order.
#[derive(Debug, Clone)]
struct Reason {
    failed: bool,
    conflict: bool,
    /// `code: message` as DynamoDB gave them, for the logs.
    detail: Option<String>,
    item: Option<Item>,
}

/// One test per rule of the store, against the embedded DynamoDB emulator (dynoxide, a private
/// in-memory server per test on loopback).
#[cfg(test)]
mod tests {
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

    /// The org's balance and the signed amounts of its credit transactions; asserts the ledger
    /// holds (balance = grants − debits + refunds, `granted` being the grants).
    async fn ledger(store: &Store, granted: i64) -> (i64, Vec<i64>) {
        let mut amounts = store.credit_amounts(ORG).await.unwrap();
        amounts.sort();
        let balance = store.credit_balance(ORG).await.unwrap();
        assert_eq!(
            balance,
            granted + amounts.iter().sum::<i64>(),
            "{amounts:?}"
        );
        (balance, amounts)
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
        let person = person(&store).await;
        store.grant_credits(ORG, 10).await.unwrap();
        let enrichment = new_enrichment(person.id, now());
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap();
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
        let person = person(&store).await;
        store.grant_credits(ORG, 10).await.unwrap();
        let enrichment = new_enrichment(person.id, now());
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap();
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

        let found = Completion {
            status: Status::Finished,
            data_found: Some(false),
            ..failed
        };
        let found = Completion {
            error: None,
            ..found
        };
        assert!(store.complete(&record, "b", &found, &now()).await.unwrap());
        assert_eq!(ledger(&store, 10).await, (5, vec![-5]));
    }

    #[tokio::test]
    async fn a_live_claim_defers_a_duplicate_and_an_ended_job_is_gone() {
        let store = table().await;
        let person = person(&store).await;
        store.grant_credits(ORG, 10).await.unwrap();
        let enrichment = new_enrichment(person.id, now());
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap();
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
        let person = person(&store).await;
        store.grant_credits(ORG, 10).await.unwrap();
        let enrichment = new_enrichment(person.id, now());
        store
            .create_enrichment(&enrichment, 5, NO_LIMIT)
            .await
            .unwrap();
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
}
