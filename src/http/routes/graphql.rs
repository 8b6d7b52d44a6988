//! GraphQL over HTTP (`POST`/`GET /graphql`; the WebSocket transport, `/subscriptions`,
//! is in [`super::graphql_ws`] and the console, `/graphiql`, in [`super::console`]).

use std::{sync::Arc, time::Duration};

use actix_web::{
    http::{header, Method},
    web, HttpMessage, HttpRequest, HttpResponse,
};
use juniper::{
    http::{GraphQLBatchRequest, GraphQLBatchResponse, GraphQLRequest, GraphQLResponse},
    GraphQLError, InputValue,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    auth::{bearer_token, Claims},
    config::OriginPolicy,
    graphql::{cost, errors::code, Context, Schema},
    http::{middleware::DatabaseUnavailable, HttpState},
};

/// Where the GraphQL endpoints live.
pub const GRAPHQL_PATH: &str = "/graphql";
/// The subscription endpoint.
pub const SUBSCRIPTIONS_PATH: &str = "/subscriptions";

/// What the GraphQL routes need.
#[derive(Clone)]
pub struct GraphqlState {
    /// The schema (with its depth, field and token limits).
    pub schema: Arc<Schema>,
    /// The same schema with introspection's larger depth and field budget, for documents
    /// that select nothing else.
    pub introspection: Arc<Schema>,
    /// Highest document cost accepted (see [`crate::graphql::cost`]); a batch's documents
    /// are added together.
    pub max_cost: u64,
    /// Most operations in one batched request.
    pub max_batch: usize,
    /// Concurrent subscriptions per WebSocket connection.
    pub max_operations_per_connection: usize,
    /// Keep-alive interval on subscription connections.
    pub keep_alive: Duration,
    /// Origins allowed to call `/graphql` from a browser on another origin.
    pub cors_origins: OriginPolicy,
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(GRAPHQL_PATH, web::post().to(post))
        .route(GRAPHQL_PATH, web::get().to(get))
        .route(GRAPHQL_PATH, web::method(Method::OPTIONS).to(preflight))
        .route(
            SUBSCRIPTIONS_PATH,
            web::get().to(super::graphql_ws::subscriptions),
        );
}

pub(super) fn context(state: &HttpState, identity: Result<Option<Claims>, String>) -> Context {
    Context {
        db: state.db.clone(),
        events: state.events.clone(),
        sagas: state.sagas.clone(),
        identity,
    }
}

/// `Ok(None)` without a token; `Err` with a reason for a bad one. A bare token (no
/// scheme) is accepted too, as subscription clients often send one.
pub(super) fn identify(
    state: &HttpState,
    authorization: Option<&str>,
) -> Result<Option<Claims>, String> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let token = match bearer_token(value) {
        Some(token) => token,
        None if !value.trim().contains(' ') => value.trim(),
        None => return Err("the authorization must be `Bearer <token>`".into()),
    };
    state
        .chat
        .auth
        .verify(token)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The caller of an HTTP request: the rate-limit middleware has usually verified the
/// token already and left the claims in the request extensions.
fn request_identity(state: &HttpState, req: &HttpRequest) -> Result<Option<Claims>, String> {
    if let Some(claims) = req.extensions().get::<Claims>() {
        return Ok(Some(claims.clone()));
    }
    identify(state, authorization(req))
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "errors": [{ "message": message.into() }] }))
}

fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn execute(
    state: &HttpState,
    req: &HttpRequest,
    request: GraphQLBatchRequest,
) -> HttpResponse {
    let graphql = &state.graphql;
    let requests = match &request {
        GraphQLBatchRequest::Single(single) => std::slice::from_ref(single),
        GraphQLBatchRequest::Batch(many) => many.as_slice(),
    };
    if requests.len() > graphql.max_batch {
        return HttpResponse::BadRequest().json(json!({ "errors": [{
            "message": format!(
                "a batch may carry at most {} operations; this one has {}",
                graphql.max_batch,
                requests.len()
            ),
            "extensions": { "code": code::BATCH_LIMIT_EXCEEDED, "limit": graphql.max_batch },
        }] }));
    }
    let introspection = requests.iter().all(|r| {
        cost::introspection_only(
            &graphql.introspection,
            &r.query,
            r.operation_name.as_deref(),
        )
    });
    let schema = if introspection {
        &graphql.introspection
    } else {
        &graphql.schema
    };
    if let Err(refusal) = cost::check_all(schema, requests, graphql.max_cost) {
        return HttpResponse::BadRequest().json(json!({ "errors": [refusal_error(&refusal)] }));
    }
    let context = context(state, request_identity(state, req));
    let response = request.execute(schema, &context).await;
    let ok = response.is_ok();
    let body = coded_body(response);
    if !ok {
        return HttpResponse::BadRequest().json(body);
    }
    if has_error_code(&body, code::UNAVAILABLE) {
        // Tells clients and the circuit breaker that the database, not the query, failed.
        let mut response = HttpResponse::ServiceUnavailable().json(body);
        response.extensions_mut().insert(DatabaseUnavailable);
        return response;
    }
    if has_error_code(&body, code::BUSY) {
        // Overload: worth a retry soon, and nothing the breaker should count.
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(body);
    }
    HttpResponse::Ok().json(body)
}

/// A (batch) response as JSON in which every error carries `extensions.code` — juniper
/// leaves it off request errors (parse, validation, operation selection) — and no error
/// has an empty `locations`.
fn coded_body(response: GraphQLBatchResponse) -> serde_json::Value {
    fn one(response: GraphQLResponse) -> serde_json::Value {
        let error = match response.into_result() {
            Ok(result) => {
                let mut body = serde_json::to_value(GraphQLResponse::from_result(Ok(result)))
                    .unwrap_or_default();
                if let Some(errors) = body.get_mut("errors").and_then(|e| e.as_array_mut()) {
                    errors.iter_mut().for_each(|e| tidy(e, code::INTERNAL));
                }
                return body;
            }
            Err(error) => error,
        };
        let code = match error {
            GraphQLError::ParseError(_) => code::GRAPHQL_PARSE_FAILED,
            GraphQLError::ValidationError(_) => code::GRAPHQL_VALIDATION_FAILED,
            _ => code::BAD_REQUEST,
        };
        let mut errors = serde_json::to_value(&error).unwrap_or_else(|_| json!([]));
        if let Some(errors) = errors.as_array_mut() {
            errors.iter_mut().for_each(|e| tidy(e, code));
        }
        json!({ "errors": errors })
    }
    /// Adds `code` unless the error has one; drops an empty `locations`.
    fn tidy(error: &mut serde_json::Value, code: &str) {
        let Some(error) = error.as_object_mut() else {
            return;
        };
        if error
            .get("locations")
            .and_then(|l| l.as_array())
            .is_some_and(|l| l.is_empty())
        {
            error.remove("locations");
        }
        let extensions = error.entry("extensions").or_insert_with(|| json!({}));
        if let Some(extensions) = extensions.as_object_mut() {
            extensions.entry("code").or_insert_with(|| code.into());
        }
    }
    match response {
        GraphQLBatchResponse::Single(response) => one(response),
        GraphQLBatchResponse::Batch(responses) => responses.into_iter().map(one).collect(),
    }
}

/// The GraphQL error object for a document refused before execution (the same on every
/// transport).
pub fn refusal_error(refusal: &cost::Refusal) -> serde_json::Value {
    match refusal {
        cost::Refusal::Invalid(message) => json!({
            "message": message,
            "extensions": { "code": code::GRAPHQL_VALIDATION_FAILED },
        }),
        cost::Refusal::TooCostly(exceeded) => json!({
            "message": exceeded.to_string(),
            "extensions": {
                "code": code::COST_LIMIT_EXCEEDED,
                "cost": exceeded.cost,
                "limit": exceeded.limit,
            },
        }),
    }
}

/// Whether any error in a (batch) response carries `extensions.code` = `wanted`.
fn has_error_code(body: &serde_json::Value, wanted: &str) -> bool {
    let responses = match body {
        serde_json::Value::Array(many) => many.iter().collect(),
        single => vec![single],
    };
    responses.iter().any(|response| {
        response["errors"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e["extensions"]["code"] == wanted))
    })
}

