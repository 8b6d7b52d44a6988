//! Search filters: what `ListUsers`, `StreamUsers` and GraphQL's `users(filter)` match.

use super::ValidationError;

/// A case-insensitive substring of a user's name or email; empty matches everyone.
/// Trimmed, at most [`SearchFilter::MAX_LEN`] characters (a name or an address is never
/// longer, so a longer filter can match nothing) and free of control characters: a filter
/// is refused at the edge as the client's mistake instead of reaching the database, which
/// would fail on it (SQLite refuses LIKE patterns over 50,000 bytes, PostgreSQL any NUL)
/// and make a bad request look like a database failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter(String);

impl SearchFilter {
    /// Longest accepted filter, in characters (the longest email address).
    pub const MAX_LEN: usize = 254;

    /// Parses a filter from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let filter = raw.trim();
        if filter.chars().count() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "filter",
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if filter.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "filter",
                "must not contain control characters",
            ));
        }
        Ok(Self(filter.to_owned()))
    }

    /// The filter as text (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(SearchFilter::parse("  Ann ").unwrap().as_str(), "Ann");
        assert_eq!(SearchFilter::parse("").unwrap(), SearchFilter::default());
        assert!(SearchFilter::parse(&"é".repeat(254)).is_ok());
        let too_long = SearchFilter::parse(&"a".repeat(255)).unwrap_err();
        assert_eq!(too_long.field, "filter");
        assert!(too_long.reason.contains("254"), "{too_long}");
        for bad in ["a\0b", "tab\there", "line\nbreak", "\u{7f}"] {
            let error = SearchFilter::parse(bad).unwrap_err();
            assert!(error.reason.contains("control"), "{bad:?}: {error}");
        }
    }
}
