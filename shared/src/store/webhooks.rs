//! The webhook items (spec operations-api, "Webhooks"):
//!
//! | item | pk | sk |
//! |---|---|---|
//! | webhook endpoint | `ORG#{orgId}` | `WEBHOOK` |
//! | outbox event | `ORG#{orgId}` | `OUTBOX#{eventId}` (TTL [`OUTBOX_TTL`]) |
//! | delivery | `ORG#{orgId}` | `DELIVERY#{createdAt}#{eventId}` (TTL [`DELIVERY_TTL`]) |
//!
//! The outbox event is written by the transaction that ends an enrichment (one more `Put` in
//! it, no call of its own); the table's stream carries it to the relay
//! ([`crate::webhooks::Relay`]), which writes the delivery and queues its first attempt.

use std::time::Duration;

use super::*;
use crate::webhooks::{Delivery, EventType, Webhook, WebhookEvent};

/// The sort key prefix of the outbox events. The relay's stream filter (`template.yaml`,
/// `OutboxRelayFunction`) selects inserts whose `sk` starts with it.
pub const OUTBOX_SK_PREFIX: &str = "OUTBOX#";

/// How long an outbox event stays in the table: the stream keeps a record 24 hours (AWS docs,
/// "Change data capture for DynamoDB Streams"), after which the item is of no use.
pub const OUTBOX_TTL: Duration = Duration::from_secs(2 * 86_400);

/// How long a delivery stays in the log: the last retry of the longest schedule allowed
/// (`WEBHOOK_RETRY_SCHEDULE`, 10 attempts of at most a day) is over by then.
pub const DELIVERY_TTL: Duration = Duration::from_secs(30 * 86_400);

const WEBHOOK_SK: &str = "WEBHOOK";
const DELIVERY_SK_PREFIX: &str = "DELIVERY#";

fn delivery_sk(created_at: &str, event_id: Uuid) -> String {
    format!("{DELIVERY_SK_PREFIX}{created_at}#{event_id}")
}

/// Unix seconds `ttl` after `now` (ISO 8601), the `expiresAt` of an item.
fn expires_at(now: &str, ttl: Duration) -> i64 {
    let now = chrono::DateTime::parse_from_rfc3339(now)
        .map(|t| t.timestamp())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp());
    now + ttl.as_secs() as i64
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    webhook: Webhook,
}

/// The outbox item as the stream's new image carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxItem {
    /// `ORG#{orgId}`.
    pub pk: String,
    /// `OUTBOX#{eventId}`.
    pub sk: String,
    /// The org the enrichment belongs to.
    pub org_id: String,
    /// The event's id (`webhook-id`).
    pub event_id: Uuid,
    /// `enrichment.finished`...
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The enrichment that ended.
    pub enrichment_id: Uuid,
    /// When the event was made (ISO 8601), its `createdAt`.
    pub created_at: String,
    /// The event's JSON body as it is signed and sent.
    pub body: String,
    /// TTL, Unix seconds.
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryItem {
    pk: String,
    sk: String,
    org_id: String,
    #[serde(flatten)]
    delivery: Delivery,
    body: String,
    /// No attempt is to come: delivered, or the schedule ran out, or the endpoint was removed.
    done: bool,
    expires_at: i64,
}

impl Store {
    /// The outbox `Put` of the event `enrichment` (as ended) makes, for the transaction that
    /// ends it; `None` for a status that has no event (`pending`).
    pub(super) fn outbox_put(
        &self,
        enrichment: &Enrichment,
        now: &str,
    ) -> Result<Option<TransactWriteItem>, StoreError> {
        let Some(event) = WebhookEvent::of(enrichment, now) else {
            return Ok(None);
        };
        let body = serde_json::to_string(&event).map_err(|e| StoreError::Shape(e.to_string()))?;
        let item = OutboxItem {
            pk: org_pk(&enrichment.org_id),
            sk: format!("{OUTBOX_SK_PREFIX}{}", event.id),
            org_id: enrichment.org_id.clone(),
            event_id: event.id,
            event_type: event.event_type,
            enrichment_id: enrichment.id,
            created_at: event.created_at.clone(),
            body,
            expires_at: expires_at(now, OUTBOX_TTL),
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(serde_dynamo::to_item(item).map_err(shape_error)?))
            .build()
            .map_err(build_error)?;
        Ok(Some(TransactWriteItem::builder().put(put).build()))
    }

    /// Registers (or replaces) the org's endpoint. One `PutItem`.
    pub async fn put_webhook(&self, org_id: &str, webhook: &Webhook) -> Result<(), StoreError> {
        let item: Item = serde_dynamo::to_item(WebhookItem {
            pk: org_pk(org_id),
            sk: WEBHOOK_SK.into(),
            webhook: webhook.clone(),
        })
        .map_err(shape_error)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(dynamo_error("PutItem"))?;
        Ok(())
    }

