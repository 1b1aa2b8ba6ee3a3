//! The DynamoDB adapter: one table, `pk`/`sk` strings, `expiresAt` as the TTL attribute.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | credits | `ORG#{orgId}` | `CREDITS` |
//! | credit transaction | `ORG#{orgId}` | `CREDITTX#{createdAt}#{id}` |
//! | grant idempotency key | `ORG#{orgId}` | `GRANTKEY#{key}` |
//! | person | `ORG#{orgId}` | `PERSON#{personId}` (and `gsi1pk` `ORG#{orgId}#PERSON`, `gsi1sk` `{createdAt}#{personId}` of the index `byCreation`) |
//! | rate counter | `ORG#{orgId}` | `RATE#{unix minute}` |
//! | enrichment (current) | `ORG#{orgId}` | `ENRICHMENT#{personId}#{field}` |
//! | global cache | `GLOBAL#{fingerprint}` | `FIELD#{field}` |
//! | provider rate limit and circuit | `PROVIDER#{name}` | `LIMIT` (see `limits`) |
//! | webhook endpoint, outbox event, delivery | `ORG#{orgId}` | `WEBHOOK`, `OUTBOX#{eventId}`, `DELIVERY#{createdAt}#{eventId}` (see `webhooks`) |
//!
//! Every rule that must hold under concurrency (one enrichment per org, person and field; credits
//! never below zero; one worker per job) is a DynamoDB condition here, so it holds across Lambda
//! instances. Conditions and cancellation reasons: AWS docs, "Condition expressions" and
//! `TransactWriteItems` ("TransactionCanceledException").
//!
//! One file per kind of item: `enrichments`, `cache`, `people`, `credits`; the rules' tests in
//! `tests`.

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
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification, TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{ContactPoint, Enrichment, Field, Job, OperationType, Person, Status};

mod batch;
mod cache;
mod cancel;
mod credits;
mod enrichments;
mod limits;
mod people;
mod suppression;
mod webhooks;

pub use batch::{CHUNK, ChunkOutcome, PlannedEnrichment};
pub use credits::{
    CreditSource, CreditTransaction, CreditTransactionType, Grant, GrantOutcome, HistoryPage,
    LedgerCheck,
};
pub use limits::{Count, Gate, ProviderState, Reservation, Window};
pub use suppression::{HeldValues, SuppressionReport};
pub use webhooks::{DELIVERY_TTL, OUTBOX_SK_PREFIX, OUTBOX_TTL, OutboxItem};

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
    /// A completion adding values found that one of their keys was suppressed after the
    /// worker's check ([`Store::complete`]): nothing was written.
    #[error("a key of the values found was suppressed meanwhile; nothing was written")]
    Suppressed,
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
    /// Asynchronous providers' jobs, `{provider}:{job_id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    provider_jobs: Vec<String>,
    /// Providers that failed in an attempt that ended waiting, `{provider}:{error}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    providers_failed: Vec<String>,
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
    /// The identity keys the provider's search matched on
    /// ([`crate::identity::IdentityKeys::matched_by`]): the entry is served only to a person
    /// with every one of them. Empty on entries written before keys were recorded: served to
    /// nobody.
    #[serde(default)]
    pub matched_on: Vec<String>,
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
    /// Asynchronous providers' jobs recorded in earlier attempts, `{provider}:{job_id}`
    /// ([`Store::record_provider_job`]).
    pub provider_jobs: Vec<String>,
    /// Providers that failed in earlier attempts that ended waiting on an asynchronous
    /// provider, `{provider}:{error}` ([`Store::record_provider_failure`]).
    pub providers_failed: Vec<String>,
}

impl EnrichmentRecord {
    /// The job recorded for the asynchronous `provider` ([`Store::record_provider_job`]).
    pub fn provider_job(&self, provider: &str) -> Option<&str> {
        journal_entry(&self.provider_jobs, provider)
    }

    /// The error `provider` failed with in an earlier attempt
    /// ([`Store::record_provider_failure`]).
    pub fn provider_failure(&self, provider: &str) -> Option<&str> {
        journal_entry(&self.providers_failed, provider)
    }
}

