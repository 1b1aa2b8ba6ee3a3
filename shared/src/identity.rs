//! A person's identity as the product compares it: the one home of LinkedIn profile, company
//! domain and name normalization, used by the global cache's fingerprint, the provider adapters,
//! the provider simulator and the people import.

use crate::domain::Person;

/// `value` lower-cased, trimmed, with inner whitespace collapsed to one space (empty when
/// blank): how names and company names compare.
pub fn text_key(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The handle of a LinkedIn profile URL in any usual writing (`https://www.LinkedIn.com/in/Ada-L/`,
/// `linkedin.com/in/ada-l?utm=x`, `http://uk.linkedin.com/in/ada-l`), lower-cased: `ada-l`.
/// `None` for anything that is not `[http(s)://][sub.]linkedin.com/in/<handle>`.
pub fn linkedin_handle(url: &str) -> Option<String> {
    let url = url.trim().to_lowercase();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(&url);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = rest.split_once('/')?;
    if host != "linkedin.com" && !host.ends_with(".linkedin.com") {
        return None;
    }
    let handle = path.strip_prefix("in/")?.trim_end_matches('/');
    (!handle.is_empty() && !handle.contains(['/', ' '])).then(|| handle.to_string())
}

/// Whether `url` is a LinkedIn profile URL written in full: `http(s)://`, then what
/// [`linkedin_handle`] reads.
pub fn is_linkedin_profile_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && linkedin_handle(url).is_some()
}

/// The canonical writing of a LinkedIn profile: `linkedin.com/in/<handle>` (see
/// [`linkedin_handle`]).
pub fn linkedin_profile(url: &str) -> Option<String> {
    linkedin_handle(url).map(|handle| format!("linkedin.com/in/{handle}"))
}

/// A company domain as the providers want it (`stripe.com`): trimmed, lower-cased, without a
/// scheme, `www.`, port, path, query or trailing dot. `None` when nothing is left.
pub fn bare_domain(value: &str) -> Option<String> {
    let value = value.trim().to_lowercase();
    let value = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(&value);
    let host = value.split(['/', '?', '#', ':']).next().unwrap_or_default();
    let host = host
        .strip_prefix("www.")
        .unwrap_or(host)
        .trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_string())
}

/// Whether `value` is written as a bare host name (`example.com`, RFC 1123): two labels or
/// more, each 1 to 63 letters, digits or `-` that neither starts nor ends with `-`, a top-level
/// label that is not all digits (no IP address), 253 characters at most.
pub fn is_bare_domain(value: &str) -> bool {
    let labels: Vec<&str> = value.split('.').collect();
    value.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

/// The identity key of a LinkedIn profile URL: `li:linkedin.com/in/{handle}` (see
/// [`linkedin_handle`]); `None` for a URL that is no profile.
pub fn linkedin_key(url: &str) -> Option<String> {
    linkedin_profile(url).map(|profile| format!("li:{profile}"))
}

/// The identity key of a full name at a company domain: `nd:{full name}@{domain}`, the name as
/// [`text_key`] writes it and the domain as [`bare_domain`] does; `None` when either is blank.
pub fn name_domain_key(full_name: &str, domain: &str) -> Option<String> {
    let name = text_key(full_name);
    let domain = bare_domain(domain)?;
    (!name.is_empty()).then(|| format!("nd:{name}@{domain}"))
}

/// The key of an email address, as suppressions and the value index write it:
/// `em:{address}`, normalized as stored values are
/// ([`crate::providers::normalize::normalize_email`]); `None` for no valid address.
pub fn email_key(email: &str) -> Option<String> {
    crate::providers::normalize::normalize_email(email).map(|address| format!("em:{address}"))
}

/// What a provider's search of a person matched on, as far as the global cache is concerned
/// (see [`IdentityKeys::matched_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchBasis {
    /// The LinkedIn profile when the query had one (a profile lookup: PDL, Prospeo, FullEnrich),
    /// else the name and company domain.
    LinkedinFirst,
    /// The name and company domain only (an email finder: Hunter).
    NameAndDomain,
    /// Every identity the query carried (a provider whose matching is not known).
    AllGiven,
}