    /// The org's endpoint, with its secret; `None` when none is registered. One consistent
    /// `GetItem`.
    pub async fn get_webhook(&self, org_id: &str) -> Result<Option<Webhook>, StoreError> {
        self.get_consistent(Self::key(org_pk(org_id), WEBHOOK_SK))
            .await?
            .map(|item| {
                serde_dynamo::from_item::<_, WebhookItem>(item)
                    .map(|i| i.webhook)
                    .map_err(shape_error)
            })
            .transpose()
    }

    /// Removes the org's endpoint (nothing when there is none). One `DeleteItem`.
    pub async fn delete_webhook(&self, org_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(WEBHOOK_SK))
            .send()
            .await
            .map_err(dynamo_error("DeleteItem"))?;
        Ok(())
    }

    /// Writes the delivery of `event` with no attempt yet, unless it exists (the stream gives a
    /// record at least once). Returns the delivery as stored: the new one, or the one already
    /// there. One conditional `PutItem` (`ALL_OLD` on failure).
    pub async fn create_delivery(&self, event: &OutboxItem) -> Result<Delivery, StoreError> {
        let delivery = Delivery {
            event_id: event.event_id,
            event_type: event.event_type,
            enrichment_id: event.enrichment_id,
            created_at: event.created_at.clone(),
            attempts: 0,
            last_status: None,
            last_attempt_at: None,
            delivered: false,
        };
        let item: Item = serde_dynamo::to_item(DeliveryItem {
            pk: org_pk(&event.org_id),
            sk: delivery_sk(&event.created_at, event.event_id),
            org_id: event.org_id.clone(),
            delivery: delivery.clone(),
            body: event.body.clone(),
            done: false,
            expires_at: expires_at(&event.created_at, DELIVERY_TTL),
        })
        .map_err(shape_error)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(delivery),
            Err(e) => match e.as_service_error() {
                Some(
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                        failed,
                    ),
                ) => match failed.item() {
                    Some(item) => Ok(delivery_from_item(item.clone())?.0),
                    None => Err(StoreError::Shape("the delivery disappeared".into())),
                },
                _ => Err(dynamo_error("PutItem")(e)),
            },
        }
    }

    /// The delivery of event `event_id` made at `created_at`, with the body to send and
    /// whether an attempt is still to come; `None` when it is gone (expired). One consistent
    /// `GetItem`.
    pub async fn get_delivery(
        &self,
        org_id: &str,
        created_at: &str,
        event_id: Uuid,
    ) -> Result<Option<(Delivery, String, bool)>, StoreError> {
        self.get_consistent(Self::key(org_pk(org_id), delivery_sk(created_at, event_id)))
            .await?
            .map(delivery_from_item)
            .transpose()
    }

    /// Records attempt `delivery.attempts` (its status, time and whether it delivered) and
    /// whether one is still to come, on condition no later attempt was recorded (a duplicate
    /// message). Returns `false` when the condition failed. One conditional `UpdateItem`.
    pub async fn record_attempt(
        &self,
        org_id: &str,
        delivery: &Delivery,
        done: bool,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key(
                "sk",
                s(delivery_sk(&delivery.created_at, delivery.event_id)),
            )
            .update_expression(
                "SET attempts = :n, lastStatus = :status, lastAttemptAt = :at, \
                 delivered = :delivered, done = :done",
            )
            .condition_expression("attribute_exists(pk) AND attempts < :n")
            .expression_attribute_values(":n", n(i64::from(delivery.attempts)))
            .expression_attribute_values(
                ":status",
                delivery
                    .last_status
                    .map_or(AttributeValue::Null(true), |status| n(i64::from(status))),
            )
            .expression_attribute_values(
                ":at",
                delivery
                    .last_attempt_at
                    .clone()
                    .map_or(AttributeValue::Null(true), s),
            )
            .expression_attribute_values(":delivered", AttributeValue::Bool(delivery.delivered))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// The org's deliveries, newest first, at most `limit`. One `Query`.
    pub async fn list_deliveries(
        &self,
        org_id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(org_pk(org_id)))
            .expression_attribute_values(":prefix", s(DELIVERY_SK_PREFIX))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(dynamo_error("Query"))?;
        output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| delivery_from_item(item).map(|(delivery, _, _)| delivery))
            .collect()
    }
}

fn delivery_from_item(item: Item) -> Result<(Delivery, String, bool), StoreError> {
    let item: DeliveryItem = serde_dynamo::from_item(item).map_err(shape_error)?;
    Ok((item.delivery, item.body, item.done))
}
