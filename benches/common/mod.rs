//! What every bench starts with: the scale and rounds from the environment, a testkit
//! Postgres tuned for bulk writes, and a two-worker runtime.

pub mod shop_load;

use pgprism_testkit::PgServer;
use tokio::runtime::Runtime;

/// A bench's setting from the environment (`PGPRISM_BENCH_…`), when set and a number.
pub fn env_number(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Each round's ratio `baseline time / ours` (> 1: ours faster), paired by round — the
/// machine's speed drifts between rounds, not within one — and their median, as
/// `median 1.23×, rounds [1.20×, 1.23×, 1.31×]`.
#[allow(dead_code)] // the benches with one baseline; live_lag pairs throughputs itself
pub fn paired(baseline: &[std::time::Duration], ours: &[std::time::Duration]) -> String {
    let by_round: Vec<f64> = baseline
        .iter()
        .zip(ours)
        .map(|(b, o)| b.as_secs_f64() / o.as_secs_f64())
        .collect();
    let mut sorted = by_round.clone();
    sorted.sort_by(f64::total_cmp);
    match sorted.get(sorted.len() / 2) {
        Some(median) => format!(
            "median {median:.2}×, rounds [{}]",
            by_round
                .iter()
                .map(|r| format!("{r:.2}×"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no paired rounds".to_owned(),
    }
}

/// The common start of a bench.
pub struct Bench {
    /// `PGPRISM_BENCH_SCALE` (default 1.0): the share of the full workload.
    pub scale: f64,
    /// `PGPRISM_BENCH_ROUNDS` (default 3, at least 1).
    pub rounds: usize,
    /// Postgres with `max_wal_size=8GB`, `checkpoint_timeout=30min`.
    pub pg: PgServer,
    /// Multi-threaded, two workers (the machines are 2-core).
    pub rt: Runtime,
}

/// `None` under `cargo test --benches` / nextest discovery: nothing to run then.
pub fn start() -> Option<Bench> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return None;
    }
    let scale = env_number("PGPRISM_BENCH_SCALE").unwrap_or(1.0);
    let rounds = env_number("PGPRISM_BENCH_ROUNDS").map_or(3, |r| (r as usize).max(1));
    let pg = PgServer::builder()
        .setting("max_wal_size", "8GB")
        .setting("checkpoint_timeout", "30min")
        .start()
        .expect("start Postgres");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Some(Bench {
        scale,
        rounds,
        pg,
        rt,
    })
}
