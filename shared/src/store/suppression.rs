//! Suppressions (GDPR: an objection to processing, an erasure request) and the value index that
//! lets them reach every copy of a person's data without a table scan (README, "Suppression and
//! erasure").
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | suppression | `SUPPRESSION#{key}` | `SUPPRESSION` | `key`, `createdAt`, `erased` |
//! | holder | `HOLDER#{key}` | `{orgId}#{personId}#{field}` | `orgId`, `personId`, `field`, `values`, `cacheKey`, `keys` |
//!
//! A key is an identity key (`li:…`, `nd:…`, [`crate::identity::IdentityKeys`]) or an email
//! address's (`em:…`, [`crate::identity::email_key`]). The worker writes a holder item for each of
//! the person's identity keys and each email it adds, in the transaction that adds the values
//! ([`Store::complete`]), so a suppression finds the global cache entries and an erasure the
//! person records with one `Query` of its key.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_dynamodb::types::Put;

use super::*;
use crate::identity::email_key;

const SUPPRESSION_SK: &str = "SUPPRESSION";

fn suppression_key(key: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), s(format!("SUPPRESSION#{key}"))),
        ("sk".to_string(), s(SUPPRESSION_SK)),
    ])
}

/// Values a completion adds to a person, to index under `keys` (see the module's table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldValues {
    /// The person's identity keys and the `em:` keys of the emails added.
    pub keys: Vec<String>,
    /// The values added (lower-cased emails, E.164 phones).
    pub values: Vec<String>,
    /// The global cache key (fingerprint) the values are cached under, if any.
    pub cache_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HolderItem {
    pk: String,
    sk: String,
    org_id: String,
    person_id: Uuid,
    field: Field,
    values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_key: Option<String>,
    /// Every key the same values were indexed under (this item's among them).
    #[serde(default)]
    keys: Vec<String>,
}

/// What [`Store::suppress`] did, and the DynamoDB calls it took (by operation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionReport {
    /// The key suppressed.
    pub key: String,
    /// Person records of any org that were found holding values of the key.
    pub holders: usize,
    /// Global cache items cleared, one per key and field: deleted, or found already absent.
    pub cache_items_cleared: usize,
    /// Other keys the holders' values were indexed under (the same person's LinkedIn, name or
    /// emails, as the orgs' records have them): suppress them too when they are the same
    /// person's.
    pub related_keys: BTreeSet<String>,
    /// Person records whose values were removed (an erasure only).
    pub people_updated: usize,
    /// Values removed from them.
    pub values_removed: usize,
    /// DynamoDB calls, by operation name.
    pub calls: BTreeMap<&'static str, u32>,
}

impl SuppressionReport {
    fn count(&mut self, operation: &'static str, calls: u32) {
        *self.calls.entry(operation).or_default() += calls;
    }
}

impl Store {
    /// Which of `keys` are suppressed: one `BatchGetItem` per 100 keys (consistent, keys only).
    /// No call for no keys.
    ///
    /// Errors: DynamoDB failures.
    pub async fn suppressed(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let unique: BTreeSet<&String> = keys.iter().collect();
        let found = self
            .batch_get(
                unique.into_iter().map(|k| suppression_key(k)).collect(),
                Some("pk"),
            )
            .await?;
        Ok(found
            .iter()
            .filter_map(|item| item.get("pk")?.as_s().ok()?.strip_prefix("SUPPRESSION#"))
            .map(str::to_string)
            .collect())
    }

