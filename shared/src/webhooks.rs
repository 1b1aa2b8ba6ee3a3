//! Signed completion webhooks (spec operations-api, "Webhooks"): the org's endpoint, the events,
//! their relay from the outbox and their delivery.
//!
//! The path of an event, with nothing lost on a crash anywhere along it:
//!
//! 1. **Outbox.** The transaction that ends an enrichment (`finished`, `failed`, `timeout`,
//!    `cancelled`) also puts its event in the table ([`crate::store::OutboxItem`]): the event
//!    exists if and only if the ending was written, once per enrichment and status (the ending
//!    is conditioned on `pending`).
//! 2. **Relay** ([`Webhooks::relay`], the `outbox-relay` function on the table's stream,
//!    filtered on outbox inserts): for an org with an endpoint, writes the delivery (on
//!    condition it is new: a stream record can come twice) and queues attempt 1. A failure is
//!    reported to the event source mapping, which gives the records again (AWS docs, "Using
//!    AWS Lambda with Amazon DynamoDB", partial batch responses).
//! 3. **Delivery** ([`Webhooks::deliver`], the `webhook-delivery` function on the webhook
//!    queue): signs the stored body (Standard Webhooks: `webhook-id`, `webhook-timestamp`,
//!    `webhook-signature`), posts it with a [`ATTEMPT_TIMEOUT`] budget, queues the next attempt
//!    on the `WEBHOOK_RETRY_SCHEDULE` before it records this one, then records it. A crash
//!    after the post sends the same event (same `webhook-id`) again; one before the record
//!    leaves the message to come back after the visibility timeout.
//!
//! A slow endpoint holds one delivery for at most [`ATTEMPT_TIMEOUT`]; deliveries run apart from
//! the enrichments, and the messages of one batch are delivered concurrently.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;

use crate::auth::Principal;
use crate::config::{ConfigError, Vars};
use crate::domain::{Enrichment, Status, timestamp};
use crate::error::{ApiError, whole_number};
use aws_lambda_events::dynamodb::{Event as DynamoDbEvent, EventRecord as DynamoDbEventRecord};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};

use crate::store::{OUTBOX_SK_PREFIX, OutboxItem, Store, StoreError};

/// The budget of one delivery attempt, connection included (spec operations-api, "Webhooks":
/// a `2xx` within 10 s is delivered).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default `WEBHOOK_RETRY_SCHEDULE`: seconds after the previous attempt (7 attempts over
/// about 17 hours).
pub const DEFAULT_RETRY_SCHEDULE: &str = "5,300,1800,7200,18000,36000";

/// The longest delay SQS allows on a message (AWS docs, `SendMessage`, `DelaySeconds`); a longer
/// wait is a chain of such delays.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_secs(900);

/// How long a host name's resolution may take before the URL is refused as unresolved.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest URL accepted.
const MAX_URL_LENGTH: usize = 2048;

/// The deliveries log's `limit`: default and range (spec operations-api, "Webhooks").
const DEFAULT_DELIVERIES: usize = 20;
const MAX_DELIVERIES: usize = 100;

/// The event types (spec operations-api, "Webhooks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// `enrichment.finished`
    #[serde(rename = "enrichment.finished")]
    Finished,
    /// `enrichment.failed`
    #[serde(rename = "enrichment.failed")]
    Failed,
    /// `enrichment.timeout`
    #[serde(rename = "enrichment.timeout")]
    Timeout,
    /// `enrichment.cancelled`
    #[serde(rename = "enrichment.cancelled")]
    Cancelled,
}

impl EventType {
    /// The event of an enrichment that reached `status`; `None` for `pending`.
    pub fn of(status: Status) -> Option<Self> {
        match status {
            Status::Pending => None,
            Status::Finished => Some(Self::Finished),
            Status::Failed => Some(Self::Failed),
            Status::Timeout => Some(Self::Timeout),
            Status::Cancelled => Some(Self::Cancelled),
        }
    }
}

/// An event's body: `{"id", "type", "createdAt", "data": <Enrichment>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// The event id, sent as `webhook-id` at every attempt.
    pub id: Uuid,
    /// Which ending.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the enrichment ended (ISO 8601).
    pub created_at: String,
    /// The enrichment as it ended (the spec's 13-field object).
    pub data: Enrichment,
}

