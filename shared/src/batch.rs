//! Batch and bulk enrichment (spec operations-api, "Batch enrichment" and "Bulk enrichment"):
//! many people's enrichments of one field at once, the existing ones reused free, the others
//! created, charged and queued all or nothing.
//!
//! The protocol, for `n` new enrichments:
//!
//! 1. Read: the people (`BatchGetItem`, 100 a call; a bulk selection reads the people list
//!    instead), the current enrichments (`BatchGetItem`), the balance (`GetItem`). Unknown people
//!    are a 404 and a short balance a 402 here, before anything is written.
//! 2. Send the `n` jobs (`SendMessageBatch`, 10 a call) to the bulk queue, held until the
//!    request's deadline plus [`budget::HOLD_MARGIN`]: none runs while the request can still
//!    write or undo.
//! 3. Create and charge the enrichments, [`CHUNK`] per `TransactWriteItems`. An item that
//!    changed since step 1 is read from the cancellation and the chunk is tried again (another
//!    request's `pending` enrichment is reused free); a person deleted meanwhile (404) or a
//!    balance spent meanwhile (402) undoes the chunks already written before the answer.
//!
//! So at every moment each chunk is all or nothing with its debit (the balance equals grants −
//! debits + refunds), a refused request leaves nothing, and a crash at any point leaves every
//! written enrichment with its job already queued: its job runs it once the hold ends. A job
//! whose enrichment was never written, or was undone, finds nothing to claim and is dropped.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::Principal;
use crate::budget;
use crate::domain::{CacheUse, Enrichment, Field, Job, Status, timestamp};
use crate::enrichment::Enrichments;
use crate::error::ApiError;
use crate::identity;
use crate::queue::JobQueue;
use crate::store::{CHUNK, ChunkOutcome, EnrichmentRecord, PlannedEnrichment};

/// The most people one batch names (spec operations-api, "Batch enrichment").
pub const MAX_BATCH_PEOPLE: usize = 100;

/// The most people one bulk selects (spec operations-api, "Bulk enrichment").
pub const MAX_BULK_PEOPLE: usize = 1000;

/// The most `excludedIds` a bulk selection takes.
pub const MAX_EXCLUDED: usize = 10_000;

/// How many times a chunk is written again after the items it would replace changed under it.
const CHUNK_ATTEMPTS: usize = 8;

/// The message of a `field` that is neither `emails` nor `phones`.
const FIELD_VALUE_MESSAGE: &str = r#"field must be "phones" or "emails""#;

/// A bulk enrichment's selection (spec operations-api, "Bulk enrichment").
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `includedIds` less `excludedIds`, in the order given.
    Manual {
        /// 1 to [`MAX_BULK_PEOPLE`] distinct ids.
        included: Vec<Uuid>,
        /// Ids left out.
        excluded: HashSet<Uuid>,
    },
    /// The org's people oldest first, kept by `filters`, less `excludedIds`, `startIndex`
    /// skipped, at most `targetCount` taken.
    Bulk {
        /// People skipped after filtering.
        start_index: usize,
        /// 1 to [`MAX_BULK_PEOPLE`].
        target_count: usize,
        /// Ids left out.
        excluded: HashSet<Uuid>,
        /// Which people are kept.
        filters: BulkFilters,
    },
}

/// The filters of a bulk selection; each one given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkFilters {
    /// `companyDomain`, normalized as a person's is ([`identity::bare_domain`]): exact match.
    pub company_domain: Option<String>,
    /// `companyName`: case-insensitive exact match ([`identity::text_key`]).
    pub company_name: Option<String>,
    /// `missing`: the person has no value of this field yet.
    pub missing: Option<Field>,
}

