//! Opaque keyset-pagination cursors.
//!
//! A cursor names the last row of a page by `(created_at, id)`, the order every listing
//! uses; the next page starts strictly after it, so rows inserted meanwhile can neither
//! shift a page nor be visited twice. It also carries the filter it was issued for:
//! following a token with a different filter is an error, not a silently wrong page.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// Where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub(crate) created_at: NaiveDateTime,
    pub(crate) id: String,
    pub(crate) filter: String,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    /// Format version, so the encoding can change without misreading old tokens.
    v: u8,
    /// `created_at` in microseconds since the Unix epoch.
    t: i64,
    i: &'a str,
    f: &'a str,
}

const VERSION: u8 = 1;

impl PageCursor {
    /// The token handed to clients.
    pub fn encode(&self) -> String {
        let wire = Wire {
            v: VERSION,
            t: self.created_at.and_utc().timestamp_micros(),
            i: &self.id,
            f: &self.filter,
        };
        let json = serde_json::to_vec(&wire).expect("a cursor always serialises");
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a client's token, which must have been issued for `filter`.
    pub fn decode(token: &str, filter: &str) -> Result<Self, DbError> {
        let garbled = || DbError::InvalidCursor("it is not a token this server issued");
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| garbled())?;
        let wire: Wire<'_> = serde_json::from_slice(&bytes).map_err(|_| garbled())?;
        if wire.v != VERSION || uuid::Uuid::try_parse(wire.i).is_err() {
            return Err(garbled());
        }
        if wire.f != filter.trim() {
            return Err(DbError::InvalidCursor(
                "it was issued for a different filter",
            ));
        }
        let created_at = DateTime::from_timestamp_micros(wire.t)
            .ok_or_else(garbled)?
            .naive_utc();
        Ok(Self {
            created_at,
            id: wire.i.to_owned(),
            filter: wire.f.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(filter: &str) -> PageCursor {
        PageCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456)
                .unwrap()
                .naive_utc(),
            id: uuid::Uuid::now_v7().to_string(),
            filter: filter.into(),
        }
    }

    #[test]
    fn tokens_round_trip() {
        let c = cursor("ann");
        assert_eq!(PageCursor::decode(&c.encode(), "ann").unwrap(), c);
    }

    #[test]
    fn garbled_tokens_are_rejected() {
        for token in [
            "",
            "0",
            "not base64!",
            "e30",
            &URL_SAFE_NO_PAD.encode(b"{\"v\":9}"),
        ] {
            let err = PageCursor::decode(token, "").unwrap_err();
            assert!(matches!(err, DbError::InvalidCursor(_)), "{token}: {err}");
        }
    }

    #[test]
    fn tokens_are_bound_to_their_filter() {
        let err = PageCursor::decode(&cursor("ann").encode(), "bob").unwrap_err();
        assert!(err.to_string().contains("different filter"), "{err}");
    }
}
