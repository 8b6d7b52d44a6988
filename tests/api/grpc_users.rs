//! `userservice.UserService` through a generated tonic client, on SQLite and PostgreSQL.

use std::collections::{HashMap, HashSet};

use switchboard::grpc::pb::{
    user_service_client::UserServiceClient, CreateUserRequest, DeleteUserRequest, GetUserRequest,
    ListUsersRequest, UpdateUserRequest, User,
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel, Code,
    Request, Status,
};

use crate::{
    helpers::{grpc_channel, spawn_app, spawn_app_on, TestApp, TestDb},
    on_every_backend,
    ws_client::token,
};

/// Adds the `authorization` metadata to each call.
pub type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
pub type Client = UserServiceClient<InterceptedService<Channel, AddToken>>;

/// A client that sends `authorization` (when given) with every call.
pub async fn client_with(app: &TestApp, authorization: Option<String>) -> Client {
    let channel = grpc_channel(app.grpc_addr).await;
    let add_token: AddToken = Box::new(move |mut request: Request<()>| {
        if let Some(value) = &authorization {
            let value = MetadataValue::try_from(value.as_str()).unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    });
    UserServiceClient::with_interceptor(channel, add_token)
}

/// An authenticated client.
pub async fn client(app: &TestApp) -> Client {
    client_with(app, Some(format!("Bearer {}", token("service", None)))).await
}

fn create(name: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: email.into(),
        metadata: HashMap::from([("team".into(), "blue".into())]),
        age: Some(30),
    }
}

on_every_backend!(
    owned:
    create_returns_the_stored_user,
    bad_input_is_invalid_argument_naming_the_field,
    a_taken_email_is_already_exists,
    get_update_delete_report_not_found_and_empty_ids,
    updates_are_partial_and_keep_emails_unique,
    pages_visit_every_user_exactly_once_under_concurrent_inserts,
    garbled_page_tokens_are_invalid_argument,
    bulk_create_stores_the_valid_and_reports_the_invalid,
);

async fn create_returns_the_stored_user(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    let user = users
        .create_user(create("Ada Lovelace", "ADA@Example.com"))
        .await
        .unwrap()
        .into_inner();
    let id = uuid::Uuid::parse_str(&user.id).expect("a UUID id");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(user.name, "Ada Lovelace");
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.age, Some(30));
    assert_eq!(user.metadata["team"], "blue");
    assert!(user.created_at.is_some() && user.updated_at.is_some());

    let fetched = users
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, user);
}

