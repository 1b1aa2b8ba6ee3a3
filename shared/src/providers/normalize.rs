//! Turns what providers return into stored [`ContactPoint`]s (design, "Rules that are easy to get
//! wrong": emails lower-cased and syntax-checked, phones in E.164, duplicates merged, the provider
//! that found each value recorded).
//!
//! Phones: a number is kept only when `phonenumber` (Google's libphonenumber metadata) considers
//! it **valid** for its region, not merely parseable. `+1 (555) 010-0199` parses, but the area
//! code 555 is not assigned, so it is dropped: a number nobody can dial is worse than none, since
//! it would turn the enrichment into `dataFound: true` for nothing. The same 555-01xx line in a
//! real area code (`+1 (415) 555-0199`) is valid and kept.

use email_address::{EmailAddress, Options};
use phonenumber::Mode;
use phonenumber::country::Id;

use crate::domain::{ContactPoint, Field};
use crate::providers::RawContact;

/// Normalizes a provider's raw values for `field` into contact points.
///
/// - `provider`: the provider's short name, recorded on each contact (`hunter`, `pdl`).
/// - `found_at`: the time to record, as [`crate::domain::timestamp`] formats it.
/// - `default_region`: the region of phone numbers written without an international prefix
///   (configuration `PHONE_DEFAULT_REGION`).
///
/// Values that fail [`normalize_email`] / [`normalize_phone`] are dropped, and so are emails
/// whose provider marks them invalid ([`email_status`]) or not to be contacted
/// ([`forbids_contact`]): neither stored nor counted as found. Duplicates (equal after
/// normalization) are merged: the first occurrence, with its `kind`, `status` and
/// `confidence`, wins. The order of `raw` is kept otherwise. An empty result means the provider
/// found nothing usable.
pub fn normalize(
    field: Field,
    provider: &str,
    raw: &[RawContact],
    found_at: &str,
    default_region: Id,
) -> Vec<ContactPoint> {
    let mut contacts: Vec<ContactPoint> = Vec::with_capacity(raw.len());
    for contact in raw {
        let value = match field {
            Field::Emails => normalize_email(&contact.value),
            Field::Phones => normalize_phone(&contact.value, default_region),
        };
        let Some(value) = value else {
            tracing::debug!(provider, field = %field, "dropped a value that does not normalize");
            continue;
        };
        if contacts.iter().any(|c| c.value == value) {
            continue;
        }
        let (kind, status) = match field {
            Field::Emails => {
                let status = email_status(contact.status.as_deref());
                if status == "invalid" {
                    // The provider itself says it bounces: not stored, not found.
                    tracing::debug!(provider, "dropped an email its provider marks invalid");
                    continue;
                }
                if forbids_contact(contact.status.as_deref()) {
                    // The person asked not to be contacted: storing it is the compliance
                    // problem, whatever its deliverability.
                    tracing::debug!(
                        provider,
                        "dropped an email its provider marks do-not-contact"
                    );
                    continue;
                }
                (
                    Some(email_type(contact.kind.as_deref()).to_string()),
                    Some(status.to_string()),
                )
            }
            Field::Phones => (
                phone_type(contact.kind.as_deref(), &value).map(str::to_string),
                None,
            ),
        };
        contacts.push(ContactPoint {
            value,
            kind,
            status,
            provider: provider.to_string(),
            found_at: found_at.to_string(),
            confidence: contact.confidence.map(|c| c.min(100)),
        });
    }
    contacts
}

/// An email address as stored: trimmed, without a `mailto:` prefix or `<...>` brackets,
/// lower-cased, and syntactically valid (RFC 5322 address syntax as the `email_address` crate
/// checks it, with a dotted domain: no `user@localhost`, no IP literal, no display name).
/// `None` when it is not a usable address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let mut value = raw.trim();
    if let Some(inner) = value.strip_prefix('<').and_then(|v| v.strip_suffix('>')) {
        value = inner.trim();
    }
    if let Some(rest) = strip_prefix_ignore_case(value, "mailto:") {
        value = rest.trim();
    }
    let value = value.to_lowercase();
    let options = Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    EmailAddress::parse_with_options(&value, options).ok()?;
    Some(value)
}

