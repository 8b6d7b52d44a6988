//! Start-up and graceful shutdown.
//!
//! [`Application::build`] binds both listeners first (so port 0 works and a taken port
//! fails at once), opens and migrates the database, and starts the HTTP server (actix-web,
//! one arbiter per worker) and the gRPC server (tonic, on a dedicated multi-threaded tokio
//! runtime that also drives the PostgreSQL connections). [`Application::run_until_stopped`]
//! waits for a shutdown signal, then drains both servers within the configured timeout.

use std::{future::Future, net::SocketAddr, time::Duration, time::Instant};

use actix::{Actor, Addr, Arbiter};
use actix_web::{
    dev::Service as _,
    middleware::{from_fn, Condition},
    web, App, HttpServer,
};
use tokio::{
    runtime::Runtime,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic_health::server::HealthReporter;

use crate::{
    actors::{
        breaker::{BreakerConfig, CircuitBreaker},
        broker::Broker,
        events::{self, Events},
        health::HealthMonitor,
        history::{self, HistoryWriter},
        hub::{self, Hub},
        rate_limit::{Quota, RateLimiters},
        saga::{self, Saga},
        session::Session,
        user_cache::UserCache,
    },
    auth::JwtAuth,
    config::{JwtSecret, Settings},
    db::{migrate, Database, DbError},
    grpc, http,
};

/// Why the server could not start. Each variant renders as one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        /// `HTTP` or `gRPC`.
        protocol: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the {backend} database {url}: {source}")]
    Database {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The configured location, password hidden.
        url: String,
        /// What went wrong.
        source: DbError,
    },
    /// Migrations failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(DbError),
    /// The shards cannot be used as configured.
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    #[error("cannot use the database shards: {0}")]
    Shards(String),
    /// A runtime or server component failed to start.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// Which component.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Rate limiter shard actors (each on its own thread).
const RATE_LIMIT_SHARDS: usize = 2;
/// Client keys tracked at most, across shards.
const RATE_LIMIT_MAX_KEYS: usize = 100_000;

/// A running server.
pub struct Application {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    http_server: actix_web::dev::Server,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    grpc_stop: oneshot::Sender<()>,
    health: HealthReporter,
    draining: watch::Sender<bool>,
    history: Option<Addr<HistoryWriter>>,
    database: Database,
    auth: JwtAuth,
    hub: Addr<Hub>,
    events: Addr<Events>,
    sagas: Addr<Saga>,
    /// The link to the other nodes, in cluster mode.
    broker: Option<Addr<Broker>>,
    /// The thread of the singleton actors (hub, events), stopped last.
    singletons: Arbiter,
    /// The rate limiter shards' threads.
    limiter_arbiters: Vec<Arbiter>,
    shutdown_timeout: Duration,
    /// Runs tonic and the PostgreSQL connection drivers; shut down last.
    io_runtime: IoRuntime,
}

impl Application {
    /// Binds, connects, migrates and starts serving. Must be called inside an actix
    /// `System` (the HTTP server's workers are actix arbiters).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let http_listener = bind("HTTP", settings.http_addr)?;
        // Accepted sockets inherit this: a peer that acknowledges nothing (a client that
        // stopped reading keeps a zero window) for as long as a silent client may stay is
        // cut off by the kernel, even while its session waits behind frames it cannot write.
        socket2::SockRef::from(&http_listener)
            .set_tcp_user_timeout(Some(settings.websocket.pong_timeout))
            .map_err(|source| StartupError::Bind {
                protocol: "HTTP",
                addr: settings.http_addr,
                source,
            })?;
        let grpc_listener = bind("gRPC", settings.grpc_addr)?;
        let http_addr = local_addr("HTTP", &http_listener, settings.http_addr)?;
        let grpc_addr = local_addr("gRPC", &grpc_listener, settings.grpc_addr)?;

        let io_runtime = IoRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("switchboard-io")
                .enable_all()
                .build()
                .map_err(|source| StartupError::Runtime {
                    what: "the I/O runtime",
                    source,
                })?,
        ));

        settings
            .database
            .check_shards()
            .map_err(|e| StartupError::Shards(e.to_string()))?;
        let db_settings = settings.database.clone();
        let database = io_runtime
            .handle()
            .spawn(async move {
                let database = Database::connect(&db_settings).await.map_err(|source| {
                    StartupError::Database {
                        backend: db_settings.url.backend(),
                        url: db_settings.url.to_string(),
                        source,
                    }
                })?;
                if db_settings.migrate_on_start {
                    let applied = migrate::run_pending(&db_settings)
                        .await
                        .map_err(StartupError::Migrate)?;
                    for name in applied {
                        tracing::info!(migration = %name, "applied migration");
                    }
                }
                let shards = open_shards(&db_settings, &database).await?;
                Ok::<_, StartupError>((database, shards))
            })
            .await
            .map_err(|e| StartupError::Runtime {
                what: "the database",
                source: std::io::Error::other(e),
            })??;
        let (database, shards) = database;
        tracing::info!(
            backend = database.backend().as_str(),
            url = %settings.database.url,
            "database ready"
        );

        // Tokens of users being deleted are refused; the `Deletions` actor publishes who.
        let (refused, refused_rx) = watch::channel(crate::auth::RefusedSubjects::default());
        let auth =
            JwtAuth::new(&jwt_secret(settings.jwt_secret.as_ref())).refusing(refused_rx.clone());
        let (draining, draining_rx) = watch::channel(false);

        // Cluster mode: connect to Redis before anything serves (a wrong URL fails here).
        let node = settings
            .cluster
            .redis_url
            .as_ref()
            .map(|_| crate::actors::broker::node_id(&settings.cluster));
        let broker = match (&settings.cluster.redis_url, &node) {
            (Some(url), Some(node)) => {
                let cluster = settings.cluster.clone();
                let connecting = node.clone();
                let broker = io_runtime
                    .handle()
                    .spawn(async move { Broker::connect(&cluster, &connecting).await })
                    .await
                    .map_err(|e| StartupError::Cluster(e.to_string()))?
                    .map_err(|e| StartupError::Cluster(e.to_string()))?;
                tracing::info!(%node, redis = %url, prefix = %settings.cluster.prefix, "cluster mode");
                Some(
                    broker
                        .with_presence_limit(settings.websocket.presence_limit)
                        .with_address(http_addr),
                )
            }
            _ => None,
        };

        let redis = broker.as_ref().map(Broker::commands);
        let singletons = Arbiter::new();
        let broker =
            broker.map(|broker| Broker::start_in_arbiter(&singletons.handle(), |_| broker));
        let database = match shards {
            None => database,
            Some((map, shards)) => {
                let config = crate::actors::tx::TxConfig {
                    recovery_interval: settings.database.tx_recovery_interval,
                    grace: settings.database.tx_in_doubt_grace,
                    fault: crate::actors::tx::Fault::from_env(),
                };
                let (primary, dbs, deployment) =
                    (database.clone(), shards.clone(), map.deployment.clone());
                let coordinator = crate::actors::tx::TxCoordinator::start_in_arbiter(
                    &singletons.handle(),
                    move |_| {
                        crate::actors::tx::TxCoordinator::new(primary, dbs, deployment, config)
                    },
                );
                tracing::info!(
                    shards = ?map.locations,
                    deployment = %map.deployment,
                    "data sharded"
                );
                database.with_sharding(crate::db::shards::Sharding {
                    map,
                    shards,
                    coordinator,
                })
            }
        };

        let max_sessions = settings.websocket.max_sessions_per_user;
        let recovery_buffer = settings.websocket.outbound_queue;
        let outbound = hub::Limits {
            frames: u32::try_from(settings.websocket.outbound_queue).unwrap_or(u32::MAX),
            bytes: u32::try_from(settings.websocket.outbound_bytes).unwrap_or(u32::MAX),
        };
        let mut hub = Hub::new(max_sessions)
            .with_outbound_limits(outbound)
            .with_stall_timeout(settings.websocket.stall_timeout)
            .with_overload_lag(settings.websocket.overload_lag)
            .with_presence_limit(settings.websocket.presence_limit)
            .with_refused(refused_rx)
            .with_recovery_buffer(recovery_buffer)
            .with_pulse(Session::heartbeat_tick(&settings.websocket))
            .with_numbering(database.clone(), settings.history.room_idle);
        let history = if settings.history.enabled {
            let (db, config) = (database.clone(), settings.history.clone());
            let writer = HistoryWriter::start_in_arbiter(&singletons.handle(), move |_| {
                HistoryWriter::new(db, config)
            });
            hub = hub.with_history(writer.clone(), settings.history.private);
            Some(writer)
        } else {
            None
        };
        if let Some(broker) = &broker {
            hub = hub.with_cluster(broker.clone());
        }
        let hub = Hub::start_in_arbiter(&singletons.handle(), move |_| hub);
        if let Some(broker) = &broker {
            broker.do_send(crate::actors::broker::AttachHub(hub.clone()));
        }
        // The user cache; in cluster mode it serves once the broker has subscribed to
        // the other nodes' changes.
        let user_cache = (settings.database.user_cache_size > 0).then(|| {
            let (size, ttl) = (
                settings.database.user_cache_size,
                settings.database.user_cache_ttl,
            );
            let clustered = broker.is_some();
            UserCache::start_in_arbiter(&singletons.handle(), move |_| {
                UserCache::new(size, ttl).serving(!clustered)
            })
        });
        let events = Events::start_in_arbiter(&singletons.handle(), {
            let (cache, broker) = (user_cache.clone(), broker.clone());
            move |_| {
                let mut events = Events::new();
                if let Some(cache) = cache {
                    events = events.with_cache(cache);
                }
                if let Some(broker) = broker {
                    events = events.with_broker(broker);
                }
                events
            }
        });
        if let Some(broker) = &broker {
            broker.do_send(crate::actors::broker::AttachEvents(events.clone()));
        }
        let mut database = database.announcing_to(events.clone());
        if let Some(cache) = &user_cache {
            database = database.caching_in(cache.clone());
        }
        let sagas = {
            use saga::delete_user;
            let config = settings.database.saga.clone();
            let deletions = delete_user::Deletions::start_in_arbiter(&singletons.handle(), {
                let (db, hub, every) = (database.clone(), hub.clone(), config.resume_interval);
                move |_| delete_user::Deletions::new(db, hub, refused, every)
            });
            let (db, hub, events) = (database.clone(), hub.clone(), events.clone());
            let cluster = broker.clone();
            Saga::start_in_arbiter(&singletons.handle(), move |_| {
                let saga = Saga::new(db.clone(), config);
                let fault = saga.fault();
                let definition = delete_user::DeleteUser::new(db, hub, events, deletions, fault)
                    .with_broker(cluster);
                saga.with_definition(std::sync::Arc::new(definition))
            })
        };

        let (limiters, limiter_arbiters) = RateLimiters::start(
            Quota {
                per_second: settings.rate_limit_per_second,
                burst: settings.rate_limit_burst,
            },
            RATE_LIMIT_SHARDS,
            RATE_LIMIT_MAX_KEYS,
        );
        // Cluster mode: one decision in Redis per request, the local buckets as fallback.
        let limiters = match redis {
            Some(redis) => {
                let quota = limiters.quota();
                limiters.cluster_wide(crate::actors::rate_limit::ClusterLimits::new(
                    redis,
                    &settings.cluster.prefix,
                    quota,
                ))
            }
            None => limiters,
        };
        let metrics = match &node {
            Some(node) => crate::metrics::Metrics::new().with_node(node),
            None => crate::metrics::Metrics::new(),
        };
        let metrics = std::sync::Arc::new(metrics);
        let breaker = CircuitBreaker::start_in_arbiter(&singletons.handle(), |_| {
            CircuitBreaker::new(BreakerConfig::default())
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in grpc::HEALTH_SERVICES {
            health
                .set_service_status(service, tonic_health::ServingStatus::Serving)
                .await;
        }
        let monitor = HealthMonitor::start_in_arbiter(&singletons.handle(), {
            let (db, health) = (database.clone(), health.clone());
            let (interval, draining) = (settings.health_interval, draining.subscribe());
            let breaker = breaker.clone();
            move |_| HealthMonitor::new(&db, health, interval, draining, breaker)
        });
        let state = web::Data::new(http::HttpState {
            metrics: metrics.clone(),
            breaker: breaker.clone(),
            health: monitor,
            history: history.clone(),
            rate_limit: http::middleware::RateLimitState {
                limiters,
                trusted_proxies: settings.trusted_proxies.clone(),
            },
            db: database.clone(),
            started_at: Instant::now(),
            draining: draining_rx,
            events: events.clone(),
            sagas: sagas.clone(),
            broker: broker.clone(),
            user_cache: user_cache.clone(),
            server_api: crate::server_api::ServerApi::new(
                std::sync::Arc::new(hub.clone()),
                singletons.handle(),
                crate::actors::idempotency::Idempotency::start_in_arbiter(
                    &singletons.handle(),
                    |_| crate::actors::idempotency::Idempotency::default(),
                ),
                broker.clone(),
            ),
            graphql: http::routes::graphql::GraphqlState {
                schema: std::sync::Arc::new(crate::graphql::schema(&settings.graphql)),
                introspection: std::sync::Arc::new(crate::graphql::introspection_schema(
                    &settings.graphql,
                )),
                max_cost: settings.graphql.max_cost,
                max_batch: settings.graphql.max_batch,
                max_operations_per_connection: settings.graphql.max_subscriptions_per_connection,
                keep_alive: settings.graphql.keep_alive,
                cors_origins: settings.graphql.cors_origins.clone(),
            },
            chat: http::ChatState {
                hub: std::sync::Arc::new(hub.clone()),
                auth: auth.clone(),
                settings: std::sync::Arc::new(settings.websocket.clone()),
                limit_upgrades: settings.http_middleware,
                node: node.clone(),
            },
        });
        let server_api = state.server_api.clone();
        let grpc_limiters = state.rate_limit.limiters.clone();
        let chain = settings.http_middleware;
        if !chain {
            tracing::warn!("HTTP middleware chain disabled (--http-middleware false)");
        }
        let http_server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(http::configure)
                // Outermost last: request id, trace and access log → rate limit →
                // circuit breaker (database routes) → handler.
                .wrap(Condition::new(
                    chain,
                    from_fn(http::middleware::circuit_breaker),
                ))
                .wrap(Condition::new(chain, from_fn(http::middleware::rate_limit)))
                .wrap(Condition::new(chain, from_fn(http::middleware::request_id)))
                // The connection task stores this future inline for as long as the
                // connection lives (a WebSocket: hours); boxed, it takes 8 bytes there
                // instead of ~700, and the box is freed when the response is ready.
                .wrap_fn(|req, service| Box::pin(service.call(req)))
        })
        // Frames are small and latency matters: without this, Nagle holds a frame written
        // while an earlier one is unacknowledged until the client's delayed ACK (~40 ms).
        .tcp_nodelay(true)
        // A closing connection (a session that ended, a slow consumer's close) gets this
        // long to flush to its client, then it is dropped.
        .client_disconnect_timeout(settings.websocket.close_timeout)
        .listen(http_listener)
        .map_err(|source| StartupError::Runtime {
            what: "the HTTP server",
            source,
        })?
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
        .run();

        let grpc_listener = {
            let _entered = io_runtime.handle().enter();
            tokio::net::TcpListener::from_std(grpc_listener).map_err(|source| {
                StartupError::Runtime {
                    what: "the gRPC server",
                    source,
                }
            })?
        };
        let (grpc_stop, stopped) = oneshot::channel::<()>();
        let grpc_task = io_runtime.handle().spawn(grpc::serve(
            grpc_listener,
            health_service,
            grpc::Users::new(
                database.clone(),
                events.clone(),
                sagas.clone(),
                settings.grpc_stream_buffer,
                settings.grpc_max_streams_per_client,
            ),
            grpc::chat::Chat::new(server_api.clone()),
            grpc::ServeOptions {
                metrics,
                breaker: breaker.clone(),
                limiters: grpc_limiters,
                auth: auth.clone(),
                max_message_size: settings.grpc_max_message_size,
            },
            async {
                let _ = stopped.await;
            },
        ));

        tracing::info!("listening on http://{http_addr}");
        tracing::info!("listening on grpc://{grpc_addr}");

        Ok(Self {
            http_addr,
            grpc_addr,
            http_server,
            grpc_task,
            grpc_stop,
            health,
            draining,
            database,
            auth,
            hub,
            history,
            broker,
            events,
            sagas,
            singletons,
            limiter_arbiters,
            shutdown_timeout: settings.shutdown_timeout,
            io_runtime,
        })
    }

    /// The bound HTTP address (the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The primary database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The token signer/verifier in use.
    pub fn auth(&self) -> &JwtAuth {
        &self.auth
    }

    /// The chat hub.
    pub fn hub(&self) -> &Addr<Hub> {
        &self.hub
    }

    /// Serves until `shutdown` resolves (or a server fails), then shuts down gracefully:
    /// readiness fails, WebSockets get close 1001, listeners close, in-flight requests
    /// finish, gRPC health streams end.
    /// Whatever is still open after the shutdown timeout is dropped.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), std::io::Error> {
        let http_handle = self.http_server.handle();
        let mut http_task = actix_rt::spawn(self.http_server);
        let mut grpc_task = self.grpc_task;

        let early_exit = tokio::select! {
            () = shutdown => None,
            result = &mut http_task => Some(format!("HTTP server stopped: {result:?}")),
            result = &mut grpc_task => Some(format!("gRPC server stopped: {result:?}")),
        };
        if let Some(reason) = &early_exit {
            tracing::error!(%reason, "a server stopped unexpectedly; shutting down");
        }
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down gracefully");

        let _ = self.draining.send(true);
        let _ = self.grpc_stop.send(());
        let mut health = self.health.clone();
        let hub = self.hub.clone();
        let events = self.events.clone();
        let drain = async {
            let _ = events.send(events::CloseAll).await;
            match hub.send(hub::Shutdown).await {
                Ok(sessions) => tracing::info!(sessions, "closing WebSocket sessions"),
                Err(error) => tracing::warn!(%error, "the chat hub did not answer"),
            }
            grpc::withdraw_health(&mut health).await;
            http_handle.stop(true).await;
            let _ = http_task.await;
            let _ = grpc_task.await;
        };
        // actix-web enforces its own timeout; this bounds the gRPC side too.
        if tokio::time::timeout(self.shutdown_timeout + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timeout reached; remaining connections dropped");
        }
        if let Some(writer) = &self.history {
            // Every relay reaches the writer before the hub answers `Drain`; then the last
            // batch is written, even after a drain that timed out.
            let flush = async {
                let _ = self.hub.send(hub::Drain).await;
                writer.send(history::Flush).await
            };
            match tokio::time::timeout(self.shutdown_timeout, flush).await {
                Ok(Ok(Ok(written))) => tracing::info!(written, "chat history flushed"),
                Ok(Ok(Err(error))) => tracing::error!(%error, "chat history flush failed"),
                Ok(Err(error)) => tracing::error!(%error, "history writer unavailable"),
                Err(_) => tracing::error!("chat history flush timed out"),
            }
        }
        // A cluster node leaves now: the presence its sessions had is taken out with
        // leave events, and it is struck from the node set (not after the node timeout).
        if let Some(broker) = &self.broker {
            let leave = broker.send(crate::actors::broker::LeaveCluster);
            match tokio::time::timeout(self.shutdown_timeout, leave).await {
                Ok(Ok(Ok(left))) => tracing::info!(left, "left the cluster"),
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%error, "could not leave the cluster cleanly; the others will reap this node")
                }
                Ok(Err(error)) => tracing::warn!(%error, "the broker did not answer"),
                Err(_) => tracing::warn!("leaving the cluster timed out"),
            }
        }
        // Runs still going here are stopped and their leases given up, so whoever starts
        // next resumes them at once rather than after the lease.
        match tokio::time::timeout(self.shutdown_timeout, self.sagas.send(saga::Release)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the saga supervisor did not answer"),
            Err(_) => tracing::warn!("handing back running sagas timed out"),
        }
        self.singletons.stop();
        for arbiter in &self.limiter_arbiters {
            arbiter.stop();
        }
        drop(self.io_runtime);
        tracing::info!("stopped");
        match early_exit {
            Some(reason) => Err(std::io::Error::other(reason)),
            None => Ok(()),
        }
    }
}