impl WebhookEvent {
    /// The event of `enrichment` as it ended at `now`, with a new id; `None` while pending.
    pub fn of(enrichment: &Enrichment, now: &str) -> Option<Self> {
        Some(Self {
            id: Uuid::new_v4(),
            event_type: EventType::of(enrichment.status)?,
            created_at: now.to_string(),
            data: enrichment.clone(),
        })
    }
}

/// An org's endpoint as stored. The secret is never logged and is shown once, by the `PUT`
/// that made it; the table is encrypted at rest with KMS (`template.yaml`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// The endpoint.
    pub url: String,
    /// `whsec_` + base64 of 32 random bytes.
    pub secret: String,
    /// When it was registered (ISO 8601).
    pub created_at: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The answer of `GET /api/v1/settings/webhook`: `{"url", "createdAt"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    /// The endpoint.
    pub url: String,
    /// When it was registered.
    pub created_at: String,
}

/// One event's delivery, as stored and logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event id (`webhook-id`).
    pub event_id: Uuid,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The enrichment that ended.
    pub enrichment_id: Uuid,
    /// When the event was made (ISO 8601); orders the log.
    pub created_at: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the last attempt; `None` when no answer came (timeout, refused
    /// address, connection error).
    pub last_status: Option<u16>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<String>,
    /// Whether an attempt got a `2xx`.
    pub delivered: bool,
}

/// One entry of the deliveries log (spec operations-api, "Webhooks"): `{"eventId", "type",
/// "enrichmentId", "attempts", "lastStatus", "lastAttemptAt", "delivered"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryEntry {
    /// The event id.
    pub event_id: Uuid,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The enrichment that ended.
    pub enrichment_id: Uuid,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the last attempt, `null` when no answer came.
    pub last_status: Option<u16>,
    /// When the last attempt was made, `null` before the first.
    pub last_attempt_at: Option<String>,
    /// Whether an attempt got a `2xx`.
    pub delivered: bool,
}

impl From<Delivery> for DeliveryEntry {
    fn from(d: Delivery) -> Self {
        Self {
            event_id: d.event_id,
            event_type: d.event_type,
            enrichment_id: d.enrichment_id,
            attempts: d.attempts,
            last_status: d.last_status,
            last_attempt_at: d.last_attempt_at,
            delivered: d.delivered,
        }
    }
}

/// The message of the webhook queue: attempt `attempt` of an event's delivery, due at `dueAt`
/// (Unix seconds; a wait longer than [`MAX_QUEUE_DELAY`] is a chain of messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryMessage {
    /// The org whose endpoint is called.
    pub org_id: String,
    /// The event.
    pub event_id: Uuid,
    /// The event's `createdAt` (the delivery's key).
    pub created_at: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt is due, Unix seconds.
    pub due_at: i64,
}

/// The webhook settings of every function that deals with webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// `WEBHOOK_RETRY_SCHEDULE` (default [`DEFAULT_RETRY_SCHEDULE`]; 1 to 10 comma-separated whole
    /// seconds, each from 1 to 86400): the wait before each retry, after the previous attempt.
    /// Attempts in all: one more than its length.
    pub retry_schedule: Vec<Duration>,
    /// `WEBHOOK_ALLOW_LOOPBACK_HTTP` (default off; the local stack turns it on): also accept
    /// `http://127.0.0.1:<port>/…` endpoints. Deployed, only `https` to public addresses.
    pub allow_loopback_http: bool,
    /// `WEBHOOK_QUEUE_URL`: the queue of delivery attempts (the relay and delivery functions).
    pub queue_url: Option<String>,
}