async fn bad_input_is_invalid_argument_naming_the_field(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    let cases = [
        (create("Ada", "not-an-email"), "email"),
        (create("Ada", "ada@"), "email"),
        (create("", "ada@example.com"), "name"),
        (create(&"n".repeat(101), "ada@example.com"), "name"),
        (
            CreateUserRequest {
                age: Some(-1),
                ..create("Ada", "ada@example.com")
            },
            "age",
        ),
    ];
    for (request, field) in cases {
        let status = users.create_user(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
}

async fn a_taken_email_is_already_exists(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    users
        .create_user(create("A", "a@example.com"))
        .await
        .unwrap();
    let status = users
        .create_user(create("B", "A@example.com"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

async fn get_update_delete_report_not_found_and_empty_ids(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let get = users
        .get_user(GetUserRequest {
            id: unknown.clone(),
        })
        .await;
    assert_eq!(get.unwrap_err().code(), Code::NotFound);
    let update = users
        .update_user(UpdateUserRequest {
            id: unknown.clone(),
            name: "X".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(update.unwrap_err().code(), Code::NotFound);
    let delete = users.delete_user(DeleteUserRequest { id: unknown }).await;
    assert_eq!(delete.unwrap_err().code(), Code::NotFound);

    for empty in [
        users
            .get_user(GetUserRequest { id: String::new() })
            .await
            .unwrap_err(),
        users
            .update_user(UpdateUserRequest::default())
            .await
            .unwrap_err(),
        users
            .delete_user(DeleteUserRequest { id: String::new() })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert!(empty.message().contains("id"), "{}", empty.message());
    }

    let user = users
        .create_user(create("Gone", "gone@example.com"))
        .await
        .unwrap()
        .into_inner();
    users
        .delete_user(DeleteUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap();
    let after = users.get_user(GetUserRequest { id: user.id }).await;
    assert_eq!(after.unwrap_err().code(), Code::NotFound);
}

async fn updates_are_partial_and_keep_emails_unique(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    let ada = users
        .create_user(create("Ada", "ada@example.com"))
        .await
        .unwrap()
        .into_inner();
    users
        .create_user(create("Bob", "bob@example.com"))
        .await
        .unwrap();

    let renamed = users
        .update_user(UpdateUserRequest {
            id: ada.id.clone(),
            name: "Ada L.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "Ada L.");
    assert_eq!(renamed.email, ada.email, "empty fields stay unchanged");
    assert_eq!(renamed.metadata, ada.metadata);
    assert_eq!(renamed.age, ada.age);

    let taken = users
        .update_user(UpdateUserRequest {
            id: ada.id.clone(),
            email: "bob@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
}

pub(crate) async fn list_all(users: &mut Client, filter: &str, page_size: i32) -> (Vec<User>, i32) {
    let mut all = Vec::new();
    let mut token = String::new();
    let mut total = 0;
    loop {
        let page = users
            .list_users(ListUsersRequest {
                page_size,
                page_token: token,
                filter: filter.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= page_size.max(10) as usize);
        total = total.max(page.total_count);
        all.extend(page.users);
        if page.next_page_token.is_empty() {
            return (all, total);
        }
        token = page.next_page_token;
    }
}

async fn pages_visit_every_user_exactly_once_under_concurrent_inserts(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    for i in 0..45 {
        users
            .create_user(create(
                &format!("Early {i}"),
                &format!("early{i}@example.com"),
            ))
            .await
            .unwrap();
    }
    let mut writer = client(&app).await;
    let inserting = tokio::spawn(async move {
        for i in 0..30 {
            writer
                .create_user(create(
                    &format!("Late {i}"),
                    &format!("late{i}@example.com"),
                ))
                .await
                .unwrap();
        }
    });
    let (seen, _) = list_all(&mut users, "", 7).await;
    inserting.await.unwrap();

    let ids: Vec<&str> = seen.iter().map(|u| u.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no user is visited twice");
    let early = seen.iter().filter(|u| u.name.starts_with("Early")).count();
    assert_eq!(
        early, 45,
        "every user that existed before the walk is visited"
    );

    let (filtered, total) = list_all(&mut users, "LATE", 4).await;
    assert_eq!(filtered.len(), 30);
    assert_eq!(total, 30, "total_count counts the matches");

    let first = users
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.users.len(), 10, "page_size defaults to 10");
    assert_eq!(first.total_count, 75);
}

async fn garbled_page_tokens_are_invalid_argument(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    for token in ["garbage", "AAAA", "eyJ2IjoxfQ"] {
        let status = users
            .list_users(ListUsersRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token}");
        assert!(
            status.message().contains("page token"),
            "{}",
            status.message()
        );
    }
}

async fn bulk_create_stores_the_valid_and_reports_the_invalid(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    users
        .create_user(create("Taken", "taken@example.com"))
        .await
        .unwrap();
    let mut requests = Vec::new();
    for i in 0..1200 {
        requests.push(create(
            &format!("Bulk {i}"),
            &format!("bulk{i}@example.com"),
        ));
    }
    requests[3].email = "broken".into(); // position 3: invalid email
    requests[700].name = String::new(); // position 700: empty name
    requests[900].email = "taken@example.com".into(); // position 900: taken

    let response = users
        .bulk_create_users(tokio_stream_of(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.created_count, 1197);
    assert_eq!(response.users.len(), 1197);
    assert_eq!(response.errors.len(), 3, "{:?}", response.errors);
    assert!(response.errors[0].starts_with("request 3:") && response.errors[0].contains("email"));
    assert!(response.errors[1].starts_with("request 700:") && response.errors[1].contains("name"));
    assert!(
        response.errors[2].starts_with("request 900:") && response.errors[2].contains("exists")
    );

    let (all, total) = list_all(&mut users, "bulk", 1000).await;
    assert_eq!(all.len(), 1197);
    assert_eq!(total, 1197);
}

fn tokio_stream_of(
    requests: Vec<CreateUserRequest>,
) -> impl futures_util::Stream<Item = CreateUserRequest> + Send + 'static {
    futures_util::stream::iter(requests)
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let app = spawn_app().await;
    let cases = [
        (None, "missing"),
        (Some("Bearer not-a-jwt".to_owned()), "invalid token"),
        (Some(format!("Basic {}", token("x", None))), "Bearer"),
    ];
    for (authorization, expected) in cases {
        let mut users = client_with(&app, authorization).await;
        let status = users
            .get_user(GetUserRequest {
                id: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains(expected), "{}", status.message());
    }
}
