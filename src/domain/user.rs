//! Users: who talks through Switchboard.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{parse_text, parse_uuid, ValidationError};

/// A user's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(uuid::Uuid);

impl UserId {
    /// Wraps an id read back from the database.
    pub(crate) fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Parses an id from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_uuid("id", raw).map(Self)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for UserId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A display name: 1–100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 100;

    /// Parses a name from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_text("name", raw, Self::MAX_LEN).map(Self)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a name read back from the database, where it was stored already valid.
    pub(crate) fn trusted(raw: String) -> Self {
        Self(raw)
    }
}

/// An email address, checked against the HTML Standard's "valid e-mail address" rule —
/// what every browser's `<input type=email>` accepts — and stored lower-cased so that
/// uniqueness does not depend on letter case. The same rule on every front door: no quoted
/// local parts (`"a b"@x`), no address literals (`a@[127.0.0.1]`), no display names;
/// single-label domains (`ops@localhost`) are fine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Longest accepted address (RFC 5321's path limit).
    pub const MAX_LEN: usize = 254;

    /// Parses an address from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ValidationError::new("email", "must not be empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "email",
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if let Err(reason) = html_email(raw) {
            return Err(ValidationError::new(
                "email",
                format!("`{raw}` is not an address like name@example.com: {reason}"),
            ));
        }
        Ok(Self(raw.to_lowercase()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an address read back from the database.
    pub(crate) fn trusted(raw: String) -> Self {
        Self(raw)
    }
}

/// The HTML Standard's valid e-mail address:
/// `1*( atext / "." ) "@" label *( "." label )`, where a label is 1–63 letters, digits and
/// hyphens, not starting or ending with a hyphen.
fn html_email(raw: &str) -> Result<(), &'static str> {
    let (local, domain) = raw.split_once('@').ok_or("it has no @")?;
    if local.is_empty() {
        return Err("nothing before the @");
    }
    let local_char = |c: char| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c);
    if !local.chars().all(local_char) {
        return Err("the part before the @ has a character addresses cannot have");
    }
    if domain.is_empty() {
        return Err("nothing after the @");
    }
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        let fine = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !fine {
            return Err("the domain is not a host name");
        }
    }
    Ok(())
}

/// An age in whole years, 0–150.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Age(i32);

impl Age {
    /// Parses an age from a client.
    pub fn parse(raw: i32) -> Result<Self, ValidationError> {
        if (0..=150).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new("age", "must be between 0 and 150"))
        }
    }

    /// The age in years.
    pub fn get(self) -> i32 {
        self.0
    }

    /// Wraps an age read back from the database.
    pub(crate) fn trusted(raw: i32) -> Self {
        Self(raw)
    }
}

/// Free-form string pairs attached to a user (the proto's `map<string, string>`).
/// At most 64 entries; keys up to 64 and values up to 1024 characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    const MAX_ENTRIES: usize = 64;
    const MAX_KEY: usize = 64;
    const MAX_VALUE: usize = 1024;

    /// Parses metadata from a client.
    pub fn parse(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ValidationError> {
        let map: BTreeMap<String, String> = entries.into_iter().collect();
        if map.len() > Self::MAX_ENTRIES {
            return Err(ValidationError::new(
                "metadata",
                format!("must have at most {} entries", Self::MAX_ENTRIES),
            ));
        }
        for (key, value) in &map {
            if key.is_empty() || key.chars().count() > Self::MAX_KEY {
                return Err(ValidationError::new(
                    "metadata",
                    format!("keys must be 1-{} characters", Self::MAX_KEY),
                ));
            }
            if value.chars().count() > Self::MAX_VALUE {
                return Err(ValidationError::new(
                    "metadata",
                    format!(
                        "value of `{key}` is longer than {} characters",
                        Self::MAX_VALUE
                    ),
                ));
            }
        }
        Ok(Self(map))
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A stored user. It deserializes through the same checks as a client's input (other
/// nodes of a cluster send users to each other as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Primary key.
    pub id: UserId,
    /// Display name.
    pub name: UserName,
    /// Unique, lower-cased address.
    pub email: Email,
    /// Age in years, when known.
    pub age: Option<Age>,
    /// Free-form key/value pairs.
    pub metadata: Metadata,
    /// When the user was created (microsecond precision).
    pub created_at: DateTime<Utc>,
    /// When the user last changed.
    pub updated_at: DateTime<Utc>,
}

/// A validated request to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Display name.
    pub name: UserName,
    /// Address; must not be taken.
    pub email: Email,
    /// Age, when known.
    pub age: Option<Age>,
    /// Key/value pairs.
    pub metadata: Metadata,
}

