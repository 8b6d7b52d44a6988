//! The server API over HTTP:
//! `POST /api/v1/{publish,broadcast,private,presence,history,rooms,disconnect,unsubscribe}`
//! with JSON bodies, the same operations, auth and errors as gRPC's `ChatService`
//! ([`ServerApi`]), described by the OpenAPI 3 document at `GET /api/v1/openapi.json`,
//! generated from these handlers and their types (utoipa).
//!
//! Errors have one shape: `{"error": "<what went wrong>", "code": "<CODE>"}` with the
//! codes gRPC uses — 400 `INVALID_ARGUMENT`, 401 `UNAUTHENTICATED` (with
//! `WWW-Authenticate: Bearer`), 403 `PERMISSION_DENIED`, 404 `NOT_FOUND`, 409 `ABORTED`,
//! 503 `UNAVAILABLE`.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{de::DeserializeOwned, Serialize};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

use crate::{
    auth::Claims,
    http::HttpState,
    server_api::{
        BroadcastInput, Broadcasted, DisconnectInput, Disconnected, Failure, HistoryPage,
        MemberInfo, MessageInfo, Presence, PrivateInput, PublishInput, Published, RoomInfo,
        RoomInput, RoomList, RoomResult, RoomsInput, Sent, ServerApi, UnsubscribeInput,
    },
};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/publish", web::post().to(publish))
        .route("/api/v1/broadcast", web::post().to(broadcast))
        .route("/api/v1/private", web::post().to(private))
        .route("/api/v1/presence", web::post().to(presence))
        .route("/api/v1/history", web::post().to(history))
        .route("/api/v1/rooms", web::post().to(rooms))
        .route("/api/v1/disconnect", web::post().to(disconnect))
        .route("/api/v1/unsubscribe", web::post().to(unsubscribe))
        .route("/api/v1/openapi.json", web::get().to(openapi));
}

/// Every error of the server API over HTTP.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in plain words.
    pub error: String,
    /// The stable code (`INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`,
    /// `ABORTED`, `UNAVAILABLE`).
    pub code: String,
}

fn failure(failure: Failure) -> HttpResponse {
    use actix_web::http::StatusCode;
    let status = match failure {
        Failure::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Failure::PermissionDenied => StatusCode::FORBIDDEN,
        Failure::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Failure::NotFound(_) => StatusCode::NOT_FOUND,
        Failure::Aborted => StatusCode::CONFLICT,
        Failure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = HttpResponse::build(status).json(ErrorBody {
        error: failure.to_string(),
        code: failure.code().to_owned(),
    });
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The caller's verified token, which must allow the server API — checked before the
/// body is read, so a refused caller learns nothing about its request.
fn caller(state: &HttpState, req: &HttpRequest) -> Result<Option<Claims>, Failure> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims =
        super::graphql::identify(state, authorization).map_err(Failure::Unauthenticated)?;
    crate::server_api::authorize(claims.as_ref())?;
    Ok(claims)
}

/// The JSON body, or the documented 400.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|error| Failure::InvalidArgument(format!("the JSON body: {error}")))
}

/// Checks the caller, reads the JSON body as `I` (an empty body reads as `I::default()`
/// when `empty` is given), runs `op`, and answers its result or the documented error.
async fn serve<I, O, F, Fut>(
    state: &HttpState,
    req: &HttpRequest,
    bytes: &[u8],
    empty: Option<I>,
    op: F,
) -> HttpResponse
where
    I: DeserializeOwned,
    O: Serialize,
    F: FnOnce(ServerApi, Option<Claims>, I) -> Fut,
    Fut: std::future::Future<Output = Result<O, Failure>>,
{
    let result = async {
        let claims = caller(state, req)?;
        let input = match empty {
            Some(input) if bytes.is_empty() => input,
            _ => body(bytes)?,
        };
        op(state.server_api.clone(), claims, input).await
    }
    .await;
    match result {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(error) => failure(error),
    }
}