impl WebhookConfig {
    /// Reads the settings documented on each field.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the variable.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let schedule = vars
            .raw("WEBHOOK_RETRY_SCHEDULE")
            .unwrap_or_else(|| DEFAULT_RETRY_SCHEDULE.to_string());
        let invalid = || ConfigError::Invalid {
            var: "WEBHOOK_RETRY_SCHEDULE",
            value: schedule.clone(),
            expected: "1 to 10 comma-separated whole seconds, each from 1 to 86400".into(),
        };
        let retry_schedule = schedule
            .split(',')
            .map(|item| {
                item.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .map(Duration::from_secs)
            })
            .collect::<Option<Vec<_>>>()
            .filter(|s| (1..=10).contains(&s.len()))
            .ok_or_else(invalid)?;
        Ok(Self {
            retry_schedule,
            allow_loopback_http: vars.switch("WEBHOOK_ALLOW_LOOPBACK_HTTP", false)?,
            queue_url: vars.string("WEBHOOK_QUEUE_URL"),
        })
    }

    /// [`WebhookConfig::queue_url`], which the relay and the delivery need.
    ///
    /// Errors: [`ConfigError::Missing`] naming `WEBHOOK_QUEUE_URL`.
    pub fn required_queue_url(&self) -> Result<&str, ConfigError> {
        self.queue_url.as_deref().ok_or(ConfigError::Missing {
            var: "WEBHOOK_QUEUE_URL",
        })
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` failed; `None` when
    /// `attempt` was the last.
    pub fn retry_after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        self.retry_schedule.get(index).copied()
    }
}

/// A new secret: `whsec_` + base64 (standard, padded) of 32 random bytes from the OS.
///
/// Errors: the OS random source failed (a 500).
pub fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("random source: {e}")))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Why an endpoint is refused (a `400` naming `url` at registration; a failed attempt at
/// delivery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Not an absolute URL of at most 2048 characters.
    #[error("url must be an absolute URL of at most 2048 characters")]
    Malformed,
    /// Another scheme than `https` (or, on the local stack, `http://127.0.0.1:<port>`).
    #[error("url must use https")]
    NotHttps,
    /// Carries a user name or password.
    #[error("url must not contain credentials")]
    Credentials,
    /// The host did not resolve.
    #[error("url's host does not resolve")]
    Unresolved,
    /// The host is or resolves to a loopback, private, link-local, metadata or other
    /// non-public address.
    #[error("url must not resolve to a loopback, private, link-local or metadata address")]
    NotPublic,
}

/// Whether `ip` is an address a webhook may be sent to: a public unicast address. Refused:
/// unspecified, loopback, private (RFC 1918, unique local `fc00::/7`), shared (`100.64.0.0/10`),
/// link-local (`169.254.0.0/16` with the instance metadata service `169.254.169.254`,
/// `fe80::/10`), the metadata service's IPv6 `fd00:ec2::254`, benchmarking, reserved,
/// documentation, broadcast and multicast; IPv4 inside IPv6 (mapped, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) is judged as the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            if segments[0] == 0x2002 {
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // IPv4-compatible (deprecated) ::a.b.c.d
                || segments[..6] == [0, 0, 0, 0, 0, 0]
                // documentation 2001:db8::/32
                || (segments[0] == 0x2001 && segments[1] == 0x0db8))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

/// An endpoint that passed [`UrlPolicy::check`]: the URL and, for a host name, the address it
/// resolved to, which the attempt connects to (a second resolution could answer otherwise:
/// DNS rebinding).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The endpoint.
    pub url: Url,
    /// The host name and the checked address to connect to; `None` for an IP literal.
    pub pinned: Option<(String, SocketAddr)>,
}

/// Which endpoints are accepted (spec operations-api, "Webhooks"): `https` to hosts whose every
/// address [`is_public`]; with `allow_loopback_http` also `http://127.0.0.1:<port>/…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `WEBHOOK_ALLOW_LOOPBACK_HTTP`.
    pub allow_loopback_http: bool,
}