/// The request's `Origin` when it may call cross-origin (`None` for same-origin calls
/// or origins not allowed, which then get no CORS headers and the browser blocks them).
fn cors_origin<'r>(state: &HttpState, req: &'r HttpRequest) -> Option<&'r str> {
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    state
        .graphql
        .cors_origins
        .allows(Some(origin), host)
        .then_some(origin)
}

fn with_cors(mut response: HttpResponse, origin: Option<&str>) -> HttpResponse {
    if let Some(value) = origin.and_then(|o| header::HeaderValue::from_str(o).ok()) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    response
}

/// Answers a CORS preflight: 204 with the allowed methods and headers for an allowed
/// origin, 403 for any other.
async fn preflight(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    match cors_origin(&state, &req) {
        Some(origin) => {
            let response = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "content-type, authorization",
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .finish();
            with_cors(response, Some(origin))
        }
        None => HttpResponse::Forbidden().json(json!({ "error": "origin not allowed" })),
    }
}

async fn post(req: HttpRequest, body: web::Bytes, state: web::Data<HttpState>) -> HttpResponse {
    let origin = cors_origin(&state, &req);
    let response = media_type(&req, post_inner(&req, body, &state).await);
    with_cors(response, origin)
}

/// The GraphQL-over-HTTP media type, for clients that ask for it.
pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// Answers with `application/graphql-response+json` when the client accepts it (its
/// status codes are already the spec's: 400 for a request that never ran, 200 with
/// `errors` for field errors, 503 when the database is down), `application/json`
/// otherwise.
fn media_type(req: &HttpRequest, mut response: HttpResponse) -> HttpResponse {
    // actix-web's typed `Accept` parses the list and its q-values.
    let accepts = req.get_header::<header::Accept>().is_some_and(|accept| {
        accept.iter().any(|item| {
            item.item.essence_str() == GRAPHQL_RESPONSE_JSON && item.quality > header::q(0.0)
        })
    });
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if accepts && is_json {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/graphql-response+json; charset=utf-8"),
        );
    }
    response
}

async fn post_inner(req: &HttpRequest, body: web::Bytes, state: &HttpState) -> HttpResponse {
    let request = match actix_web::HttpMessage::mime_type(req) {
        Ok(Some(mime)) if mime.essence_str() == "application/graphql" => {
            match std::str::from_utf8(&body) {
                Ok(query) => {
                    GraphQLBatchRequest::Single(GraphQLRequest::new(query.into(), None, None))
                }
                Err(_) => return bad_request("the body is not UTF-8"),
            }
        }
        Ok(Some(mime)) if mime.essence_str() != "application/json" => {
            return bad_request("send application/json (or application/graphql)")
        }
        Err(_) => return bad_request("malformed Content-Type"),
        _ => match serde_json::from_slice::<GraphQLBatchRequest>(&body) {
            Ok(request) => request,
            Err(error) => return bad_request(format!("malformed GraphQL request: {error}")),
        },
    };
    execute(state, req, request).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetParams {
    query: String,
    operation_name: Option<String>,
    variables: Option<String>,
}

async fn get(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let origin = cors_origin(&state, &req);
    with_cors(media_type(&req, get_inner(&req, &state).await), origin)
}

async fn get_inner(req: &HttpRequest, state: &HttpState) -> HttpResponse {
    let params = match web::Query::<GetParams>::from_query(req.query_string()) {
        Ok(params) => params.into_inner(),
        Err(error) => return bad_request(format!("malformed query string: {error}")),
    };
    let variables = match params
        .variables
        .as_deref()
        .map(serde_json::from_str::<InputValue>)
    {
        None => None,
        Some(Ok(variables)) => Some(variables),
        Some(Err(error)) => return bad_request(format!("`variables` is not JSON: {error}")),
    };
    if cost::runs_mutation(
        &state.graphql.schema,
        &params.query,
        params.operation_name.as_deref(),
    ) {
        // GraphQL over HTTP: a GET must not change anything (it may be prefetched,
        // cached or replayed by a crawler).
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "POST"))
            .json(json!({ "errors": [{
                "message": "mutations must be sent with POST",
                "extensions": { "code": code::METHOD_NOT_ALLOWED },
            }] }));
    }
    let request = GraphQLRequest::new(params.query, params.operation_name, variables);
    execute(state, req, GraphQLBatchRequest::Single(request)).await
}
