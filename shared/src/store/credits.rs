//! The credits item and the credit transactions: grants, balance, the ledger's amounts, and the
//! items that debit or refund an enrichment inside another transaction.

use super::*;

impl Store {
    pub(super) fn credit_transaction(
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

    /// The two items that give `amount` credits of `enrichment` back: the balance increment and
    /// its `refund` credit transaction. None when nothing was charged.
    pub(super) fn refund_items(
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