/// A phone number as stored: E.164 (`+442079460958`), or `None` when it does not parse or is not
/// a valid number (see the module docs). Extensions are not part of E.164 and are dropped.
///
/// Accepted writings: international with `+` (`+1 (415) 555-0132`, `+44 (0)20 7946 0958`, the
/// `(0)` trunk prefix ignored), `tel:` URIs, the ITU `00` international prefix
/// (`00 44 20 7946 0958`, whatever the default region), the default region's own international
/// prefix (`011` for the US), and national numbers of the default region (`(415) 555-0132`).
pub fn normalize_phone(raw: &str, default_region: Id) -> Option<String> {
    let mut value = raw.trim();
    if let Some(rest) = strip_prefix_ignore_case(value, "tel:") {
        value = rest.trim();
    }
    let international = international_form(value, default_region);
    // A number with its own country code is parsed without a region: phonenumber 0.3.10 applies
    // the given region's national prefix to foreign numbers (with region US, `+44 161 496 0123`
    // loses the `1` of its area code and `+33 1 23 45 67 89` its leading `1`).
    let parsed = match &international {
        Some(number) => phonenumber::parse(None, number.replace("(0)", "")),
        None => phonenumber::parse(Some(default_region), value),
    }
    .ok()?;
    if !parsed.is_valid() {
        return None;
    }
    Some(parsed.format().mode(Mode::E164).to_string())
}

/// A provider's phone number with the region it gives for it (FullEnrich's `region`, Prospeo's
/// `mobile_country_code`: ISO 3166 alpha-2 codes such as `US`, `GB`, any case): the number in
/// E.164 when it is written nationally and [`normalize_phone`] reads it as valid in that
/// region, so that a national number (`020 7946 0958` with `GB`) is not read in the worker's
/// `PHONE_DEFAULT_REGION`. Otherwise (written internationally, which carries its own country
/// code; no region; a code that is not a region; a number not valid there) `raw` unchanged,
/// for [`normalize`] to read with the default region as before.
pub fn with_region_hint(raw: &str, region: Option<&str>) -> String {
    let region = region
        .map(str::trim)
        .filter(|code| code.len() == 2)
        .and_then(|code| code.to_uppercase().parse::<Id>().ok());
    let value = raw.trim();
    let value = strip_prefix_ignore_case(value, "tel:").map_or(value, str::trim);
    region
        .filter(|region| international_form(value, *region).is_none())
        .and_then(|region| normalize_phone(raw, region))
        .unwrap_or_else(|| raw.to_string())
}

/// The ISO 3166 region (`US`, `GB`) of a number written as [`normalize_phone`] accepts it
/// (national numbers read in `default_region`), from libphonenumber's metadata: what FullEnrich
/// sends as a phone's `region` and Prospeo as `mobile_country_code`. `None` when the number is
/// not valid or its country code spans regions without telling which.
pub fn phone_region(raw: &str, default_region: Id) -> Option<String> {
    let e164 = normalize_phone(raw, default_region)?;
    let parsed = phonenumber::parse(None, e164).ok()?;
    parsed.country().id().map(|id| id.as_ref().to_string())
}

/// `value` rewritten with a leading `+` when it is written internationally (`+`, `00`, or the
/// region's international prefix such as `011`); `None` for a national number.
fn international_form(value: &str, region: Id) -> Option<String> {
    if value.starts_with('+') {
        return Some(value.to_string());
    }
    let digits: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
        .filter(char::is_ascii_digit)
        .collect();
    let prefix_len = if digits.starts_with("00") {
        2
    } else {
        let meta = phonenumber::metadata::DATABASE.by_id(region.as_ref())?;
        let found = meta.international_prefix()?.find(&digits)?;
        if found.start() != 0 || found.end() == 0 {
            return None;
        }
        found.end()
    };
    // Skip that many digits of the original text, keeping the rest as written.
    let mut skipped = 0;
    let rest: String = value
        .chars()
        .skip_while(|c| {
            if skipped < prefix_len {
                if c.is_ascii_digit() {
                    skipped += 1;
                }
                true
            } else {
                false
            }
        })
        .collect();
    Some(format!("+{}", rest.trim_start()))
}