impl UrlPolicy {
    /// Checks `text` and resolves its host now. Called at registration and again before each
    /// attempt.
    ///
    /// Errors: the [`UrlRefusal`] that applies.
    pub async fn check(&self, text: &str) -> Result<Target, UrlRefusal> {
        if text.len() > MAX_URL_LENGTH {
            return Err(UrlRefusal::Malformed);
        }
        let url = Url::parse(text).map_err(|_| UrlRefusal::Malformed)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        let host = url.host().ok_or(UrlRefusal::Malformed)?;
        match url.scheme() {
            "https" => {}
            "http"
                if self.allow_loopback_http
                    && host == url::Host::<&str>::Ipv4(Ipv4Addr::LOCALHOST)
                    && url.port().is_some() =>
            {
                return Ok(Target { url, pinned: None });
            }
            _ => return Err(UrlRefusal::NotHttps),
        }
        let port = url.port_or_known_default().unwrap_or(443);
        match host {
            url::Host::Ipv4(ip) if is_public(IpAddr::V4(ip)) => Ok(Target { url, pinned: None }),
            url::Host::Ipv6(ip) if is_public(IpAddr::V6(ip)) => Ok(Target { url, pinned: None }),
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => Err(UrlRefusal::NotPublic),
            url::Host::Domain(name) => {
                let name = name.to_string();
                let lookup = tokio::net::lookup_host((name.as_str(), port));
                let addresses: Vec<SocketAddr> = tokio::time::timeout(DNS_TIMEOUT, lookup)
                    .await
                    .map_err(|_| UrlRefusal::Unresolved)?
                    .map_err(|_| UrlRefusal::Unresolved)?
                    .collect();
                let first = *addresses.first().ok_or(UrlRefusal::Unresolved)?;
                if addresses.iter().any(|a| !is_public(a.ip())) {
                    return Err(UrlRefusal::NotPublic);
                }
                Ok(Target {
                    url,
                    pinned: Some((name, first)),
                })
            }
        }
    }
}

/// The webhook queue (`WEBHOOK_QUEUE_URL`).
#[derive(Debug, Clone)]
pub struct DeliveryQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl DeliveryQueue {
    /// The queue at `url`.
    pub fn new(sqs: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            sqs,
            url: url.into(),
        }
    }

    /// The queue at `url` with a client of the process's SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self::new(aws_sdk_sqs::Client::new(sdk), url)
    }

    /// Queues `message` to be received when it is due (now at the latest), waiting at most
    /// [`MAX_QUEUE_DELAY`]; a later message is received early and queued again. One
    /// `SendMessage`.
    ///
    /// Errors: the SQS failure, as text.
    pub async fn send(&self, message: &DeliveryMessage, now: DateTime<Utc>) -> Result<(), String> {
        let wait = (message.due_at - now.timestamp()).max(0) as u64;
        let delay = wait.min(MAX_QUEUE_DELAY.as_secs()) as i32;
        let body = serde_json::to_string(message).map_err(|e| e.to_string())?;
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay)
            // SQS fair queues: one org's backlog of retries does not hold up another's.
            .message_group_id(&message.org_id)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
        Ok(())
    }
}

/// Why an event could not be relayed or a delivery could not be handled: the message or
/// record is given again by its event source.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A DynamoDB failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The webhook queue failed (or none is configured).
    #[error("webhook queue: {0}")]
    Queue(String),
    /// A record or message that is not an outbox event or delivery message.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// The webhook use cases: the settings routes, the relay and the delivery.
#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    config: WebhookConfig,
    queue: Option<DeliveryQueue>,
    http: reqwest::Client,
}

impl Webhooks {
    /// The use cases over `store`; `queue` for the relay and the delivery (the settings
    /// routes need none).
    pub fn new(store: Store, config: WebhookConfig, queue: Option<DeliveryQueue>) -> Self {
        Self {
            store,
            config,
            queue,
            http: attempt_client(None),
        }
    }

