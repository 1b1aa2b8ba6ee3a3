//! The credits item and the ledger (spec operations-api, "Credits"): grants, balance, history,
//! and the credit transactions that debit or refund an enrichment inside another transaction.
//!
//! A credit transaction is the item `CREDITTX#{createdAt}#{id}` of the org's partition: the
//! history of a date range is one `Query` with `sk BETWEEN`, newest first, never a filter over
//! the whole ledger. A grant with an idempotency key also writes `GRANTKEY#{key}` in the same
//! transaction, on condition it is new, so a retried grant never adds twice.

use std::collections::HashSet;

use super::*;

/// What credits a [`CreditTransaction`] moves: `credit_added` or `credit_consumed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditTransactionType {
    /// Credits given: a grant or a refund.
    CreditAdded,
    /// Credits taken by an enrichment.
    CreditConsumed,
}

/// Where added credits come from (spec operations-api, "Credits", `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditSource {
    /// Granted by an operator.
    Manual,
    /// Granted at sign-up.
    SignupBonus,
    /// Bought.
    StripePurchase,
    /// A subscription's allowance.
    StripeSubscription,
    /// Given back for an enrichment that ended `failed`, `timeout` or `cancelled` (or a miss
    /// with `REFUND_MISSES`).
    Refund,
}

impl CreditSource {
    /// The wire value, e.g. `"signup_bonus"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditSource::Manual => "manual",
            CreditSource::SignupBonus => "signup_bonus",
            CreditSource::StripePurchase => "stripe_purchase",
            CreditSource::StripeSubscription => "stripe_subscription",
            CreditSource::Refund => "refund",
        }
    }
}

impl std::str::FromStr for CreditSource {
    type Err = String;

    /// One of the grant sources (`refund` is the product's own, not granted).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "manual" => Ok(CreditSource::Manual),
            "signup_bonus" => Ok(CreditSource::SignupBonus),
            "stripe_purchase" => Ok(CreditSource::StripePurchase),
            "stripe_subscription" => Ok(CreditSource::StripeSubscription),
            _ => Err(format!(
                "{text:?}: expected manual, signup_bonus, stripe_purchase or stripe_subscription"
            )),
        }
    }
}

/// One ledger line, as `GET /api/v1/operations/credits/history` shows it (spec operations-api,
/// "Credits"): `{"id", "organizationId", "type", "amount" (positive), "operationType",
/// "source", "referenceId", "description", "metadata", "createdAt", "updatedAt"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditTransaction {
    /// For a debit, the enrichment's `creditTransactionId`.
    pub id: Uuid,
    /// The org.
    pub organization_id: String,
    /// `credit_added` or `credit_consumed`.
    #[serde(rename = "type")]
    pub kind: CreditTransactionType,
    /// Credits moved, positive.
    pub amount: i64,
    /// `enrichment_email` / `enrichment_phone` for a debit or a refund; `null` for a grant.
    pub operation_type: Option<OperationType>,
    /// Where added credits come from; `null` for a debit.
    pub source: Option<CreditSource>,
    /// The enrichment debited or refunded; `null` for a grant.
    pub reference_id: Option<Uuid>,
    /// Free text of a grant.
    pub description: Option<String>,
    /// Free JSON object of a grant.
    pub metadata: Option<serde_json::Value>,
    /// When it was written (ISO 8601, milliseconds, `Z`).
    pub created_at: String,
    /// The same: a credit transaction never changes.
    pub updated_at: String,
}

impl CreditTransaction {
    /// `amount` signed: negative for a debit.
    pub fn signed_amount(&self) -> i64 {
        match self.kind {
            CreditTransactionType::CreditAdded => self.amount,
            CreditTransactionType::CreditConsumed => -self.amount,
        }
    }

    /// Whether it is a grant (added credits that are not a refund).
    pub fn is_grant(&self) -> bool {
        self.kind == CreditTransactionType::CreditAdded && self.source != Some(CreditSource::Refund)
    }

