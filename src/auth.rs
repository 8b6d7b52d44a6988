//! HS256 JSON Web Tokens: issued by `switchboard token`, checked by every front door.
//! The identity is the `sub` claim; `role: "admin"` grants admin actions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtSecret;

/// The claims Switchboard reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token speaks for.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch (optional, as RFC 7519 has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before this time, seconds since the Unix epoch (checked with the same
    /// leeway as `exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Optional role, e.g. `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Optional display name (OpenID Connect's `name` claim): what chat frames show
    /// beside the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The audience of guest resume tokens. User tokens carry no `aud`, and a token with an
/// `aud` is refused where a user token is expected, so a guest's token never passes
/// for a user's.
pub const GUEST_AUDIENCE: &str = "switchboard:guest";

/// What a guest resume token holds: the guest's id and chosen name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestClaims {
    /// The guest's id (`guest-…`).
    pub sub: String,
    /// Always [`GUEST_AUDIENCE`].
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// The guest's display name, if it chose one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Claims {
    /// Whether the token grants admin actions.
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }

    /// Whether the token may use the server API (`ChatService`): role `service` or
    /// `admin`.
    pub fn may_use_server_api(&self) -> bool {
        matches!(self.role.as_deref(), Some("service" | "admin"))
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), or
/// `None` for any other scheme. Every front door reads the header through this.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token was valid once but has expired.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` lies in the future.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// Bad signature, malformed token, wrong algorithm or missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The subject for a new token is empty.
    #[error("a token needs a non-empty subject")]
    EmptySubject,
    /// The token's subject is a user that is being deleted or was deleted.
    #[error("the token's user has been deleted")]
    Deleted,
}

/// Clock skew forgiven on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 5;
/// Longest subject accepted, in bytes (it becomes a user id everywhere).
pub const MAX_SUBJECT_LEN: usize = 256;

/// Signs and verifies tokens with one secret. Cheap to clone.
#[derive(Clone)]
pub struct JwtAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    guest_validation: Validation,
    /// Subjects whose tokens are refused (users being deleted or deleted), as the
    /// `Deletions` actor publishes them.
    refused: Option<tokio::sync::watch::Receiver<RefusedSubjects>>,
}

/// The subjects whose tokens are refused, published whole on each change.
pub type RefusedSubjects = std::sync::Arc<std::collections::HashSet<String>>;

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtAuth { .. }")
    }
}

impl JwtAuth {
    /// Keys for `secret`; only HS256 is accepted when verifying.
    pub fn new(secret: &JwtSecret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let mut guest_validation = validation.clone();
        guest_validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        guest_validation.set_audience(&[GUEST_AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            guest_validation,
            refused: None,
        }
    }

    /// A resume token for guest `id` (with its display name), valid for `ttl`: presented
    /// as `?guest=` on a later connection, it gives the guest the same id again.
    pub fn issue_guest(
        &self,
        id: &str,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = GuestClaims {
            sub: id.to_owned(),
            aud: GUEST_AUDIENCE.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            name: name.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks a guest resume token (signature, expiry, audience, a `guest-` subject).
    pub fn verify_guest(&self, token: &str) -> Result<GuestClaims, AuthError> {
        let data = jsonwebtoken::decode::<GuestClaims>(
            token.trim(),
            &self.decoding,
            &self.guest_validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                AuthError::Invalid("not a guest resume token".into())
            }
            _ => AuthError::Invalid(e.to_string()),
        })?;
        check_subject(&data.claims.sub)?;
        if !data.claims.sub.starts_with(GUEST_PREFIX) {
            return Err(AuthError::Invalid("not a guest resume token".into()));
        }
        Ok(data.claims)
    }

    /// Issues a token for `sub`, valid for `ttl`, with an optional role.
    pub fn issue(&self, sub: &str, ttl: Duration, role: Option<&str>) -> Result<String, AuthError> {
        self.issue_named(sub, ttl, role, None)
    }

    /// Issues a token for `sub`, valid for `ttl`, with an optional role and display name.
    pub fn issue_named(
        &self,
        sub: &str,
        ttl: Duration,
        role: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, AuthError> {
        let sub = sub.trim();
        if sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        let now = unix_now();
        check_subject(sub)?;
        let claims = Claims {
            sub: sub.to_owned(),
            iat: Some(now),
            nbf: None,
            exp: now.saturating_add(ttl.as_secs()),
            role: role.map(str::to_owned),
            name: name.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks signature, algorithm, expiry and `nbf`, and that the subject can serve as a
    /// user id; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::Invalid(
                "the token is for another audience (a guest resume token is not a user token)"
                    .into(),
            ),
            _ => AuthError::Invalid(e.to_string()),
        })?;
        check_subject(&data.claims.sub)?;
        if let Some(refused) = &self.refused {
            if refused.borrow().contains(&data.claims.sub) {
                return Err(AuthError::Deleted);
            }
        }
        Ok(data.claims)
    }