    fn policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_loopback_http: self.config.allow_loopback_http,
        }
    }

    /// `PUT /api/v1/settings/webhook` with `{"url"}`: checks the URL ([`UrlPolicy::check`]),
    /// makes a new secret and registers the endpoint, replacing an earlier one. Answers
    /// `{"url", "secret", "createdAt"}`, the only time the secret is shown. One `PutItem`.
    ///
    /// Errors: 400 naming `body` (not a JSON object) or `url` (missing, not a string, refused
    /// with the [`UrlRefusal`]'s message).
    pub async fn register(
        &self,
        principal: &Principal,
        body: &serde_json::Value,
    ) -> Result<Webhook, ApiError> {
        let object = body
            .as_object()
            .ok_or_else(|| ApiError::invalid("body", "the request body must be a JSON object"))?;
        let url = object
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| ApiError::invalid("url", "url is required and must be a string"))?;
        let target = self
            .policy()
            .check(url)
            .await
            .map_err(|refusal| ApiError::invalid("url", refusal.to_string()))?;
        let webhook = Webhook {
            url: target.url.to_string(),
            secret: new_secret()?,
            created_at: timestamp(Utc::now()),
        };
        self.store.put_webhook(&principal.org_id, &webhook).await?;
        tracing::info!(url = %webhook.url, "webhook endpoint registered");
        Ok(webhook)
    }

    /// `GET /api/v1/settings/webhook`: `{"url", "createdAt"}`, no secret.
    ///
    /// Errors: 404 `Webhook not found` when none is registered.
    pub async fn get(&self, principal: &Principal) -> Result<WebhookView, ApiError> {
        let webhook = self
            .store
            .get_webhook(&principal.org_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("Webhook not found".into()))?;
        Ok(WebhookView {
            url: webhook.url,
            created_at: webhook.created_at,
        })
    }

    /// `DELETE /api/v1/settings/webhook`: no endpoint afterwards (`204` whether or not there
    /// was one). Queued attempts find none and are recorded not delivered.
    pub async fn remove(&self, principal: &Principal) -> Result<(), ApiError> {
        Ok(self.store.delete_webhook(&principal.org_id).await?)
    }

    /// `GET /api/v1/settings/webhook/deliveries?limit=`: the newest `limit` (1–100, default
    /// 20) deliveries, newest first. One `Query`.
    ///
    /// Errors: 400 naming `limit`.
    pub async fn deliveries(
        &self,
        principal: &Principal,
        limit: Option<&str>,
    ) -> Result<Vec<DeliveryEntry>, ApiError> {
        let limit = whole_number("limit", limit, DEFAULT_DELIVERIES, 1..=MAX_DELIVERIES)?;
        let deliveries = self.store.list_deliveries(&principal.org_id, limit).await?;
        Ok(deliveries.into_iter().map(DeliveryEntry::from).collect())
    }

    /// Relays outbox events (the stream's new images, in stream order) to the webhook queue:
    /// for an org with an endpoint, writes the delivery ([`Store::create_delivery`]) and
    /// queues attempt 1 unless an attempt was already made; an org without one is skipped.
    /// Returns the index of the first event that failed, with why (the event source gives it
    /// and the ones after it again), or `None`.
    ///
    /// AWS calls per event: one `GetItem` of the org's endpoint (once per org and call), and for
    /// an org with one, one `PutItem` and one `SendMessage`.
    pub async fn relay(&self, events: &[OutboxItem]) -> Option<(usize, WebhookError)> {
        let mut endpoints: std::collections::HashMap<String, bool> = Default::default();
        for (index, event) in events.iter().enumerate() {
            if let Err(e) = self.relay_one(event, &mut endpoints).await {
                return Some((index, e));
            }
        }
        None
    }

    async fn relay_one(
        &self,
        event: &OutboxItem,
        endpoints: &mut std::collections::HashMap<String, bool>,
    ) -> Result<(), WebhookError> {
        let has_endpoint = match endpoints.get(&event.org_id) {
            Some(known) => *known,
            None => {
                let known = self.store.get_webhook(&event.org_id).await?.is_some();
                endpoints.insert(event.org_id.clone(), known);
                known
            }
        };
        if !has_endpoint {
            tracing::debug!(event_id = %event.event_id, "no webhook endpoint: event not relayed");
            return Ok(());
        }
        let delivery = self.store.create_delivery(event).await?;
        if delivery.attempts > 0 || delivery.delivered {
            return Ok(());
        }
        let now = Utc::now();
        let message = DeliveryMessage {
            org_id: event.org_id.clone(),
            event_id: event.event_id,
            created_at: event.created_at.clone(),
            attempt: 1,
            due_at: now.timestamp(),
        };
        self.queue()?
            .send(&message, now)
            .await
            .map_err(WebhookError::Queue)?;
        tracing::info!(event_id = %event.event_id, event_type = ?event.event_type, "webhook event queued");
        Ok(())
    }

    fn queue(&self) -> Result<&DeliveryQueue, WebhookError> {
        self.queue
            .as_ref()
            .ok_or_else(|| WebhookError::Queue("WEBHOOK_QUEUE_URL is not set".into()))
    }

    /// Handles one message of the webhook queue at `now`:
    ///
    /// - not yet due: queued again for the rest of the wait;
    /// - a delivery that is gone, over, or past this attempt (a duplicate message): dropped;
    /// - no endpoint any more: recorded not delivered, no further attempt;
    /// - else the attempt: the endpoint checked again ([`UrlPolicy::check`], against DNS
    ///   rebinding; a refusal is a failed attempt with no status), the stored body signed and
    ///   posted within [`ATTEMPT_TIMEOUT`], no redirect followed. A `2xx` delivers. Otherwise
    ///   the next attempt is queued first ([`WebhookConfig::retry_after`]), then this one is
    ///   recorded.
    ///
    /// Returns the delivery as recorded, `None` when nothing was attempted.
    ///
    /// Errors: DynamoDB or SQS failures: the message comes back after its visibility timeout.
    pub async fn deliver(
        &self,
        message: &DeliveryMessage,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, WebhookError> {
        if message.due_at > now.timestamp() {
            self.queue()?
                .send(message, now)
                .await
                .map_err(WebhookError::Queue)?;
            return Ok(None);
        }
        let org = &message.org_id;
        let Some((mut delivery, body, done)) = self
            .store
            .get_delivery(org, &message.created_at, message.event_id)
            .await?
        else {
            return Ok(None);
        };
        if done || delivery.delivered || delivery.attempts >= message.attempt {
            return Ok(None);
        }
        // The attempt's own time (the batch's messages are delivered concurrently): its
        // `lastAttemptAt`, its `webhook-timestamp` and the start of the wait before the next.
        let now = Utc::now().max(now);
        delivery.attempts = message.attempt;
        delivery.last_attempt_at = Some(timestamp(now));
        let Some(webhook) = self.store.get_webhook(org).await? else {
            delivery.last_status = None;
            self.store.record_attempt(org, &delivery, true).await?;
            tracing::info!(event_id = %delivery.event_id, "no webhook endpoint any more: not delivered");
            return Ok(Some(delivery));
        };
        delivery.last_status = self.attempt(&webhook, &delivery, &body, now).await;
        delivery.delivered = delivery
            .last_status
            .is_some_and(|s| (200..300).contains(&s));
        let next = (!delivery.delivered)
            .then(|| self.config.retry_after(message.attempt))
            .flatten();
        if let Some(wait) = next {
            let retry = DeliveryMessage {
                attempt: message.attempt + 1,
                due_at: now.timestamp() + wait.as_secs() as i64,
                ..message.clone()
            };
            self.queue()?
                .send(&retry, now)
                .await
                .map_err(WebhookError::Queue)?;
        }
        self.store
            .record_attempt(org, &delivery, next.is_none())
            .await?;
        tracing::info!(
            event_id = %delivery.event_id,
            attempt = delivery.attempts,
            status = ?delivery.last_status,
            delivered = delivery.delivered,
            retry_in_seconds = ?next.map(|w| w.as_secs()),
            "webhook attempt"
        );
        Ok(Some(delivery))
    }

    /// One attempt: the HTTP status, or `None` when no answer came.
    async fn attempt(
        &self,
        webhook: &Webhook,
        delivery: &Delivery,
        body: &str,
        now: DateTime<Utc>,
    ) -> Option<u16> {
        let target = match self.policy().check(&webhook.url).await {
            Ok(target) => target,
            Err(refusal) => {
                tracing::warn!(event_id = %delivery.event_id, %refusal, "webhook endpoint refused at delivery");
                return None;
            }
        };
        let signer = standardwebhooks::Webhook::new(&webhook.secret).ok()?;
        let id = delivery.event_id.to_string();
        let signature = signer.sign(&id, now.timestamp(), body.as_bytes()).ok()?;
        let client = match &target.pinned {
            Some(_) => attempt_client(target.pinned.clone()),
            None => self.http.clone(),
        };
        let sent = client
            .post(target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                now.timestamp().to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(response) => Some(response.status().as_u16()),
            Err(e) => {
                tracing::info!(event_id = %delivery.event_id, error = %e, "webhook attempt got no answer");
                None
            }
        }
    }
}

