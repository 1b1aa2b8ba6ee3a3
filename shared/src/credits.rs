//! The credits routes (spec operations-api, "Credits"): the balance, and the history of the
//! ledger, newest first, by date range and page.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::auth::Principal;
use crate::domain::timestamp;
use crate::error::{ApiError, whole_number};
use crate::store::{CreditTransaction, Store};

/// The most transactions one history page returns (spec operations-api, Decision 3).
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Transactions per history page when `limit` is not given.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The deepest `offset` a history page takes: each page reads the transactions it skips, so a
/// deeper one should narrow its date range instead.
pub const MAX_HISTORY_OFFSET: usize = 100_000;

/// The earliest and latest times a history range can name.
const EARLIEST: &str = "0000-01-01T00:00:00.000Z";
const LATEST: &str = "9999-12-31T23:59:59.999Z";

/// `GET /api/v1/operations/credits/balance`: `{"balance", "organizationId"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    /// Credits available; 0 for an org that never had any.
    pub balance: i64,
    /// The token's organization.
    pub organization_id: String,
}

/// `GET /api/v1/operations/credits/history`: `{"transactions", "count"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Newest first.
    pub transactions: Vec<CreditTransaction>,
    /// How many were returned.
    pub count: usize,
}

/// The validated query of a history request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    /// The first time included (ISO 8601 as the API writes it).
    pub from: String,
    /// The last time included.
    pub to: String,
    /// 1 to [`MAX_HISTORY_LIMIT`].
    pub limit: usize,
    /// 0 to [`MAX_HISTORY_OFFSET`].
    pub offset: usize,
}

/// A date of the history's range: an ISO 8601 date (`2026-12-01`: from its first millisecond
/// for `startDate`, to its last for `endDate`) or date-time with an offset
/// (`2026-12-01T10:30:00Z`, `2026-12-01T11:30:00+01:00`), as the API writes times.
fn range_end(name: &str, text: &str, end: bool) -> Result<String, ApiError> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && (0..=9999).contains(&chrono::Datelike::year(&date))
        && text.len() == 10
    {
        let time = if end {
            date.and_hms_milli_opt(23, 59, 59, 999)
        } else {
            date.and_hms_milli_opt(0, 0, 0, 0)
        };
        if let Some(time) = time {
            return Ok(timestamp(time.and_utc()));
        }
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
        // Years 0 to 9999 only: the range is compared as text, as the API writes times.
        .filter(|at| (0..=9999).contains(&chrono::Datelike::year(at)))
        .map(timestamp)
        .ok_or_else(|| {
            ApiError::invalid(
                name,
                format!(
                    "{name} must be an ISO 8601 date (2026-12-01) or date-time \
                     (2026-12-01T10:30:00Z)"
                ),
            )
        })
}

/// The history query of `startDate`, `endDate`, `limit` and `offset` (each optional).
///
/// Errors: 400 naming the parameter: a date that is not ISO 8601, `startDate` after
/// `endDate`, `limit` outside 1 to 1000, `offset` outside 0 to 100000.
pub fn parse_history(
    start_date: Option<&str>,
    end_date: Option<&str>,
    limit: Option<&str>,
    offset: Option<&str>,
) -> Result<HistoryQuery, ApiError> {
    let from = start_date
        .map(|text| range_end("startDate", text, false))
        .transpose()?
        .unwrap_or_else(|| EARLIEST.to_string());
    let to = end_date
        .map(|text| range_end("endDate", text, true))
        .transpose()?
        .unwrap_or_else(|| LATEST.to_string());
    if from > to {
        return Err(ApiError::invalid(
            "startDate",
            "startDate must not be after endDate",
        ));
    }
    Ok(HistoryQuery {
        from,
        to,
        limit: whole_number("limit", limit, DEFAULT_HISTORY_LIMIT, 1..=MAX_HISTORY_LIMIT)?,
        offset: whole_number("offset", offset, 0, 0..=MAX_HISTORY_OFFSET)?,
    })
}

/// The credits use cases over the table. Build once per process.
pub struct Credits {
    store: Store,
}

impl Credits {
    /// The use cases over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The org's balance: one consistent `GetItem`.
    ///
    /// Errors: 503/500 when the table fails.
    pub async fn balance(&self, principal: &Principal) -> Result<Balance, ApiError> {
        Ok(Balance {
            balance: self.store.credit_balance(&principal.org_id).await?,
            organization_id: principal.org_id.clone(),
        })
    }

    /// A page of the org's ledger, newest first: one `Query` of the date range (see
    /// [`Store::credit_history`]).
    ///
    /// Errors: 503/500 when the table fails.
    pub async fn history(
        &self,
        principal: &Principal,
        query: &HistoryQuery,
    ) -> Result<History, ApiError> {
        let page = self
            .store
            .credit_history(
                &principal.org_id,
                &query.from,
                &query.to,
                query.offset,
                query.limit,
            )
            .await?;
        tracing::info!(
            read_units = page.read_units,
            count = page.transactions.len(),
            "credit history page"
        );
        Ok(History {
            count: page.transactions.len(),
            transactions: page.transactions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidField { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn a_history_query_has_inclusive_dates_and_bounded_paging() {
        let query = parse_history(Some("2026-12-01"), Some("2026-12-02"), None, None).unwrap();
        assert_eq!(
            query,
            HistoryQuery {
                from: "2026-12-01T00:00:00.000Z".into(),
                to: "2026-12-02T23:59:59.999Z".into(),
                limit: 100,
                offset: 0,
            }
        );
        let query = parse_history(
            Some("2026-12-01T11:30:00+01:00"),
            None,
            Some("1000"),
            Some("5"),
        )
        .unwrap();
        assert_eq!(query.from, "2026-12-01T10:30:00.000Z");
        assert_eq!(query.to, LATEST);
        assert_eq!((query.limit, query.offset), (1000, 5));
        let bad = |s: Option<&str>, e: Option<&str>, l: Option<&str>, o: Option<&str>| {
            field_of(parse_history(s, e, l, o).unwrap_err())
        };
        assert_eq!(bad(Some("yesterday"), None, None, None), "startDate");
        assert_eq!(bad(None, Some("2026-13-01"), None, None), "endDate");
        assert_eq!(
            bad(Some("2026-12-02"), Some("2026-12-01"), None, None),
            "startDate"
        );
        assert_eq!(bad(None, None, Some("0"), None), "limit");
        assert_eq!(bad(None, None, Some("1001"), None), "limit");
        assert_eq!(bad(None, None, Some("ten"), None), "limit");
        assert_eq!(bad(None, None, None, Some("-1")), "offset");
        // Years past 9999 (or written with a sign), and dates not written in full.
        assert_eq!(bad(Some("+12026-01-01"), None, None, None), "startDate");
        assert_eq!(
            bad(None, Some("+12026-01-01T00:00:00Z"), None, None),
            "endDate"
        );
        assert_eq!(bad(Some("2026-2-3"), None, None, None), "startDate");
        // The same day as start and end is that whole day.
        assert!(parse_history(Some("2026-12-01"), Some("2026-12-01"), None, None).is_ok());
    }
}
