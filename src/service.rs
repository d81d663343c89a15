//! Wiring: storage, pipeline, broker and HTTP started in order, and stopped in the order that
//! loses nothing.
//!
//! Shutdown on SIGINT or SIGTERM: stop accepting MQTT connections, close the broker's tap (no
//! publish is acknowledged after that), run everything already handed over through the
//! pipeline, wait for the writer to store it, then stop HTTP and exit 0. A second signal exits
//! at once with status 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use fieldline_broker::wal::{Durability, Opened, Wal, WalSettings};
use fieldline_broker::{
    BrokerSettings, Commands, Guard, GuardSettings, RunningBroker, Tap, TapReceiver,
};
use fieldline_dashboard::auth::ApiAccess;
use fieldline_dashboard::https_listener::{Certificates, HttpsListener};
use fieldline_dashboard::live::Hub;
use fieldline_ingest::channels::{ChannelSettings, Channels};
use fieldline_ingest::commands::CommandDesk;
use fieldline_ingest::decode::Limits;
use fieldline_ingest::events::in_order::InOrder;
use fieldline_ingest::events::judges::Judges;
use fieldline_ingest::events::{EventFeed, EventFeeds};
use fieldline_ingest::source;
use fieldline_ingest::spill::SpillState;
use fieldline_ingest::webhook::{DeliverySettings, Webhooks};
use fieldline_ingest::writer::spawn_writer;
use fieldline_ingest::{Pipeline, PipelineSettings};
use fieldline_store::health::JobHealth;
use fieldline_store::{open_store_with, Store};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// Batches waiting for the writer before the pipeline grows its batch instead.
const WRITER_QUEUE_BATCHES: usize = 2;
/// Rejected messages kept for `GET /api/rejected`.
const REJECTED_KEPT: u32 = 10_000;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let store = open_storage(&config).await?;
    let access = load_access(&config, store.as_ref()).await?;
    // Cluster mode: the shared stream is the log, and it numbers the live views.
    let node = match &config.cluster {
        Some(_) => Some(crate::cluster_node::join(&config, store.as_ref()).await?),
        None => None,
    };
    let (hub, log) = match &node {
        Some(node) => (node.hub.clone(), None),
        None => {
            let log = open_log(&config, store.as_ref()).await?;
            let hub = start_live_views(&config, store.as_ref(), &log).await?;
            (hub, Some(log))
        }
    };
    let judging = crate::judging::load(store.as_ref()).await?;
    // In cluster mode deliveries wait until this node holds the cluster's duties.
    let deliver_here = node.is_none();
    let webhooks = start_webhooks(&config, &store, deliver_here).await?;
    let channels = start_channels(&config, &store, deliver_here).await?;
    let (events, last_event) = event_feed(store.as_ref(), &hub, &webhooks, &channels).await?;
    let alarms = fieldline_ingest::alarms::AlarmDesk::new(store.clone(), events.clone());
    let (mailboxes, reports) = Commands::new();
    let (commands, dispatcher) = CommandDesk::start(
        store.clone(),
        mailboxes.clone(),
        reports,
        access.guard.clone(),
        events.clone(),
        config.max_payload_bytes,
    );
    let http_listeners = bind_http(&config).await?;
    // What the API changes and, in cluster mode, what other nodes' changes reload: one at a time.
    let definitions = fieldline_dashboard::judging::Judging::new(
        judging.fences,
        judging.rules,
        webhooks.clone(),
        channels.clone(),
    );
    let (flow, broker) = match (node, log) {
        (Some(node), _) => {
            let shared = crate::cluster_node::SharedLog::new(&node);
            let broker = start_broker(
                &config,
                &access,
                BrokerLog::Shared(shared.clone()),
                mailboxes,
            )
            .await?;
            let running = crate::cluster_node::start(
                &node,
                crate::cluster_node::Parts {
                    settings: pipeline_settings(&config),
                    store: store.clone(),
                    definitions: definitions.clone(),
                    commands: commands.clone(),
                    events,
                    last_event,
                    tap: broker.tap.clone(),
                    shared,
                    kicker: broker.running.kicker(),
                    history: config.live.history_events as u64,
                    http: config.http_listen.to_string(),
                    mqtt: broker.running.mqtt_addr().to_string(),
                },
            )
            .await?;
            (Flow::Cluster(Box::new(running)), broker)
        }
        (None, Some(log)) => {
            let ingest = start_ingest(
                &config,
                &store,
                &hub,
                events,
                &commands,
                judging.judges,
                log,
            )
            .await?;
            let broker = start_broker(
                &config,
                &access,
                BrokerLog::Local(ingest.wal.clone()),
                mailboxes,
            )
            .await?;
            (Flow::Single(Box::new(ingest)), broker)
        }
        (None, None) => anyhow::bail!("neither a local log nor a cluster to write to"),
    };
    let storage_jobs = Arc::new(JobHealth::default());
    let tasks = Tasks {
        access_sync: tokio::spawn(crate::access_sync::follow(
            store.clone(),
            access.guard.clone(),
            access.api.clone(),
            access.revision,
        )),
        housekeeping: tokio::spawn(housekeeping(store.clone(), storage_jobs.clone())),
        rollups: config.rollups.then(|| {
            tokio::spawn(fieldline_store::rollups::refresh::run(
                store.clone(),
                storage_jobs.clone(),
            ))
        }),
        retention: tokio::spawn(fieldline_store::retention::sweep::run(
            store.clone(),
            config.retention,
            storage_jobs.clone(),
        )),
        live_metrics: tokio::spawn(report_live_queues(hub.clone())),
        dispatcher,
    };
    let state = fieldline_dashboard::AppState {
        store: store.clone(),
        hub: hub.clone(),
        metrics,
        listeners_up: broker.listeners_up.clone(),
        access: access.api.clone(),
        live_slots: Arc::new(tokio::sync::Semaphore::new(config.max_live_clients)),
        spill: match &flow {
            Flow::Single(ingest) => ingest.spill_state.clone(),
            Flow::Cluster(_) => Arc::new(SpillState::default()),
        },
        judging: definitions,
        web: fieldline_dashboard::web::WebSettings {
            map_style: config.map_style.clone(),
            mqtt: Some(config.mqtt_listen.to_string()),
        },
        commands,
        alarms,
        storage_jobs,
        cluster: match &flow {
            Flow::Cluster(running) => Some(running.view.clone()),
            Flow::Single(_) => None,
        },
    };
    let http = serve_http(&config, http_listeners, state);
    match flow {
        Flow::Single(ingest) => run_until_signal(*ingest, broker).await?,
        Flow::Cluster(running) => run_cluster_until_signal(*running, broker).await?,
    }
    stop(tasks, (&webhooks, &channels), &hub, http).await;
    tracing::info!("stopped cleanly; everything accepted is stored");
    Ok(())
}

