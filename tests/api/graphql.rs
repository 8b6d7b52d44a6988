//! GraphQL over HTTP: queries, mutations and their error codes, auth, limits, N+1.

use serde_json::{json, Value};
use switchboard::domain::{NewPost, PostContent, PostTitle, Tags, UserId};

use crate::{
    helpers::{spawn_app, spawn_app_on, TestApp, TestDb},
    on_both_backends,
    ws_client::token,
};

/// POSTs a GraphQL document (with a token when `auth`), returning status and body.
async fn graphql(app: &TestApp, query: &str, variables: Value, auth: bool) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if auth {
        request = request.bearer_auth(token("front-end", None));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn create_user(app: &TestApp, name: &str, email: &str) -> Value {
    let (_, body) = graphql(
        app,
        "mutation($input: UserInput!) { createUser(input: $input) { id name email age createdAt } }",
        json!({ "input": { "name": name, "email": email, "age": 33 } }),
        true,
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["createUser"].clone()
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

on_both_backends!(
    owned:
    users_and_posts_are_created_and_queried,
    mutation_errors_carry_codes,
    nested_lists_cost_a_constant_number_of_queries,
);

async fn users_and_posts_are_created_and_queried(db: TestDb) {
    let app = spawn_app_on(db).await;
    let ada = create_user(&app, "Ada", "ada@example.com").await;
    assert_eq!(ada["age"], 33);
    assert!(chrono::DateTime::parse_from_rfc3339(ada["createdAt"].as_str().unwrap()).is_ok());
    create_user(&app, "Bob", "bob@example.com").await;

    let (_, body) = graphql(
        &app,
        "mutation($input: PostInput!) { createPost(input: $input) { id title tags published author { name } } }",
        json!({ "input": { "authorId": ada["id"], "title": "Hello", "content": "World", "tags": ["intro"], "published": true } }),
        true,
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let post = &body["data"]["createPost"];
    assert_eq!(post["author"]["name"], "Ada");
    assert_eq!(post["tags"], json!(["intro"]));

    let query = "query($id: String!, $post: String!) { user(id: $id) { name posts { title } } post(id: $post) { content author { email } } }";
    let (status, body) = graphql(
        &app,
        query,
        json!({ "id": ada["id"], "post": post["id"] }),
        false,
    )
    .await;
    assert_eq!(status, 200, "queries need no token: {body}");
    assert_eq!(body["data"]["user"]["posts"][0]["title"], "Hello");
    assert_eq!(body["data"]["post"]["author"]["email"], "ada@example.com");

    let unknown = uuid::Uuid::now_v7().to_string();
    let (_, body) = graphql(
        &app,
        query,
        json!({ "id": unknown, "post": unknown }),
        false,
    )
    .await;
    assert!(
        body["errors"].is_null(),
        "unknown ids are null, not errors: {body}"
    );
    assert!(body["data"]["user"].is_null() && body["data"]["post"].is_null());

    let (_, body) = graphql(
        &app,
        r#"{ users(filter: "BOB") { name } }"#,
        json!({}),
        false,
    )
    .await;
    assert_eq!(body["data"]["users"], json!([{ "name": "Bob" }]));
    let (_, body) = graphql(
        &app,
        "{ users(limit: 1, offset: 1) { name } }",
        json!({}),
        false,
    )
    .await;
    assert_eq!(body["data"]["users"], json!([{ "name": "Bob" }]));
    let (_, body) = graphql(&app, "{ users(limit: 101) { name } }", json!({}), false).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("100"));

    let get = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "{ users { name } }")])
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["data"]["users"].as_array().unwrap().len(), 2);
}

async fn mutation_errors_carry_codes(db: TestDb) {
    let app = spawn_app_on(db).await;
    let ada = create_user(&app, "Ada", "ada@example.com").await;
    let create_user_doc = "mutation($input: UserInput!) { createUser(input: $input) { id } }";
    let create_post_doc = "mutation($input: PostInput!) { createPost(input: $input) { id } }";
    let cases = [
        (
            create_user_doc,
            json!({ "name": "X", "email": "nope" }),
            "BAD_USER_INPUT",
        ),
        (
            create_user_doc,
            json!({ "name": "X", "email": "ADA@example.com" }),
            "DUPLICATE_EMAIL",
        ),
        (
            create_post_doc,
            json!({ "authorId": uuid::Uuid::now_v7().to_string(), "title": "T", "content": "C" }),
            "UNKNOWN_AUTHOR",
        ),
        (
            create_post_doc,
            json!({ "authorId": ada["id"], "title": "  ", "content": "C" }),
            "BAD_USER_INPUT",
        ),
    ];
    for (doc, input, code) in cases {
        let (status, body) = graphql(&app, doc, json!({ "input": input }), true).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(error_code(&body), code, "{input}: {body}");
    }
    let (_, body) = graphql(
        &app,
        create_user_doc,
        json!({ "input": { "name": "X", "email": "x@example.com" } }),
        false,
    )
    .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    let forged = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth("not-a-token")
        .json(&json!({ "query": create_user_doc, "variables": { "input": { "name": "X", "email": "x@example.com" } } }))
        .send()
        .await
        .unwrap();
    let body: Value = forged.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
}