    /// The holder items of `held` for the person `person_id` of `org_id` and `field`: what a
    /// completion adding values writes in its transaction.
    pub(super) fn holder_puts(
        &self,
        org_id: &str,
        person_id: Uuid,
        field: Field,
        held: &HeldValues,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let keys: BTreeSet<&String> = held.keys.iter().collect();
        keys.into_iter()
            .map(|key| {
                let item = serde_dynamo::to_item(HolderItem {
                    pk: format!("HOLDER#{key}"),
                    sk: format!("{org_id}#{person_id}#{field}"),
                    org_id: org_id.to_string(),
                    person_id,
                    field,
                    values: held.values.clone(),
                    cache_key: held.cache_key.clone(),
                    keys: held.keys.clone(),
                })
                .map_err(shape_error)?;
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(build_error)?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect()
    }

    /// The checks, inside a completion adding `held` values, that none of their keys is
    /// suppressed: one `ConditionCheck` per key, so that a suppression recorded between the
    /// worker's check and its write cancels the write ([`StoreError::Suppressed`]).
    pub(super) fn unsuppressed_checks(
        &self,
        held: &HeldValues,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let keys: BTreeSet<&String> = held.keys.iter().collect();
        keys.into_iter()
            .map(|key| {
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(suppression_key(key)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_error)?;
                Ok(TransactWriteItem::builder().condition_check(check).build())
            })
            .collect()
    }

    /// Suppresses `key` (see the module's documentation): records the suppression (so the
    /// worker refuses to enrich a person with that key before any provider call) and deletes
    /// the global cache items that may hold its data, for both fields. With `erase`, also
    /// removes the values found for it from every org's person records and drops its holder
    /// items. Idempotent: run again, it finds what is left.
    ///
    /// DynamoDB calls: one `PutItem`; one `Query` per 1 MB of holder items; one
    /// `BatchWriteItem` per 25 cache items; with `erase`, per holder one `GetItem` and one
    /// conditional `UpdateItem` (again on a concurrent change), and one `BatchWriteItem` per 25
    /// holder items. No scan.
    ///
    /// Errors: DynamoDB failures (what was done before stays done; running it again finishes).
    pub async fn suppress(
        &self,
        key: &str,
        erase: bool,
        now: &str,
    ) -> Result<SuppressionReport, StoreError> {
        let mut report = SuppressionReport {
            key: key.to_string(),
            ..SuppressionReport::default()
        };
        let mut item = suppression_key(key);
        item.insert("key".into(), s(key));
        item.insert("createdAt".into(), s(now));
        item.insert("erased".into(), AttributeValue::Bool(erase));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(dynamo_error("PutItem"))?;
        report.count("PutItem", 1);

        let holders = self.holders(key, &mut report).await?;
        report.holders = holders.len();
        report.related_keys = holders
            .iter()
            .flat_map(|h| h.keys.iter())
            .filter(|k| k.as_str() != key)
            .cloned()
            .collect();
        let mut cache_keys: BTreeSet<String> =
            holders.iter().filter_map(|h| h.cache_key.clone()).collect();
        if !key.starts_with("em:") {
            cache_keys.insert(key.to_string());
        }
        let cache_items: Vec<Item> = cache_keys
            .iter()
            .flat_map(|k| [Field::Emails, Field::Phones].map(|field| cache_key(k, field)))
            .map(|(pk, sk)| HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))]))
            .collect();
        report.cache_items_cleared = cache_items.len();
        let calls = self.batch_delete(cache_items).await?;
        report.count("BatchWriteItem", calls);

        if erase {
            let mut index_writes = Vec::new();
            for holder in &holders {
                // An erased email goes; for an identity key, every value found for it.
                let values: Vec<String> = match key.strip_prefix("em:") {
                    Some(address) => vec![address.to_string()],
                    None => holder.values.clone(),
                };
                let removed = self
                    .remove_values(holder, &values, now, &mut report)
                    .await?;
                if removed > 0 {
                    report.people_updated += 1;
                    report.values_removed += removed;
                }
                index_writes.extend(self.index_without(holder, key, &values)?);
            }
            let calls = self.batch_write(index_writes).await?;
            report.count("BatchWriteItem", calls);
        }
        Ok(report)
    }

    /// The writes that take `erased` out of the value index for `holder`'s values: under each
    /// key they were indexed under (`erased_key`'s and the others), the holder item is deleted,
    /// or rewritten with the values left when some are (the erased key's own item always goes).
    fn index_without(
        &self,
        holder: &HolderItem,
        erased_key: &str,
        erased: &[String],
    ) -> Result<Vec<aws_sdk_dynamodb::types::WriteRequest>, StoreError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};
        let left: Vec<String> = holder
            .values
            .iter()
            .filter(|v| !erased.contains(v))
            .cloned()
            .collect();
        let erased_keys: Vec<String> = erased.iter().filter_map(|v| email_key(v)).collect();
        let mut keys: BTreeSet<&str> = holder.keys.iter().map(String::as_str).collect();
        keys.insert(erased_key);
        keys.into_iter()
            .map(|key| {
                let pk = format!("HOLDER#{key}");
                let goes =
                    left.is_empty() || key == erased_key || erased_keys.iter().any(|k| k == key);
                let request = if goes {
                    let delete = DeleteRequest::builder()
                        .key("pk", s(pk))
                        .key("sk", s(&holder.sk))
                        .build()
                        .map_err(build_error)?;
                    WriteRequest::builder().delete_request(delete).build()
                } else {
                    let item = serde_dynamo::to_item(HolderItem {
                        pk,
                        sk: holder.sk.clone(),
                        org_id: holder.org_id.clone(),
                        person_id: holder.person_id,
                        field: holder.field,
                        values: left.clone(),
                        cache_key: holder.cache_key.clone(),
                        keys: holder
                            .keys
                            .iter()
                            .filter(|k| *k != erased_key && !erased_keys.contains(k))
                            .cloned()
                            .collect(),
                    })
                    .map_err(shape_error)?;
                    let put = PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .map_err(build_error)?;
                    WriteRequest::builder().put_request(put).build()
                };
                Ok(request)
            })
            .collect()
    }

    /// Every holder item of `key` (consistent `Query`, page after page).
    async fn holders(
        &self,
        key: &str,
        report: &mut SuppressionReport,
    ) -> Result<Vec<HolderItem>, StoreError> {
        let mut holders = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(format!("HOLDER#{key}")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(dynamo_error("Query"))?;
            report.count("Query", 1);
            for item in page.items.unwrap_or_default() {
                holders.push(serde_dynamo::from_item(item).map_err(shape_error)?);
            }
            start = page.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                return Ok(holders);
            }
        }
    }

    /// Removes `values` from the holder's person record (its `field` list): read, then write
    /// on condition that the record did not change meanwhile (else read again, a few times).
    /// Returns how many values went; 0 when the person is gone or holds none of them.
    async fn remove_values(
        &self,
        holder: &HolderItem,
        values: &[String],
        now: &str,
        report: &mut SuppressionReport,
    ) -> Result<usize, StoreError> {
        for _ in 0..CONFLICT_ATTEMPTS {
            report.count("GetItem", 1);
            let Some(person) = self.get_person(&holder.org_id, holder.person_id).await? else {
                return Ok(0);
            };
            let before = person.contacts(holder.field);
            let kept: Vec<ContactPoint> = before
                .iter()
                .filter(|c| !values.contains(&c.value))
                .cloned()
                .collect();
            let removed = before.len() - kept.len();
            if removed == 0 {
                return Ok(0);
            }
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(org_pk(&holder.org_id)))
                .key("sk", s(person_sk(holder.person_id)))
                .update_expression("SET #field = :kept, updatedAt = :now")
                .expression_attribute_names("#field", holder.field.as_str())
                .expression_attribute_values(
                    ":kept",
                    serde_dynamo::to_attribute_value(&kept).map_err(shape_error)?,
                )
                .expression_attribute_values(":now", s(now));
            update = match &person.updated_at {
                Some(at) => update
                    .condition_expression("updatedAt = :read")
                    .expression_attribute_values(":read", s(at)),
                None => update.condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(updatedAt)",
                ),
            };
            report.count("UpdateItem", 1);
            if conditional_update(update.send().await)?.is_ok() {
                return Ok(removed);
            }
        }
        Err(StoreError::Unavailable {
            operation: "UpdateItem",
            message: format!(
                "person {} kept changing while its values were erased",
                holder.person_id
            ),
        })
    }
}
