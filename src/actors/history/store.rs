//! Writing one batch, with poison rows isolated (see the module docs of the writer).

use std::collections::VecDeque;

use crate::{
    db::{Database, DbError},
    domain::{StoredMessage, StoredPrivate},
};

/// What writing a batch did.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Rows written.
    pub written: usize,
    /// Rows the database refused while it was otherwise working: dropped.
    pub rejected: Vec<Rejected>,
    /// Rows not written because the database failed: they wait for the next attempt.
    pub unwritten: Option<Unwritten>,
}

/// A row the database refused.
#[derive(Debug)]
pub(super) struct Rejected {
    /// The message's id.
    pub id: String,
    /// What the database said.
    pub error: DbError,
}

/// Rows left for later, oldest first, and why.
#[derive(Debug)]
pub(super) struct Unwritten {
    pub messages: Vec<StoredMessage>,
    pub privates: Vec<StoredPrivate>,
    pub error: DbError,
}

/// A part of a batch written in one transaction.
enum Part {
    Messages(Vec<StoredMessage>),
    Privates(Vec<StoredPrivate>),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Messages(m) => m.len(),
            Part::Privates(p) => p.len(),
        }
    }

    async fn write(&self, db: &Database) -> Result<(), DbError> {
        match self {
            Part::Messages(messages) => db.append_history(messages, &[]).await,
            Part::Privates(privates) => db.append_history(&[], privates).await,
        }
    }

    /// The two halves, oldest first.
    fn halves(self) -> (Part, Part) {
        match self {
            Part::Messages(mut first) => {
                let second = first.split_off(first.len() / 2);
                (Part::Messages(first), Part::Messages(second))
            }
            Part::Privates(mut first) => {
                let second = first.split_off(first.len() / 2);
                (Part::Privates(first), Part::Privates(second))
            }
        }
    }

    fn id(&self) -> String {
        match self {
            Part::Messages(m) => m.first().map(|m| m.id.clone()),
            Part::Privates(p) => p.first().map(|p| p.id.clone()),
        }
        .unwrap_or_default()
    }
}

/// Writes `messages` and `privates` in one transaction; if the database refuses them while
/// it takes an empty transaction, halves the batch until the refused rows are found.
pub(super) async fn store(
    db: Database,
    messages: Vec<StoredMessage>,
    privates: Vec<StoredPrivate>,
) -> Stored {
    let mut outcome = Stored::default();
    let total = messages.len() + privates.len();
    if total == 0 {
        return outcome;
    }
    let error = match db.append_history(&messages, &privates).await {
        Ok(()) => {
            outcome.written = total;
            return outcome;
        }
        Err(error) => error,
    };
    if !refused_for_its_data(&db, &error).await {
        outcome.unwritten = Some(Unwritten {
            messages,
            privates,
            error,
        });
        return outcome;
    }
    let mut parts: VecDeque<Part> = [Part::Messages(messages), Part::Privates(privates)]
        .into_iter()
        .filter(|part| part.len() > 0)
        .collect();
    while let Some(part) = parts.pop_front() {
        let error = match part.write(&db).await {
            Ok(()) => {
                outcome.written += part.len();
                continue;
            }
            Err(error) => error,
        };
        if !refused_for_its_data(&db, &error).await {
            // The database failed meanwhile: this part and the rest wait.
            let mut unwritten = Unwritten {
                messages: Vec::new(),
                privates: Vec::new(),
                error,
            };
            for part in std::iter::once(part).chain(parts) {
                match part {
                    Part::Messages(m) => unwritten.messages.extend(m),
                    Part::Privates(p) => unwritten.privates.extend(p),
                }
            }
            outcome.unwritten = Some(unwritten);
            return outcome;
        }
        if part.len() == 1 {
            outcome.rejected.push(Rejected {
                id: part.id(),
                error,
            });
        } else {
            let (first, second) = part.halves();
            parts.push_front(second);
            parts.push_front(first);
        }
    }
    outcome
}

/// Whether `error` is the data's fault: the database is reachable and takes an empty
/// transaction right now.
async fn refused_for_its_data(db: &Database, error: &DbError) -> bool {
    if matches!(
        error,
        DbError::Unavailable(_) | DbError::ShardUnavailable { .. } | DbError::Busy { .. }
    ) {
        return false;
    }
    db.takes_transactions().await.is_ok()
}
