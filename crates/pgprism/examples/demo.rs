//! The README's demo (`bash scripts/demo.sh`): a throwaway Postgres and Redis, two
//! `pgprism run` replicas keeping `order_read_model` (Postgres) and `order:{id}` hashes
//! (Redis) up to date, a steady order workload — with the leader killed (`kill -9`) in
//! the middle, the killed replica rejoining, and the new leader stopped with SIGTERM —
//! then the read models checked row for row against the ground truth.
//!
//! Exits nonzero when a check fails. The replicas log to files in a temp dir that is
//! kept, and named at the end.

#[path = "demo/replica.rs"]
mod replica;
#[path = "demo/verify.rs"]
mod verify;
#[path = "demo/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgprism_testkit::{PgServer, RedisServer};
use replica::{Launch, Replica, Role};
use tokio::sync::{mpsc, watch};

/// Transactions a second.
const RATE: f64 = 50.0;
/// How long the workload runs.
const RUN_FOR: Duration = Duration::from_secs(18);
/// When the leader is killed with SIGKILL.
const KILL_AT: Duration = Duration::from_secs(6);
/// When the killed replica is started again.
const REJOIN_AT: Duration = Duration::from_secs(9);
/// When the leader then is stopped with SIGTERM.
const TERM_AT: Duration = Duration::from_secs(13);
/// A takeover slower than this fails the demo.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(15);
/// How long the read models may take to catch up after the workload.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// Read models unchanged this long, with the leader idle, will not change any more.
const SETTLED: Duration = Duration::from_secs(3);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Orders in the shop before pgprism first starts.
const EXISTING_ORDERS: usize = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tokio::select! {
        r = demo() => match r {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                println!("\n✘ the demo could not run: {e}");
                ExitCode::FAILURE
            }
        },
        // Dropping the demo stops the servers and the replicas.
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping the servers");
            ExitCode::from(130)
        }
    }
}

/// Something that happened in the background while the timeline runs.
#[derive(Debug)]
enum Event {
    /// Replica `who` reports `ready (leader)`, `after` the leader was stopped by `how`.
    Leads {
        who: usize,
        after: Duration,
        how: &'static str,
    },
    /// Nobody took over within the limit.
    NoTakeover { how: &'static str },
    /// Replica `who` reports `ready (standby)` `after` it was started.
    Standby { who: usize, after: Option<Duration> },
    /// Replica `who` exited `after` SIGTERM.
    Exited {
        who: usize,
        code: Option<i32>,
        after: Duration,
    },
}

/// One failover, for the summary.
#[derive(Debug)]
struct Failover {
    how: &'static str,
    from: &'static str,
    at: Duration,
    to: Option<&'static str>,
    after: Option<Duration>,
    epoch: Option<i64>,
}

/// The checks, in the order they are printed: passed, what, detail, examples of failures.
#[derive(Default)]
struct Checks(Vec<(bool, String, String, Vec<String>)>);

impl Checks {
    fn add(&mut self, ok: bool, what: impl Into<String>, detail: impl Into<String>) {
        self.0.push((ok, what.into(), detail.into(), Vec::new()));
    }

    /// Show the first few of `examples` under the last check.
    fn note(&mut self, examples: &[String]) {
        if let Some(last) = self.0.last_mut() {
            last.3.extend(examples.iter().take(3).cloned());
            if examples.len() > 3 {
                last.3.push(format!("… and {} more", examples.len() - 3));
            }
        }
    }

