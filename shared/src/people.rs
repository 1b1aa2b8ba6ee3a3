//! The people API: create (one or a batch), read, list and delete the persons an organization
//! enriches (spec operations-api, section "People"). The person object carries lance-style
//! `emails`/`phones` string arrays and `emailDetails`/`phoneDetails` with each value's
//! provenance.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{ContactPoint, Person, timestamp};
use crate::error::ApiError;
use crate::identity;
use crate::store::{PersonCursor, Store};

/// The most people one `POST /api/v1/entities/persons/batch` creates.
pub const MAX_BATCH: usize = 1000;

/// The largest page of `GET /api/v1/entities/persons` (`limit`), and its default.
pub const MAX_PAGE: usize = 100;
/// The page size when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;

/// The longest first or last name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 100;
/// The longest of any other string of a person, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// The message of an unknown person.
pub const PERSON_NOT_FOUND: &str = "Person not found";

/// The creation time of the `index`-th person of a list created at `started`: one millisecond
/// apart, so that the people list (oldest first) keeps the order a batch or an import gave.
pub fn creation_time(started: chrono::DateTime<Utc>, index: usize) -> String {
    timestamp(started + chrono::Duration::milliseconds(i64::try_from(index).unwrap_or(i64::MAX)))
}

/// A person's fields as a client or an import gives them, before validation; `None` or blank is
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonInput {
    /// `firstName`.
    pub first_name: Option<String>,
    /// `lastName`.
    pub last_name: Option<String>,
    /// `companyName`.
    pub company_name: Option<String>,
    /// `companyDomain`: a host name, or a pasted URL reduced to its host.
    pub company_domain: Option<String>,
    /// `linkedinUrl`: a `linkedin.com/in/…` profile URL.
    pub linkedin_url: Option<String>,
}

/// A value of a [`PersonInput`] that breaks the spec's rules: the API field name
/// (`firstName`...) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The API name of the field (`firstName`, `companyDomain`...).
    pub field: &'static str,
    /// What is wrong, for a person to read.
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

impl PersonInput {
    /// The person these fields describe, with a new id and `now` as its creation time, after the
    /// spec's validation: `firstName` and `lastName` 1–100 characters after trimming;
    /// `companyDomain` a host name (a pasted URL such as `https://www.northwind.example/` is
    /// reduced to `northwind.example`); `linkedinUrl` a `linkedin.com/in/…` profile URL; any
    /// string at most 1,000 characters.
    ///
    /// Errors: the first field that breaks a rule.
    pub fn validate(self, now: &str) -> Result<Person, FieldError> {
        let name = |field: &'static str, value: Option<String>| {
            let value = value
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| field_error(field, format!("{field} is required")))?;
            if value.chars().count() > MAX_NAME_CHARS {
                return Err(field_error(
                    field,
                    format!("{field} must be at most {MAX_NAME_CHARS} characters"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(field_error(
                    field,
                    format!("{field} must not hold control characters"),
                ));
            }
            Ok(value)
        };
        let text = |field: &'static str, value: Option<String>| {
            let value = value
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty());
            match value {
                Some(v) if v.chars().count() > MAX_TEXT_CHARS => Err(field_error(
                    field,
                    format!("{field} must be at most {MAX_TEXT_CHARS} characters"),
                )),
                other => Ok(other),
            }
        };
        let first_name = name("firstName", self.first_name)?;
        let last_name = name("lastName", self.last_name)?;
        let company_name = text("companyName", self.company_name)?;
        let company_domain = text("companyDomain", self.company_domain)?
            .map(|raw| {
                identity::bare_domain(&raw)
                    .filter(|domain| identity::is_bare_domain(domain))
                    .ok_or_else(|| {
                        field_error(
                            "companyDomain",
                            "companyDomain must be a domain name such as example.com",
                        )
                    })
            })
            .transpose()?;
        let linkedin_url = text("linkedinUrl", self.linkedin_url)?
            .map(|url| {
                identity::is_linkedin_profile_url(&url).then_some(url).ok_or_else(|| {
                    field_error(
                        "linkedinUrl",
                        "linkedinUrl must be a LinkedIn profile URL (https://www.linkedin.com/in/<handle>)",
                    )
                })
            })
            .transpose()?;
        Ok(Person {
            id: Uuid::new_v4(),
            created_at: Some(now.to_string()),
            updated_at: Some(now.to_string()),
            first_name: Some(first_name),
            last_name: Some(last_name),
            company_name,
            company_domain,
            linkedin_url,
            emails: Vec::new(),
            phones: Vec::new(),
        })
    }

    /// The fields of a JSON object (`{"firstName", "lastName", "companyName"?, "companyDomain"?,
    /// "linkedinUrl"?}`); other keys are ignored.
    ///
    /// Errors: `value` is no object, or a field is neither a string nor null.
    fn from_json(value: &Value) -> Result<Self, FieldError> {
        let object = value
            .as_object()
            .ok_or_else(|| field_error("body", "a person must be a JSON object"))?;
        let string = |field: &'static str| match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(field_error(field, format!("{field} must be a string"))),
        };
        Ok(Self {
            first_name: string("firstName")?,
            last_name: string("lastName")?,
            company_name: string("companyName")?,
            company_domain: string("companyDomain")?,
            linkedin_url: string("linkedinUrl")?,
        })
    }
}