async fn nested_lists_cost_a_constant_number_of_queries(db: TestDb) {
    let app = spawn_app_on(db).await;
    let users: Vec<_> = (0..100)
        .map(|i| switchboard::domain::NewUser {
            name: switchboard::domain::UserName::parse(&format!("U{i}")).unwrap(),
            email: switchboard::domain::Email::parse(&format!("u{i}@example.com")).unwrap(),
            age: None,
            metadata: Default::default(),
        })
        .collect();
    let users = app.database.bulk_create_users(users).await.unwrap();
    for user in &users {
        for n in 0..2 {
            app.database
                .create_post(NewPost {
                    author_id: UserId::parse(&user.id.to_string()).unwrap(),
                    title: PostTitle::parse(&format!("P{n}")).unwrap(),
                    content: PostContent::parse("c").unwrap(),
                    tags: Tags::parse(Vec::new()).unwrap(),
                    published: true,
                })
                .await
                .unwrap();
        }
    }
    let mut counts = Vec::new();
    for limit in [10, 100] {
        // Background work (health pings, the saga resume pass) queries too: the fewest
        // of three tries is the document's own count.
        let mut fewest = u64::MAX;
        for _ in 0..3 {
            let before = app.database.stats().total_queries;
            // The issue's document; a post's author (and that author's posts) come from
            // the same prefetch, so deeper cycles would cost no more queries either.
            let query = format!("{{ users(limit: {limit}) {{ posts {{ author {{ name }} }} }} }}");
            let (_, body) = graphql(&app, &query, json!({}), false).await;
            assert!(body["errors"].is_null(), "{body}");
            let users = body["data"]["users"].as_array().unwrap();
            assert_eq!(users.len(), limit);
            assert_eq!(users[0]["posts"].as_array().unwrap().len(), 2);
            fewest = fewest.min(app.database.stats().total_queries - before);
        }
        counts.push(fewest);
    }
    assert_eq!(
        counts[0], counts[1],
        "queries do not grow with the list: {counts:?}"
    );
    assert!(counts[1] <= 3, "a handful of queries, got {}", counts[1]);
}

#[tokio::test]
async fn get_never_runs_a_mutation() {
    let app = spawn_app().await;
    let mutation =
        r#"mutation { createUser(input: {name: "Eve", email: "eve@example.com"}) { id } }"#;
    let named = r#"query Q { users { name } } mutation M { createUser(input: {name: "Eve", email: "eve@example.com"}) { id } }"#;
    for (query, operation) in [(mutation, None), (named, Some("M"))] {
        let mut params = vec![("query", query)];
        params.extend(operation.map(|name| ("operationName", name)));
        let response = app
            .http
            .get(app.url("/graphql"))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{query}");
        assert_eq!(response.headers()["allow"], "POST");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "METHOD_NOT_ALLOWED", "{body}");
    }
    // The query of the same document still runs with GET, and nothing was created.
    let response = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", named), ("operationName", "Q")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["users"], json!([]), "{body}");
}

#[tokio::test]
async fn every_error_carries_a_code_and_no_empty_locations() {
    let app = spawn_app().await;
    let deep = format!("{{ users {}", "{ posts ".repeat(12) + &"}".repeat(13));
    let cases = [
        ("{ users { name ", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        (deep.as_str(), "<any>"),
        (
            "query A { users { name } } query B { users { id } }",
            "BAD_REQUEST",
        ),
    ];
    for (document, expected) in cases {
        let (status, body) = graphql(&app, document, json!({}), false).await;
        assert_eq!(status, 400, "{document}: {body}");
        let errors = body["errors"].as_array().expect("errors");
        assert!(!errors.is_empty(), "{body}");
        for error in errors {
            let code = error["extensions"]["code"].as_str();
            assert!(
                code.is_some(),
                "{document}: an error without a code: {body}"
            );
            if expected != "<any>" {
                assert_eq!(code, Some(expected), "{document}: {body}");
            }
            if let Some(locations) = error.get("locations") {
                assert!(
                    !locations.as_array().unwrap().is_empty(),
                    "{document}: empty locations: {body}"
                );
            }
        }
    }
}

/// The standard introspection query of graphql-js (`getIntrospectionQuery()`, with the
/// nine `ofType` levels of its newer versions), as gql, GraphiQL and Apollo tools send it.
const INTROSPECTION: &str = include_str!("fixtures/introspection.graphql");

#[tokio::test]
async fn the_standard_introspection_query_works_under_the_default_limits() {
    let app = spawn_app().await;
    let (status, body) = graphql(&app, INTROSPECTION, json!({}), false).await;
    assert_eq!(status, 200, "{body}");
    let schema = &body["data"]["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query", "{body}");
    let types: Vec<&str> = schema["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"User") && types.contains(&"Post"),
        "{types:?}"
    );

    // Ordinary documents are held to the ordinary limits still, also next to introspection.
    let deep = format!("{{ users {}", "{ posts ".repeat(12) + &"}".repeat(13));
    let (status, _) = graphql(&app, &deep, json!({}), false).await;
    assert_eq!(status, 400);
    let mixed = format!(
        "{{ __schema {{ queryType {{ name }} }} {} }}",
        &deep[2..deep.len() - 2]
    );
    let (status, body) = graphql(&app, &mixed, json!({}), false).await;
    assert_eq!(status, 400, "{body}");
    // And introspection itself cannot nest without bound.
    let nested = format!(
        "{{ __schema {{ types {{ {} name {} }} }} }}",
        "ofType { ".repeat(40),
        "}".repeat(40)
    );
    let (status, body) = graphql(&app, &nested, json!({}), false).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn graphql_response_json_is_answered_to_clients_that_accept_it() {
    let app = spawn_app().await;
    for (query, status) in [("{ users { name } }", 200), ("{ nope }", 400)] {
        let response = app
            .http
            .post(app.url("/graphql"))
            .header(
                "accept",
                "application/graphql-response+json, application/json;q=0.9",
            )
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/graphql-response+json; charset=utf-8"
        );
        let body: Value = response.json().await.unwrap();
        assert!(body.get("data").is_some() || body.get("errors").is_some());
    }
    let plain = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "{ users { name } }")])
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["content-type"], "application/json");
}
