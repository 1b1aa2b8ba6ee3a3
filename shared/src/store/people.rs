//! The person items: created all or nothing, read, listed from the creation-order index, deleted
//! with their enrichments.

use super::*;

impl Store {
    /// The person `person_id` of the org, read consistently; `None` if absent.
    pub async fn get_person(
        &self,
        org_id: &str,
        person_id: Uuid,
    ) -> Result<Option<Person>, StoreError> {
        self.get_consistent(Self::key(org_pk(org_id), person_sk(person_id)))
            .await?
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
    /// A person without `createdAt` is given one (now, a millisecond apart in list order, as
    /// [`crate::people::creation_time`] does), so that the people list and a bulk selection
    /// find everyone.
    ///
    /// Errors: DynamoDB failures or an id that exists (nothing is left written, unless the
    /// deletion fails too: then its error says so).
    pub async fn create_people(&self, org_id: &str, people: &[Person]) -> Result<(), StoreError> {
        let started = chrono::Utc::now();
        let dated: Vec<Person>;
        let people = if people.iter().any(|p| p.created_at.is_none()) {
            dated = people
                .iter()
                .enumerate()
                .map(|(index, person)| {
                    let mut person = person.clone();
                    if person.created_at.is_none() {
                        let at = crate::people::creation_time(started, index);
                        person.updated_at.get_or_insert_with(|| at.clone());
                        person.created_at = Some(at);
                    }
                    person
                })
                .collect();
            &dated[..]
        } else {
            people
        };
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

    /// Deletes people just created (the undo of a failed [`Store::create_people`]).
    async fn delete_people(&self, org_id: &str, people: &[Person]) -> Result<(), StoreError> {
        let keys = people
            .iter()
            .map(|person| {
                HashMap::from([
                    ("pk".to_string(), s(org_pk(org_id))),
                    ("sk".to_string(), s(person_sk(person.id))),
                ])
            })
            .collect();
        self.batch_delete(keys).await.map(|_calls| ())
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

    /// The items of the transaction that deletes the person as it is now (see
    /// [`Store::delete_person`]); `None` when there is no such person.
    pub(super) async fn deletion(
        &self,
        org_id: &str,
        person_id: Uuid,
        now: &str,
    ) -> Result<Option<Vec<TransactWriteItem>>, StoreError> {
        if self.get_person(org_id, person_id).await?.is_none() {
            return Ok(None);
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
        let mut pending = Vec::new();
        for field in [Field::Emails, Field::Phones] {
            let Some(record) = self.get_enrichment(org_id, person_id, field).await? else {
                // None was there when read: the deletion holds only if none was created since
                // (a POST racing it), else it reads again.
                let none = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::enrichment_key(org_id, person_id, field)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_error)?;
                items.push(TransactWriteItem::builder().condition_check(none).build());
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
                pending.push(record);
            }
        }
        // Both fields pending: one balance update for both refunds.
        let refunds: Vec<(&Enrichment, i64)> = pending
            .iter()
            .map(|r| (&r.enrichment, r.credits_charged))
            .collect();
        items.extend(self.refunds_items(&refunds, now)?);
        Ok(Some(items))
    }

    /// Deletes the person `person_id` of the org and its enrichments in one
    /// `TransactWriteItems`; a `pending` enrichment gives its credits back in the same
    /// transaction (a `refund` credit transaction), so that its job, finding nothing, is
    /// dropped. Returns `false` when the person does not exist. The enrichments are read first
    /// and each deletion is conditioned on what was read, an absent one on staying absent; a
    /// race (a worker finishing one, a POST creating one: the POST's own transaction checks the
    /// person exists) makes it read and try again.
    pub async fn delete_person(
        &self,
        org_id: &str,
        person_id: Uuid,
        now: &str,
    ) -> Result<bool, StoreError> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let Some(items) = self.deletion(org_id, person_id, now).await? else {
                return Ok(false);
            };
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
}