/// `value` without an ASCII `prefix`, compared case-insensitively.
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// A provider's email verification result in the one vocabulary the API shows (`valid`,
/// `accept_all`, `unknown`, `invalid`), from the values each provider documents:
///
/// | provider | field | `valid` | `accept_all` | `unknown` | `invalid` |
/// |---|---|---|---|---|---|
/// | Hunter | `verification.status` | `valid` | `accept_all` | `unknown`, `webmail` | `invalid`, `disposable` |
/// | Prospeo | `email.status` | `VERIFIED` | | `UNAVAILABLE` | |
/// | FullEnrich | email `status` | `DELIVERABLE` | `HIGH_PROBABILITY`, `CATCH_ALL` | | `INVALID`, `INVALID_DOMAIN` |
/// | Dropcontact | `qualification` (`local@domain`) | `nominative@pro`, `nominative@perso` | `catch_all@pro` (also written `catch-all@pro`), `non_confirm@pro` | `no_validated@pro` | `invalid@…`, `…@invalid`, `invalid domain`, `random@…` |
///
/// Case, `-` and spaces do not matter (`catch-all` is `catch_all`). None given, or one this
/// does not know: `unknown`. An `invalid` address is not stored ([`normalize`]); a
/// do-not-contact one neither, whatever its status ([`forbids_contact`]).
pub fn email_status(raw: Option<&str>) -> &'static str {
    let label = label_key(raw);
    let has = |word: &str| label.contains(word);
    let local = label
        .split_once('@')
        .map_or(label.as_str(), |(local, _)| local);
    if has("invalid")
        || has("undeliverable")
        || has("disposable")
        || has("bounce")
        || local == "random"
    {
        "invalid"
    } else if has("unverified")
        || has("no_validated")
        || has("not_validated")
        || has("unknown")
        || has("webmail")
        || has("unavailable")
    {
        "unknown"
    } else if has("accept") || has("catch") || has("non_confirm") || has("probab") || has("risky") {
        "accept_all"
    } else if has("valid") || has("verified") || has("deliverable") || has("nominative") {
        "valid"
    } else {
        "unknown"
    }
}

/// Whether a provider's quality label says the person must not be contacted at that address
/// (Dropcontact's `Do_Not_Contact`; also written `do-not-contact`, `do not contact`, any
/// case). Such an address is neither stored nor counted as found ([`normalize`]), whatever
/// its deliverability: keeping it is a compliance problem, not a quality one.
pub fn forbids_contact(raw: Option<&str>) -> bool {
    label_key(raw).contains("do_not_contact")
}

/// Whether an email with the provider's quality label `raw` may be stored and counted as found:
/// not [`email_status`] `invalid`, not [`forbids_contact`]. The adapters drop the others before
/// answering, so that an answer with nothing else is the provider's no match.
pub fn is_storable_email(raw: Option<&str>) -> bool {
    email_status(raw) != "invalid" && !forbids_contact(raw)
}

/// A quality label compared by its words: trimmed, lower-cased, `-` and spaces as `_`.
fn label_key(raw: Option<&str>) -> String {
    raw.unwrap_or_default()
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c == '-' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A provider's email kind as the API shows it: `personal` for a personal address, else
/// `work` (`work`, `professional`, `current_professional`, none given).
pub fn email_type(raw: Option<&str>) -> &'static str {
    match raw.map(|l| l.trim().to_lowercase()) {
        Some(label) if label.contains("personal") => "personal",
        _ => "work",
    }
}

