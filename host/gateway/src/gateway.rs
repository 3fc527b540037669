//! Assembles a running gateway from a checked [`Config`]: the store, the upstreams and
//! endpoints, the ingress and admin listeners, and the delivery dispatcher; and takes it down
//! gracefully (stop accepting, finish in-flight requests and deliveries, flush the store).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::connections::Caps;
use crate::ingress::{self, ServeOptions, WebhookRouter};
use crate::pipeline::{Endpoint, FirstHop, Pipeline};
use payflow_clock::{Clock, NonDecreasing, SystemClock};
use payflow_config::Config;
use payflow_delivery::route::Routes;
use payflow_delivery::{Dispatcher, HandOff, HandOffs, Lane, Step, Upstream, UpstreamClient};
use payflow_plugins::{Registry, Runtime, Scheduler};
use payflow_telemetry::Telemetry;

use crate::stage::{EndpointPlugins, PluginStage};
use payflow_metrics::{Histogram, SECONDS_BUCKETS};
use payflow_store::{CommitObserver, DueStep, Store, StoreError};
use payflow_store_postgres::{PostgresOptions, PostgresStore};
use payflow_store_sqlite::SqliteStore;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `ingress` or `admin`.
        what: &'static str,
        /// The configured address it could not bind.
        addr: String,
        /// The operating system's refusal (in use, not permitted, no such address…).
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::ingress::TlsError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A configured item cannot be built.
    #[error("{0}")]
    Config(String),
    /// The delivery thread could not be started.
    #[error("cannot start the delivery thread: {0}")]
    DeliveryThread(std::io::Error),
    /// A plugin cannot be loaded, or the plugin runtime cannot start.
    #[error("plugin {name}: {problem}")]
    Plugin {
        /// Which plugin ("*" for the runtime).
        name: String,
        /// What is wrong with it, naming the file or setting to fix.
        problem: String,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where webhooks are received.
    pub ingress_addr: SocketAddr,
    /// Whether ingress speaks TLS.
    pub ingress_tls: bool,
    /// Where the admin API listens.
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    /// Completes when the dispatcher's thread has stopped.
    dispatcher: tokio::sync::oneshot::Receiver<()>,
    plugins: Option<Arc<PluginStage>>,
    store: Arc<dyn Store>,
    telemetry: Arc<Telemetry>,
}

/// The admin listener's connection caps: its users are a few operators, merchants' tools and a
/// metrics scraper. No address may hold more than a quarter, so one merchant's client cannot
/// lock the operator (or `/healthz`, `/metrics`) out.
const ADMIN_CONNECTIONS: Caps = Caps { max: 64, per_client: 16 };

/// Pending connections the kernel may queue per listener (tokio's default is 1024): bursts
/// and floods wait there rather than being refused by the kernel.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    let error = |source| StartError::Bind { what, addr: addr.to_string(), source };
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address")))?;
    let socket = if parsed.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(parsed).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