impl Webhooks {
    /// The `outbox-relay` function's handler: the outbox inserts of a DynamoDB stream batch
    /// (the event source mapping's filter lets only those through; any other record is
    /// skipped here too) relayed in order ([`Webhooks::relay`]). A failure answers the sequence
    /// number of the first event that failed, so that the event source gives it and the
    /// records after it again (AWS docs, "Configuring partial batch response with DynamoDB
    /// and Lambda"). A record whose image is no outbox event is logged and skipped: giving it
    /// again would never succeed.
    pub async fn relay_stream(&self, event: &DynamoDbEvent) -> DynamoDbEventResponse {
        let mut events = Vec::new();
        let mut sequence_numbers = Vec::new();
        for record in &event.records {
            if !is_outbox_insert(record) {
                continue;
            }
            match serde_dynamo::from_item::<_, OutboxItem>(record.change.new_image.clone()) {
                Ok(item) => {
                    events.push(item);
                    sequence_numbers.push(record.change.sequence_number.clone());
                }
                Err(e) => {
                    tracing::error!(event_id = %record.event_id, error = %e, "outbox record skipped: not an outbox event");
                }
            }
        }
        let mut response = DynamoDbEventResponse::default();
        if let Some((index, error)) = self.relay(&events).await {
            tracing::error!(error = %error, failed = events.len() - index, "outbox relay failed; the records come again");
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = sequence_numbers[index].clone();
            response.batch_item_failures.push(failure);
        }
        response
    }