    /// This verifier, refusing tokens of the subjects `refused` holds.
    pub fn refusing(mut self, refused: tokio::sync::watch::Receiver<RefusedSubjects>) -> Self {
        self.refused = Some(refused);
        self
    }
}

/// How guest ids begin (the rest is random).
pub const GUEST_PREFIX: &str = "guest-";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A subject is a user id in chat frames, logs and stored history: non-blank, at most
/// [`MAX_SUBJECT_LEN`] bytes, no control characters (a NUL would poison PostgreSQL text).
fn check_subject(sub: &str) -> Result<(), AuthError> {
    if sub.trim().is_empty() {
        return Err(AuthError::Invalid("empty subject".into()));
    }
    if sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "the subject must be at most {MAX_SUBJECT_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod bearer_tests {
    use super::bearer_token;

    #[test]
    fn only_bearer_values_yield_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> JwtAuth {
        JwtAuth::new(&JwtSecret::parse(secret).unwrap())
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let auth = auth("0123456789abcdef-secret");
        let token = auth
            .issue("ann", Duration::from_secs(60), Some("admin"))
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.sub, "ann");
        assert!(claims.is_admin());
        assert_eq!(claims.exp - claims.iat.unwrap(), 60);
    }

    #[test]
    fn tokens_signed_with_another_secret_are_rejected() {
        let token = auth("0123456789abcdef-secret")
            .issue("ann", Duration::from_secs(60), None)
            .unwrap();
        let err = auth("another-secret-of-16b").verify(&token).unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err}");
    }

    #[test]
    fn expired_and_garbage_tokens_are_rejected() {
        let auth = auth("0123456789abcdef-secret");
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "ann".into(),
                iat: Some(1),
                nbf: None,
                exp: 2,
                role: None,
                name: None,
            },
            &auth.encoding,
        )
        .unwrap();
        assert!(matches!(auth.verify(&expired), Err(AuthError::Expired)));
        assert!(matches!(
            auth.verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(auth.verify(""), Err(AuthError::Invalid(_))));
        assert!(matches!(
            auth.issue(" ", Duration::from_secs(1), None),
            Err(AuthError::EmptySubject)
        ));
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn signed(auth: &JwtAuth, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &auth.encoding).unwrap()
    }

    #[test]
    fn a_token_is_not_accepted_before_its_nbf() {
        let auth = auth("0123456789abcdef-secret");
        let claims = |nbf: u64| Claims {
            sub: "ann".into(),
            iat: None,
            nbf: Some(nbf),
            exp: now() + 3600,
            role: None,
            name: None,
        };
        let future = signed(&auth, &claims(now() + 600));
        assert!(matches!(auth.verify(&future), Err(AuthError::NotYetValid)));
        // Within the leeway, and in the past, it is fine; `iat` may be absent.
        assert!(auth.verify(&signed(&auth, &claims(now() + 2))).is_ok());
        assert!(auth.verify(&signed(&auth, &claims(now() - 60))).is_ok());
    }

    #[test]
    fn subjects_that_cannot_be_user_ids_are_refused() {
        let auth = auth("0123456789abcdef-secret");
        for sub in ["a\0b", "line\nbreak", &"x".repeat(257)] {
            let token = signed(
                &auth,
                &Claims {
                    sub: sub.to_owned(),
                    iat: None,
                    nbf: None,
                    exp: now() + 60,
                    role: None,
                    name: None,
                },
            );
            assert!(
                matches!(auth.verify(&token), Err(AuthError::Invalid(_))),
                "{sub:?}"
            );
            assert!(auth.issue(sub, Duration::from_secs(60), None).is_err());
        }
        assert!(auth
            .issue(&"x".repeat(256), Duration::from_secs(60), None)
            .is_ok());
    }

    #[test]
    fn guest_resume_tokens_and_user_tokens_do_not_pass_for_each_other() {
        let auth = auth("0123456789abcdef-secret");
        let guest = auth
            .issue_guest("guest-0123456789ab", Some("Ann"), Duration::from_secs(60))
            .unwrap();
        let claims = auth.verify_guest(&guest).unwrap();
        assert_eq!(claims.sub, "guest-0123456789ab");
        assert_eq!(claims.name.as_deref(), Some("Ann"));
        let refused = auth.verify(&guest).unwrap_err();
        assert!(
            refused.to_string().contains("guest resume token"),
            "{refused}"
        );

        let user = auth
            .issue_named("ann", Duration::from_secs(60), None, Some("Ann"))
            .unwrap();
        assert_eq!(auth.verify(&user).unwrap().name.as_deref(), Some("Ann"));
        let refused = auth.verify_guest(&user).unwrap_err();
        assert!(matches!(refused, AuthError::Invalid(_)), "{refused}");

        // A guest token must name a guest, and another secret's is refused.
        let posing = auth
            .issue_guest("admin", None, Duration::from_secs(60))
            .unwrap();
        assert!(auth.verify_guest(&posing).is_err());
        let other = super::JwtAuth::new(&JwtSecret::parse("another-secret-of-16b").unwrap());
        assert!(other.verify_guest(&guest).is_err());
    }
}