impl Gateway {
    /// Starts everything with the system clock.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Starts everything with the given clock. Every part stamps with it through one
    /// [`NonDecreasing`], so that no stamp in this process is earlier than one before it when
    /// the clock is stepped back (by up to [`payflow_clock::HOLD_AT_MOST`]): a replay's stamp
    /// then comes after that of an attempt under way, and the store can tell the two apart
    /// (`payflow_store::takes_outcome!`).
    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Gateway, StartError> {
        let clock: Arc<dyn Clock> = Arc::new(NonDecreasing::new(clock));
        let config = Arc::new(config);
        // Cheap checks first, so a bad certificate leaves no database behind.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => {
                Some(ingress::tls_acceptor(Path::new(cert), Path::new(key)).map_err(StartError::Tls)?)
            }
            _ => None,
        };
        for p in &config.plugin {
            if let Some(path) = &p.path {
                std::fs::metadata(path).map_err(|e| StartError::Plugin {
                    name: p.name.clone(),
                    problem: format!("cannot read {}: {e}", path.display()),
                })?;
            }
        }
        let telemetry = Arc::new(match &config.telemetry.otlp_endpoint {
            Some(endpoint) => Telemetry::otlp(endpoint, &config.telemetry.service_name)
                .map_err(|e| StartError::Config(format!("telemetry.{e}")))?,
            None => Telemetry::disabled(),
        });
        let commits = Arc::new(Histogram::new(SECONDS_BUCKETS));
        let store: Arc<dyn Store> = match &config.store.url {
            Some(url) => {
                let options = PostgresOptions {
                    pool_size: config.store.pool_size,
                    max_batch: config.store.max_batch,
                    lease: Duration::from_millis(config.store.lease_ms),
                    ..PostgresOptions::default()
                };
                Arc::new(PostgresStore::connect(url, options, Arc::new(CommitTimes(commits.clone()))).await?)
            }
            None => Arc::new(SqliteStore::open(&config.store, Arc::new(CommitTimes(commits.clone())))?),
        };

        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for u in &config.upstream {
            let upstream =
                Upstream::new(u).map_err(|e| StartError::Config(format!("upstream {}: {e}", u.name)))?;
            upstreams.insert(u.name.clone(), Arc::new(upstream));
        }
        let plugins = start_plugins(&config, &store, &clock, &telemetry).await?;
        let steps = plugins.as_ref().map(|(_, lane)| lane.clone());
        let plugins = plugins.map(|(stage, _)| stage);
        let mut endpoints = HashMap::new();
        for e in &config.endpoint {
            let upstream = e.upstream.as_ref().and_then(|name| upstreams.get(name).cloned());
            let first_hop = match (&steps, &upstream) {
                (Some(steps), _) if !e.plugins.is_empty() || !e.routes.is_empty() => {
                    Some(FirstHop::Plugins(steps.clone()))
                }
                (_, Some(upstream)) => Some(FirstHop::Upstream(upstream.clone())),
                _ => None,
            };
            let endpoint = Endpoint {
                merchant: e.merchant.clone(),
                path: e.path.clone(),
                scope: e.scope().to_string(),
                mode: e.mode,
                verifier: e
                    .verifier()
                    .map_err(|p| StartError::Config(format!("endpoint {}: {p}", e.path)))?,
                upstream,
                ordering: config.ordering_path(e),
                first_hop,
                counts: Default::default(),
            };
            endpoints.insert(e.path.clone(), Arc::new(endpoint));
        }
        let mut merchant_upstreams: Vec<Arc<Upstream>> = upstreams.values().cloned().collect();
        merchant_upstreams.sort_by(|a, b| a.name.cmp(&b.name));

        let ingress_listener = bind("ingress", &config.server.listen).await?;
        let ingress_addr = ingress_listener.local_addr().map_err(|source| StartError::Bind {
            what: "ingress",
            addr: config.server.listen.clone(),
            source,
        })?;
        let admin_listener = match &config.admin {
            Some(admin) => Some(bind("admin", &admin.listen).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let (shutdown, watch_shutdown) = watch::channel(false);
        let client = UpstreamClient::default();
        let hand_off = match store.claims() {
            true => HandOff::Claimed { lease_ms: config.store.lease_ms as i64 },
            false => HandOff::Direct(Arc::new(HandOffs::default())),
        };
        let header_timeout = Duration::from_millis(config.server.header_timeout_ms);
        let router = Arc::new(WebhookRouter {
            endpoints: endpoints.clone(),
            pipeline: Pipeline {
                store: store.clone(),
                clock: clock.clone(),
                client: client.clone(),
                max_body_bytes: config.server.max_body_bytes,
                body_timeout: Duration::from_millis(config.server.body_timeout_ms),
                plugins: plugins.clone(),
                telemetry: telemetry.clone(),
                hand_off: hand_off.clone(),
            },
        });
        let ingress_tls = tls.is_some();
        let mut listeners = vec![tokio::spawn(ingress::serve(
            ingress_listener,
            router,
            ServeOptions {
                header_timeout,
                caps: Caps {
                    max: config.server.max_connections,
                    per_client: config.server.max_connections_per_client,
                },
                max_header_bytes: config.server.max_header_bytes,
                tls,
            },
            watch_shutdown.clone(),
        ))];
        if let Some(listener) = admin_listener {
            let admin = Arc::new(Admin {
                store: store.clone(),
                clock: clock.clone(),
                config: config.clone(),
                endpoints,
                upstreams: merchant_upstreams,
                plugins: plugins.clone(),
                ingress_url: format!(
                    "{}://{}",
                    if ingress_tls { "https" } else { "http" },
                    loopback(ingress_addr)
                ),
                // Test webhooks go to this gateway's own ingress over loopback: its certificate
                // names the public host, not 127.0.0.1, so it is not checked.
                client: if ingress_tls {
                    crate::http::Client::with_trust(&crate::http::Trust::Insecure)
                        .expect("an insecure client needs no files")
                } else {
                    crate::http::Client::new()
                },
                uploads: Default::default(),
                commits,
                replica: store.claims().then(|| replica_name(&config)),
                history: Default::default(),
            });
            listeners.push(tokio::spawn(admin.clone().record_history(watch_shutdown.clone())));
            let options = ServeOptions {
                header_timeout,
                caps: ADMIN_CONNECTIONS,
                max_header_bytes: config.server.max_header_bytes,
                tls: None,
            };
            listeners.push(tokio::spawn(ingress::serve(listener, admin, options, watch_shutdown.clone())));
        }
        listeners.push(tokio::spawn(crate::secret_expiry::watch(
            config.clone(),
            clock.clone(),
            watch_shutdown.clone(),
        )));
        if let (true, Some(stage)) = (store.claims(), &plugins) {
            listeners.push(tokio::spawn(follow_plugins(stage.registry().clone(), watch_shutdown.clone())));
        }
        // Its own connection pool: proxy-mode forwards must not ride on connections driven by the
        // (lower-priority) delivery thread.
        let steps = steps.zip(plugins.clone().map(|stage| stage as Arc<dyn Step>));
        let dispatcher =
            Dispatcher::new(store.clone(), clock, UpstreamClient::default(), upstreams, steps, hand_off)
                .with_telemetry(telemetry.clone())
                .start(watch_shutdown)
                .map_err(StartError::DeliveryThread)?;
        Ok(Gateway {
            ingress_addr,
            ingress_tls,
            admin_addr,
            shutdown,
            listeners,
            dispatcher,
            plugins,
            store,
            telemetry,
        })
    }

    /// Stops accepting, lets in-flight requests and deliveries finish, and flushes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.listeners {
            let _ = task.await;
        }
        let _ = self.dispatcher.await;
        if let Some(plugins) = &self.plugins {
            plugins.stop();
        }
        self.store.close().await;
        // The last spans (the deliveries just finished) go out before the process ends; the
        // exporter's own thread does the sending.
        let telemetry = self.telemetry;
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
}

