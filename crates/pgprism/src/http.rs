//! Metrics and health over HTTP: `/metrics` (Prometheus), `/healthz` (the process is up),
//! `/readyz` (a healthy standby, or a leader that is streaming).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// A standby waiting on a working session, or a leader streaming.
    pub ready: AtomicBool,
    /// This replica leads and streams.
    pub leading: AtomicBool,
}

/// The Prometheus recorder for the `metrics` facade, installed on the first call (the
/// facade takes one per process; later runs in the same process share it).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Install the Prometheus recorder, with the names and help of shared/DESIGN.md and
/// histogram buckets for the flush metrics.
fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("pgprism_batch_flush_duration_seconds".to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("pgprism_batch_rows".to_owned()),
                &[
                    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0,
                ],
            )
        })
        .context("configuring metrics")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    metrics::describe_gauge!(
        "pgprism_projection_lag_seconds",
        "Commit time of the oldest change not yet applied to now; 0 when caught up"
    );
    metrics::describe_gauge!(
        "pgprism_replication_lag_bytes",
        "WAL between the source's current position and the slot's confirmed position"
    );
    metrics::describe_gauge!(
        "pgprism_slot_retained_wal_bytes",
        "WAL the replication slot keeps on the source"
    );
    metrics::describe_counter!(
        "pgprism_changes_total",
        "Changes decoded, by table and operation"
    );
    metrics::describe_histogram!(
        "pgprism_batch_flush_duration_seconds",
        "Time to make a batch durable in every target"
    );
    metrics::describe_histogram!("pgprism_batch_rows", "Rows written per batch and sink");
    metrics::describe_counter!(
        "pgprism_dead_letters_total",
        "Changes sent to the dead letters, by projection"
    );
    metrics::describe_gauge!("pgprism_is_leader", "1 while this replica leads");
    metrics::describe_gauge!("pgprism_epoch", "The epoch this replica last led with");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Bind `bind` now (an error names the address) and serve in the background.
pub async fn serve(
    bind: std::net::SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (http.bind)"))?;
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if health.ready.load(Ordering::Relaxed) {
                    let role = if health.leading.load(Ordering::Relaxed) {
                        "leader"
                    } else {
                        "standby"
                    };
                    (StatusCode::OK, format!("ready ({role})\n"))
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                }
            }),
        );
    tracing::info!(bind = %bind, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
