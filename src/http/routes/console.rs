//! `GET /graphiql`: the GraphQL console — query editor, variables, bearer token, results,
//! schema docs read by introspection, subscriptions over `graphql-transport-ws`.
//!
//! Its page, script and styles are compiled into the binary and nothing is fetched from
//! elsewhere, so it works offline and under a CSP without `unsafe-inline`. GraphiQL and
//! Playground (what juniper serves) load React and their editors from CDNs; Playground is
//! retired upstream, so `/playground` now redirects here.

use actix_web::{http::header, web, HttpResponse};

const PAGE: &str = include_str!("../static/console.html");
const SCRIPT: &str = include_str!("../static/console.js");
const STYLES: &str = include_str!("../static/console.css");

/// Everything the console may load or connect to: itself.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/graphiql", super::get_or_head().to(page))
        .route("/graphiql/console.js", super::get_or_head().to(script))
        .route("/graphiql/console.css", super::get_or_head().to(styles))
        .route("/playground", super::get_or_head().to(playground));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // Small, and versioned with the binary: revalidate rather than cache for long.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn styles() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLES)
}

/// Playground bookmarks land on the console.
async fn playground() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/graphiql"))
        .finish()
}