impl BulkFilters {
    fn keep(&self, person: &crate::domain::Person) -> bool {
        self.company_domain
            .as_ref()
            .is_none_or(|domain| person.company_domain.as_ref() == Some(domain))
            && self.company_name.as_ref().is_none_or(|name| {
                person
                    .company_name
                    .as_deref()
                    .is_some_and(|own| identity::text_key(own) == identity::text_key(name))
            })
            && self
                .missing
                .is_none_or(|field| person.contacts(field).is_empty())
    }
}

/// A 400 about the value at `path`.
fn invalid(path: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(path, message)
}

/// A UUID in its canonical 36-character form, either case (spec operations-api, "Common
/// rules").
fn uuid_at(value: &Value, path: &str) -> Result<Uuid, ApiError> {
    value
        .as_str()
        .filter(|id| id.len() == 36)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| invalid(path, format!("{path} must be a UUID")))
}

/// The ids of the array at `body[name]` (`path` names it in errors), `range` long.
fn ids_at(
    value: Option<&Value>,
    path: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<Vec<Uuid>, ApiError> {
    let message = format!(
        "{path} must be an array of {} to {} ids",
        range.start(),
        range.end()
    );
    let items = value
        .and_then(Value::as_array)
        .filter(|items| range.contains(&items.len()))
        .ok_or_else(|| invalid(path, message))?;
    items
        .iter()
        .enumerate()
        .map(|(i, id)| uuid_at(id, &format!("{path}[{i}]")))
        .collect()
}

/// Refuses a key of `object` (at `path`) that is not one of `known`: in a selection or its
/// filters, a misspelt key would silently select, and charge, more people than meant.
fn only_known(
    object: &serde_json::Map<String, Value>,
    path: &str,
    known: &[&str],
) -> Result<(), ApiError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(invalid(
            format!("{path}.{key}"),
            format!(
                "{path}.{key} is not a field of {path}: expected {}",
                known.join(", ")
            ),
        )),
    }
}

fn object(body: &Value) -> Result<&serde_json::Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))
}

fn field_at(value: Option<&Value>, path: &str) -> Result<Field, ApiError> {
    value
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<Field>().ok())
        .ok_or_else(|| {
            invalid(
                path,
                FIELD_VALUE_MESSAGE.replacen("field", path, 1).as_str(),
            )
        })
}