/// Where to reach a listener bound to `addr` from this host: an unspecified address (all
/// interfaces) is reached on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The plugin runtime, registry (each plugin's active version loaded), scheduler and stage, and
/// the plugin steps' lane; `None` when no plugin and no route is configured (the step runs
/// an endpoint's plugins, then its routes).
async fn start_plugins(
    config: &Config,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    telemetry: &Arc<Telemetry>,
) -> Result<Option<(Arc<PluginStage>, Arc<Lane<DueStep>>)>, StartError> {
    if config.plugin.is_empty() && config.endpoint.iter().all(|e| e.routes.is_empty()) {
        return Ok(None);
    }
    let problem = |name: &str, problem: String| StartError::Plugin { name: name.to_string(), problem };
    let workers = match config.plugins.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    // Instances alive at once: one per plugin thread running, one idle per warm plugin.
    let warm = config.plugin.iter().filter(|p| p.warm).count();
    let runtime = Runtime::new(workers + warm).map_err(|e| problem("*", e.to_string()))?;
    let registry = Registry::load(runtime, store.clone(), clock.clone(), &config.plugin, &config.plugins)
        .await
        .map_err(|(name, e)| problem(&name, e.to_string()))?;
    // A plugin declared without a file, never uploaded: its endpoints' events are acknowledged
    // and wait (see `PluginStage::run_queued`). Said once here; /readyz says it too.
    for slot in registry.slots(None) {
        if slot.active().is_none() {
            let endpoints: Vec<&str> = config
                .endpoint
                .iter()
                .filter(|e| e.merchant == slot.merchant && e.plugins.contains(&slot.name))
                .map(|e| e.path.as_str())
                .collect();
            tracing::warn!(
                plugin = %slot.name,
                merchant = %slot.merchant,
                endpoints = ?endpoints,
                "plugin {} has no version yet: events of {} are acknowledged and wait until one is uploaded \
                 (payflow-edge plugin upload {} FILE.wasm)",
                slot.name,
                endpoints.join(", "),
                slot.name
            );
        }
    }
    let scheduler = Scheduler::start(workers, payflow_delivery::lower_this_threads_priority)
        .map_err(|e| problem("*", format!("cannot start the plugin threads: {e}")))?;
    let endpoints = config
        .endpoint
        .iter()
        .filter(|e| !e.plugins.is_empty() || !e.routes.is_empty())
        .map(|e| {
            let plugins = EndpointPlugins {
                merchant: e.merchant.clone(),
                chain: e.plugins.clone(),
                upstream: e.upstream.clone(),
                routes: Routes::new(e.upstream.clone(), &e.routes),
            };
            (e.path.clone(), plugins)
        })
        .collect();
    let stage = PluginStage::new(
        Arc::new(registry),
        scheduler,
        store.clone(),
        clock.clone(),
        endpoints,
        config.upstream.iter().map(|u| (u.merchant.clone(), u.name.clone())),
    )
    .with_telemetry(telemetry.clone())
    .with_dry_run_timeout(Duration::from_millis(config.plugins.dry_run_timeout_ms));
    let lane = Arc::new(payflow_delivery::plugin_steps(&config.plugins));
    Ok(Some((Arc::new(stage), lane)))
}

/// This replica's name: `[server] replica`, else the host name.
fn replica_name(config: &Config) -> String {
    config.server.replica.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "replica".into())
    })
}

/// How often a replica on a shared store looks for plugin versions activated elsewhere: an
/// upload or rollback on one replica is live on every replica within this (plus the load).
const PLUGIN_FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Replicas on a shared store: follows uploads, rollbacks and deletes made on the others
/// until shutdown.
async fn follow_plugins(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PLUGIN_FOLLOW_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = registry.follow_store().await {
            tracing::warn!(error = %e, "cannot follow plugin versions activated elsewhere");
        }
    }
}

/// The store's commit times, into the `payflow_edge_store_commit_seconds` histogram.
struct CommitTimes(Arc<Histogram>);

impl CommitObserver for CommitTimes {
    fn committed(&self, took: Duration) {
        self.0.observe_duration(took);
    }
}
