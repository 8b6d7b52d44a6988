//! The data layer, on SQLite and (when configured) PostgreSQL.

use std::collections::{BTreeMap, HashSet};

use switchboard::{
    db::{Database, DbError, PageCursor},
    domain::{
        Age, Email, Metadata, NewPost, NewUser, PostContent, PostTitle, SearchFilter, Tags, UserId,
        UserName, UserPatch,
    },
};

use crate::{helpers::TestDb, on_both_backends};

fn new_user(name: &str, email: &str) -> NewUser {
    NewUser {
        name: UserName::parse(name).unwrap(),
        email: Email::parse(email).unwrap(),
        age: None,
        metadata: Metadata::default(),
    }
}

fn new_post(author: UserId, title: &str) -> NewPost {
    NewPost {
        author_id: author,
        title: PostTitle::parse(title).unwrap(),
        content: PostContent::parse("body").unwrap(),
        tags: Tags::parse(["rust".to_owned(), "chat".to_owned()]).unwrap(),
        published: true,
    }
}

async fn all_pages(db: &Database, filter: &str, size: u32) -> Vec<UserId> {
    let mut seen = Vec::new();
    let mut cursor: Option<PageCursor> = None;
    loop {
        let page = db
            .list_users(&SearchFilter::parse(filter).unwrap(), size, cursor.as_ref())
            .await
            .unwrap();
        assert!(
            page.users.len() <= size as usize,
            "page larger than asked for"
        );
        seen.extend(page.users.iter().map(|u| u.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
    }
}

on_both_backends!(
    created_users_read_back_exactly,
    unknown_ids_are_not_found,
    duplicate_emails_are_a_typed_error_whatever_the_case,
    updates_change_only_the_given_fields,
    deleting_a_user_removes_their_posts,
    the_filter_matches_name_or_email_case_insensitively,
    pages_visit_every_user_exactly_once,
    pages_stay_exact_while_users_are_inserted_concurrently,
    page_tokens_are_validated,
    bulk_create_stores_everything_in_one_go,
    bulk_create_is_all_or_nothing,
    posts_need_an_existing_author,
    posts_of_many_authors_load_in_one_query,
    every_statement_is_counted,
);

async fn created_users_read_back_exactly(db: &TestDb) {
    let db = db.open().await;
    let mut new = new_user("Ann Lee", "Ann@Example.com");
    new.age = Some(Age::parse(34).unwrap());
    new.metadata = Metadata::parse([("team".to_owned(), "blue".to_owned())]).unwrap();

    let created = db.create_user(new).await.unwrap();
    let fetched = db.get_user(created.id).await.unwrap();

    assert_eq!(fetched, created, "what is stored is what create returned");
    assert_eq!(fetched.email.as_str(), "ann@example.com");
    assert_eq!(fetched.age.map(Age::get), Some(34));
    assert_eq!(
        fetched.metadata.entries(),
        &BTreeMap::from([("team".to_owned(), "blue".to_owned())])
    );
    assert_eq!(fetched.created_at, fetched.updated_at);
}

async fn unknown_ids_are_not_found(db: &TestDb) {
    let db = db.open().await;
    let missing = UserId::generate();
    assert!(matches!(
        db.get_user(missing).await,
        Err(DbError::NotFound { entity: "user" })
    ));
    assert!(matches!(
        db.update_user(
            missing,
            UserPatch {
                name: Some(UserName::parse("x").unwrap()),
                ..Default::default()
            }
        )
        .await,
        Err(DbError::NotFound { entity: "user" })
    ));
    // Removing is idempotent: a user that is already gone is not an error (a deletion
    // saga runs it again after a crash).
    db.remove_user(missing, "nobody@example.com").await.unwrap();
}

async fn duplicate_emails_are_a_typed_error_whatever_the_case(db: &TestDb) {
    let db = db.open().await;
    db.create_user(new_user("Ann", "ann@example.com"))
        .await
        .unwrap();

    let err = db
        .create_user(new_user("Other Ann", "ANN@example.COM"))
        .await
        .unwrap_err();

    match err {
        DbError::DuplicateEmail { email } => assert_eq!(email, "ann@example.com"),
        other => panic!("expected DuplicateEmail, got {other:?}"),
    }
}

async fn updates_change_only_the_given_fields(db: &TestDb) {
    let db = db.open().await;
    let ann = db
        .create_user(new_user("Ann", "ann@example.com"))
        .await
        .unwrap();
    db.create_user(new_user("Bob", "bob@example.com"))
        .await
        .unwrap();

    let renamed = db
        .update_user(
            ann.id,
            UserPatch {
                name: Some(UserName::parse("Ann Lee").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name.as_str(), "Ann Lee");
    assert_eq!(renamed.email, ann.email, "email untouched");
    assert_eq!(renamed.created_at, ann.created_at);
    assert!(renamed.updated_at >= ann.updated_at);
    assert_eq!(
        db.get_user(ann.id).await.unwrap(),
        renamed,
        "update is stored"
    );

    let unchanged = db.update_user(ann.id, UserPatch::default()).await.unwrap();
    assert_eq!(unchanged, renamed, "an empty patch changes nothing");

    let taken = db
        .update_user(
            ann.id,
            UserPatch {
                email: Some(Email::parse("bob@example.com").unwrap()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(taken, Err(DbError::DuplicateEmail { .. })),
        "{taken:?}"
    );
    assert_eq!(db.get_user(ann.id).await.unwrap().email, ann.email);
}

async fn deleting_a_user_removes_their_posts(db: &TestDb) {
    let db = db.open().await;
    let ann = db
        .create_user(new_user("Ann", "ann@example.com"))
        .await
        .unwrap();
    let mut posts = Vec::new();
    for n in 0..5 {
        posts.push(
            db.create_post(new_post(ann.id, &format!("Hello {n}")))
                .await
                .unwrap(),
        );
    }
    let bob = db
        .create_user(new_user("Bob", "bob@example.com"))
        .await
        .unwrap();
    let kept = db.create_post(new_post(bob.id, "Mine")).await.unwrap();

    // The pivot of a deletion: the row goes, the email is free at once.
    db.remove_user(ann.id, "ann@example.com").await.unwrap();
    assert!(matches!(
        db.get_user(ann.id).await,
        Err(DbError::NotFound { .. })
    ));
    db.create_user(new_user("Ann again", "ann@example.com"))
        .await
        .expect("the email is free");
    // No post can be added for the removed author.
    assert!(matches!(
        db.create_post(new_post(ann.id, "Late")).await,
        Err(DbError::UnknownAuthor(_))
    ));
    // Then the posts, in batches, until none is left.
    assert_eq!(db.delete_posts_batch(ann.id, 2).await.unwrap(), 2);
    assert_eq!(db.delete_posts_batch(ann.id, 2).await.unwrap(), 2);
    assert_eq!(db.delete_posts_batch(ann.id, 2).await.unwrap(), 1);
    assert_eq!(db.delete_posts_batch(ann.id, 2).await.unwrap(), 0);
    for post in posts {
        assert!(matches!(
            db.get_post(post.id).await,
            Err(DbError::NotFound { entity: "post" })
        ));
    }
    assert_eq!(db.get_post(kept.id).await.unwrap().id, kept.id);
}

async fn the_filter_matches_name_or_email_case_insensitively(db: &TestDb) {
    let db = db.open().await;
    for (name, email) in [
        ("Ann Smith", "ann@example.com"),
        ("Bob", "bob.SMITHERS@example.org"),
        ("Carol", "carol@example.net"),
        ("100% Dave", "dave@example.com"),
    ] {
        db.create_user(new_user(name, email)).await.unwrap();
    }

    let cases = [
        ("smith", vec!["Ann Smith", "Bob"]),
        ("SMITH", vec!["Ann Smith", "Bob"]),
        ("example.net", vec!["Carol"]),
        ("%", vec!["100% Dave"]),
        ("_", vec![]),
        ("", vec!["Ann Smith", "Bob", "Carol", "100% Dave"]),
    ];
    for (filter, expected) in cases {
        let page = db
            .list_users(&SearchFilter::parse(filter).unwrap(), 100, None)
            .await
            .unwrap();
        let names: Vec<&str> = page.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, expected, "filter {filter:?}");
        assert_eq!(
            page.total_count,
            expected.len() as i64,
            "total for {filter:?}"
        );
    }
}

async fn pages_visit_every_user_exactly_once(db: &TestDb) {
    let db = db.open().await;
    let mut created = Vec::new();
    for i in 0..25 {
        let user = db
            .create_user(new_user(&format!("User {i}"), &format!("u{i}@example.com")))
            .await
            .unwrap();
        created.push(user.id);
    }

    let first = db
        .list_users(&SearchFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(first.users.len(), 10);
    assert_eq!(first.total_count, 25);

    let seen = all_pages(&db, "", 10).await;
    assert_eq!(seen, created, "creation order, each once");
    assert_eq!(
        all_pages(&db, "", 25).await.len(),
        25,
        "exact fit ends cleanly"
    );
    assert_eq!(all_pages(&db, "", 1000).await.len(), 25);
}

async fn pages_stay_exact_while_users_are_inserted_concurrently(db: &TestDb) {
    let db = db.open().await;
    let mut existing = HashSet::new();
    for i in 0..60 {
        let user = db
            .create_user(new_user("Early", &format!("early{i}@example.com")))
            .await
            .unwrap();
        existing.insert(user.id);
    }

    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                db.create_user(new_user("Late", &format!("late{i}@example.com")))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<PageCursor> = None;
    loop {
        let page = db
            .list_users(&SearchFilter::default(), 7, cursor.as_ref())
            .await
            .unwrap();
        seen.extend(page.users.iter().map(|u| u.id));
        tokio::task::yield_now().await;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    writer.await.unwrap();

    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no user is visited twice");
    assert!(
        existing.is_subset(&unique),
        "every user that existed before paging began is visited ({} missing)",
        existing.difference(&unique).count()
    );
}

async fn page_tokens_are_validated(db: &TestDb) {
    let db = db.open().await;
    for i in 0..3 {
        db.create_user(new_user("Ann", &format!("ann{i}@example.com")))
            .await
            .unwrap();
    }
    let page = db
        .list_users(&SearchFilter::parse("ann").unwrap(), 1, None)
        .await
        .unwrap();
    let token = page.next.expect("more pages").encode();

    let garbled = PageCursor::decode("definitely-not-a-token", "ann");
    assert!(matches!(garbled, Err(DbError::InvalidCursor(_))));

    let other_filter = PageCursor::decode(&token, "bob");
    assert!(matches!(other_filter, Err(DbError::InvalidCursor(_))));

    let cursor = PageCursor::decode(&token, "ann").unwrap();
    let mismatched = db
        .list_users(&SearchFilter::parse("bob").unwrap(), 1, Some(&cursor))
        .await;
    assert!(matches!(mismatched, Err(DbError::InvalidCursor(_))));
}

async fn bulk_create_stores_everything_in_one_go(db: &TestDb) {
    let db = db.open().await;
    let batch: Vec<NewUser> = (0..1200)
        .map(|i| new_user(&format!("Bulk {i}"), &format!("bulk{i}@example.com")))
        .collect();

    let created = db.bulk_create_users(batch).await.unwrap();

    assert_eq!(created.len(), 1200);
    assert_eq!(
        db.list_users(&SearchFilter::default(), 1, None)
            .await
            .unwrap()
            .total_count,
        1200
    );
    let sample = &created[777];
    assert_eq!(&db.get_user(sample.id).await.unwrap(), sample);
}

async fn bulk_create_is_all_or_nothing(db: &TestDb) {
    let db = db.open().await;
    db.create_user(new_user("Taken", "taken@example.com"))
        .await
        .unwrap();

    let mut repeated: Vec<NewUser> = (0..10)
        .map(|i| new_user("Batch", &format!("b{i}@example.com")))
        .collect();
    repeated.push(new_user("Again", "B3@example.com"));
    let err = db.bulk_create_users(repeated).await.unwrap_err();
    assert!(
        matches!(&err, DbError::DuplicateEmail { email } if email == "b3@example.com"),
        "{err:?}"
    );

    // One bad row at the end of the third 500-row chunk: the first chunks must roll back.
    let mut clashing: Vec<NewUser> = (0..1400)
        .map(|i| new_user("Batch", &format!("c{i}@example.com")))
        .collect();
    clashing.push(new_user("Clash", "taken@example.com"));
    let err = db.bulk_create_users(clashing).await.unwrap_err();
    assert!(
        matches!(&err, DbError::DuplicateEmail { email } if email == "taken@example.com"),
        "{err:?}"
    );

    let total = db
        .list_users(&SearchFilter::default(), 1, None)
        .await
        .unwrap()
        .total_count;
    assert_eq!(total, 1, "no row of a failed batch is stored");
}

async fn posts_need_an_existing_author(db: &TestDb) {
    let db = db.open().await;
    let ghost = UserId::generate();
    let err = db.create_post(new_post(ghost, "Hi")).await.unwrap_err();
    assert!(
        matches!(err, DbError::UnknownAuthor(id) if id == ghost),
        "{err:?}"
    );

    let ann = db
        .create_user(new_user("Ann", "ann@example.com"))
        .await
        .unwrap();
    let post = db.create_post(new_post(ann.id, "Hi")).await.unwrap();
    assert_eq!(db.get_post(post.id).await.unwrap(), post);
    assert_eq!(post.tags.as_slice(), ["rust", "chat"]);
}

async fn posts_of_many_authors_load_in_one_query(db: &TestDb) {
    let db = db.open().await;
    let batch: Vec<NewUser> = (0..600)
        .map(|i| new_user("Author", &format!("a{i}@example.com")))
        .collect();
    let authors = db.bulk_create_users(batch).await.unwrap();
    let ids: Vec<UserId> = authors.iter().map(|a| a.id).collect();
    for (author, posts) in [(0, 2), (2, 3), (599, 1)] {
        for n in 0..posts {
            db.create_post(new_post(ids[author], &format!("Post {n}")))
                .await
                .unwrap();
        }
    }

    let before = db.stats().total_queries;
    let by_author = db.posts_by_authors(&ids).await.unwrap();
    let queries = db.stats().total_queries - before;

    assert_eq!(
        queries, 2,
        "600 authors are two IN-lists of 500, not 600 queries"
    );
    assert_eq!(by_author.len(), 3, "authors without posts are absent");
    let titles: Vec<&str> = by_author[&ids[2]]
        .iter()
        .map(|p| p.title.as_str())
        .collect();
    assert_eq!(titles, ["Post 0", "Post 1", "Post 2"], "creation order");
    assert_eq!(by_author[&ids[0]].len(), 2);
    assert_eq!(by_author[&ids[599]].len(), 1);

    let users = db.get_users(&ids[..3]).await.unwrap();
    assert_eq!(users.len(), 3);
}

async fn every_statement_is_counted(db: &TestDb) {
    let db = db.open().await;
    let start = db.stats();
    db.create_user(new_user("Ann", "ann@example.com"))
        .await
        .unwrap();
    let _ = db.create_user(new_user("Ann", "ann@example.com")).await;
    let after = db.stats();

    assert_eq!(after.total_queries - start.total_queries, 2);
    assert_eq!(
        after.failed_queries - start.failed_queries,
        1,
        "the duplicate insert failed"
    );
    let bucketed: u64 = after.latency_histogram.iter().map(|b| b.count).sum();
    assert_eq!(
        bucketed, after.total_queries,
        "every statement lands in a bucket"
    );
}