    /// The debit of `enrichment`'s `cost`: its id is the enrichment's `creditTransactionId`,
    /// its time the enrichment's creation.
    fn debit(enrichment: &Enrichment, cost: i64) -> Result<Self, StoreError> {
        let id = enrichment.credit_transaction_id.ok_or_else(|| {
            StoreError::Shape("a new enrichment needs its credit transaction id".into())
        })?;
        Ok(Self {
            id,
            organization_id: enrichment.org_id.clone(),
            kind: CreditTransactionType::CreditConsumed,
            amount: cost,
            operation_type: Some(enrichment.field.operation_type()),
            source: None,
            reference_id: Some(enrichment.id),
            description: None,
            metadata: None,
            created_at: enrichment.created_at.clone(),
            updated_at: enrichment.created_at.clone(),
        })
    }

    /// The refund of `amount` credits of `enrichment` at `now`.
    fn refund(enrichment: &Enrichment, amount: i64, now: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            organization_id: enrichment.org_id.clone(),
            kind: CreditTransactionType::CreditAdded,
            amount,
            operation_type: Some(enrichment.field.operation_type()),
            source: Some(CreditSource::Refund),
            reference_id: Some(enrichment.id),
            description: None,
            metadata: None,
            created_at: now.to_string(),
            updated_at: now.to_string(),
        }
    }
}

/// A grant of credits to an org (`enrichctl credits grant`).
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Credits to add, positive.
    pub amount: i64,
    /// Any source but `refund`.
    pub source: CreditSource,
    /// Shown in the history.
    pub description: Option<String>,
    /// Shown in the history (a JSON object).
    pub metadata: Option<serde_json::Value>,
    /// A grant sent again with the same key adds nothing (1 to 200 characters).
    pub idempotency_key: Option<String>,
}

impl Grant {
    /// A `manual` grant of `amount` without description or key.
    pub fn manual(amount: i64) -> Self {
        Self {
            amount,
            source: CreditSource::Manual,
            description: None,
            metadata: None,
            idempotency_key: None,
        }
    }
}

/// What a grant did.
#[derive(Debug, Clone, PartialEq)]
pub enum GrantOutcome {
    /// The credits were added: the new balance and the transaction written.
    Granted {
        /// The balance after it (read right after the grant).
        balance: i64,
        /// The `credit_added` transaction.
        transaction: Box<CreditTransaction>,
    },
    /// A grant with the same idempotency key was made before: nothing was added.
    AlreadyGranted {
        /// The balance now.
        balance: i64,
    },
}

/// One page of the history and what reading it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Newest first.
    pub transactions: Vec<CreditTransaction>,
    /// Read capacity units the `Query` calls consumed, as DynamoDB reported them (0 when the
    /// endpoint does not report them).
    pub read_units: f64,
}

/// What [`Store::check_ledger`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerCheck {
    /// The balance.
    pub balance: i64,
    /// Sum of the grants.
    pub granted: i64,
    /// The debits and refunds, signed (a debit negative), in key order.
    pub enrichment_amounts: Vec<i64>,
}

#[derive(Serialize, Deserialize)]
struct CreditTransactionItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    transaction: CreditTransaction,
}

/// The sort key of a credit transaction: `CREDITTX#{createdAt}#{id}`.
pub(super) fn credit_transaction_sk(created_at: &str, id: Uuid) -> String {
    format!("CREDITTX#{created_at}#{id}")
}