/// The distinct ids of `ids`, each at its first position.
fn distinct(ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// A batch body: `{"personIds": [1 to 100 ids], "field": "emails" | "phones"}`.
///
/// Errors: 400 naming the value (`body`, `personIds`, `personIds[3]`, `field`).
pub fn parse_batch(body: &Value) -> Result<(Vec<Uuid>, Field), ApiError> {
    let body = object(body)?;
    let ids = ids_at(body.get("personIds"), "personIds", 1..=MAX_BATCH_PEOPLE)?;
    let field = field_at(body.get("field"), "field")?;
    Ok((distinct(ids), field))
}

/// A bulk body: `{"selection": {...}, "field"}` (spec operations-api, "Bulk enrichment").
///
/// Errors: 400 naming the value (`selection.mode`, `selection.includedIds[2]`,
/// `selection.targetCount`, `selection.filters.missing`...).
pub fn parse_bulk(body: &Value) -> Result<(Selection, Field), ApiError> {
    let body = object(body)?;
    let field = field_at(body.get("field"), "field")?;
    let selection = body
        .get("selection")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("selection", "selection must be an object"))?;
    only_known(
        selection,
        "selection",
        &[
            "mode",
            "includedIds",
            "excludedIds",
            "startIndex",
            "targetCount",
            "filters",
        ],
    )?;
    let excluded = match selection.get("excludedIds") {
        None | Some(Value::Null) => HashSet::new(),
        value => ids_at(value, "selection.excludedIds", 0..=MAX_EXCLUDED)?
            .into_iter()
            .collect(),
    };
    let whole = |name: &str, range: std::ops::RangeInclusive<usize>| {
        let path = format!("selection.{name}");
        selection
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                invalid(
                    &path,
                    format!(
                        "{path} must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    };
    let selection = match selection.get("mode").and_then(Value::as_str) {
        Some("manual") => Selection::Manual {
            included: distinct(ids_at(
                selection.get("includedIds"),
                "selection.includedIds",
                1..=MAX_BULK_PEOPLE,
            )?),
            excluded,
        },
        Some("bulk") => Selection::Bulk {
            start_index: match selection.get("startIndex") {
                None | Some(Value::Null) => 0,
                Some(_) => whole("startIndex", 0..=usize::MAX >> 1)?,
            },
            target_count: whole("targetCount", 1..=MAX_BULK_PEOPLE)?,
            excluded,
            filters: parse_filters(selection.get("filters"))?,
        },
        _ => {
            return Err(invalid(
                "selection.mode",
                r#"selection.mode must be "manual" or "bulk""#,
            ));
        }
    };
    Ok((selection, field))
}

fn parse_filters(value: Option<&Value>) -> Result<BulkFilters, ApiError> {
    let filters = match value {
        None | Some(Value::Null) => return Ok(BulkFilters::default()),
        Some(value) => value
            .as_object()
            .ok_or_else(|| invalid("selection.filters", "selection.filters must be an object"))?,
    };
    only_known(
        filters,
        "selection.filters",
        &["companyDomain", "companyName", "missing"],
    )?;
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match filters.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.clone())),
            Some(_) => Err(invalid(
                format!("selection.filters.{name}"),
                format!("selection.filters.{name} must be a non-empty string"),
            )),
        }
    };
    let company_domain = text("companyDomain")?
        .map(|raw| {
            identity::bare_domain(&raw)
                .filter(|domain| identity::is_bare_domain(domain))
                .ok_or_else(|| {
                    invalid(
                        "selection.filters.companyDomain",
                        "selection.filters.companyDomain must be a domain name such as example.com",
                    )
                })
        })
        .transpose()?;
    let missing = match filters.get("missing") {
        None | Some(Value::Null) => None,
        value => Some(field_at(value, "selection.filters.missing")?),
    };
    Ok(BulkFilters {
        company_domain,
        company_name: text("companyName")?,
        missing,
    })
}

/// Which request a set of enrichments comes from: their 402 messages differ, and a bulk
/// selection read from the people list drops a person deleted meanwhile rather than refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Batch,
    Manual,
    Listed,
}

impl Enrichments {
    /// `POST /api/v1/operations/enrichment/batch` (spec operations-api, "Batch enrichment"):
    /// the enrichments of `person_ids` (distinct, 1 to [`MAX_BATCH_PEOPLE`]) for `field`, in
    /// order; see the module's documentation for the protocol and its calls.
    ///
    /// Errors: 404 with the unknown ids, 402 with the count and credits of the new ones
    /// (nothing written either way), 503 when a dependency does not answer in time.
    pub async fn enrich_batch(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        person_ids: &[Uuid],
        field: Field,
        cache: CacheUse,
        deadline: Instant,
    ) -> Result<Vec<Enrichment>, ApiError> {
        let ask = (field, cache);
        self.enrich_many(queue, principal, person_ids, ask, Origin::Batch, deadline)
            .await
    }

    /// `POST /api/v1/operations/enrichment/bulk` (spec operations-api, "Bulk enrichment"):
    /// the people of `selection` enriched as a batch is, in selection order; an empty selection
    /// is an empty answer. A `bulk` selection reads the people list (one `Query` per 1000
    /// people read).
    ///
    /// Errors: as for [`Enrichments::enrich_batch`], with the bulk's 402 message.
    pub async fn enrich_bulk(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        selection: &Selection,
        field: Field,
        cache: CacheUse,
        deadline: Instant,
    ) -> Result<Vec<Enrichment>, ApiError> {
        let ask = (field, cache);
        match selection {
            Selection::Manual { included, excluded } => {
                self.refuse_unknown(principal, included).await?;
                let ids: Vec<Uuid> = included
                    .iter()
                    .filter(|id| !excluded.contains(id))
                    .copied()
                    .collect();
                self.enrich_many(queue, principal, &ids, ask, Origin::Manual, deadline)
                    .await
            }
            Selection::Bulk {
                start_index,
                target_count,
                excluded,
                filters,
            } => {
                let ids = self
                    .select(principal, *start_index, *target_count, excluded, filters)
                    .await?;
                self.enrich_many(queue, principal, &ids, ask, Origin::Listed, deadline)
                    .await
            }
        }
    }