/// The value of `provider`'s `{provider}:{value}` entry in a cascade journal list.
fn journal_entry<'a>(entries: &'a [String], provider: &str) -> Option<&'a str> {
    entries.iter().find_map(|entry| {
        entry
            .split_once(':')
            .filter(|(name, _)| *name == provider)
            .map(|(_, value)| value)
    })
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
    /// Refund a `finished` outcome without data too (`REFUND_MISSES`); a `failed` one always
    /// is.
    pub refund_miss: bool,
    /// A suppressed person's outcome: `finished` without data, refunded whatever
    /// `refund_miss` says.
    pub suppressed: bool,
    /// The values added to the person, for the value index (see [`Store::suppress`]).
    pub held: Option<HeldValues>,
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
            refund_miss: false,
            suppressed: false,
            held: None,
        }
    }

    /// `finished` without data for a suppressed person (README, "Suppression and erasure"):
    /// nothing added, nothing cached, the credits refunded.
    pub fn suppressed() -> Self {
        Self {
            status: Status::Finished,
            data_found: Some(false),
            error: None,
            suppressed: true,
            ..Self::failed("")
        }
    }

    /// Whether the outcome gives the enrichment's credits back: `failed`, suppressed, or
    /// `finished` without data when [`Completion::refund_miss`] is set.
    pub fn refunds(&self) -> bool {
        self.status == Status::Failed
            || self.suppressed
            || (self.refund_miss && self.data_found == Some(false))
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
            refund_miss: false,
            suppressed: false,
            held: None,
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
            refund_miss: false,
            suppressed: false,
            held: None,
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
    /// `expiresAt`, the [`PEOPLE_INDEX`] index, a stream of new images for the outbox relay)
    /// unless it exists: for the emulators (the local stack, the store's tests).
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
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
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

    /// The key of `enrichment`'s item.
    fn key_of(enrichment: &Enrichment) -> Item {
        Self::enrichment_key(&enrichment.org_id, enrichment.entity_id, enrichment.field)
    }

    /// The item of `enrichment`, unclaimed, with the credits it `charged` and the providers
    /// that already `answered`: what a creation writes (and an undo puts back).
    fn enrichment_item(
        enrichment: &Enrichment,
        charged: i64,
        answered: &[String],
    ) -> Result<Item, StoreError> {
        serde_dynamo::to_item(EnrichmentItem {
            pk: org_pk(&enrichment.org_id),
            sk: enrichment_sk(enrichment.entity_id, enrichment.field),
            enrichment: enrichment.clone(),
            claim_token: None,
            claim_until: None,
            providers_answered: answered.to_vec(),
            provider_jobs: Vec::new(),
            providers_failed: Vec::new(),
            credits_charged: charged,
        })
        .map_err(shape_error)
    }

    /// The check, inside a creating transaction, that `enrichment`'s person exists in its org.
    fn person_exists(&self, enrichment: &Enrichment) -> Result<ConditionCheck, StoreError> {
        ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(&enrichment.org_id)))
            .key("sk", s(person_sk(enrichment.entity_id)))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(build_error)
    }

    /// The debit of `total` credits from the org's balance, on condition it covers them.
    fn debit_balance(&self, org_id: &str, total: i64) -> Result<Update, StoreError> {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(CREDITS_SK))
            .update_expression("SET balance = balance - :total")
            .condition_expression("balance >= :total")
            .expression_attribute_values(":total", n(total))
            .build()
            .map_err(build_error)
    }

    fn enrichment_key(org_id: &str, person_id: Uuid, field: Field) -> Item {
        Self::key(org_pk(org_id), enrichment_sk(person_id, field))
    }

    /// Deletes the items of `keys` (those that exist) with [`Store::batch_write`]. Returns the
    /// calls made.
    async fn batch_delete(&self, keys: Vec<Item>) -> Result<u32, StoreError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let mut requests = Vec::with_capacity(keys.len());
        for key in keys {
            let delete = DeleteRequest::builder()
                .set_key(Some(key))
                .build()
                .map_err(build_error)?;
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        self.batch_write(requests).await
    }

    /// Sends `requests` (puts and deletes, no conditions), 25 per `BatchWriteItem` (its limit),
    /// unprocessed ones sent again with a growing pause (AWS docs, `BatchWriteItem`). Returns the
    /// calls made.
    ///
    /// Errors: DynamoDB failures, or requests still unprocessed after a few tries.
    async fn batch_write(
        &self,
        all: Vec<aws_sdk_dynamodb::types::WriteRequest>,
    ) -> Result<u32, StoreError> {
        let mut calls = 0;
        for group in all.chunks(25) {
            let mut requests = group.to_vec();
            for attempt in 0..5 {
                calls += 1;
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
                    message: format!("{} writes left unprocessed", requests.len()),
                });
            }
        }
        Ok(calls)
    }

    /// The item at `key`, read consistently; `None` when there is none. One `GetItem`.
    ///
    /// Errors: DynamoDB failures.
    async fn get_consistent(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        Ok(output.item)
    }

    /// The item at (`pk`, `sk`): the key [`Store::get_consistent`] and the writes take.
    fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
        HashMap::from([("pk".into(), s(pk)), ("sk".into(), s(sk))])
    }

    /// The items of `keys` that exist, read consistently with `BatchGetItem`, 100 keys a call
    /// (its limit), unprocessed keys asked again with a growing pause (AWS docs,
    /// `BatchGetItem`); only the attributes of `projection` when given. In no particular order.
    ///
    /// Errors: DynamoDB failures, or keys still unprocessed after a few tries (`Unavailable`).
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&str>,
    ) -> Result<Vec<Item>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = Vec::with_capacity(keys.len());
        for group in keys.chunks(100) {
            let mut wanted = group.to_vec();
            for attempt in 0..5u32 {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(wanted))
                    .consistent_read(true)
                    .set_projection_expression(projection.map(str::to_string))
                    .build()
                    .map_err(build_error)?;
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(dynamo_error("BatchGetItem"))?;
                found.extend(
                    output
                        .responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                wanted = output
                    .unprocessed_keys
                    .and_then(|mut left| left.remove(&self.table))
                    .map(|left| left.keys)
                    .unwrap_or_default();
                if wanted.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            if !wanted.is_empty() {
                return Err(StoreError::Unavailable {
                    operation: "BatchGetItem",
                    message: format!("{} keys left unprocessed", wanted.len()),
                });
            }
        }
        Ok(found)
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
        provider_jobs: item.provider_jobs,
        providers_failed: item.providers_failed,
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

#[cfg(test)]
mod tests;