impl Store {
    fn put_credit_transaction(&self, transaction: &CreditTransaction) -> Result<Put, StoreError> {
        let item: Item = serde_dynamo::to_item(CreditTransactionItem {
            pk: org_pk(&transaction.organization_id),
            sk: credit_transaction_sk(&transaction.created_at, transaction.id),
            transaction: transaction.clone(),
        })
        .map_err(shape_error)?;
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)
    }

    /// The `Put` of the `credit_consumed` transaction charging `enrichment` `cost` credits.
    pub(super) fn debit_transaction(
        &self,
        enrichment: &Enrichment,
        cost: i64,
    ) -> Result<Put, StoreError> {
        self.put_credit_transaction(&CreditTransaction::debit(enrichment, cost)?)
    }

    /// The key of the debit of `enrichment` (see [`Store::debit_transaction`]).
    pub(super) fn debit_key(enrichment: &Enrichment) -> Result<Item, StoreError> {
        let id = enrichment.credit_transaction_id.ok_or_else(|| {
            StoreError::Shape("a created enrichment has its credit transaction id".into())
        })?;
        Ok(HashMap::from([
            ("pk".to_string(), s(org_pk(&enrichment.org_id))),
            (
                "sk".to_string(),
                s(credit_transaction_sk(&enrichment.created_at, id)),
            ),
        ]))
    }

    /// The two items that give `amount` credits of `enrichment` back: the balance increment and
    /// its `credit_added` transaction with `source: "refund"`. None when nothing was charged.
    /// A refund is always written with the change that ends the enrichment, conditioned on it
    /// being `pending`: it happens once.
    pub(super) fn refund_items(
        &self,
        enrichment: &Enrichment,
        amount: i64,
        now: &str,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        self.refunds_items(&[(enrichment, amount)], now)
    }

    /// The items refunding several enrichments of one org in one transaction: one balance
    /// update by their total (DynamoDB takes one operation per item in a transaction) and one
    /// `refund` credit transaction each. Amounts that are not positive are left out.
    pub(super) fn refunds_items(
        &self,
        refunds: &[(&Enrichment, i64)],
        now: &str,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let refunds: Vec<&(&Enrichment, i64)> =
            refunds.iter().filter(|(_, amount)| *amount > 0).collect();
        let Some((first, _)) = refunds.first() else {
            return Ok(Vec::new());
        };
        let total: i64 = refunds.iter().map(|(_, amount)| amount).sum();
        let refund = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(&first.org_id)))
            .key("sk", s(CREDITS_SK))
            .update_expression("SET balance = balance + :amount")
            .expression_attribute_values(":amount", n(total))
            .build()
            .map_err(build_error)?;
        let mut items = vec![TransactWriteItem::builder().update(refund).build()];
        for (enrichment, amount) in refunds {
            let transaction =
                self.put_credit_transaction(&CreditTransaction::refund(enrichment, *amount, now))?;
            items.push(TransactWriteItem::builder().put(transaction).build());
        }
        Ok(items)
    }

    /// Adds `amount` credits (positive) to the org's balance with a `manual` grant (see
    /// [`Store::grant`]); returns the new balance.
    ///
    /// Errors: [`StoreError::BalanceLimit`] (nothing granted), DynamoDB failures.
    pub async fn grant_credits(&self, org_id: &str, amount: i64) -> Result<i64, StoreError> {
        match self.grant(org_id, &Grant::manual(amount)).await? {
            GrantOutcome::Granted { balance, .. } | GrantOutcome::AlreadyGranted { balance } => {
                Ok(balance)
            }
        }
    }

    /// Grants credits in one `TransactWriteItems`: the balance incremented (created at the
    /// amount) unless it would pass [`MAX_BALANCE`], the `credit_added` transaction with its
    /// source, and with an idempotency key the item `GRANTKEY#{key}` on condition it is new.
    /// Then one consistent `GetItem` reads the balance.
    ///
    /// Errors: [`StoreError::BalanceLimit`] for an amount that is not positive or a balance
    /// that would pass the limit (nothing granted); [`StoreError::Shape`] for a `refund` source;
    /// DynamoDB failures.
    pub async fn grant(&self, org_id: &str, grant: &Grant) -> Result<GrantOutcome, StoreError> {
        if grant.source == CreditSource::Refund {
            return Err(StoreError::Shape("a grant cannot be a refund".into()));
        }
        let ceiling = MAX_BALANCE
            .checked_sub(grant.amount)
            .filter(|_| grant.amount > 0)
            .ok_or(StoreError::BalanceLimit)?;
        let now = crate::domain::timestamp(chrono::Utc::now());
        let transaction = CreditTransaction {
            id: Uuid::new_v4(),
            organization_id: org_id.to_string(),
            kind: CreditTransactionType::CreditAdded,
            amount: grant.amount,
            operation_type: None,
            source: Some(grant.source),
            reference_id: None,
            description: grant.description.clone(),
            metadata: grant.metadata.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        let add = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(org_id)))
            .key("sk", s(CREDITS_SK))
            .update_expression("ADD balance :amount")
            .condition_expression("attribute_not_exists(balance) OR balance <= :ceiling")
            .expression_attribute_values(":amount", n(grant.amount))
            .expression_attribute_values(":ceiling", n(ceiling))
            .build()
            .map_err(build_error)?;
        let mut items = vec![
            TransactWriteItem::builder().update(add).build(),
            TransactWriteItem::builder()
                .put(self.put_credit_transaction(&transaction)?)
                .build(),
        ];
        if let Some(key) = &grant.idempotency_key {
            let guard = Put::builder()
                .table_name(&self.table)
                .item("pk", s(org_pk(org_id)))
                .item("sk", s(format!("GRANTKEY#{key}")))
                .item("transactionId", s(transaction.id.to_string()))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(guard).build());
        }
        match self.transact(items).await? {
            None => Ok(GrantOutcome::Granted {
                balance: self.credit_balance(org_id).await?,
                transaction: Box::new(transaction),
            }),
            Some(reasons) if reasons.get(2).is_some_and(|r| r.failed) => {
                Ok(GrantOutcome::AlreadyGranted {
                    balance: self.credit_balance(org_id).await?,
                })
            }
            Some(reasons) if reasons.first().is_some_and(|r| r.failed) => {
                Err(StoreError::BalanceLimit)
            }
            Some(reasons) => Err(cancelled("grant", &reasons)),
        }
    }

    /// A page of the org's credit transactions created from `from` to `to` (ISO 8601 as the
    /// API writes them, both inclusive), newest first: `limit` after skipping `offset`. One
    /// `Query` (`sk BETWEEN`, backwards, `Limit` = offset + limit, more pages only past 1 MB),
    /// strongly consistent: a grant or charge just made is in the page (an audit reads what the
    /// balance says), at twice the read units of an eventually consistent one.
    ///
    /// Errors: DynamoDB failures.
    pub async fn credit_history(
        &self,
        org_id: &str,
        from: &str,
        to: &str,
        offset: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let wanted = offset + limit;
        let mut transactions = Vec::with_capacity(wanted.min(1000));
        let mut read_units = 0.0;
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(org_pk(org_id)))
                .expression_attribute_values(":from", s(format!("CREDITTX#{from}")))
                // `~` sorts after every character of an id: the last one of `to` is included.
                .expression_attribute_values(":to", s(format!("CREDITTX#{to}#~")))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(i32::try_from(wanted - transactions.len()).unwrap_or(i32::MAX))
                .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(dynamo_error("Query"))?;
            read_units += page
                .consumed_capacity()
                .and_then(|c| c.capacity_units())
                .unwrap_or(0.0);
            for item in page.items() {
                let item: CreditTransactionItem =
                    serde_dynamo::from_item(item.clone()).map_err(shape_error)?;
                transactions.push(item.transaction);
            }
            start = page.last_evaluated_key;
            if transactions.len() >= wanted || start.as_ref().is_none_or(|key| key.is_empty()) {
                break;
            }
        }
        Ok(HistoryPage {
            transactions: transactions.into_iter().skip(offset).collect(),
            read_units,
        })
    }

    /// Every credit transaction of the org, read consistently, in key order (oldest first).
    ///
    /// Errors: DynamoDB failures; an item that is not a credit transaction.
    pub async fn credit_transactions(
        &self,
        org_id: &str,
    ) -> Result<Vec<CreditTransaction>, StoreError> {
        let mut transactions = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :tx)")
                .expression_attribute_values(":pk", s(org_pk(org_id)))
                .expression_attribute_values(":tx", s("CREDITTX#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(dynamo_error("Query"))?;
            for item in page.items() {
                let item: CreditTransactionItem =
                    serde_dynamo::from_item(item.clone()).map_err(shape_error)?;
                transactions.push(item.transaction);
            }
            start = page.last_evaluated_key;
            if start.as_ref().is_none_or(|key| key.is_empty()) {
                return Ok(transactions);
            }
        }
    }

    /// The signed amounts of the org's debits and refunds (a debit negative), in key order:
    /// with the grants, what the balance must equal.
    ///
    /// Errors: DynamoDB failures.
    pub async fn credit_amounts(&self, org_id: &str) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .credit_transactions(org_id)
            .await?
            .iter()
            .filter(|t| !t.is_grant())
            .map(CreditTransaction::signed_amount)
            .collect())
    }

    /// Checks the ledger's invariant (spec operations-api, "Credits"): the balance equals the
    /// sum of `credit_added` less the sum of `credit_consumed`, no balance is negative, each
    /// enrichment is charged at most once and refunded at most once, and a refund follows a
    /// charge of the same enrichment. Meant for quiet moments (tests, audits): a transaction
    /// committing between its two reads is seen on one side only.
    ///
    /// Errors: the invariant's first broken rule, as text, or a DynamoDB failure.
    pub async fn check_ledger(&self, org_id: &str) -> Result<LedgerCheck, String> {
        let transactions = self
            .credit_transactions(org_id)
            .await
            .map_err(|e| e.to_string())?;
        let balance = self
            .credit_balance(org_id)
            .await
            .map_err(|e| e.to_string())?;
        let sum: i64 = transactions
            .iter()
            .map(CreditTransaction::signed_amount)
            .sum();
        if balance != sum || balance < 0 {
            return Err(format!(
                "balance {balance} of {org_id}, but its transactions add up to {sum}"
            ));
        }
        let (mut charged, mut refunded) = (HashSet::new(), HashSet::new());
        for t in &transactions {
            let reference = t.reference_id;
            match (t.kind, t.source) {
                (CreditTransactionType::CreditConsumed, _) => {
                    let reference =
                        reference.ok_or(format!("debit {} without an enrichment", t.id))?;
                    if !charged.insert(reference) {
                        return Err(format!("enrichment {reference} charged twice"));
                    }
                }
                (CreditTransactionType::CreditAdded, Some(CreditSource::Refund)) => {
                    let reference =
                        reference.ok_or(format!("refund {} without an enrichment", t.id))?;
                    if !refunded.insert(reference) {
                        return Err(format!("enrichment {reference} refunded twice"));
                    }
                }
                _ => {}
            }
        }
        if let Some(stray) = refunded.difference(&charged).next() {
            return Err(format!("enrichment {stray} refunded but never charged"));
        }
        Ok(LedgerCheck {
            balance,
            granted: transactions
                .iter()
                .filter(|t| t.is_grant())
                .map(|t| t.amount)
                .sum(),
            enrichment_amounts: transactions
                .iter()
                .filter(|t| !t.is_grant())
                .map(CreditTransaction::signed_amount)
                .collect(),
        })
    }

    /// The org's credit balance; 0 when it never had credits.
    pub async fn credit_balance(&self, org_id: &str) -> Result<i64, StoreError> {
        let item = self
            .get_consistent(Self::key(org_pk(org_id), CREDITS_SK))
            .await?;
        balance_of(item.as_ref())
    }
}
