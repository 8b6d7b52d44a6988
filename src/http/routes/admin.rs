//! Admin routes (a token with `role: "admin"`; 401 without a valid token, 403 with
//! another role):
//!
//! - `GET /admin/sagas?state=running|compensating|completed|compensated|stuck&limit=N` —
//!   saga runs, newest first (limit 1–1000, default 100);
//! - `GET /admin/sagas/{id}` — one run with each step's state, attempts, output and last
//!   error.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    actors::saga::{SagaLog, SagaRecord, StepRecord},
    http::HttpState,
};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/sagas", web::get().to(list))
        .route("/admin/sagas/{id}", web::get().to(show))
        .route("/cluster", web::get().to(cluster));
}

const STATES: &[&str] = &[
    "running",
    "compensating",
    "completed",
    "compensated",
    "stuck",
];

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// `None` when the caller is an admin; else the response refusing it.
fn refuse_non_admin(state: &HttpState, req: &HttpRequest) -> Option<HttpResponse> {
    use actix_web::http::StatusCode;
    let unauthorized = |message: String| {
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match super::graphql::identify(state, authorization) {
        Ok(None) => Some(unauthorized(
            "admin routes need an `Authorization: Bearer <token>` header".into(),
        )),
        Err(reason) => Some(unauthorized(reason)),
        Ok(Some(claims)) if !claims.is_admin() => Some(error(
            StatusCode::FORBIDDEN,
            "admin routes need a token with role `admin`",
        )),
        Ok(Some(_)) => None,
    }
}

fn saga_json(saga: SagaRecord) -> Value {
    let input: Value = serde_json::from_str(&saga.input).unwrap_or(Value::Null);
    json!({
        "id": saga.id,
        "type": saga.saga_type,
        "key": saga.saga_key,
        "state": saga.state,
        "stuck": saga.stuck,
        "owner": saga.owner,
        "lease_until": saga.lease_until.map(|t| t.and_utc().to_rfc3339()),
        "last_error": saga.last_error,
        "created_at": saga.created_at.and_utc().to_rfc3339(),
        "updated_at": saga.updated_at.and_utc().to_rfc3339(),
        "input": input,
    })
}

fn step_json(step: StepRecord) -> Value {
    let output: Option<Value> = step
        .output
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok());
    json!({
        "index": step.step_index,
        "name": step.name,
        "state": step.state,
        "attempts": step.attempts,
        "compensation_attempts": step.compensation_attempts,
        "output": output,
        "last_error": step.last_error,
        "updated_at": step.updated_at.and_utc().to_rfc3339(),
    })
}

async fn list(
    state: web::Data<HttpState>,
    req: HttpRequest,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    if let Some(refused) = refuse_non_admin(&state, &req) {
        return refused;
    }
    let Ok(query) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad query: expected state and limit",
        );
    };
    if let Some(wanted) = &query.state {
        if !STATES.contains(&wanted.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown state `{wanted}`: expected one of {}",
                    STATES.join(", ")
                ),
            );
        }
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be 1–1000");
    }
    match SagaLog::new(state.db.clone())
        .list(query.state.as_deref(), limit)
        .await
    {
        Ok(sagas) => HttpResponse::Ok().json(json!({
            "sagas": sagas.into_iter().map(saga_json).collect::<Vec<_>>(),
        })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /cluster`: the nodes alive, each as it last described itself.
async fn cluster(state: web::Data<HttpState>, req: HttpRequest) -> HttpResponse {
    use actix_web::http::StatusCode;
    if let Some(refused) = refuse_non_admin(&state, &req) {
        return refused;
    }
    let Some(broker) = &state.broker else {
        return error(
            StatusCode::NOT_FOUND,
            "cluster mode is off (start the node with --redis-url)",
        );
    };
    match broker.send(crate::actors::broker::ReadCluster).await {
        Ok(Ok(nodes)) => HttpResponse::Ok().json(json!({ "nodes": nodes })),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster broker is not running",
        ),
    }
}

async fn show(
    state: web::Data<HttpState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    if let Some(refused) = refuse_non_admin(&state, &req) {
        return refused;
    }
    match SagaLog::new(state.db.clone()).load(&id).await {
        Ok(Some((saga, steps))) => {
            let mut body = saga_json(saga);
            body["steps"] = steps.into_iter().map(step_json).collect();
            HttpResponse::Ok().json(body)
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no saga `{id}`")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