async fn open_storage(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = open_store_with(
        &config.database_url,
        config.durability == Durability::Fsync,
        config.rollups,
    )
    .await
    .with_context(|| format!("cannot open storage {}", config.database_url_redacted()))?;
    tracing::info!(backend = store.backend(), url = %config.database_url_redacted(), "storage ready");
    Ok(store)
}

/// Who may connect and call: the broker's guard over devices, the API's tokens, and the
/// access registry's revision they reflect.
struct Access {
    guard: Arc<Guard>,
    api: Arc<ApiAccess>,
    revision: i64,
}

async fn load_access(config: &Config, store: &dyn Store) -> anyhow::Result<Access> {
    let guard = Guard::new(GuardSettings {
        allow_anonymous: config.allow_anonymous,
        publish_rate: config.device_publish_rate,
        publish_burst: config.device_publish_burst,
        ..GuardSettings::default()
    });
    let api = Arc::new(ApiAccess::default());
    let revision = crate::access_sync::load(store, &guard, &api)
        .await
        .context("cannot read the access registry (devices and API tokens)")?;
    config.check_exposure(guard.auth_configured(), api.configured())?;
    if config.allow_anonymous && guard.auth_configured() {
        tracing::warn!("--allow-anonymous: MQTT clients without a username are admitted and may publish and subscribe anywhere, although devices are registered");
    }
    tracing::info!(
        devices = if guard.auth_configured() {
            "required"
        } else {
            "anonymous on loopback"
        },
        api = if api.configured() {
            "token required"
        } else {
            "open on loopback"
        },
        "authentication"
    );
    Ok(Access {
        guard,
        api,
        revision,
    })
}