/// A person's identity keys for the global cache, normalized: the LinkedIn profile
/// (`li:linkedin.com/in/{handle}`) and the full name at the company domain
/// (`nd:{first} {last}@{domain}`), each when known.
///
/// The rule (README, "Global cache"): an entry records the keys its provider matched on
/// ([`IdentityKeys::matched_by`]) and is stored under the person's [`IdentityKeys::primary`]
/// key; it is served to a person only when that person has every one of those keys
/// ([`IdentityKeys::agrees_with`]). So a person imported with one person's LinkedIn URL and
/// another's name can at worst miss the cache: it never receives, nor leaves for others, data
/// found for an identity it does not fully share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityKeys {
    /// `li:linkedin.com/in/{handle}`.
    pub linkedin: Option<String>,
    /// `nd:{first} {last}@{domain}`, names as [`text_key`] writes them.
    pub name_domain: Option<String>,
}

impl IdentityKeys {
    /// The keys of `person`.
    pub fn of(person: &Person) -> Self {
        let linkedin = person.linkedin_url.as_deref().and_then(linkedin_key);
        let name =
            |value: &Option<String>| value.as_deref().map(text_key).filter(|k| !k.is_empty());
        let name_domain = (|| {
            let full_name = format!("{} {}", name(&person.first_name)?, name(&person.last_name)?);
            name_domain_key(&full_name, person.company_domain.as_deref()?)
        })();
        Self {
            linkedin,
            name_domain,
        }
    }

    /// The key the person's cache item and single-flight lease live under: the LinkedIn
    /// profile, else the name and domain; `None` when neither is known.
    pub fn primary(&self) -> Option<&str> {
        self.linkedin.as_deref().or(self.name_domain.as_deref())
    }

    /// Every key known, LinkedIn first.
    pub fn all(&self) -> Vec<String> {
        self.linkedin
            .iter()
            .chain(self.name_domain.iter())
            .cloned()
            .collect()
    }

    /// The keys a provider with `basis` matched on for this person: what a cache entry of its
    /// answer records.
    pub fn matched_by(&self, basis: MatchBasis) -> Vec<String> {
        match basis {
            MatchBasis::LinkedinFirst => self
                .linkedin
                .iter()
                .chain(self.name_domain.iter())
                .take(1)
                .cloned()
                .collect(),
            MatchBasis::NameAndDomain if self.name_domain.is_some() => {
                self.name_domain.iter().cloned().collect()
            }
            _ => self.all(),
        }
    }

    /// Whether an entry found with `matched_on` may be served to this person: it names at
    /// least one key, and the person has every one of them. An entry without keys (written
    /// before entries recorded them) is served to nobody.
    pub fn agrees_with(&self, matched_on: &[String]) -> bool {
        !matched_on.is_empty()
            && matched_on.iter().all(|key| {
                self.linkedin.as_ref() == Some(key) || self.name_domain.as_ref() == Some(key)
            })
    }
}

