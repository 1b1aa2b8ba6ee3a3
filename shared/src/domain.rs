//! Domain types of the person-enrichment API, free of AWS types.
//!
//! Names and JSON shapes follow the spec (`Person Enrichment`, "Response" section): camelCase keys,
//! ISO 8601 UTC timestamps with milliseconds and `Z`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The contact field an enrichment looks for: the spec's `field` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// `emails`: email addresses, charged as `enrichment_email`.
    Emails,
    /// `phones`: phone numbers in E.164, charged as `enrichment_phone`.
    Phones,
}

impl Field {
    /// The wire value: `"emails"` or `"phones"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Emails => "emails",
            Field::Phones => "phones",
        }
    }

    /// The credit operation type the spec names for this field ("Notes": `enrichment_email` or
    /// `enrichment_phone`).
    pub fn operation_type(self) -> OperationType {
        match self {
            Field::Emails => OperationType::EnrichmentEmail,
            Field::Phones => OperationType::EnrichmentPhone,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Field {
    type Err = ();

    /// Parses exactly `"emails"` or `"phones"` (case-sensitive, as the spec lists them).
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "emails" => Ok(Field::Emails),
            "phones" => Ok(Field::Phones),
            _ => Err(()),
        }
    }
}

/// A credit operation type, as named in the spec's `INSUFFICIENT_CREDITS` details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// `enrichment_email`
    EnrichmentEmail,
    /// `enrichment_phone`
    EnrichmentPhone,
}

impl OperationType {
    /// The wire value, e.g. `"enrichment_email"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::EnrichmentEmail => "enrichment_email",
            OperationType::EnrichmentPhone => "enrichment_phone",
        }
    }
}

impl fmt::Display for OperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of an enrichment (spec, `status` response field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In progress.
    Pending,
    /// Completed; `dataFound` says whether anything was found.
    Finished,
    /// The cascade could not get an answer from any provider.
    Failed,
    /// Still pending after the maximum age (spec, "Timeout Handling").
    Timeout,
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// The wire value, e.g. `"pending"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The enrichment object of the API, exactly the spec's `Enrichment` interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrichment {
    /// The enrichment's own UUID.
    pub id: Uuid,
    /// ISO 8601 UTC with milliseconds, see [`timestamp`].
    pub created_at: String,
    /// ISO 8601 UTC with milliseconds, see [`timestamp`].
    pub updated_at: String,
    /// The person's UUID (the `personId` path parameter).
    pub entity_id: Uuid,
    /// Always `"person"` for this endpoint.
    pub entity_type: String,
    /// `emails` or `phones`.
    pub field: Field,
    /// See [`Status`].
    pub status: Status,
    /// Why the enrichment failed or timed out; `null` otherwise.
    pub error: Option<String>,
    /// `true`/`false` once finished, `null` while pending or when unknown.
    pub data_found: Option<bool>,
    /// The user id (JWT `sub`) that triggered the enrichment.
    pub created_by: String,
    /// The organization (JWT `org_id` / `o.id`).
    pub org_id: String,
    /// The global cache record the data came from or was stored in.
    pub global_enrichment_id: Option<Uuid>,
    /// The credit transaction that paid for this enrichment.
    pub credit_transaction_id: Option<Uuid>,
}

/// A contact value found for a person: an email address or an E.164 phone number, with where it
/// came from. Stored on the person and in the global cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactPoint {
    /// Lower-cased email address, or phone number in E.164 (`+14155550100`).
    pub value: String,
    /// What kind of value the provider says it is (`work`, `personal`, `mobile`, `landline`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Email deliverability as the provider reported it (`valid`, `accept_all`, `unknown`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The provider that found it (`hunter`, `pdl`...).
    pub provider: String,
    /// When it was found, see [`timestamp`].
    pub found_at: String,
    /// The provider's confidence that the value is the person's, as a whole number from 0
    /// (none) to 100 (certain), when the provider gives one: Hunter's `score` (0-100) as sent,
    /// People Data Labs' match `likelihood` (1-10) times ten. Absent for the providers that
    /// give no score (Prospeo, FullEnrich, Dropcontact) and on values found before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<u8>,
}

/// A person of an organization's workspace: what the providers search with, and the contacts
/// found so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    /// The person's UUID.
    pub id: Uuid,
    /// When it was created, see [`timestamp`]; the people list is ordered by it. `None` only on
    /// people written before the API kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it last changed (created, or contacts added), see [`timestamp`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Employer's name.
    #[serde(default)]
    pub company_name: Option<String>,
    /// Employer's web domain (`stripe.com`).
    #[serde(default)]
    pub company_domain: Option<String>,
    /// LinkedIn profile URL.
    #[serde(default)]
    pub linkedin_url: Option<String>,
    /// Emails found so far, deduplicated by value.
    #[serde(default)]
    pub emails: Vec<ContactPoint>,
    /// Phones found so far (E.164), deduplicated by value.
    #[serde(default)]
    pub phones: Vec<ContactPoint>,
}

impl Person {
    /// The contacts already held for `field`.
    pub fn contacts(&self, field: Field) -> &[ContactPoint] {
        match field {
            Field::Emails => &self.emails,
            Field::Phones => &self.phones,
        }
    }

    /// `contacts(field)` with `found` added; a value already held keeps its first record.
    pub fn merged_contacts(&self, field: Field, found: &[ContactPoint]) -> Vec<ContactPoint> {
        let mut merged = self.contacts(field).to_vec();
        for contact in found {
            if !merged.iter().any(|c| c.value == contact.value) {
                merged.push(contact.clone());
            }
        }
        merged
    }
}