/// The write-ahead log (none in `memory` mode) and how far storage holds it.
struct Log {
    wal: Option<(Arc<Wal>, Opened)>,
    /// Where it is.
    dir: std::path::PathBuf,
    stored_position: u64,
}

async fn open_log(config: &Config, store: &dyn Store) -> anyhow::Result<Log> {
    let log_state = store
        .log_state()
        .await
        .context("cannot read the stored write-ahead log position")?;
    let chosen = crate::wal_dir::choose(config.wal_dir.as_deref(), log_state.log_id.as_deref());
    let wal = open_wal(config, &chosen, log_state.stored_position)?;
    if let Some((_, opened)) = &wal {
        // Before any record is appended: from now on this database follows this log.
        if log_state.log_id.as_deref() != Some(opened.id.as_str()) {
            store
                .set_log_id(&opened.id)
                .await
                .context("cannot record the write-ahead log's identity in storage")?;
        }
    }
    Ok(Log {
        wal,
        dir: chosen.dir,
        stored_position: log_state.stored_position,
    })
}

/// The live hub, numbered by the log when there is one, with the devices' newest stored
/// positions and the stored events its history starts from.
async fn start_live_views(
    config: &Config,
    store: &dyn Store,
    log: &Log,
) -> anyhow::Result<Arc<Hub>> {
    let hub = match &log.wal {
        Some((wal, opened)) => Hub::following_log(
            config.live.clone(),
            crate::live_epoch::live_epoch(&log.dir, opened),
            wal.first_position(),
        ),
        None => Hub::new(config.live.clone()),
    };
    if log.wal.is_some() {
        crate::live_seed::seed_positions(store, &hub).await?;
    }
    crate::judging::start_live_outbox(
        store,
        &hub,
        log.wal.as_ref().map(|(wal, _)| wal.first_position()),
        config.live.history_events,
    )
    .await?;
    Ok(hub)
}

async fn start_webhooks(
    config: &Config,
    store: &Arc<dyn Store>,
    deliver_here: bool,
) -> anyhow::Result<Arc<Webhooks>> {
    let webhooks = Webhooks::new(
        store.clone(),
        DeliverySettings {
            request_timeout: config.webhook_timeout,
            ..DeliverySettings::default()
        },
    )
    .context("cannot set up the HTTP client for webhooks")?;
    webhooks
        .deliver_here(deliver_here)
        .await
        .context("cannot read the webhooks")?;
    Ok(webhooks)
}

async fn start_channels(
    config: &Config,
    store: &Arc<dyn Store>,
    deliver_here: bool,
) -> anyhow::Result<Arc<Channels>> {
    let channels = Channels::new(
        store.clone(),
        ChannelSettings {
            smtp_url: config.smtp_url.clone(),
            from: config.smtp_from.clone(),
            delivery: DeliverySettings {
                request_timeout: config.webhook_timeout,
                ..DeliverySettings::default()
            },
        },
    );
    channels
        .deliver_here(deliver_here)
        .await
        .context("cannot read the notification channels")?;
    Ok(channels)
}

