//! What a saga type is: named steps, each with an action and, where it can be undone, a
//! compensation; one step is the pivot.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::db::DbError;

/// One step of a definition.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// Its name, shown by `/admin/sagas/{id}` and part of its idempotency key.
    pub name: &'static str,
    /// Whether it has a compensation (steps without one need nothing undone).
    pub compensable: bool,
}

/// What a step is run with.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The saga.
    pub saga_id: String,
    /// The step's index.
    pub step: usize,
    /// The saga's input, as stored.
    pub input: Value,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl StepContext {
    /// `<saga id>/<step index>`: the same on every attempt and after a crash, so the
    /// step's side effect can be made to happen once.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.saga_id, self.step)
    }
}

/// Why a step or compensation failed.
#[derive(Debug, Clone)]
pub struct StepError {
    /// What happened.
    pub message: String,
    /// The step certainly had no effect (a refusal), rather than an unknown outcome (a
    /// time-out, an unreachable database). A step that failed definitely is not
    /// compensated; one whose outcome is unknown is.
    pub definite: bool,
}

impl StepError {
    /// A failure that certainly left nothing behind.
    pub fn definite(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            definite: true,
        }
    }

    /// A failure whose effect is unknown.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            definite: false,
        }
    }

    /// A step that did not finish within `limit`.
    pub fn timed_out(limit: Duration) -> Self {
        Self::unknown(format!("timed out after {limit:?}"))
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<DbError> for StepError {
    fn from(error: DbError) -> Self {
        let definite = matches!(
            error,
            DbError::NotFound { .. }
                | DbError::DuplicateEmail { .. }
                | DbError::UnknownAuthor(_)
                | DbError::Conflict(_)
        );
        Self {
            message: error.to_string(),
            definite,
        }
    }
}

/// A saga type. Every action and compensation must be idempotent: after a crash, or when
/// its outcome was unknown, it runs again with the same [`StepContext::idempotency_key`].
pub trait Definition: Send + Sync + 'static {
    /// The type's name, stored with each run (`delete_user`).
    fn saga_type(&self) -> &'static str;

    /// The steps, in order.
    fn steps(&self) -> &'static [StepSpec];

    /// The index of the pivot: failures before it (and of it) compensate, steps after it
    /// are retried until they succeed.
    fn pivot(&self) -> usize;

    /// Runs step `ctx.step`; its output is stored.
    fn run(&self, ctx: StepContext) -> BoxFuture<'static, Result<Value, StepError>>;

    /// Undoes step `ctx.step` (only called for compensable steps that started).
    fn compensate(&self, ctx: StepContext) -> BoxFuture<'static, Result<(), StepError>>;

    /// After the pivot failed with an unknown outcome, again and again: whether it took
    /// effect after all (`Ok(true)`: go on), certainly did not (`Ok(false)`: compensate),
    /// or that cannot be told yet (`Err`: ask again later).
    fn pivot_took_effect(&self, ctx: StepContext) -> BoxFuture<'static, Result<bool, StepError>>;
}