/// Publishes a message into a room as a member would: numbered, stored, relayed to the
/// room's members on every node, recoverable; `from` is the token's subject.
#[utoipa::path(
    post, path = "/api/v1/publish", request_body = PublishInput,
    responses(
        (status = 200, description = "Published", body = Published),
        (status = 400, description = "Bad room, empty content or bad JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token's role is not `service` or `admin`", body = ErrorBody),
        (status = 409, description = "The first publish with this key failed; retry", body = ErrorBody),
        (status = 503, description = "Shutting down or the cluster is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn publish(state: web::Data<HttpState>, req: HttpRequest, bytes: web::Bytes) -> HttpResponse {
    serve(
        &state,
        &req,
        &bytes,
        None,
        |api, claims, input: PublishInput| async move { api.publish(claims.as_ref(), input).await },
    )
    .await
}

/// Publishes one message into each of several rooms (1–100); one result per room, and a
/// room that fails does not stop the others.
#[utoipa::path(
    post, path = "/api/v1/broadcast", request_body = BroadcastInput,
    responses(
        (status = 200, description = "Per-room results", body = Broadcasted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn broadcast(
    state: web::Data<HttpState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    serve(&state, &req, &bytes, None, |api, claims, input: BroadcastInput| async move {
        api.broadcast(claims.as_ref(), input).await
    })
    .await
}

/// A private message to every session of a user, on every node.
#[utoipa::path(
    post, path = "/api/v1/private", request_body = PrivateInput,
    responses(
        (status = 200, description = "Handed to the user's sessions", body = Sent),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "The user is not connected", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn private(state: web::Data<HttpState>, req: HttpRequest, bytes: web::Bytes) -> HttpResponse {
    serve(&state, &req, &bytes, None, |api, claims, input: PrivateInput| async move {
        api.send_private(claims.as_ref(), input).await
    })
    .await
}

/// Who is in a room (the cluster's view), listed up to the presence limit.
#[utoipa::path(
    post, path = "/api/v1/presence", request_body = RoomInput,
    responses(
        (status = 200, description = "The room's members", body = Presence),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn presence(
    state: web::Data<HttpState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    serve(&state, &req, &bytes, None, |api, claims, input: RoomInput| async move {
        api.presence(claims.as_ref(), &input.room).await
    })
    .await
}

/// A room's last `limit` messages (default 50), or those after `since_offset`, oldest
/// first unless `reverse`; `recovered` says whether none are missing.
#[utoipa::path(
    post, path = "/api/v1/history", request_body = RoomInput,
    responses(
        (status = 200, description = "The room's last messages", body = HistoryPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn history(state: web::Data<HttpState>, req: HttpRequest, bytes: web::Bytes) -> HttpResponse {
    serve(
        &state,
        &req,
        &bytes,
        None,
        |api, claims, input: RoomInput| async move { api.history(claims.as_ref(), input).await },
    )
    .await
}

/// The rooms with members on the answering node.
#[utoipa::path(
    post, path = "/api/v1/rooms", request_body = RoomsInput,
    responses(
        (status = 200, description = "The rooms", body = RoomList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn rooms(state: web::Data<HttpState>, req: HttpRequest, bytes: web::Bytes) -> HttpResponse {
    let empty = Some(RoomsInput::default());
    serve(
        &state,
        &req,
        &bytes,
        empty,
        |api, claims, input: RoomsInput| async move {
            let prefix = input.prefix.unwrap_or_default();
            api.rooms(claims.as_ref(), &prefix).await
        },
    )
    .await
}

/// Closes every session of a user, on every node, with a close code and reason.
#[utoipa::path(
    post, path = "/api/v1/disconnect", request_body = DisconnectInput,
    responses(
        (status = 200, description = "What was closed", body = Disconnected),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn disconnect(
    state: web::Data<HttpState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    serve(
        &state,
        &req,
        &bytes,
        None,
        |api, claims, input: DisconnectInput| async move {
            api.disconnect(claims.as_ref(), input).await
        },
    )
    .await
}

/// Takes every session of a user out of a room, on every node.
#[utoipa::path(
    post, path = "/api/v1/unsubscribe", request_body = UnsubscribeInput,
    responses(
        (status = 200, description = "What was taken out", body = Disconnected),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn unsubscribe(
    state: web::Data<HttpState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    serve(
        &state,
        &req,
        &bytes,
        None,
        |api, claims, input: UnsubscribeInput| async move {
            api.unsubscribe(claims.as_ref(), input).await
        },
    )
    .await
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A token whose role is `service` or `admin`"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the server API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard server API",
        description = "Publish into rooms, read presence and history, list rooms and \
                       disconnect users, for backends. The same operations are served over \
                       gRPC as switchboard.chat.v1.ChatService."
    ),
    paths(publish, broadcast, private, presence, history, rooms, disconnect, unsubscribe),
    components(schemas(
        PublishInput, Published, BroadcastInput, Broadcasted, RoomResult, PrivateInput, Sent,
        RoomInput, Presence, MemberInfo, HistoryPage, MessageInfo, RoomsInput, RoomList,
        RoomInfo, DisconnectInput, Disconnected, UnsubscribeInput, ErrorBody
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

async fn openapi() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}