/// Where stored events go: live views, webhooks and notification channels, in outbox order
/// (the store writer, the command ledger and the alarm desk all commit events).
async fn event_feed(
    store: &dyn Store,
    hub: &Arc<Hub>,
    webhooks: &Arc<Webhooks>,
    channels: &Arc<Channels>,
) -> anyhow::Result<(Arc<dyn EventFeed>, u64)> {
    let last = store
        .last_event_seq()
        .await
        .context("cannot read the newest stored event")?;
    let feeds = Arc::new(EventFeeds(vec![
        hub.clone(),
        webhooks.clone(),
        channels.clone(),
    ]));
    Ok((Arc::new(InOrder::new(feeds, last)), last))
}

/// The write path, recovered from the last run and ready for devices.
struct Ingest {
    pipeline: Pipeline,
    writer_task: JoinHandle<()>,
    wal: Option<Arc<Wal>>,
    spill_state: Arc<SpillState>,
    /// Releases from the log what storage holds (with a log).
    log_follower: Option<JoinHandle<()>>,
}

async fn start_ingest(
    config: &Config,
    store: &Arc<dyn Store>,
    hub: &Arc<Hub>,
    event_feed: Arc<dyn EventFeed>,
    commands: &Arc<CommandDesk>,
    judges: Judges,
    log: Log,
) -> anyhow::Result<Ingest> {
    let seeds = store
        .stream_seqs()
        .await
        .context("cannot read the last sequence numbers")?;
    // Events go live and to webhooks once stored.
    let (writer, writer_task, stored) = spawn_writer(
        store.clone(),
        WRITER_QUEUE_BATCHES,
        log.stored_position,
        event_feed,
    );
    let mut pipeline = Pipeline::new(pipeline_settings(config), writer, hub.clone(), seeds);
    pipeline.judge_with(judges);
    pipeline.answer_replies_with(commands.clone());
    // Before any device is accepted: the log rebuilds the live history, what it holds beyond
    // storage is stored, and devices left online by the last run go offline.
    let wal = log.wal.map(|(wal, _)| wal);
    let ended = source::recover(
        &mut pipeline,
        store.as_ref(),
        hub.as_ref(),
        wal.as_ref(),
        log.stored_position,
        stored.clone(),
    )
    .await
    .context("cannot recover from the last run")?;
    if ended > 0 {
        tracing::info!(
            devices = ended,
            "marked devices offline that were online at the last stop"
        );
    }
    // Spilling only once devices are accepted: during recovery nobody watches live, and
    // waiting for the writer reads the log once instead of twice.
    let spill_state = Arc::new(SpillState::default());
    if let Some(wal) = &wal {
        pipeline.spill_to(
            Box::new(source::LogBacklog::new(wal.clone())),
            spill_state.clone(),
        );
    }
    let log_follower = wal.clone().map(|wal| {
        tokio::spawn(source::follow_storage(
            wal,
            stored,
            hub.clone(),
            spill_state.clone(),
            config.spool_max_bytes,
        ))
    });
    Ok(Ingest {
        pipeline,
        writer_task,
        wal,
        spill_state,
        log_follower,
    })
}

fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        limits: Limits {
            max_payload_bytes: config.max_payload_bytes,
        },
        batch_rows: config.batch_rows,
        batch_age: config.batch_age,
        max_batch_rows: config.batch_rows.saturating_mul(20),
    }
}

/// How this node runs its flow: alone, or as one node of a cluster.
enum Flow {
    Single(Box<Ingest>),
    Cluster(Box<crate::cluster_node::Running>),
}

/// Where the broker keeps what it acknowledges.
enum BrokerLog {
    /// This machine's write-ahead log (none in `memory` mode), handed to the local pipeline.
    Local(Option<Arc<Wal>>),
    /// Cluster mode's shared stream.
    Shared(Arc<crate::cluster_node::SharedLog>),
}

/// The broker, listening, and what it hands the pipeline.
struct Broker {
    running: RunningBroker,
    tap_rx: TapReceiver,
    tap: Tap,
    /// Off once the service stops accepting (readiness says so).
    listeners_up: Arc<AtomicBool>,
}