/// The key identifying one real person across orgs for the global cache: the LinkedIn profile
/// (`li:linkedin.com/in/{handle}`), else the full name and company domain
/// (`nd:{first} {last}@{domain}`); `None` when neither is known ([`IdentityKeys::primary`]).
pub fn fingerprint(person: &Person) -> Option<String> {
    IdentityKeys::of(person).primary().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(first: &str, last: &str, domain: &str, linkedin: &str) -> Person {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Person {
            first_name: some(first),
            last_name: some(last),
            company_domain: some(domain),
            linkedin_url: some(linkedin),
            ..Person::default()
        }
    }

    #[test]
    fn fingerprint_prefers_the_normalized_linkedin_profile() {
        let a = person(
            "Ada",
            "Lovelace",
            "a.test",
            "https://www.LinkedIn.com/in/ada-l/?utm=x",
        );
        let b = person("", "", "", "linkedin.com/in/ada-l");
        assert_eq!(fingerprint(&a).as_deref(), Some("li:linkedin.com/in/ada-l"));
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn fingerprint_falls_back_to_name_and_domain() {
        let a = person(" Ada ", "LOVELACE", "www.Analytical.test", "");
        assert_eq!(
            fingerprint(&a).as_deref(),
            Some("nd:ada lovelace@analytical.test")
        );
        assert_eq!(fingerprint(&person("Ada", "", "analytical.test", "")), None);
        assert_eq!(fingerprint(&person("Ada", "Lovelace", "", "")), None);
        // A URL that is no LinkedIn profile is no identity.
        let company_page = person(
            "Ada",
            "Lovelace",
            "a.test",
            "https://linkedin.com/company/x",
        );
        assert_eq!(
            fingerprint(&company_page).as_deref(),
            Some("nd:ada lovelace@a.test")
        );
    }

    #[test]
    fn an_entry_is_served_only_to_a_person_with_every_key_it_was_found_with() {
        let ada = IdentityKeys::of(&person("Ada", "Quill", "northwind.example", ""));
        let bruno = IdentityKeys::of(&person(
            "Bruno",
            "Okafor",
            "tidewater.test",
            "https://www.linkedin.com/in/bruno-okafor/",
        ));
        // Org B's import: Ada's name and domain, Bruno's LinkedIn.
        let mixed = IdentityKeys::of(&person(
            "Ada",
            "Quill",
            "northwind.example",
            "linkedin.com/in/bruno-okafor",
        ));
        assert_eq!(mixed.primary(), bruno.primary(), "stored under Bruno's key");
        // Hunter searched the mixed person by name and domain: found Ada's email.
        let by_hunter = mixed.matched_by(MatchBasis::NameAndDomain);
        assert_eq!(
            by_hunter,
            vec!["nd:ada quill@northwind.example".to_string()]
        );
        assert!(
            !bruno.agrees_with(&by_hunter),
            "the real Bruno is not served Ada's email"
        );
        assert!(ada.agrees_with(&by_hunter));
        // A profile lookup matched on the LinkedIn profile: served to that profile, whatever
        // the name's spelling.
        let by_profile = mixed.matched_by(MatchBasis::LinkedinFirst);
        assert_eq!(
            by_profile,
            vec!["li:linkedin.com/in/bruno-okafor".to_string()]
        );
        assert!(bruno.agrees_with(&by_profile));
        assert!(!ada.agrees_with(&by_profile));
        // Unknown matching: every key; an entry without keys: nobody.
        assert_eq!(mixed.matched_by(MatchBasis::AllGiven).len(), 2);
        assert!(!bruno.agrees_with(&mixed.matched_by(MatchBasis::AllGiven)));
        assert!(!ada.agrees_with(&[]));
    }

    #[test]
    fn linkedin_handles_in_any_writing() {
        for url in [
            "https://www.linkedin.com/in/ada-quill-nw/",
            "http://LinkedIn.com/in/Ada-Quill-NW",
            "linkedin.com/in/ada-quill-nw?trk=x",
            " www.linkedin.com/in/ada-quill-nw// ",
            "https://uk.linkedin.com/in/ada-quill-nw#about",
        ] {
            assert_eq!(
                linkedin_handle(url).as_deref(),
                Some("ada-quill-nw"),
                "{url}"
            );
        }
        for url in [
            "https://evil.test/in/ada",
            "https://notlinkedin.com/in/ada",
            "https://www.linkedin.com/company/acme",
            "https://www.linkedin.com/in/",
            "",
        ] {
            assert_eq!(linkedin_handle(url), None, "{url}");
        }
    }

    #[test]
    fn bare_domain_strips_scheme_www_and_path() {
        assert_eq!(
            bare_domain(" https://www.Stripe.com/about "),
            Some("stripe.com".into())
        );
        assert_eq!(bare_domain("acme.example."), Some("acme.example".into()));
        assert_eq!(
            bare_domain("http://acme.test:8080/x?y"),
            Some("acme.test".into())
        );
        assert_eq!(bare_domain("https://"), None);
        assert!(is_bare_domain("acme.test") && is_bare_domain("my-co.example.co.uk"));
        for bad in [
            "https://acme.test",
            "acme",
            "a..b.test",
            "-a.test",
            "1.2.3.4",
            "a_b.test",
            "a b.test",
        ] {
            assert!(!is_bare_domain(bad), "{bad}");
        }
    }
}