    /// Refuses the request when one of `person_ids` is no person of the org (spec
    /// operations-api, Decision 5): one `BatchGetItem` of the people's keys per 100 ids.
    ///
    /// Errors: 404 `Person not found` listing them, in the order given.
    async fn refuse_unknown(
        &self,
        principal: &Principal,
        person_ids: &[Uuid],
    ) -> Result<(), ApiError> {
        let known = self
            .store
            .existing_people(&principal.org_id, person_ids)
            .await?;
        let unknown: Vec<Uuid> = person_ids
            .iter()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ApiError::PeopleNotFound(unknown))
        }
    }

    /// The ids a `bulk` selection takes, reading the people list oldest first, 1000 a page.
    async fn select(
        &self,
        principal: &Principal,
        start_index: usize,
        target_count: usize,
        excluded: &HashSet<Uuid>,
        filters: &BulkFilters,
    ) -> Result<Vec<Uuid>, ApiError> {
        let mut selected = Vec::with_capacity(target_count);
        let mut skipped = 0;
        let mut after = None;
        loop {
            let (people, next) = self
                .store
                .list_people(&principal.org_id, MAX_BULK_PEOPLE, after.as_ref())
                .await?;
            for person in people {
                if excluded.contains(&person.id) || !filters.keep(&person) {
                    continue;
                }
                if skipped < start_index {
                    skipped += 1;
                    continue;
                }
                selected.push(person.id);
                if selected.len() == target_count {
                    return Ok(selected);
                }
            }
            match next {
                Some(cursor) => after = Some(cursor),
                None => return Ok(selected),
            }
        }
    }

    async fn enrich_many(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        person_ids: &[Uuid],
        (field, cache): (Field, CacheUse),
        origin: Origin,
        deadline: Instant,
    ) -> Result<Vec<Enrichment>, ApiError> {
        let org_id = &principal.org_id;
        if person_ids.is_empty() {
            return Ok(Vec::new());
        }
        if origin == Origin::Batch {
            self.refuse_unknown(principal, person_ids).await?;
        }
        let keys: Vec<(Uuid, Field)> = person_ids.iter().map(|id| (*id, field)).collect();
        let mut current = self.store.get_enrichments(org_id, &keys).await?;
        let now = Utc::now();
        let at = timestamp(now);
        // One slot per person, in order: filled with a reused enrichment, or planned.
        let mut answer: Vec<Option<Enrichment>> = vec![None; person_ids.len()];
        let mut plan: Vec<(usize, PlannedEnrichment)> = Vec::new();
        for (slot, person_id) in person_ids.iter().enumerate() {
            let found = current
                .iter()
                .position(|r| r.enrichment.entity_id == *person_id)
                .map(|i| current.swap_remove(i));
            let replaces = match found {
                Some(record) if self.is_stale(&record.enrichment, now) => {
                    // As on the single POST: a stale pending one counts as timed out.
                    let ended = self.store.mark_timeout(&record, &at).await?;
                    if reusable(&ended) {
                        answer[slot] = Some(ended);
                        continue;
                    }
                    Some(EnrichmentRecord {
                        enrichment: ended,
                        credits_charged: record.credits_charged,
                        providers_answered: Vec::new(),
                        provider_jobs: Vec::new(),
                        providers_failed: Vec::new(),
                    })
                }
                Some(record) if reusable(&record.enrichment) => {
                    answer[slot] = Some(record.enrichment);
                    continue;
                }
                other => other,
            };
            plan.push((
                slot,
                PlannedEnrichment {
                    enrichment: self.new_pending(principal, *person_id, field, &at),
                    replaces,
                },
            ));
        }
        if !plan.is_empty() {
            let ask = (field, cache);
            self.create_planned(queue, principal, ask, origin, plan, &mut answer, deadline)
                .await?;
        }
        Ok(answer.into_iter().flatten().collect())
    }

    /// Steps 1 (balance), 2 and 3 of the module's protocol for `plan`; fills `answer`.
    #[allow(clippy::too_many_arguments)]
    async fn create_planned(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        (field, cache): (Field, CacheUse),
        origin: Origin,
        mut plan: Vec<(usize, PlannedEnrichment)>,
        answer: &mut [Option<Enrichment>],
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let cost = self.config.cost(field);
        let refused = |count: usize| ApiError::InsufficientCredits {
            operation_type: field.operation_type(),
            count,
            required: cost * count as i64,
            bulk: origin != Origin::Batch,
        };
        let balance = self.store.credit_balance(&principal.org_id).await?;
        if balance < cost * plan.len() as i64 {
            return Err(refused(plan.len()));
        }
        let jobs: Vec<Job> = plan
            .iter()
            .map(|(_, p)| {
                Job::from(&p.enrichment)
                    .with_cache(cache)
                    .in_bulk(origin != Origin::Batch)
            })
            .collect();
        let left = budget::left_before(deadline, budget::RESPONSE_MARGIN);
        match tokio::time::timeout(
            left,
            queue.enqueue_held(&jobs, budget::held_until(deadline)),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "the jobs could not be queued within {left:?}"
                )));
            }
        }
        let mut created: Vec<Vec<PlannedEnrichment>> = Vec::new();
        let result = self
            .write_chunks(&mut plan, &mut created, answer, cost, origin, deadline)
            .await;
        match result {
            Ok(()) => {
                crate::metrics::started(field, created.iter().map(Vec::len).sum(), cost);
                for (slot, planned) in plan {
                    answer[slot] = Some(planned.enrichment);
                }
                Ok(())
            }
            Err(error) => {
                for chunk in created.iter().rev() {
                    if let Err(undo) = self.store.undo_enrichments(chunk, cost).await {
                        // What was written stays charged with its job queued: it runs.
                        tracing::error!(error = %undo, "could not undo a batch's written enrichments");
                        return Err(ApiError::Unavailable(undo.to_string()));
                    }
                }
                Err(match error {
                    ChunkError::Credits => refused(plan.len()),
                    ChunkError::Api(error) => error,
                })
            }
        }
    }

    /// Writes `plan` chunk by chunk, keeping the written chunks in `created`. An enrichment
    /// that another request created meanwhile is reused (its slot of `answer` filled, its plan
    /// dropped); one deleted from a listed selection is dropped.
    ///
    /// It stops before a chunk that might not leave the time to undo everything written (the
    /// time spent writing so far, the undo being no larger than the writes, plus one more chunk
    /// and [`budget::RESPONSE_MARGIN`]): the caller then undoes the written chunks and answers
    /// `503`, so a request told it failed has charged nothing.
    async fn write_chunks(
        &self,
        plan: &mut Vec<(usize, PlannedEnrichment)>,
        created: &mut Vec<Vec<PlannedEnrichment>>,
        answer: &mut [Option<Enrichment>],
        cost: i64,
        origin: Origin,
        deadline: Instant,
    ) -> Result<(), ChunkError> {
        let started = Instant::now();
        let mut start = 0;
        while start < plan.len() {
            let spent = started.elapsed();
            // Before the first chunk, a guess: a transaction of 100 items takes tens of
            // milliseconds on DynamoDB.
            let per_chunk = if created.is_empty() {
                Duration::from_millis(250)
            } else {
                spent / u32::try_from(created.len()).unwrap_or(u32::MAX)
            };
            if budget::left_before(deadline, budget::RESPONSE_MARGIN) < spent + 2 * per_chunk {
                return Err(ChunkError::Api(ApiError::Unavailable(
                    "not enough time left to write the rest of the batch".into(),
                )));
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                let end = (start + CHUNK).min(plan.len());
                if start == end {
                    break;
                }
                let chunk: Vec<PlannedEnrichment> =
                    plan[start..end].iter().map(|(_, p)| p.clone()).collect();
                match self.store.create_enrichments(&chunk, cost).await? {
                    ChunkOutcome::Created => {
                        created.push(chunk);
                        start = end;
                        break;
                    }
                    ChunkOutcome::InsufficientCredits => return Err(ChunkError::Credits),
                    ChunkOutcome::PersonNotFound(gone) => {
                        if origin != Origin::Listed {
                            return Err(ChunkError::Api(ApiError::PeopleNotFound(gone)));
                        }
                        plan.retain(|(_, p)| !gone.contains(&p.enrichment.entity_id));
                    }
                    ChunkOutcome::Changed(changed) => {
                        let mut reused = Vec::new();
                        for (position, now) in changed {
                            let (slot, planned) = &mut plan[start + position];
                            match now {
                                Some(record) if reusable(&record.enrichment) => {
                                    answer[*slot] = Some(record.enrichment);
                                    reused.push(start + position);
                                }
                                replaces => planned.replaces = replaces,
                            }
                        }
                        for index in reused.into_iter().rev() {
                            plan.remove(index);
                        }
                    }
                }
                if attempts == CHUNK_ATTEMPTS {
                    return Err(ChunkError::Api(ApiError::Unavailable(
                        "the batch's enrichments kept changing under it".into(),
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Why writing the chunks stopped.
enum ChunkError {
    /// The balance no longer covers the chunk (it was spent since it was read).
    Credits,
    /// Anything else, as the client sees it.
    Api(ApiError),
}

impl From<crate::store::StoreError> for ChunkError {
    fn from(e: crate::store::StoreError) -> Self {
        ChunkError::Api(e.into())
    }
}

/// Whether `enrichment` is returned as it is, free: `pending` or `finished` (spec
/// operations-api, "Batch enrichment").
fn reusable(enrichment: &Enrichment) -> bool {
    matches!(enrichment.status, Status::Pending | Status::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidField { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    const A: &str = "550e8400-e29b-41d4-a716-446655440000";
    const B: &str = "550E8400-E29B-41D4-A716-446655440001";

    #[test]
    fn a_batch_names_1_to_100_ids_once_each_and_a_field() {
        let (ids, field) =
            parse_batch(&json!({"personIds": [A, B, A], "field": "phones"})).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].to_string(), B.to_lowercase());
        assert_eq!(field, Field::Phones);
        let bad = |body: Value| field_of(parse_batch(&body).unwrap_err());
        assert_eq!(bad(json!([])), "body");
        assert_eq!(
            bad(json!({"personIds": [], "field": "emails"})),
            "personIds"
        );
        assert_eq!(bad(json!({"personIds": A, "field": "emails"})), "personIds");
        let many: Vec<String> = (0..101)
            .map(|i| format!("550e8400-e29b-41d4-a716-{i:012}"))
            .collect();
        assert_eq!(
            bad(json!({"personIds": many, "field": "emails"})),
            "personIds"
        );
        assert_eq!(
            bad(json!({"personIds": [A, "nope"], "field": "emails"})),
            "personIds[1]"
        );
        assert_eq!(
            bad(
                json!({"personIds": [A, "{550e8400-e29b-41d4-a716-446655440000}"], "field": "emails"})
            ),
            "personIds[1]"
        );
        assert_eq!(
            bad(json!({"personIds": [A, 7], "field": "emails"})),
            "personIds[1]"
        );
        assert_eq!(bad(json!({"personIds": [A]})), "field");
        assert_eq!(bad(json!({"personIds": [A], "field": "summary"})), "field");
    }

    #[test]
    fn a_bulk_selection_is_manual_or_bulk_with_its_limits() {
        let (selection, _) = parse_bulk(&json!({"selection": {"mode": "manual",
            "includedIds": [A, B], "excludedIds": [B]}, "field": "emails"}))
        .unwrap();
        let Selection::Manual { included, excluded } = selection else {
            panic!("manual")
        };
        assert_eq!(included.len(), 2);
        assert_eq!(excluded.len(), 1);
        let (selection, _) = parse_bulk(&json!({"selection": {"mode": "bulk", "targetCount": 5,
            "filters": {"companyDomain": "https://www.Northwind.example/", "missing": "phones"}},
            "field": "emails"}))
        .unwrap();
        assert_eq!(
            selection,
            Selection::Bulk {
                start_index: 0,
                target_count: 5,
                excluded: HashSet::new(),
                filters: BulkFilters {
                    company_domain: Some("northwind.example".into()),
                    company_name: None,
                    missing: Some(Field::Phones),
                },
            }
        );
        let bad = |selection: Value| {
            field_of(parse_bulk(&json!({"selection": selection, "field": "emails"})).unwrap_err())
        };
        assert_eq!(bad(json!(null)), "selection");
        assert_eq!(bad(json!({"mode": "all"})), "selection.mode");
        assert_eq!(bad(json!({"mode": "manual"})), "selection.includedIds");
        assert_eq!(
            bad(json!({"mode": "manual", "includedIds": []})),
            "selection.includedIds"
        );
        assert_eq!(
            bad(json!({"mode": "manual", "includedIds": [A], "excludedIds": ["x"]})),
            "selection.excludedIds[0]"
        );
        assert_eq!(bad(json!({"mode": "bulk"})), "selection.targetCount");
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 0})),
            "selection.targetCount"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1001})),
            "selection.targetCount"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 2.5})),
            "selection.targetCount"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1, "startIndex": -1})),
            "selection.startIndex"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1, "filters": {"missing": "summary"}})),
            "selection.filters.missing"
        );
        assert_eq!(
            bad(
                json!({"mode": "bulk", "targetCount": 1, "filters": {"companyDomain": "not a domain"}})
            ),
            "selection.filters.companyDomain"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1, "filters": []})),
            "selection.filters"
        );
        // A misspelt key would select, and charge, everyone: refused.
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1,
                       "filters": {"company_domain": "northwind.example"}})),
            "selection.filters.company_domain"
        );
        assert_eq!(
            bad(json!({"mode": "bulk", "targetCount": 1, "exclude": []})),
            "selection.exclude"
        );
        assert_eq!(
            field_of(
                parse_bulk(&json!({"selection": {"mode": "bulk", "targetCount": 1}})).unwrap_err()
            ),
            "field"
        );
    }

    #[test]
    fn filters_match_domain_exactly_name_without_case_and_missing_values() {
        let person = crate::domain::Person {
            company_domain: Some("northwind.example".into()),
            company_name: Some("Northwind  Traders".into()),
            ..Default::default()
        };
        let keep = |filters: BulkFilters| filters.keep(&person);
        assert!(keep(BulkFilters::default()));
        assert!(keep(BulkFilters {
            company_domain: Some("northwind.example".into()),
            company_name: Some("northwind traders".into()),
            missing: Some(Field::Emails),
        }));
        assert!(!keep(BulkFilters {
            company_domain: Some("sub.northwind.example".into()),
            ..Default::default()
        }));
        assert!(!keep(BulkFilters {
            company_name: Some("Northwind".into()),
            ..Default::default()
        }));
    }
}