async fn start_broker(
    config: &Config,
    access: &Access,
    log: BrokerLog,
    commands: Arc<Commands>,
) -> anyhow::Result<Broker> {
    let settings = BrokerSettings {
        mqtt_listen: config.mqtt_listen,
        mqtts: config.mqtts.clone(),
        mqtt_ws_listen: config.mqtt_ws_listen,
        max_connections: config.max_connections,
        max_subscriber_bytes: config.mqtt_max_subscriber_bytes,
        // Read payloads up to 4x the storage limit so they can be rejected with a reason.
        max_packet_size: config.max_payload_bytes.saturating_mul(4).max(64 * 1024),
        ..BrokerSettings::default()
    };
    let (tap, tap_rx) = match log {
        BrokerLog::Local(wal) => fieldline_broker::tap(
            settings.handover_budget_bytes,
            wal.map(|wal| (wal, config.spool_max_bytes)),
        ),
        BrokerLog::Shared(shared) => fieldline_broker::remote_tap(shared),
    };
    let running =
        fieldline_broker::start(&settings, tap.clone(), access.guard.clone(), commands).await?;
    tracing::info!(
        http = %config.http_listen,
        mqtt = %running.mqtt_addr(),
        mqtts = ?running.mqtts_addr(),
        mqtt_ws = ?running.mqtt_ws_addr(),
        "fieldline is ready"
    );
    Ok(Broker {
        running,
        tap_rx,
        tap,
        listeners_up: Arc::new(AtomicBool::new(true)),
    })
}

/// The HTTP API and dashboard until `stop` is sent: over HTTP, HTTPS or both.
struct Http {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    /// Reloads the HTTPS certificate.
    watcher: Option<JoinHandle<()>>,
}

/// The HTTP listeners, bound before anything else starts so a busy port stops start-up.
struct HttpListeners {
    plain: Option<tokio::net::TcpListener>,
    tls: Option<(tokio::net::TcpListener, Arc<Certificates>)>,
}

async fn bind_http(config: &Config) -> anyhow::Result<HttpListeners> {
    let plain = match config.https_only {
        true => None,
        false => Some(fieldline_dashboard::bind(config.http_listen).await?),
    };
    let tls = match &config.https {
        Some(https) => {
            let certificates = Certificates::load(&https.cert, &https.key)
                .context("cannot set up HTTPS (--https-cert, --https-key)")?;
            let listener = fieldline_dashboard::bind(https.listen).await?;
            tracing::info!(addr = %https.listen, only = config.https_only, "HTTPS listener up");
            Some((listener, certificates))
        }
        None => None,
    };
    Ok(HttpListeners { plain, tls })
}

fn serve_http(
    config: &Config,
    listeners: HttpListeners,
    state: fieldline_dashboard::AppState,
) -> Http {
    let mut app = fieldline_dashboard::router(state);
    if config.https_only {
        // Browsers that once came over HTTPS never try plain HTTP here again.
        app = app.layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    axum::http::header::STRICT_TRANSPORT_SECURITY,
                    axum::http::HeaderValue::from_static("max-age=31536000"),
                );
                response
            },
        ));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.plain {
        let listener = fieldline_dashboard::http_listener::GuardedListener::new(
            listener,
            config.max_http_connections,
            config.http_header_timeout,
        )
        // A tap that does nothing: axum gives connection info (the admin API's local-caller
        // rule needs the peer address) for tapped listeners of any kind.
        .tap_io(|_| {});
        tasks.push(tokio::spawn(serve_until(
            listener,
            app.clone(),
            stopped.clone(),
        )));
    }
    let mut watcher = None;
    if let Some((listener, certificates)) = listeners.tls {
        match HttpsListener::new(
            listener,
            certificates.clone(),
            config.max_http_connections,
            config.http_header_timeout,
        ) {
            Ok(listener) => {
                tasks.push(tokio::spawn(serve_until(
                    listener.tap_io(|_| {}),
                    app,
                    stopped,
                )));
                watcher = Some(tokio::spawn(certificates.watch()));
            }
            Err(e) => {
                tracing::error!(error = %e, "the HTTPS listener has no address; HTTPS is off")
            }
        }
    }
    Http {
        stop,
        tasks,
        watcher,
    }
}

