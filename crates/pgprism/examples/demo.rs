//! The README's demo: a throwaway Postgres with the example shop schema, an order
//! workload, and `pgprism tail` streaming the changes — with a crash of Postgres in the
//! middle and a check at the end that every committed change arrived exactly once.
//!
//! Run through `bash scripts/demo.sh`, which installs what is missing and builds first.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgprism_testkit::{ChildGuard, PgServer, Signal, StopMode};

const RUN_FOR: Duration = Duration::from_secs(12);
const CRASH_AT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Seen {
    per_table_op: BTreeMap<(String, String), u64>,
    /// (table, key) of every insert, to check exactly-once at the end.
    inserted: Vec<(String, String)>,
    lags_ms: Vec<f64>,
    last: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pgprism = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("pgprism"))
        .ok_or("cannot locate the pgprism binary")?;

    step("starting a throwaway Postgres (wal_level=logical)");
    let pg = PgServer::start()?;
    let (db, dsn) = pg.fresh_database()?;
    for file in ["sql/schema.sql", "sql/read_models.sql"] {
        pg.psql(&db, &std::fs::read_to_string(root.join(file))?)?;
    }
    pg.psql(
        &db,
        "INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 50) g;
         INSERT INTO products (name, price_cents) SELECT 'product ' || g, 100 * g FROM generate_series(1, 20) g;",
    )?;
    println!(
        "   {} on port {}, schema from sql/ loaded",
        pgprism_decoder::stream::redact_dsn(&dsn),
        pg.port()
    );

    step("starting `pgprism tail` (creates the slot and the publication)");
    let mut child = Command::new(&pgprism)
        .args([
            "tail",
            "--dsn",
            &dsn,
            "--slot",
            "demo",
            "--publication",
            "demo",
            "--create-slot",
            "--tables",
            "public.customers,public.products,public.orders,public.order_items",
            "--log",
            "info",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let tail = ChildGuard::new(child);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let table = v["table"].as_str().unwrap_or("").to_owned();
                let op = v["op"].as_str().unwrap_or("").to_owned();
                let mut s = seen.lock().unwrap();
                if let Some(ms) = v["commit_time"].as_str().and_then(lag_ms) {
                    s.lags_ms.push(ms);
                }
                if op == "insert" {
                    s.inserted.push((table.clone(), v["key"]["id"].to_string()));
                }
                *s.per_table_op
                    .entry((table.clone(), op.clone()))
                    .or_default() += 1;
                s.last.push(format!("{op:>6} {table:<12} {}", short(&v)));
                if s.last.len() > 3 {
                    s.last.remove(0);
                }
            }
        })
    };
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let logs = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                logs.lock().unwrap().push(line);
            }
        });
    }
    wait_until(Duration::from_secs(30), || {
        logs.lock().unwrap().iter().any(|l| l.contains("streaming"))
    })?;

    step(&format!(
        "driving an order workload for {}s; Postgres is killed (pg_ctl restart -m immediate) at {}s",
        RUN_FOR.as_secs(),
        CRASH_AT.as_secs()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let workload = {
        let (stop, committed) = (stop.clone(), committed.clone());
        let psql = pgprism_testkit::bin_dir()?.join("psql");
        let dsn = dsn.clone();
        thread::spawn(move || workload(&psql, &dsn, &stop, &committed))
    };
    let started = Instant::now();
    let mut crashed = false;
    println!(
        "   {:>4}  {:>8}  {:>8}  {:>10}  {:>10}",
        "t", "txns", "changes", "lag p50", "lag max"
    );
    while started.elapsed() < RUN_FOR {
        thread::sleep(Duration::from_secs(1));
        if !crashed && started.elapsed() >= CRASH_AT {
            crashed = true;
            let t = Instant::now();
            pg.restart(StopMode::Immediate)?;
            println!(
                "   ---- Postgres crashed and restarted in {:.1?}; tail reconnects by itself ----",
                t.elapsed()
            );
        }
        let mut s = seen.lock().unwrap();
        let changes: u64 = s.per_table_op.values().sum();
        let (p50, max) = percentiles(&mut s.lags_ms);
        s.lags_ms.clear();
        println!(
            "   {:>3}s  {:>8}  {:>8}  {:>8.1}ms  {:>8.1}ms",
            started.elapsed().as_secs(),
            committed.load(Ordering::Relaxed),
            changes,
            p50,
            max
        );
    }
    stop.store(true, Ordering::Relaxed);
    workload.join().map_err(|_| "workload thread panicked")??;

    step("checking: every committed row was streamed exactly once");
    let rows: u64 = pg
        .psql(
            &db,
            "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM products) \
                  + (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_items)",
        )?
        .trim()
        .parse()?;
    // The 70 seed rows were written before the slot existed.
    let expected = rows - 70;
    wait_until(Duration::from_secs(30), || {
        seen.lock().unwrap().inserted.len() as u64 >= expected
    })
    .ok();
    thread::sleep(Duration::from_millis(300));
    tail.signal(Signal::Term)?;
    let mut tail = tail;
    tail.wait_timeout(Duration::from_secs(15));
    let _ = reader.join();
    let s = seen.lock().unwrap();
    let unique: HashSet<_> = s.inserted.iter().collect();
    let reconnected = logs.lock().unwrap().iter().any(|l| l.contains("resumed"));
    println!("   changes by table and operation:");
    for ((table, op), n) in &s.per_table_op {
        println!("     {table:<12} {op:<8} {n:>7}");
    }
    println!("   last changes:");
    for l in &s.last {
        println!("     {l}");
    }
    println!(
        "   rows inserted after the slot was created: {expected}; insert changes streamed: {} ({} distinct); tail reconnected after the crash: {}",
        s.inserted.len(),
        unique.len(),
        if reconnected { "yes" } else { "no" }
    );
    if s.inserted.len() as u64 == expected && unique.len() == s.inserted.len() {
        println!("\n✔ nothing lost, nothing repeated");
        Ok(())
    } else {
        Err("the stream does not match the committed rows".into())
    }
}

/// Orders with 1–4 items, status changes, and the occasional customer or product rename.
fn workload(
    psql: &std::path::Path,
    dsn: &str,
    stop: &AtomicBool,
    committed: &AtomicU64,
) -> Result<(), String> {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let items = 1 + n % 4;
        let sql = format!(
            "BEGIN;
             WITH o AS (INSERT INTO orders (customer_id, status)
                        SELECT id, 'pending' FROM customers ORDER BY md5(id::text || {n}) LIMIT 1 RETURNING id)
             INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
             SELECT o.id, p.id, 1 + {n} % 3, p.price_cents FROM o,
                    (SELECT id, price_cents FROM products ORDER BY md5(id::text || {n}) LIMIT {items}) p;
             UPDATE orders SET status = 'confirmed', updated_at = now()
              WHERE id = (SELECT id FROM orders WHERE status = 'pending' ORDER BY created_at LIMIT 1);
             {extra}
             COMMIT;",
            extra = match n % 25 {
                0 => format!("UPDATE customers SET name = 'customer renamed {n}' WHERE id = (SELECT id FROM customers ORDER BY md5(id::text || {n}) LIMIT 1);"),
                12 => format!("UPDATE products SET name = 'product renamed {n}' WHERE id = (SELECT id FROM products ORDER BY md5(id::text || {n}) LIMIT 1);"),
                _ => String::new(),
            }
        );
        let ok = Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .ok_or_else(|| std::io::Error::other("stdin"))?
                    .write_all(sql.as_bytes())?;
                c.wait()
            })
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            committed.fetch_add(1, Ordering::Relaxed);
        } else {
            // Postgres is restarting: try again shortly.
            thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n▶ {what}");
}

fn short(v: &serde_json::Value) -> String {
    let row = if v["new"].is_null() {
        &v["old"]
    } else {
        &v["new"]
    };
    let mut s = row.to_string();
    if s.len() > 90 {
        s.truncate(
            s.char_indices()
                .take_while(|(i, _)| *i < 87)
                .last()
                .map_or(0, |(i, c)| i + c.len_utf8()),
        );
        s.push('…');
    }
    s
}

/// Milliseconds from `YYYY-MM-DDTHH:MM:SS.ffffffZ` to now.
fn lag_ms(t: &str) -> Option<f64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let micros = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_micros() as i64;
    Some((now - micros) as f64 / 1000.0)
}

fn percentiles(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return Err(format!("timed out after {limit:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
