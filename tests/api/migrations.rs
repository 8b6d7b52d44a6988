//! Migrations up and down, on both backends.

use switchboard::{
    db::{migrate, DbError},
    domain::SearchFilter,
};

use crate::{helpers::TestDb, on_both_backends};

on_both_backends!(migrations_apply_revert_and_reapply);

async fn migrations_apply_revert_and_reapply(db: &TestDb) {
    let settings = &db.settings;
    let fresh = migrate::status(settings).await.unwrap();
    assert!(fresh.len() >= 2, "users and posts migrations are embedded");
    assert!(
        fresh.iter().all(|m| !m.applied),
        "a fresh database has none applied"
    );

    let applied = migrate::run_pending(settings).await.unwrap();
    assert_eq!(applied.len(), fresh.len());
    assert!(migrate::status(settings)
        .await
        .unwrap()
        .iter()
        .all(|m| m.applied));
    assert!(
        migrate::run_pending(settings).await.unwrap().is_empty(),
        "idempotent"
    );

    // Revert everything: the tables must really be gone.
    for _ in 0..fresh.len() {
        assert!(migrate::revert_last(settings).await.unwrap().is_some());
    }
    assert_eq!(migrate::revert_last(settings).await.unwrap(), None);
    let database = switchboard::db::Database::connect(settings).await.unwrap();
    let err = database
        .list_users(&SearchFilter::default(), 1, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::Query(_)),
        "users table dropped: {err:?}"
    );

    // And up again: the schema works.
    migrate::run_pending(settings).await.unwrap();
    assert_eq!(
        database
            .list_users(&SearchFilter::default(), 1, None)
            .await
            .unwrap()
            .total_count,
        0
    );
}