    fn passed(&self) -> bool {
        self.0.iter().all(|(ok, _, _, _)| *ok)
    }
}

async fn demo() -> Result<bool, Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("pgprism"))
        .filter(|p| p.exists())
        .ok_or("no pgprism binary next to the demo: run it with `bash scripts/demo.sh`")?;
    let dir = tempfile::Builder::new()
        .prefix("pgprism-demo.")
        .tempdir()?
        .keep();

    step("throwaway Postgres and Redis (crates/testkit)");
    let t = Instant::now();
    let pg = PgServer::start()?;
    let dsn = pg.create_database("shop")?;
    for file in ["sql/schema.sql", "sql/read_models.sql"] {
        pg.psql("shop", &std::fs::read_to_string(root.join(file))?)?;
    }
    // A shop with history: pgprism's first start must load it (the backfill).
    pg.psql("shop", &pgprism_testkit::shop::seed_sql(EXISTING_ORDERS))?;
    let redis = RedisServer::start()?;
    println!(
        "   postgres   {:<44} wal_level=logical; sql/schema.sql, sql/read_models.sql loaded, {EXISTING_ORDERS} orders already in it",
        pgprism_pg::redact_dsn(&dsn)
    );
    println!("   redis      {}", redis.url());
    println!("   started in {}", dur(t.elapsed()));

    step("two `pgprism run` replicas");
    let config = dir.join("pgprism.toml");
    std::fs::copy(root.join("pgprism.example.toml"), &config)?;
    let launch = Launch {
        bin,
        config: config.clone(),
        dsn: dsn.clone(),
        redis_url: redis.url(),
        dir: dir.clone(),
    };
    let mut replicas = vec![Replica::start("a", &launch)?];
    let (_, a_after) = wait_role(&replicas[..1], Role::Leader, Duration::from_secs(30))
        .await
        .ok_or_else(|| {
            format!(
                "replica a did not lead within 30 s; see {}",
                replicas[0].log.display()
            )
        })?;
    replicas.push(Replica::start("b", &launch)?);
    let (_, b_after) = wait_role(&replicas[1..], Role::Standby, Duration::from_secs(30))
        .await
        .ok_or_else(|| {
            format!(
                "replica b did not become a standby within 30 s; see {}",
                replicas[1].log.display()
            )
        })?;
    println!(
        "   config     {}  (pgprism.example.toml; DSNs, Redis URL, http.bind, replica id from PGPRISM_* variables)",
        config.display()
    );
    for (r, role, after) in [
        (&replicas[0], "ready (leader)", a_after),
        (&replicas[1], "ready (standby)", b_after),
    ] {
        println!(
            "   replica {}  pid {:<7}  http://127.0.0.1:{:<5}  {:<15} in {:>7}   log {}",
            r.name,
            r.pid().unwrap_or(0),
            r.port,
            role,
            dur(after),
            r.log.display()
        );
    }
    let c = pg.client("shop").await?;
    if let Some((epoch, leader)) = pipeline(&c).await? {
        println!("   pgprism.pipelines: pipeline \"shop\", epoch {epoch}, leader {leader}");
    }

    step("backfill: the orders that existed before the first start load into the read model");
    let t = Instant::now();
    loop {
        let row = c
            .query_opt(
                "SELECT backfill::json->>'state', backfill::json->>'rows'
                   FROM pgprism.offsets WHERE pipeline = 'shop' AND sink = 'order_read_model.pg'",
                &[],
            )
            .await
            .ok()
            .flatten();
        let (state, rows): (Option<String>, Option<String>) =
            row.map(|r| (r.get(0), r.get(1))).unwrap_or_default();
        if state.as_deref() == Some("done") {
            let n: i64 = c
                .query_one("SELECT count(*) FROM order_read_model", &[])
                .await?
                .get(0);
            println!(
                "   order_read_model.pg: {} orders read in {}, {n} rows in order_read_model (the Redis hashes load alongside); `pgprism status` shows it per target",
                rows.unwrap_or_default(),
                dur(t.elapsed())
            );
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "the backfill did not finish within 180 s (state {state:?}, rows {rows:?})"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step(&format!(
        "order workload: the shop mix at {RATE:.0} txn/s for {} s",
        RUN_FOR.as_secs()
    ));
    println!(
        "   kill -9 of the leader at {} s, it rejoins at {} s; SIGTERM of the new leader at {} s",
        KILL_AT.as_secs(),
        REJOIN_AT.as_secs(),
        TERM_AT.as_secs()
    );
    println!(
        "   {:>5}  {:>6}  {:>8}  {:>9}  {:>10}  {:>19}  {:<6}",
        "t", "txn/s", "orders/s", "changes/s", "lag", "commit → read model", "leader"
    );
    println!(
        "   {:>5}  {:>6}  {:>8}  {:>9}  {:>10}  {:>8}  {:>8}  {:<6}",
        "", "", "", "decoded", "(metric)", "p50", "max", ""
    );
    let progress = workload::Shared::default();
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(workload::drive(
        pg.client("shop").await?,
        RATE,
        start + RUN_FOR,
        20_260_000,
        progress.clone(),
    ));
    let watcher = tokio::spawn(workload::watch_read_model(
        pg.client("shop").await?,
        progress.clone(),
        start,
        stop_rx,
    ));
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut failovers: Vec<Failover> = Vec::new();
    let mut stopped: Vec<(&'static str, Option<i32>, Duration)> = Vec::new();
    let mut lag_samples: Vec<f64> = Vec::new();
    let mut decoded: HashMap<(&'static str, u32), f64> = HashMap::new();
    let mut decoded_total = 0.0;
    let (mut last_txns, mut last_orders, mut last_seen) = (0u64, 0u64, 0usize);
    let mut actions = vec![(KILL_AT, "kill"), (REJOIN_AT, "rejoin"), (TERM_AT, "term")];
    let mut killed: Option<usize> = None;
    let mut second = 1u64;
    loop {
        let next_row = start + Duration::from_secs(second);
        let next = actions
            .first()
            .map_or(next_row, |(at, _)| next_row.min(start + *at));
        tokio::select! {
            Some(ev) = events.recv() => {
                let t = start.elapsed();
                match ev {
                    Event::Leads { who, after, how } => {
                        let epoch = pipeline(&c).await?.map(|(e, _)| e);
                        if let Some(f) = failovers.iter_mut().rev().find(|f| f.how == how && f.to.is_none()) {
                            f.to = Some(replicas[who].name);
                            f.after = Some(after);
                            f.epoch = epoch;
                        }
                        event(t, &format!(
                            "{} leads (epoch {}): takeover {} after the {how}",
                            replicas[who].name,
                            epoch.map_or("?".to_owned(), |e| e.to_string()),
                            dur(after)
                        ));
                    }
                    Event::NoTakeover { how } => event(t, &format!(
                        "no replica took over within {} of the {how}", dur(TAKEOVER_LIMIT)
                    )),
                    Event::Standby { who, after } => match after {
                        Some(after) => event(t, &format!(
                            "{} is back: ready (standby) {} after its start", replicas[who].name, dur(after)
                        )),
                        None => event(t, &format!("{} did not come back as a standby", replicas[who].name)),
                    },
                    Event::Exited { who, code, after } => {
                        stopped.push((replicas[who].name, code, after));
                        event(t, &format!(
                            "{} exited with {} {} after SIGTERM",
                            replicas[who].name,
                            code.map_or("a signal".to_owned(), |c| format!("code {c}")),
                            dur(after)
                        ));
                    }
                }
            }
            () = tokio::time::sleep_until(next.into()) => {
                if actions.first().is_some_and(|(at, _)| start + *at <= Instant::now()) {
                    let (_, what) = actions.remove(0);
                    let t = start.elapsed();
                    let leader = tokio::task::block_in_place(|| {
                        replicas.iter().position(|r| r.role() == Role::Leader)
                    });
                    match (what, leader) {
                        ("kill", Some(i)) => {
                            let pid = replicas[i].pid().unwrap_or(0);
                            replicas[i].kill()?;
                            killed = Some(i);
                            event(t, &format!("kill -9 {} (pid {pid}), the leader", replicas[i].name));
                            failovers.push(Failover { how: "kill -9", from: replicas[i].name, at: t, to: None, after: None, epoch: None });
                            takeover_watch(&replicas, i, "kill -9", events_tx.clone());
                        }
                        ("rejoin", _) => if let Some(i) = killed {
                            replicas[i].restart()?;
                            event(t, &format!("{} started again (pid {})", replicas[i].name, replicas[i].pid().unwrap_or(0)));
                            let (port, tx) = (replicas[i].port, events_tx.clone());
                            tokio::task::spawn_blocking(move || {
                                let after = replica::wait_for_role(&[port], Role::Standby, Duration::from_secs(30)).map(|(_, d)| d);
                                let _ = tx.send(Event::Standby { who: i, after });
                            });
                        },
                        ("term", Some(i)) => {
                            let child = replicas[i].terminate()?;
                            let signalled = Instant::now();
                            event(t, &format!("SIGTERM {}, the leader", replicas[i].name));
                            failovers.push(Failover { how: "SIGTERM", from: replicas[i].name, at: t, to: None, after: None, epoch: None });
                            takeover_watch(&replicas, i, "SIGTERM", events_tx.clone());
                            if let Some(child) = child {
                                let tx = events_tx.clone();
                                tokio::task::spawn_blocking(move || {
                                    let (status, after) = replica::wait_exit(child, signalled, Duration::from_secs(20));
                                    let _ = tx.send(Event::Exited { who: i, code: status.and_then(|s| s.code()), after });
                                });
                            }
                        }
                        (what, None) => event(t, &format!("no leader to {what}")),
                        _ => {}
                    }
                    continue;
                }
                // One line a second.
                let (leader, metrics) = tokio::task::block_in_place(|| {
                    let leader = replicas.iter().find(|r| r.role() == Role::Leader);
                    (leader.map(|r| (r.name, r.starts)), leader.and_then(Replica::metrics))
                });
                let lag = metrics.as_ref().and_then(|m| m.max("pgprism_projection_lag_seconds"));
                let changes = match (leader, metrics.as_ref().and_then(|m| m.sum("pgprism_changes_total"))) {
                    // A counter per process: a replica started again counts from 0.
                    (Some(process), Some(total)) => {
                        let before = decoded.insert(process, total).unwrap_or(0.0);
                        decoded_total += (total - before).max(0.0);
                        Some((total - before).max(0.0))
                    }
                    _ => None,
                };
                lag_samples.extend(lag);
                let (txns, orders, window) = {
                    let p = progress.lock().unwrap();
                    let mut window: Vec<Duration> = p.seen[last_seen..].iter().map(|(_, l)| *l).collect();
                    last_seen = p.seen.len();
                    window.sort();
                    let row = (p.txns - last_txns, p.orders - last_orders, window);
                    (last_txns, last_orders) = (p.txns, p.orders);
                    row
                };
                let opt = |v: Option<String>| v.unwrap_or_else(|| "—".to_owned());
                println!(
                    "   {:>3} s  {:>6}  {:>8}  {:>9}  {:>10}  {:>8}  {:>8}  {:<6}",
                    second,
                    txns,
                    orders,
                    opt(changes.map(|c| format!("{c:.0}"))),
                    opt(lag.map(|l| format!("{l:.3} s"))),
                    opt(percentile(&window, 0.5).map(dur)),
                    opt(window.last().copied().map(dur)),
                    leader.map_or("none", |(name, _)| name),
                );
                second += 1;
                if Duration::from_secs(second - 1) >= RUN_FOR {
                    break;
                }
            }
        }
    }
    let run_time = start.elapsed();
    writer.await??;
    // Late events (a takeover still under way would be a failure below).
    while let Ok(ev) = events.try_recv() {
        if let Event::Exited { who, code, after } = ev {
            stopped.push((replicas[who].name, code, after));
        }
    }

    // Caught up: every committed order seen and the read model equal to the truth. Or,
    // when it does not get there, settled: the leader idle and nothing changing for 3 s.
    let t = Instant::now();
    let mut tables = verify::tables(&c).await?;
    let mut last = (tables.counts(), usize::MAX);
    let mut unchanged_since = Instant::now();
    let converged = loop {
        let pending = progress.lock().unwrap().pending();
        if pending == 0 && tables.equal() {
            break true;
        }
        if (tables.counts(), pending) != last {
            last = (tables.counts(), pending);
            unchanged_since = Instant::now();
        }
        let idle = || {
            tokio::task::block_in_place(|| {
                replicas
                    .iter()
                    .find(|r| r.role() == Role::Leader)
                    .and_then(Replica::metrics)
                    .and_then(|m| m.max("pgprism_projection_lag_seconds"))
                    == Some(0.0)
            })
        };
        if t.elapsed() >= CATCH_UP_LIMIT || (unchanged_since.elapsed() >= SETTLED && idle()) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        tables = verify::tables(&c).await?;
    };
    let caught_up = t.elapsed();
    stop_tx.send_replace(true);
    watcher.await??;

    step("the read side after the run");
    c.batch_execute("SET TimeZone = 'UTC'").await?;
    let sample = c
        .query(
            "SELECT id::text, customer_name, status, item_count, total_cents,
                    coalesce(first_item_name, ''), to_char(updated_at, 'HH24:MI:SS.MS')
               FROM order_read_model WHERE item_count > 0
              ORDER BY updated_at DESC, id LIMIT 5",
            &[],
        )
        .await?;
    println!(
        "   order_read_model: {} rows; the 5 last updated with items:",
        tables.model
    );
    println!(
        "     {:<10} {:<22} {:<10} {:>5} {:>9}  {:<28} updated_at (UTC)",
        "id", "customer_name", "status", "items", "total", "first_item_name"
    );
    for r in &sample {
        let id: String = r.get(0);
        let total: i32 = r.get(4);
        println!(
            "     {:<10} {:<22} {:<10} {:>5} {:>9}  {:<28} {}",
            format!("{}…", &id[..8]),
            clip(r.get::<_, Option<String>>(1).unwrap_or_default(), 22),
            r.get::<_, Option<String>>(2).unwrap_or_default(),
            r.get::<_, i32>(3),
            format!("${}.{:02}", total / 100, total % 100),
            clip(r.get(5), 28),
            r.get::<_, String>(6),
        );
    }
    let mut rc = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    for r in sample.iter().take(2) {
        let key = format!("order:{}", r.get::<_, String>(0));
        let h: HashMap<String, String> =
            redis::cmd("HGETALL").arg(&key).query_async(&mut rc).await?;
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut rc).await?;
        println!("   redis> HGETALL {key}        (TTL {})", hms(ttl));
        for col in verify::COLUMNS {
            if let Some(v) = h.get(col) {
                println!("     {col:<16} {v}");
            }
        }
    }

    step("checks");
    let mut checks = Checks::default();
    checks.add(
        tables.equal(),
        "order_read_model = order_read_model_truth, row for row",
        if tables.equal() {
            format!("{} rows", tables.truth)
        } else {
            format!(
                "{} rows, {} in the truth: {} missing, {} extra, {} different",
                tables.model, tables.truth, tables.missing, tables.extra, tables.different
            )
        },
    );
    checks.note(&tables.examples);
    let hashes = verify::order_hashes(&c, &mut rc).await?;
    checks.add(
        hashes.equal(),
        "Redis order:{id} hashes = the truth, every field",
        keys_detail(&hashes),
    );
    checks.note(&hashes.wrong);
    let docs = verify::customer_documents(&c, &mut rc).await?;
    checks.add(
        docs.equal(),
        "Redis customer:{id} documents = customers (id, name)",
        keys_detail(&docs),
    );
    checks.note(&docs.wrong);
    let (orders, seen, vanished, pending) = {
        let p = progress.lock().unwrap();
        (p.orders, p.seen.len(), p.vanished, p.pending())
    };
    checks.add(
        pending == 0,
        "every committed order appeared in order_read_model",
        format!(
            "{} of {} ({} deleted again first){}",
            seen,
            orders,
            vanished,
            if pending > 0 {
                format!(", {pending} never seen")
            } else {
                String::new()
            }
        ),
    );
    let dead = verify::dead_letters(&c).await?;
    checks.add(dead == 0, "dead letters", dead.to_string());
    for f in &failovers {
        checks.add(
            f.after.is_some_and(|d| d <= TAKEOVER_LIMIT),
            format!("standby took over after the {} of the leader", f.how),
            match (f.to, f.after) {
                (Some(to), Some(after)) => format!("{} → {to} in {}", f.from, dur(after)),
                _ => format!("none within {}", dur(TAKEOVER_LIMIT)),
            },
        );
    }

    let last_leader = pipeline(&c).await?;
    // Stop what still runs, politely, and check that it goes cleanly.
    let mut waiting = Vec::new();
    for (i, r) in replicas.iter_mut().enumerate() {
        let signalled = Instant::now();
        if let Some(child) = r.terminate()? {
            waiting.push(tokio::task::spawn_blocking(move || {
                (
                    i,
                    replica::wait_exit(child, signalled, Duration::from_secs(20)),
                )
            }));
        }
    }
    for w in waiting {
        let (i, (status, after)) = w.await?;
        stopped.push((replicas[i].name, status.and_then(|s| s.code()), after));
    }
    stopped.sort_by_key(|(name, _, _)| *name);
    checks.add(
        !stopped.is_empty() && stopped.iter().all(|(_, code, _)| *code == Some(0)),
        "replicas stop cleanly on SIGTERM (exit 0)",
        stopped
            .iter()
            .map(|(name, code, after)| match code {
                Some(c) => format!("{name}: {c} in {}", dur(*after)),
                None => format!("{name}: still running or killed after {}", dur(*after)),
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    for (ok, what, detail, examples) in &checks.0 {
        println!("   {} {what:<56} {detail}", if *ok { "✔" } else { "✘" });
        for e in examples {
            println!("       {e}");
        }
    }

    step("summary");
    let (txns, changes, latencies, failover_latencies) = {
        let p = progress.lock().unwrap();
        // An order committed while no replica led waits for the takeover: counted apart.
        let during = |seen_at: Duration, latency: Duration| {
            let committed = seen_at.saturating_sub(latency);
            failovers.iter().any(|f| {
                committed + Duration::from_millis(100) >= f.at
                    && committed <= f.at + f.after.unwrap_or(RUN_FOR)
            })
        };
        let (mut quiet, mut around) = (Vec::new(), Vec::new());
        for (seen_at, l) in &p.seen {
            if during(*seen_at, *l) {
                around.push(*l);
            } else {
                quiet.push(*l);
            }
        }
        let mut all: Vec<Duration> = p.seen.iter().map(|(_, l)| *l).collect();
        all.sort();
        quiet.sort();
        around.sort();
        (p.txns, p.changes, (all, quiet), around)
    };
    let secs = run_time.as_secs_f64();
    println!(
        "   {:<22} {} txns in {secs:.1} s = {:.1} txn/s; {} row changes = {:.0}/s",
        "workload",
        thousands(txns),
        txns as f64 / secs,
        thousands(changes),
        changes as f64 / secs
    );
    println!(
        "   {:<22} {} changes decoded by the leaders = {:.0}/s (replays after a takeover included)",
        "pipeline",
        thousands(decoded_total as u64),
        decoded_total / secs
    );
    let (all, quiet) = latencies;
    let row = |label: &str, v: &[Duration], what: String| {
        println!(
            "   {label:<22} p50 {:>8}   p99 {:>8}   max {:>8}   {what}",
            opt_dur(percentile(v, 0.5)),
            opt_dur(percentile(v, 0.99)),
            opt_dur(v.last().copied()),
        );
    };
    row(
        "commit → read model",
        &all,
        format!("{} orders, polled every 5 ms", all.len()),
    );
    row(
        "  steady",
        &quiet,
        format!("{} orders committed outside a failover", quiet.len()),
    );
    row(
        "  during a failover",
        &failover_latencies,
        format!(
            "{} orders committed while the leader changed",
            failover_latencies.len()
        ),
    );
    lag_samples.sort_by(f64::total_cmp);
    let secs_or_dash = |l: Option<&f64>| l.map_or("—".to_owned(), |l| format!("{l:.3} s"));
    println!(
        "   {:<22} p50 {:>8}   max {:>8}   pgprism_projection_lag_seconds of the leader, once a second",
        "lag metric",
        secs_or_dash(lag_samples.get(lag_samples.len() / 2)),
        secs_or_dash(lag_samples.last()),
    );
    for f in &failovers {
        println!(
            "   {:<22} {} → {} in {}{}",
            format!("takeover ({})", f.how),
            f.from,
            f.to.unwrap_or("nobody"),
            f.after.map_or("—".to_owned(), dur),
            f.epoch.map_or(String::new(), |e| format!(", epoch {e}"))
        );
    }
    if let Some((epoch, leader)) = &last_leader {
        println!(
            "   {:<22} epoch {epoch}, leader {leader} (before the final SIGTERM)",
            "pgprism.pipelines"
        );
    }
    if converged {
        println!(
            "   {:<22} {} after the workload stopped",
            "caught up",
            dur(caught_up)
        );
    } else {
        println!(
            "   {:<22} gave up {} after the workload stopped (leader idle, read models unchanged)",
            "not caught up",
            dur(caught_up)
        );
    }
    for r in &replicas {
        let warnings = r.warnings();
        println!(
            "   {:<22} {}  ({} warnings{})",
            format!("log of {}", r.name),
            r.log.display(),
            warnings.len(),
            warnings.first().map_or(String::new(), |w| format!(
                "; first: {}",
                clip(w.clone(), 90)
            ))
        );
    }
    if checks.passed() {
        println!(
            "\n✔ all checks passed: nothing lost across a kill -9 and a SIGTERM of the leader"
        );
        Ok(true)
    } else {
        let failed = checks.0.iter().filter(|(ok, _, _, _)| !ok).count();
        println!(
            "\n✘ {failed} check(s) failed; the replicas' logs are in {}",
            dir.display()
        );
        Ok(false)
    }
}

/// Watch the replicas other than `stopped` until one leads; report as an [`Event`].
fn takeover_watch(
    replicas: &[Replica],
    stopped: usize,
    how: &'static str,
    tx: mpsc::UnboundedSender<Event>,
) {
    let others: Vec<(usize, u16)> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != stopped)
        .map(|(i, r)| (i, r.port))
        .collect();
    tokio::task::spawn_blocking(move || {
        let ports: Vec<u16> = others.iter().map(|(_, p)| *p).collect();
        let _ = tx.send(
            match replica::wait_for_role(&ports, Role::Leader, TAKEOVER_LIMIT) {
                Some((k, after)) => Event::Leads {
                    who: others[k].0,
                    after,
                    how,
                },
                None => Event::NoTakeover { how },
            },
        );
    });
}

/// Wait until one of `replicas` reports `role`.
async fn wait_role(replicas: &[Replica], role: Role, limit: Duration) -> Option<(usize, Duration)> {
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    tokio::task::spawn_blocking(move || replica::wait_for_role(&ports, role, limit))
        .await
        .ok()
        .flatten()
}

/// `pgprism.pipelines` of the demo's pipeline: (epoch, leader).
async fn pipeline(c: &tokio_postgres::Client) -> Result<Option<(i64, String)>, Error> {
    Ok(c.query_opt(
        "SELECT epoch, coalesce(leader, '') FROM pgprism.pipelines WHERE name = 'shop'",
        &[],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

fn step(what: &str) {
    println!("\n▶ {what}");
}

fn event(t: Duration, what: &str) {
    println!("   ── {:>5.1} s  {what}", t.as_secs_f64());
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn opt_dur(d: Option<Duration>) -> String {
    d.map_or("—".to_owned(), dur)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn hms(secs: i64) -> String {
    if secs < 0 {
        return "none".to_owned();
    }
    format!(
        "{}h {:02}m {:02}s",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn clip(mut s: String, width: usize) -> String {
    if s.chars().count() > width {
        s = s.chars().take(width - 1).collect();
        s.push('…');
    }
    s
}

fn keys_detail(k: &verify::Keys) -> String {
    let mut s = format!("{} keys", k.present);
    if k.present != k.expected {
        s.push_str(&format!(", {} expected", k.expected));
    }
    if !k.wrong.is_empty() {
        s.push_str(&format!(", {} wrong", k.wrong.len()));
    }
    s
}