/// Serves `app` on `listener` until `stopped` turns true, finishing requests in flight.
async fn serve_until<L>(
    listener: L,
    app: axum::Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    // The peer address lets the admin API tell local callers apart; axum gives it for tapped
    // listeners of any kind, hence a tap that does nothing.
    axum::serve(
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    })
    .await
}

/// Work beside the flow, stopped at shutdown.
struct Tasks {
    access_sync: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    rollups: Option<JoinHandle<()>>,
    retention: JoinHandle<()>,
    live_metrics: JoinHandle<()>,
    /// Hands commands to devices and records what becomes of them.
    dispatcher: JoinHandle<()>,
}

/// Feeds the pipeline from the broker until SIGINT or SIGTERM; then stops accepting, runs
/// what was handed over through the pipeline and waits until the writer stored it.
async fn run_until_signal(ingest: Ingest, broker: Broker) -> anyhow::Result<()> {
    let queued = broker.tap;
    // The pipeline runs on the runtime's worker threads, beside the connections that feed
    // it: each hand-over then wakes a task, not a parked thread (the start-up thread).
    let (stop_pipeline, stopped) = oneshot::channel::<()>();
    let pipeline = tokio::spawn(source::tap::run(
        ingest.pipeline,
        broker.tap_rx,
        async {
            // A dropped sender also stops it: nothing would ever stop it otherwise.
            let _ = stopped.await;
        },
        move || {
            metrics::gauge!("fieldline_broker_queued_bytes").set(queued.queued_bytes() as f64);
        },
    ));
    shutdown_signal().await;
    // New connections stop first; then the tap closes and what it took is stored.
    broker.listeners_up.store(false, Ordering::Release);
    broker.running.stop_accepting();
    let _ = stop_pipeline.send(());
    let pipeline = pipeline.await.context("the ingest pipeline failed")?;
    // The tap is closed and drained: everything acknowledged is in the writer's hands.
    drop(pipeline);
    ingest.writer_task.await.context("store writer failed")?;
    if let Some(follower) = ingest.log_follower {
        // Lets it release what the last batches stored.
        tokio::time::sleep(Duration::from_millis(10)).await;
        follower.abort();
    }
    Ok(())
}

/// Cluster mode until SIGINT or SIGTERM: then stops accepting, closes the tap (nothing more
/// is acknowledged), lets the partition writers store what they read and gives the leases
/// back.
async fn run_cluster_until_signal(
    running: crate::cluster_node::Running,
    broker: Broker,
) -> anyhow::Result<()> {
    shutdown_signal().await;
    broker.listeners_up.store(false, Ordering::Release);
    broker.running.stop_accepting();
    tokio::task::spawn_blocking(broker.tap_rx.closer())
        .await
        .context("closing the broker's tap failed")?;
    running.stop().await;
    Ok(())
}

/// Ends the work beside the flow, live clients, and then HTTP.
async fn stop(tasks: Tasks, deliveries: (&Webhooks, &Channels), hub: &Hub, http: Http) {
    tasks.housekeeping.abort();
    if let Some(rollups) = tasks.rollups {
        rollups.abort();
    }
    tasks.retention.abort();
    tasks.access_sync.abort();
    deliveries.0.stop();
    deliveries.1.stop();
    tasks.live_metrics.abort();
    tasks.dispatcher.abort();
    hub.close_all("the server is shutting down");
    if let Some(watcher) = http.watcher {
        watcher.abort();
    }
    let _ = http.stop.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for task in http.tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
            Err(_) => {
                tracing::warn!("HTTP connections still open after 5 s; closing them");
                break;
            }
            _ => {}
        }
    }
}