    /// The `webhook-delivery` function's handler: each message of an SQS batch delivered
    /// concurrently ([`Webhooks::deliver`]), the ones that failed reported as batch item
    /// failures (AWS docs, "Handling errors for an SQS event source in Lambda"). A message
    /// that is no [`DeliveryMessage`] is logged and dropped.
    pub async fn deliver_batch(&self, messages: &[SqsMessage]) -> SqsBatchResponse {
        let now = Utc::now();
        let attempts = messages.iter().map(|message| async move {
            let parsed = message
                .body
                .as_deref()
                .ok_or_else(|| WebhookError::Malformed("no body".into()))
                .and_then(|body| {
                    serde_json::from_str::<DeliveryMessage>(body)
                        .map_err(|e| WebhookError::Malformed(e.to_string()))
                });
            let result = match parsed {
                Ok(delivery) => self.deliver(&delivery, now).await.map(|_| ()),
                Err(error) => {
                    tracing::error!(message_id = ?message.message_id, %error, "webhook message dropped");
                    Ok(())
                }
            };
            (message.message_id.clone().unwrap_or_default(), result)
        });
        let mut response = SqsBatchResponse::default();
        for (message_id, result) in futures::future::join_all(attempts).await {
            if let Err(error) = result {
                tracing::error!(%message_id, %error, "webhook delivery failed; the message comes again");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}

/// Whether a stream record is the insert of an outbox event: the filter of the relay's event
/// source mapping (`template.yaml`: `eventName` `INSERT`, `dynamodb.NewImage.sk.S` with prefix
/// [`OUTBOX_SK_PREFIX`]).
pub fn is_outbox_insert(record: &DynamoDbEventRecord) -> bool {
    record.event_name == "INSERT"
        && matches!(
            record.change.new_image.get("sk"),
            Some(serde_dynamo::AttributeValue::S(sk)) if sk.starts_with(OUTBOX_SK_PREFIX)
        )
}

/// The HTTP client of an attempt: [`ATTEMPT_TIMEOUT`] in all, no redirect (a redirect could
/// lead to an address that was not checked), connecting to `pinned`'s address for its host.
fn attempt_client(pinned: Option<(String, SocketAddr)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("enrichment-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some((host, address)) = pinned {
        builder = builder.resolve(&host, address);
    }
    builder.build().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for refused in [
            "0.0.0.0",
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.170.2",
            "100.64.0.1",
            "192.0.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::1",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(refused)), "{refused} must be refused");
        }
        for allowed in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            assert!(is_public(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[tokio::test]
    async fn the_policy_refuses_what_the_spec_refuses() {
        let deployed = UrlPolicy {
            allow_loopback_http: false,
        };
        let local = UrlPolicy {
            allow_loopback_http: true,
        };
        let cases = [
            ("http://example.com/hook", UrlRefusal::NotHttps),
            ("http://127.0.0.1:9000/hook", UrlRefusal::NotHttps),
            ("https://127.0.0.1/hook", UrlRefusal::NotPublic),
            ("https://[::1]/hook", UrlRefusal::NotPublic),
            ("https://169.254.169.254/latest", UrlRefusal::NotPublic),
            ("https://10.0.0.5/hook", UrlRefusal::NotPublic),
            ("https://localhost/hook", UrlRefusal::NotPublic),
            ("https://user:pw@example.com/hook", UrlRefusal::Credentials),
            ("ftp://example.com/hook", UrlRefusal::NotHttps),
            ("mailto:ops@example.com", UrlRefusal::Malformed),
            ("not a url", UrlRefusal::Malformed),
        ];
        for (url, refusal) in cases {
            assert_eq!(deployed.check(url).await.unwrap_err(), refusal, "{url}");
        }
        // The local stack: loopback over http with a port, nothing else over http.
        let target = local.check("http://127.0.0.1:9000/hook").await.unwrap();
        assert_eq!(target.url.as_str(), "http://127.0.0.1:9000/hook");
        assert_eq!(target.pinned, None);
        for url in ["http://127.0.0.1/hook", "http://localhost:9000/hook"] {
            assert_eq!(
                local.check(url).await.unwrap_err(),
                UrlRefusal::NotHttps,
                "{url}"
            );
        }
        assert_eq!(
            local.check("https://127.0.0.1:9000/x").await.unwrap_err(),
            UrlRefusal::NotPublic
        );
        // A public IP literal is accepted without resolution.
        let target = deployed.check("https://93.184.216.34/hook").await.unwrap();
        assert_eq!(target.pinned, None);
    }

    #[test]
    fn the_retry_schedule_is_read_and_bounded() {
        let config = WebhookConfig::from_vars(&Vars::from_pairs([("X", "y")])).unwrap();
        let seconds: Vec<u64> = config.retry_schedule.iter().map(|d| d.as_secs()).collect();
        assert_eq!(seconds, [5, 300, 1800, 7200, 18000, 36000]);
        assert_eq!(config.retry_after(1), Some(Duration::from_secs(5)));
        assert_eq!(config.retry_after(6), Some(Duration::from_secs(36000)));
        assert_eq!(config.retry_after(7), None);
        assert!(!config.allow_loopback_http);
        let custom =
            WebhookConfig::from_vars(&Vars::from_pairs([("WEBHOOK_RETRY_SCHEDULE", " 1, 2 ")]))
                .unwrap();
        assert_eq!(custom.retry_schedule, [1, 2].map(Duration::from_secs));
        for bad in ["", "0", "5,abc", "86401", "1,1,1,1,1,1,1,1,1,1,1"] {
            let error =
                WebhookConfig::from_vars(&Vars::from_pairs([("WEBHOOK_RETRY_SCHEDULE", bad)]))
                    .unwrap_err();
            assert!(
                error.to_string().contains("WEBHOOK_RETRY_SCHEDULE"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_secret_is_whsec_and_32_random_bytes() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        let key = base64::engine::general_purpose::STANDARD
            .decode(a.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn every_ending_has_its_event_type_and_pending_none() {
        assert_eq!(EventType::of(Status::Pending), None);
        let names: Vec<String> = [
            Status::Finished,
            Status::Failed,
            Status::Timeout,
            Status::Cancelled,
        ]
        .into_iter()
        .map(|s| serde_json::to_string(&EventType::of(s).unwrap()).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                "\"enrichment.finished\"",
                "\"enrichment.failed\"",
                "\"enrichment.timeout\"",
                "\"enrichment.cancelled\""
            ]
        );
    }
}
