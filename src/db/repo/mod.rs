//! Repositories: every query, written once for both backends.

mod cursor;
mod deletion;
mod history;
mod offsets;
mod posts;
mod users;

pub use cursor::PageCursor;
pub use deletion::REDACTED_SENDER;
pub use offsets::Reservation;
pub(crate) use users::build_user;
pub use users::{UserPage, MAX_PAGE_SIZE};

/// SQL `lower()`; with `LIKE` it gives the portable case-insensitive match (`ILIKE` is
/// PostgreSQL-only). SQLite's `lower()` folds ASCII letters only.
#[diesel::declare_sql_function]
extern "SQL" {
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The `LIKE` pattern for a case-insensitive substring match of `filter`, with the
/// wildcards `%` and `_` (and the escape character `\`) matched literally; `None` when the
/// filter is blank.
pub(crate) fn substring_pattern(filter: &str) -> Option<String> {
    let filter = filter.trim();
    if filter.is_empty() {
        return None;
    }
    let mut pattern = String::with_capacity(filter.len() + 2);
    pattern.push('%');
    for ch in filter.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    Some(pattern)
}

/// Rows per multi-row `INSERT`: 7 columns × 500 rows stays far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bind parameters.
pub(crate) const INSERT_CHUNK: usize = 500;

/// Ids per `IN (…)` list in batched lookups.
pub(crate) const LOOKUP_CHUNK: usize = 500;

#[cfg(test)]
mod tests {
    use super::substring_pattern;

    #[test]
    fn patterns_escape_wildcards_and_fold_case() {
        assert_eq!(substring_pattern("  "), None);
        assert_eq!(substring_pattern("Ann").as_deref(), Some("%ann%"));
        assert_eq!(
            substring_pattern("50%_off\\").as_deref(),
            Some("%50\\%\\_off\\\\%")
        );
    }
}