/// The I/O runtime, shut down without blocking when dropped (dropping a runtime normally
/// blocks, which is forbidden inside async code).
struct IoRuntime(Option<Runtime>);

impl IoRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime is only taken on drop")
            .handle()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn bind(protocol: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartupError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| StartupError::Bind {
        protocol,
        addr,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartupError::Bind {
            protocol,
            addr,
            source,
        })?;
    Ok(listener)
}

fn local_addr(
    protocol: &'static str,
    listener: &std::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartupError> {
    listener.local_addr().map_err(|source| StartupError::Bind {
        protocol,
        addr,
        source,
    })
}

/// The configured secret, or a fresh one with a ready-to-use development token logged once.
fn jwt_secret(configured: Option<&JwtSecret>) -> JwtSecret {
    if let Some(secret) = configured {
        return secret.clone();
    }
    let secret = JwtSecret::generate();
    match JwtAuth::new(&secret).issue("dev", Duration::from_secs(24 * 3600), Some("admin")) {
        Ok(token) => tracing::warn!(
            dev_token = %token,
            "no JWT secret configured (--jwt-secret / SWITCHBOARD_JWT_SECRET); generated a \
             random one for this run. Development token (sub=dev, role=admin, valid 24h): {token}"
        ),
        Err(error) => tracing::warn!(%error, "could not issue a development token"),
    }
    secret
}

/// Opens (and migrates) every shard, checks each allows enough prepared transactions for
/// its pool, and loads the shard map from the primary; `None` without shards.
async fn open_shards(
    settings: &crate::config::DatabaseSettings,
    primary: &Database,
) -> Result<Option<(crate::db::shards::ShardMap, Vec<Database>)>, StartupError> {
    if settings.shards.is_empty() {
        return Ok(None);
    }
    let mut shards = Vec::with_capacity(settings.shards.len());
    for url in &settings.shards {
        let mut shard_settings = settings.clone();
        shard_settings.url = url.clone();
        shard_settings.shards = Vec::new();
        let shard = Database::connect(&shard_settings)
            .await
            .map_err(|source| StartupError::Database {
                backend: url.backend(),
                url: url.to_string(),
                source,
            })?
            .as_shard(shards.len());
        if settings.migrate_on_start {
            let applied = migrate::run_pending(&shard_settings)
                .await
                .map_err(StartupError::Migrate)?;
            for name in applied {
                tracing::info!(shard = %url, migration = %name, "applied migration");
            }
        }
        let allowed =
            shard
                .max_prepared_transactions()
                .await
                .map_err(|source| StartupError::Database {
                    backend: url.backend(),
                    url: url.to_string(),
                    source,
                })?;
        if allowed < settings.max_connections {
            return Err(StartupError::Shards(format!(
                "shard {url} allows {allowed} prepared transactions \
                 (max_prepared_transactions), fewer than its pool of {} connections; \
                 set max_prepared_transactions = {} or more in its postgresql.conf and \
                 restart it (or lower --db-max-connections)",
                settings.max_connections, settings.max_connections
            )));
        }
        shards.push(shard);
    }
    let map = crate::db::shards::ShardMap::load_or_create(primary, &settings.shards)
        .await
        .map_err(|e| StartupError::Shards(e.to_string()))?;
    Ok(Some((map, shards)))
}