/// Opens the write-ahead log the durability mode asks for (none for `memory`).
fn open_wal(
    config: &Config,
    chosen: &crate::wal_dir::Chosen,
    stored_position: u64,
) -> anyhow::Result<Option<(Arc<Wal>, Opened)>> {
    if config.durability == Durability::Memory {
        tracing::warn!("--durability memory: a PUBACK means the publish is in memory only; a crash loses what is not yet stored");
        return Ok(None);
    }
    let settings = WalSettings {
        dir: chosen.dir.clone(),
        durability: config.durability,
        segment_bytes: config.wal_segment_bytes,
    };
    let (wal, opened) = Wal::open(settings, stored_position, chosen.owner.as_deref())
        .with_context(|| {
            format!(
                "cannot open the write-ahead log in {}",
                chosen.dir.display()
            )
        })?;
    tracing::info!(
        dir = %chosen.dir.display(),
        durability = config.durability.as_str(),
        segments = opened.segments,
        stored = stored_position,
        last = opened.last,
        cut_bytes = opened.cut_bytes,
        "write-ahead log open"
    );
    Ok(Some((wal, opened)))
}

/// Live clients' queue depths, for the operator: how many wait and how deep the worst is.
async fn report_live_queues(hub: Arc<Hub>) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        every_second.tick().await;
        let (clients, queued, deepest) = hub.queue_depths();
        metrics::gauge!("fieldline_live_subscriptions").set(clients as f64);
        metrics::gauge!("fieldline_live_queued_events").set(queued as f64);
        metrics::gauge!("fieldline_live_deepest_queue_events").set(deepest as f64);
    }
}

/// Storage upkeep once a minute (the first at start): pruning the rejected messages, the
/// back end's maintenance (PostgreSQL: time partitions ahead), and a look at the server's own
/// jobs and its chunks left uncompressed (TimescaleDB), each outcome recorded in `health`.
async fn housekeeping(store: Arc<dyn Store>, health: Arc<JobHealth>) {
    let mut every_minute = tokio::time::interval(Duration::from_secs(60));
    let record = |job: &str, outcome: Result<(), fieldline_store::StoreError>| match outcome {
        Ok(()) => health.succeeded(job),
        Err(e) => health.failed(job, &e.to_string()),
    };
    loop {
        every_minute.tick().await;
        record(
            "rejected pruning",
            store.prune_rejected(REJECTED_KEPT).await.map(|_| ()),
        );
        record("partitions", store.maintain().await);
        match store.server_jobs().await {
            Ok(jobs) => {
                health.server_jobs(&jobs);
                health.succeeded("server job statistics");
            }
            Err(e) => health.failed("server job statistics", &e.to_string()),
        }
        match store.uncompressed_chunks().await {
            Ok(tables) => {
                health.uncompressed_chunks(&tables);
                health.succeeded("server chunk statistics");
            }
            Err(e) => health.failed("server chunk statistics", &e.to_string()),
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one ends the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting without storing what is still queued");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("fieldline_storage_write_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("fieldline_storage_batch_rows".into()),
            &[
                1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0,
            ],
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Registered at zero so dashboards and alerts see them before the first event.
    for name in [
        "fieldline_messages_received_total",
        "fieldline_broker_publishes_total",
        "fieldline_broker_lost_messages_total",
        "fieldline_broker_backpressure_waits_total",
        "fieldline_storage_write_errors_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::describe_counter!(
        "fieldline_broker_lost_messages_total",
        "Publishes the broker read but could not hand to the pipeline (the device got no PUBACK). Expected 0."
    );
    metrics::describe_counter!(
        "fieldline_rejected_messages_total",
        "Messages and batch documents rejected, by reason"
    );
    metrics::describe_gauge!(
        "fieldline_broker_queued_bytes",
        "Bytes of publishes waiting between broker and pipeline"
    );
    metrics::describe_gauge!(
        "fieldline_writer_queue_batches",
        "Batches waiting for the store writer"
    );
    metrics::describe_histogram!("fieldline_storage_write_seconds", "Time to store one batch");
    metrics::describe_histogram!("fieldline_storage_batch_rows", "Rows per stored batch");
    Ok(handle)
}