/// One contact value's provenance in the person object (`emailDetails[]`, `phoneDetails[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactDetail {
    /// The email address, or the phone number in E.164.
    pub value: String,
    /// `work`/`personal` for an email, `mobile`/`landline`/`voip` for a phone; `null` when the
    /// provider did not say.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Email verification status as the provider gave it; `null` when it did not say. Not part
    /// of a phone's details.
    #[serde(default, skip_serializing_if = "is_phone_status")]
    pub status: Option<Option<String>>,
    /// The provider that found it.
    pub provider: String,
    /// When it was found.
    pub found_at: String,
    /// The provider's confidence that the value is the person's, 0 to 100 (Hunter's `score`;
    /// People Data Labs' `likelihood`, 1-10, times ten); `null` when the provider gives none
    /// (see [`ContactPoint::confidence`]).
    #[serde(default)]
    pub confidence: Option<u8>,
}

fn is_phone_status(status: &Option<Option<String>>) -> bool {
    status.is_none()
}

/// The person object of the API (spec operations-api, "People").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonView {
    /// The person's UUID.
    pub id: Uuid,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Employer's name.
    pub company_name: Option<String>,
    /// Employer's domain.
    pub company_domain: Option<String>,
    /// LinkedIn profile URL.
    pub linkedin_url: Option<String>,
    /// The emails found, as strings.
    pub emails: Vec<String>,
    /// The phones found, in E.164.
    pub phones: Vec<String>,
    /// Each email's provenance.
    pub email_details: Vec<ContactDetail>,
    /// Each phone's provenance.
    pub phone_details: Vec<ContactDetail>,
}

impl From<Person> for PersonView {
    fn from(person: Person) -> Self {
        let details = |contacts: &[ContactPoint], with_status: bool| -> Vec<ContactDetail> {
            contacts
                .iter()
                .map(|c| ContactDetail {
                    value: c.value.clone(),
                    kind: c.kind.clone(),
                    status: with_status.then(|| c.status.clone()),
                    provider: c.provider.clone(),
                    found_at: c.found_at.clone(),
                    confidence: c.confidence,
                })
                .collect()
        };
        let values = |contacts: &[ContactPoint]| contacts.iter().map(|c| c.value.clone()).collect();
        let created_at = person.created_at.clone().unwrap_or_default();
        PersonView {
            id: person.id,
            updated_at: person
                .updated_at
                .clone()
                .unwrap_or_else(|| created_at.clone()),
            created_at,
            emails: values(&person.emails),
            phones: values(&person.phones),
            email_details: details(&person.emails, true),
            phone_details: details(&person.phones, false),
            first_name: person.first_name,
            last_name: person.last_name,
            company_name: person.company_name,
            company_domain: person.company_domain,
            linkedin_url: person.linkedin_url,
        }
    }
}

/// A page of the people list: `{"persons": [...], "nextCursor": string or null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonPage {
    /// The people, oldest first.
    pub persons: Vec<PersonView>,
    /// The cursor of the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// An opaque list cursor: the creation time and id of the last person of a page, as