/// Formats a time as the API does: ISO 8601 UTC with milliseconds and `Z`
/// (`2024-01-15T10:30:00.000Z`). Strings in this format sort chronologically, which the
/// DynamoDB conditions rely on.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// [`timestamp`] of `now` minus `age`: the cut-off for "older than `age`" comparisons on stored
/// timestamps (the earliest representable time when `age` reaches past it).
pub fn timestamp_before(now: DateTime<Utc>, age: std::time::Duration) -> String {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    timestamp(
        now.checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// Whether a new enrichment may be served from the global cache: the request's `cache` query
/// flag (`?cache=false` asks for [`CacheUse::Fresh`]; README, "Global cache").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheUse {
    /// A fresh global cache entry that agrees with the person is served (the default).
    #[default]
    Allowed,
    /// The providers are asked whatever the cache holds, at full cost; what they find still
    /// replaces the person's cache entry.
    Fresh,
}

impl CacheUse {
    /// The flag's value in a query string: `true` (or absent) allows the cache, `false` asks
    /// for fresh data; `None` for anything else.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "true" => Some(Self::Allowed),
            "false" => Some(Self::Fresh),
            _ => None,
        }
    }

    fn is_allowed(&self) -> bool {
        *self == Self::Allowed
    }
}

/// One enrichment job: what the trigger queues and the worker runs (the SQS message body or the
/// Step Functions execution input), as JSON
/// (`{"enrichmentId", "orgId", "personId", "field"}`, and `"cache": "fresh"` for a request
/// that opted out of the global cache, `"bulk": true` for a bulk enrichment's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The enrichment to run; a job whose enrichment was replaced is dropped.
    pub enrichment_id: Uuid,
    /// The org that owns it.
    pub org_id: String,
    /// The person to enrich.
    pub person_id: Uuid,
    /// `emails` or `phones`.
    pub field: Field,
    /// Whether the worker may serve it from the global cache.
    #[serde(default, skip_serializing_if = "CacheUse::is_allowed")]
    pub cache: CacheUse,
    /// Part of a bulk enrichment (`POST .../enrichment/bulk`, spec operations-api "Bulk
    /// enrichment"), `"bulk": true`: its provider calls wait in the bulks' line
    /// ([`crate::limiter::Lane::Bulk`]), behind singles and batches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bulk: bool,
}

/// Jobs sent together in one SQS message by a batch or bulk enrichment, held until the request
/// can no longer write (`{"jobs": [Job, ...]}`); the worker sends each on as its own message
/// ([`crate::queue::SqsJobQueue::enqueue_all`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBatch {
    /// The jobs, at most [`crate::queue::JOBS_PER_MESSAGE`].
    pub jobs: Vec<Job>,
}

/// A delayed check sent with jobs (in the same `SendMessageBatch`), delivered shortly after their
/// enrichments' maximum age: the worker times out those still `pending`, refunded, so that a
/// timeout nobody polls is noticed all the same (`{"timeoutCheck": [Job, ...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutCheck {
    /// The jobs whose enrichments to look at.
    pub timeout_check: Vec<Job>,
}

impl From<&Enrichment> for Job {
    fn from(e: &Enrichment) -> Self {
        Job {
            enrichment_id: e.id,
            org_id: e.org_id.clone(),
            person_id: e.entity_id,
            field: e.field,
            cache: CacheUse::Allowed,
            bulk: false,
        }
    }
}

impl Job {
    /// The same job with `cache` use.
    pub fn with_cache(self, cache: CacheUse) -> Self {
        Self { cache, ..self }
    }

    /// The same job, part of a bulk enrichment (`bulk`) or not.
    pub fn in_bulk(self, bulk: bool) -> Self {
        Self { bulk, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_jobs_message_says_bulk_only_for_a_bulks_job_and_reads_without_it() {
        let job = Job {
            enrichment_id: Uuid::nil(),
            org_id: "org_1".into(),
            person_id: Uuid::nil(),
            field: Field::Emails,
            cache: CacheUse::Allowed,
            bulk: false,
        };
        let single = serde_json::to_value(&job).unwrap();
        assert_eq!(single.get("bulk"), None);
        let bulk = serde_json::to_value(job.clone().in_bulk(true)).unwrap();
        assert_eq!(bulk["bulk"], true);
        // A message queued before the field existed reads as not a bulk's.
        assert_eq!(serde_json::from_value::<Job>(single).unwrap(), job);
        assert!(serde_json::from_value::<Job>(bulk).unwrap().bulk);
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let at = Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap();
        assert_eq!(timestamp(at), "2024-01-15T10:30:00.000Z");
    }

    #[test]
    fn field_parses_only_the_two_spec_values() {
        assert_eq!("emails".parse::<Field>(), Ok(Field::Emails));
        assert_eq!("phones".parse::<Field>(), Ok(Field::Phones));
        assert!("Emails".parse::<Field>().is_err());
        assert!("".parse::<Field>().is_err());
    }

    #[test]
    fn merged_contacts_keep_the_first_record_of_a_value() {
        let contact = |value: &str, provider: &str| ContactPoint {
            value: value.into(),
            kind: None,
            status: None,
            provider: provider.into(),
            found_at: "2024-01-15T10:30:00.000Z".into(),
            confidence: None,
        };
        let person = Person {
            emails: vec![contact("a@x.com", "hunter")],
            ..Person::default()
        };
        let merged = person.merged_contacts(
            Field::Emails,
            &[contact("a@x.com", "pdl"), contact("b@x.com", "pdl")],
        );
        assert_eq!(
            merged,
            vec![contact("a@x.com", "hunter"), contact("b@x.com", "pdl")]
        );
    }
}
