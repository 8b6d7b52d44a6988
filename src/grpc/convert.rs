//! Protobuf messages ↔ domain types. Every request field is parsed here, at the edge;
//! a bad one becomes `INVALID_ARGUMENT` naming the field.

use tonic::Status;

use super::pb;
use crate::domain::{Age, Email, Metadata, NewUser, User, UserId, UserName, UserPatch};

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            name: user.name.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            created_at: Some(timestamp(user.created_at)),
            updated_at: Some(timestamp(user.updated_at)),
            metadata: user.metadata.entries().clone().into_iter().collect(),
            age: user.age.map(Age::get),
            deleted: false,
            updated: false,
        }
    }
}

/// Parses a user id; an empty one is `INVALID_ARGUMENT` ("id is required").
pub fn user_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(invalid)
}

/// A validation failure as `INVALID_ARGUMENT`, naming the field.
pub fn invalid(error: crate::domain::ValidationError) -> Status {
    Status::invalid_argument(error.to_string())
}

impl TryFrom<pb::CreateUserRequest> for NewUser {
    type Error = Status;

    fn try_from(req: pb::CreateUserRequest) -> Result<Self, Status> {
        Ok(Self {
            name: UserName::parse(&req.name).map_err(invalid)?,
            email: Email::parse(&req.email).map_err(invalid)?,
            age: req.age.map(Age::parse).transpose().map_err(invalid)?,
            metadata: Metadata::parse(req.metadata).map_err(invalid)?,
        })
    }
}

/// An update: empty strings and an empty map leave those fields unchanged.
pub fn patch(req: pb::UpdateUserRequest) -> Result<(UserId, UserPatch), Status> {
    let id = user_id(&req.id)?;
    let name = (!req.name.is_empty())
        .then(|| UserName::parse(&req.name))
        .transpose()
        .map_err(invalid)?;
    let email = (!req.email.is_empty())
        .then(|| Email::parse(&req.email))
        .transpose()
        .map_err(invalid)?;
    let metadata = (!req.metadata.is_empty())
        .then(|| Metadata::parse(req.metadata))
        .transpose()
        .map_err(invalid)?;
    let age = req.age.map(Age::parse).transpose().map_err(invalid)?;
    Ok((
        id,
        UserPatch {
            name,
            email,
            age,
            metadata,
        },
    ))
}