/// A phone's type as the API shows it: `mobile`, `landline` or `voip` as the provider gives
/// it, else from `phonenumber`'s number type for the E.164 `value` (libphonenumber metadata);
/// `None` when neither says (a number that may be either).
pub fn phone_type(raw: Option<&str>, value: &str) -> Option<&'static str> {
    let label = raw.map(|l| l.trim().to_lowercase()).unwrap_or_default();
    if label.contains("mobile") || label.contains("cell") {
        return Some("mobile");
    }
    if label.contains("landline") || label.contains("fixed") {
        return Some("landline");
    }
    if label.contains("voip") {
        return Some("voip");
    }
    let number = phonenumber::parse(None, value).ok()?;
    match number.number_type(&phonenumber::metadata::DATABASE) {
        phonenumber::Type::Mobile => Some("mobile"),
        phonenumber::Type::FixedLine => Some("landline"),
        phonenumber::Type::Voip => Some("voip"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2024-01-15T10:30:00.000Z";

    fn raw(value: &str) -> RawContact {
        RawContact {
            value: value.into(),
            ..RawContact::default()
        }
    }

    fn values(contacts: &[ContactPoint]) -> Vec<&str> {
        contacts.iter().map(|c| c.value.as_str()).collect()
    }

    #[test]
    fn provider_statuses_map_to_one_vocabulary_and_invalid_is_not_stored() {
        for (given, expected) in [
            (Some("valid"), "valid"),
            (Some("VERIFIED"), "valid"),
            (Some("DELIVERABLE"), "valid"),
            (Some("nominative@pro"), "valid"),
            (Some("accept_all"), "accept_all"),
            (Some("CATCH_ALL"), "accept_all"),
            (Some("catch_all@pro"), "accept_all"),
            (Some("HIGH_PROBABILITY"), "accept_all"),
            (Some("webmail"), "unknown"),
            (Some("UNVERIFIED"), "unknown"),
            (None, "unknown"),
            (Some("invalid"), "invalid"),
            (Some("UNDELIVERABLE"), "invalid"),
            (Some("disposable"), "invalid"),
            // Dropcontact, as documented and as the issue quotes it.
            (Some("catch-all@pro"), "accept_all"),
            (Some("Catch-All@Pro"), "accept_all"),
            (Some("non_confirm@pro"), "accept_all"),
            (Some("nominative@perso"), "valid"),
            (Some("no_validated@pro"), "unknown"),
            (Some("invalid domain"), "invalid"),
            (Some("nominative@invalid"), "invalid"),
            (Some("random@pro"), "invalid"),
            // FullEnrich and Prospeo.
            (Some("INVALID_DOMAIN"), "invalid"),
            (Some("UNAVAILABLE"), "unknown"),
        ] {
            assert_eq!(email_status(given), expected, "{given:?}");
        }
        let found = normalize(
            Field::Emails,
            "hunter",
            &[
                RawContact {
                    value: "bounces@acme.test".into(),
                    kind: Some("work".into()),
                    status: Some("invalid".into()),
                    confidence: Some(90),
                },
                RawContact {
                    value: "home@mail.example".into(),
                    kind: Some("personal".into()),
                    status: None,
                    confidence: None,
                },
            ],
            AT,
            Id::US,
        );
        assert_eq!(values(&found), vec!["home@mail.example"]);
        assert_eq!(found[0].kind.as_deref(), Some("personal"));
        assert_eq!(found[0].status.as_deref(), Some("unknown"));
    }

    #[test]
    fn phone_types_come_from_the_provider_or_the_numbering_plan() {
        // A UK mobile (07911) and a London landline (020), without a provider's word.
        assert_eq!(phone_type(None, "+447911123456"), Some("mobile"));
        assert_eq!(phone_type(None, "+442079460958"), Some("landline"));
        assert_eq!(phone_type(Some("MOBILE"), "+442079460958"), Some("mobile"));
        assert_eq!(phone_type(Some("voip"), "+14155550132"), Some("voip"));
        // A US number may be either: no type.
        assert_eq!(phone_type(None, "+14155550132"), None);
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalize_email("John.DOE@Example.COM "),
            Some("john.doe@example.com".into())
        );
        assert_eq!(
            normalize_email("\tMAILTO:Ana.Ruiz@Acme.Example\n"),
            Some("ana.ruiz@acme.example".into())
        );
        assert_eq!(
            normalize_email("<ops@globex.test>"),
            Some("ops@globex.test".into())
        );
        assert_eq!(
            normalize_email("first+tag@sub.mail.example.org"),
            Some("first+tag@sub.mail.example.org".into())
        );
    }

    #[test]
    fn invalid_emails_are_dropped() {
        for bad in [
            "",
            "   ",
            "john.doe",
            "john@@example.com",
            "john doe@example.com",
            "john@localhost",
            "john@[127.0.0.1]",
            "John Doe <john@example.com>",
            "@example.com",
            "john@",
            "true",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?} should be dropped");
        }
    }

    #[test]
    fn international_phones_become_e164() {
        assert_eq!(
            normalize_phone("+1 (415) 555-0132", Id::US),
            Some("+14155550132".into())
        );
        assert_eq!(
            normalize_phone(" +44 20 7946 0958 ", Id::US),
            Some("+442079460958".into())
        );
        assert_eq!(
            normalize_phone("+44 (0)20 7946 0958", Id::US),
            Some("+442079460958".into())
        );
        assert_eq!(
            normalize_phone("tel:+1-212-555-0100", Id::US),
            Some("+12125550100".into())
        );
    }

    #[test]
    fn the_00_international_prefix_is_understood_in_any_region() {
        assert_eq!(
            normalize_phone("00 44 20 7946 0958", Id::US),
            Some("+442079460958".into())
        );
        assert_eq!(
            normalize_phone("0044-20-7946-0958", Id::GB),
            Some("+442079460958".into())
        );
    }

    #[test]
    fn the_regions_own_international_prefix_is_understood() {
        assert_eq!(
            normalize_phone("011 44 20 7946 0958", Id::US),
            Some("+442079460958".into())
        );
    }

    #[test]
    fn foreign_numbers_keep_their_area_code_whatever_the_default_region() {
        // phonenumber alone, with region US, turns this into +44614960123 (see normalize_phone).
        assert_eq!(
            normalize_phone("+44 161 496 0123", Id::US),
            Some("+441614960123".into())
        );
        assert_eq!(
            normalize_phone("011 44 161 496 0123", Id::US),
            Some("+441614960123".into())
        );
    }

    #[test]
    fn national_numbers_use_the_default_region() {
        assert_eq!(
            normalize_phone("(415) 555-0132", Id::US),
            Some("+14155550132".into())
        );
        assert_eq!(
            normalize_phone("415.555.0132", Id::US),
            Some("+14155550132".into())
        );
        assert_eq!(
            normalize_phone("1-212-555-0100", Id::US),
            Some("+12125550100".into())
        );
        assert_eq!(
            normalize_phone("020 7946 0958", Id::GB),
            Some("+442079460958".into())
        );
        // The same national digits mean nothing valid in the US.
        assert_eq!(normalize_phone("020 7946 0958", Id::US), None);
    }

    #[test]
    fn numbers_must_be_valid_not_just_parseable() {
        // Parses (to +15550100199), but area code 555 is not assigned: dropped.
        assert!(phonenumber::parse(Some(Id::US), "+1 (555) 010-0199").is_ok());
        assert_eq!(normalize_phone("+1 (555) 010-0199", Id::US), None);
        // The fictional 555-01xx line in a real area code is valid.
        assert_eq!(
            normalize_phone("+1 (415) 555-0199", Id::US),
            Some("+14155550199".into())
        );
        // Ofcom's drama range 07700 900xxx is not a valid UK mobile number.
        assert_eq!(normalize_phone("+44 7700 900123", Id::US), None);
    }

    #[test]
    fn garbage_phones_are_dropped() {
        for bad in [
            "",
            "n/a",
            "12",
            "true",
            "+",
            "00",
            "call me",
            "+999 1234 5678",
        ] {
            assert_eq!(
                normalize_phone(bad, Id::US),
                None,
                "{bad:?} should be dropped"
            );
        }
    }

    #[test]
    fn extensions_are_dropped_from_e164() {
        assert_eq!(
            normalize_phone("+1 212 555 0100 ext. 12", Id::US),
            Some("+12125550100".into())
        );
    }

    #[test]
    fn duplicates_merge_and_the_first_record_wins() {
        let found = [
            RawContact {
                value: "John.DOE@Example.COM ".into(),
                kind: Some("Work".into()),
                status: Some("valid".into()),
                confidence: Some(80),
            },
            raw("not an email"),
            RawContact {
                value: "john.doe@example.com".into(),
                kind: Some("personal".into()),
                status: None,
                confidence: Some(30),
            },
            raw("jd@personal.example"),
        ];
        let contacts = normalize(Field::Emails, "pdl", &found, AT, Id::US);
        assert_eq!(
            contacts,
            vec![
                ContactPoint {
                    value: "john.doe@example.com".into(),
                    kind: Some("work".into()),
                    status: Some("valid".into()),
                    provider: "pdl".into(),
                    found_at: AT.into(),
                    confidence: Some(80),
                },
                // No kind or status given: a work address of unknown deliverability.
                ContactPoint {
                    value: "jd@personal.example".into(),
                    kind: Some("work".into()),
                    status: Some("unknown".into()),
                    provider: "pdl".into(),
                    found_at: AT.into(),
                    confidence: None,
                },
            ]
        );
    }

    #[test]
    fn do_not_contact_addresses_are_not_stored_whatever_their_status() {
        for label in ["Do_Not_Contact", "do-not-contact", "DO NOT CONTACT"] {
            assert!(forbids_contact(Some(label)), "{label}");
            assert!(!is_storable_email(Some(label)), "{label}");
        }
        assert!(!forbids_contact(Some("nominative@pro")));
        assert!(!forbids_contact(None));
        assert!(is_storable_email(Some("catch-all@pro")));
        assert!(!is_storable_email(Some("invalid domain")));
        let found = normalize(
            Field::Emails,
            "dropcontact",
            &[
                RawContact {
                    value: "ada@northwind.example".into(),
                    status: Some("Do_Not_Contact".into()),
                    ..RawContact::default()
                },
                RawContact {
                    value: "quill@northwind.example".into(),
                    status: Some("invalid domain".into()),
                    ..RawContact::default()
                },
            ],
            AT,
            Id::US,
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn the_confidence_is_kept_and_at_most_100() {
        let found = normalize(
            Field::Phones,
            "pdl",
            &[
                RawContact {
                    value: "+1 (415) 555-0132".into(),
                    confidence: Some(70),
                    ..RawContact::default()
                },
                RawContact {
                    value: "+44 20 7946 0958".into(),
                    confidence: Some(250),
                    ..RawContact::default()
                },
            ],
            AT,
            Id::US,
        );
        assert_eq!(
            found.iter().map(|c| c.confidence).collect::<Vec<_>>(),
            vec![Some(70), Some(100)]
        );
    }

    #[test]
    fn the_providers_region_reads_a_national_number() {
        assert_eq!(
            with_region_hint("020 7946 0958", Some("GB")),
            "+442079460958"
        );
        assert_eq!(
            with_region_hint("020 7946 0958", Some(" gb ")),
            "+442079460958"
        );
        // Without a region, or with one that is not a region, the number is left for the
        // default region.
        assert_eq!(with_region_hint("020 7946 0958", None), "020 7946 0958");
        assert_eq!(
            with_region_hint("020 7946 0958", Some("XX")),
            "020 7946 0958"
        );
        assert_eq!(
            with_region_hint("020 7946 0958", Some("United Kingdom")),
            "020 7946 0958"
        );
        // Not valid in the region given: as written.
        assert_eq!(
            with_region_hint("(415) 555-0132", Some("GB")),
            "(415) 555-0132"
        );
        assert_eq!(
            phone_region("+44 20 7946 0958", Id::US).as_deref(),
            Some("GB")
        );
        assert_eq!(
            phone_region("(415) 555-0132", Id::US).as_deref(),
            Some("US")
        );
        assert_eq!(phone_region("n/a", Id::US), None);
        // An international writing carries its own country code: left as written.
        assert_eq!(
            with_region_hint("+1 415 555 0132", Some("GB")),
            "+1 415 555 0132"
        );
        assert_eq!(
            with_region_hint("00 1 415 555 0132", Some("GB")),
            "00 1 415 555 0132"
        );
    }

    #[test]
    fn confidences_are_on_a_0_to_100_scale() {
        use crate::providers::{confidence_of_likelihood, confidence_of_score};
        assert_eq!(confidence_of_score(Some(97.0)), Some(97));
        assert_eq!(confidence_of_score(Some(-3.0)), Some(0));
        assert_eq!(confidence_of_score(Some(f64::NAN)), None);
        assert_eq!(confidence_of_score(None), None);
        assert_eq!(confidence_of_likelihood(Some(6.0)), Some(60));
        assert_eq!(confidence_of_likelihood(Some(10.0)), Some(100));
        assert_eq!(confidence_of_likelihood(Some(12.0)), Some(100));
    }

    #[test]
    fn phones_in_different_writings_of_one_number_merge() {
        let found = [
            raw("+1 (415) 555-0132"),
            raw("(415) 555-0132"),
            raw("+1 (555) 010-0199"),
            raw("00 44 20 7946 0958"),
            raw("+44 20 7946 0958"),
        ];
        let contacts = normalize(Field::Phones, "pdl", &found, AT, Id::US);
        assert_eq!(values(&contacts), vec!["+14155550132", "+442079460958"]);
        assert!(
            contacts
                .iter()
                .all(|c| c.provider == "pdl" && c.found_at == AT)
        );
    }

    #[test]
    fn nothing_usable_gives_an_empty_list() {
        let found = [raw("n/a"), raw("")];
        assert!(normalize(Field::Phones, "pdl", &found, AT, Id::US).is_empty());
        assert!(normalize(Field::Emails, "hunter", &found, AT, Id::US).is_empty());
    }
}