/// base64url JSON.
fn encode_cursor(cursor: &PersonCursor) -> String {
    let json = serde_json::json!({"c": cursor.created_at, "i": cursor.id});
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn decode_cursor(text: &str) -> Result<PersonCursor, ApiError> {
    let bad = || ApiError::invalid("cursor", "cursor is not one this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let created_at = value["c"]
        .as_str()
        .filter(|c| chrono::DateTime::parse_from_rfc3339(c).is_ok())
        .ok_or_else(bad)?;
    let id = value["i"]
        .as_str()
        .and_then(|i| Uuid::try_parse(i).ok())
        .ok_or_else(bad)?;
    Ok(PersonCursor {
        created_at: created_at.to_string(),
        id,
    })
}

/// The people use cases over the table. Build once per process.
pub struct People {
    store: Store,
}

impl People {
    /// The use cases over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// `POST /api/v1/entities/persons`: validates `body` and creates the person (`201`).
    ///
    /// Errors: 400 naming the field (`details.field`); 503/500 when the table fails.
    pub async fn create(
        &self,
        principal: &Principal,
        body: &Value,
    ) -> Result<PersonView, ApiError> {
        let person = PersonInput::from_json(body)
            .and_then(|input| input.validate(&timestamp(Utc::now())))
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
        self.store
            .create_people(&principal.org_id, std::slice::from_ref(&person))
            .await?;
        Ok(person.into())
    }

    /// `POST /api/v1/entities/persons/batch`: `{"persons": [...]}`, 1 to [`MAX_BATCH`], all or
    /// nothing; the people in input order (`201`).
    ///
    /// Errors: 400 with `details.field` (`persons[2].lastName`) and `details.index` for the
    /// first invalid entry, nothing created; 503/500 when the table fails (nothing is left
    /// created: the groups already written are deleted).
    pub async fn create_batch(
        &self,
        principal: &Principal,
        body: &Value,
    ) -> Result<Vec<PersonView>, ApiError> {
        let entries = body
            .get("persons")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::invalid("persons", "persons must be an array of people"))?;
        if entries.is_empty() || entries.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "persons",
                format!("persons must hold 1 to {MAX_BATCH} people"),
            ));
        }
        let started = Utc::now();
        let mut people = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let person = PersonInput::from_json(entry)
                .and_then(|input| input.validate(&creation_time(started, index)))
                .map_err(|e| ApiError::InvalidField {
                    field: if e.field == "body" {
                        format!("persons[{index}]")
                    } else {
                        format!("persons[{index}].{}", e.field)
                    },
                    message: e.message,
                    index: Some(index),
                })?;
            people.push(person);
        }
        self.store.create_people(&principal.org_id, &people).await?;
        Ok(people.into_iter().map(PersonView::from).collect())
    }

    /// `GET /api/v1/entities/persons/{personId}`.
    ///
    /// Errors: 404 `Person not found` (also another org's person).
    pub async fn get(
        &self,
        principal: &Principal,
        person_id: Uuid,
    ) -> Result<PersonView, ApiError> {
        self.store
            .get_person(&principal.org_id, person_id)
            .await?
            .map(PersonView::from)
            .ok_or_else(|| ApiError::NotFound(PERSON_NOT_FOUND.into()))
    }

    /// `GET /api/v1/entities/persons?limit=&cursor=`: the org's people oldest first, `limit`
    /// (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]) per page; one `Query` of the creation-order
    /// index per page.
    ///
    /// Errors: 400 for a `limit` out of range or a cursor this API did not return.
    pub async fn list(
        &self,
        principal: &Principal,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<PersonPage, ApiError> {
        let limit = crate::error::whole_number("limit", limit, DEFAULT_PAGE, 1..=MAX_PAGE)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let (people, next) = self
            .store
            .list_people(&principal.org_id, limit, after.as_ref())
            .await?;
        Ok(PersonPage {
            persons: people.into_iter().map(PersonView::from).collect(),
            next_cursor: next.as_ref().map(encode_cursor),
        })
    }

    /// `DELETE /api/v1/entities/persons/{personId}`: the person and its enrichments are gone;
    /// a `pending` enrichment is refunded in the same transaction, so its job finds nothing to
    /// run (spec: it ends "Person not found", refunded).
    ///
    /// Errors: 404 `Person not found`.
    pub async fn delete(&self, principal: &Principal, person_id: Uuid) -> Result<(), ApiError> {
        if self
            .store
            .delete_person(&principal.org_id, person_id, &timestamp(Utc::now()))
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::NotFound(PERSON_NOT_FOUND.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(first: &str, last: &str) -> PersonInput {
        PersonInput {
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            ..PersonInput::default()
        }
    }

    #[test]
    fn names_are_trimmed_and_required_within_their_length() {
        let person = input("  Ada ", "Quill")
            .validate("2024-01-15T10:30:00.000Z")
            .unwrap();
        assert_eq!(person.first_name.as_deref(), Some("Ada"));
        assert_eq!(
            person.created_at.as_deref(),
            Some("2024-01-15T10:30:00.000Z")
        );
        assert_eq!(
            input(" ", "Quill").validate("t").unwrap_err().field,
            "firstName"
        );
        assert_eq!(
            input("Ada", "").validate("t").unwrap_err().field,
            "lastName"
        );
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            input(&long, "Quill").validate("t").unwrap_err().field,
            "firstName"
        );
        assert!(
            input(&"é".repeat(MAX_NAME_CHARS), "Quill")
                .validate("t")
                .is_ok()
        );
    }

    #[test]
    fn a_pasted_url_is_reduced_to_its_domain_and_a_bad_one_refused() {
        let mut with_domain = input("Ada", "Quill");
        with_domain.company_domain = Some("https://www.Northwind.example/about".into());
        let person = with_domain.validate("t").unwrap();
        assert_eq!(person.company_domain.as_deref(), Some("northwind.example"));
        for bad in [
            "northwind",
            "not a domain",
            "ada@northwind.example",
            "a..b.example",
            "-bad-.example",
            "1.2.3.4",
            "foo_bar.example",
        ] {
            let mut with_bad = input("Ada", "Quill");
            with_bad.company_domain = Some(bad.into());
            assert_eq!(
                with_bad.validate("t").unwrap_err().field,
                "companyDomain",
                "{bad}"
            );
        }
    }

    #[test]
    fn only_linkedin_profiles_are_accepted() {
        let mut good = input("Ada", "Quill");
        good.linkedin_url = Some("https://www.linkedin.com/in/ada-quill".into());
        assert!(good.validate("t").is_ok());
        let mut company = input("Ada", "Quill");
        company.linkedin_url = Some("https://www.linkedin.com/company/northwind".into());
        assert_eq!(company.validate("t").unwrap_err().field, "linkedinUrl");
    }

    #[test]
    fn json_fields_must_be_strings() {
        let error = PersonInput::from_json(&serde_json::json!({"firstName": 7})).unwrap_err();
        assert_eq!(error.field, "firstName");
        assert!(PersonInput::from_json(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn the_person_object_has_lance_arrays_and_provenance() {
        let mut person = input("Ada", "Quill")
            .validate("2024-01-15T10:30:00.000Z")
            .unwrap();
        person.emails.push(ContactPoint {
            value: "ada@northwind.example".into(),
            kind: Some("work".into()),
            status: Some("valid".into()),
            provider: "hunter".into(),
            found_at: "2024-01-15T10:35:00.000Z".into(),
            confidence: Some(96),
        });
        person.phones.push(ContactPoint {
            value: "+14155550123".into(),
            kind: None,
            status: None,
            provider: "pdl".into(),
            found_at: "2024-01-15T10:35:00.000Z".into(),
            confidence: None,
        });
        let json = serde_json::to_value(PersonView::from(person)).unwrap();
        assert_eq!(json["emails"], serde_json::json!(["ada@northwind.example"]));
        assert_eq!(json["phones"], serde_json::json!(["+14155550123"]));
        assert_eq!(
            json["emailDetails"],
            serde_json::json!([{"value": "ada@northwind.example", "type": "work", "status": "valid",
                                "provider": "hunter", "foundAt": "2024-01-15T10:35:00.000Z",
                                "confidence": 96}])
        );
        assert_eq!(
            json["phoneDetails"],
            serde_json::json!([{"value": "+14155550123", "type": null, "provider": "pdl",
                                "foundAt": "2024-01-15T10:35:00.000Z", "confidence": null}])
        );
        assert_eq!(json["companyDomain"], Value::Null);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = PersonCursor {
            created_at: "2024-01-15T10:30:00.000Z".into(),
            id: Uuid::new_v4(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)).unwrap(), cursor);
        for bad in [
            "",
            "!!",
            "bm90IGpzb24",
            &URL_SAFE_NO_PAD.encode(r#"{"c":"x","i":"y"}"#),
        ] {
            let error = decode_cursor(bad).unwrap_err();
            assert_eq!(error.status_code(), 400, "{bad}");
        }
    }
}