/// A validated partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New name.
    pub name: Option<UserName>,
    /// New address; must not be taken by someone else.
    pub email: Option<Email>,
    /// New age.
    pub age: Option<Age>,
    /// Replacement metadata (the whole map).
    pub metadata: Option<Metadata>,
}

impl UserPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.age.is_none() && self.metadata.is_none()
    }
}

/// Deserializes a checked type from the plain value it wraps, through its `parse`.
macro_rules! deserialize_through_parse {
    ($type:ty, $raw:ty, $parse:expr) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <$raw>::deserialize(deserializer)?;
                $parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

deserialize_through_parse!(UserName, String, |raw: String| UserName::parse(&raw));
deserialize_through_parse!(Email, String, |raw: String| Email::parse(&raw));
deserialize_through_parse!(Age, i32, Age::parse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_for_real() {
        let good = [
            "ann@example.com",
            "  Bob.Smith+tag@Mail.Example.org ",
            "x_y@a-b.io",
            "Ops@LocalHost",
            "o'brien{1}@x.example",
        ];
        for raw in good {
            assert!(Email::parse(raw).is_ok(), "{raw} should be accepted");
        }
        let bad = [
            "",
            "plainaddress",
            "@example.com",
            "ann@",
            "ann@@example.com",
            "Ann <ann@example.com>",
            "ann example@example.com",
            "ann@exa mple.com",
            "\"a b\"@example.com",
            "a@[127.0.0.1]",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            "a@x.com.",
            "é@example.com",
            "a@exämple.com",
        ];
        for raw in bad {
            let err = Email::parse(raw).expect_err(raw);
            assert_eq!(err.field, "email", "{raw}");
        }
    }

    #[test]
    fn emails_are_stored_lower_case() {
        assert_eq!(
            Email::parse("Ann@Example.COM").unwrap().as_str(),
            "ann@example.com"
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ann ").unwrap().as_str(), "Ann");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"x".repeat(101)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn ages_are_bounded() {
        assert!(Age::parse(0).is_ok());
        assert!(Age::parse(150).is_ok());
        assert!(Age::parse(-1).is_err());
        assert!(Age::parse(151).is_err());
    }

    #[test]
    fn metadata_limits_are_enforced() {
        let too_many = (0..65).map(|i| (format!("k{i}"), String::new()));
        assert!(Metadata::parse(too_many).is_err());
        assert!(Metadata::parse([(String::new(), "v".into())]).is_err());
        assert!(Metadata::parse([("k".into(), "v".repeat(1025))]).is_err());
        assert!(Metadata::parse([("k".into(), "v".into())]).is_ok());
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(UserId::parse(&UserId::generate().to_string()).is_ok());
        assert_eq!(UserId::parse("").unwrap_err().reason, "is required");
        assert!(UserId::parse("42").is_err());
    }

    #[test]
    fn a_user_round_trips_through_json_and_bad_fields_are_refused() {
        let user = User {
            id: UserId::generate(),
            name: UserName::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            age: Some(Age::parse(36).unwrap()),
            metadata: Metadata::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let json = serde_json::to_value(&user).unwrap();
        assert_eq!(serde_json::from_value::<User>(json.clone()).unwrap(), user);
        let mut bad = json;
        bad["email"] = "not an address".into();
        assert!(serde_json::from_value::<User>(bad).is_err());
    }
}
