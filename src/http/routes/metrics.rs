//! `GET /metrics`: Prometheus text format.

use actix_web::{web, HttpResponse};

use crate::{
    actors::{breaker::GetBreaker, events::GetEventStats, history::GetHistoryStats, hub::GetStats},
    http::HttpState,
    metrics::Scrape,
};

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let scrape = Scrape {
        hub: state.chat.hub.send(GetStats).await.ok(),
        events: state.events.send(GetEventStats).await.ok(),
        db: Some(state.db.stats()),
        pool: Some(state.db.pool_status()),
        rate_limit_keys: Some(state.rate_limit.limiters.keys().await),
        breaker: state.breaker.send(GetBreaker).await.ok(),
        history: match &state.history {
            Some(writer) => writer.send(GetHistoryStats).await.ok(),
            None => None,
        },
        tx: match state.db.sharding() {
            Some(sharding) => sharding
                .coordinator
                .send(crate::actors::tx::GetTxStats)
                .await
                .ok(),
            None => None,
        },
        sagas: state
            .sagas
            .send(crate::actors::saga::GetSagaStats)
            .await
            .ok(),
        user_cache: match &state.user_cache {
            Some(cache) => cache
                .send(crate::actors::user_cache::GetCacheStats)
                .await
                .ok(),
            None => None,
        },
        broker: match &state.broker {
            Some(broker) => broker
                .send(crate::actors::broker::GetBrokerStats)
                .await
                .ok(),
            None => None,
        },
        rate_limit: Some(state.rate_limit.limiters.stats()),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&scrape))
}
