//! `tail` while the server dies under it, and a transaction too big to hold in memory.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Db, LiveTail};
use pgprism_testkit::{PgServer, StopMode};

/// (commit_lsn, id) of every printed insert.
fn printed(lines: &[serde_json::Value]) -> Vec<(String, i64)> {
    lines
        .iter()
        .map(|l| {
            (
                l["commit_lsn"].as_str().unwrap().to_owned(),
                l["new"]["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn immediate_restart_mid_stream_prints_every_transaction_exactly_once() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(
        &pg,
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())",
    );
    // A second slot, never touched by the chaos run, records what was really committed.
    db.sql("SELECT pg_create_logical_replication_slot('truth', 'pgoutput')");

    let tail = LiveTail::spawn(db.tail(&["--log", "info"]));

    // One transaction per id, written continuously; across the crash a write may fail
    // (not committed) or succeed without the client hearing back (committed): ids that
    // made it are read back from the table at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dsn = db.dsn.clone();
        let pg_psql = move |sql: &str| {
            std::process::Command::new(pgprism_testkit::bin_dir().unwrap().join("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dsn, "-c", sql])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        thread::spawn(move || {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) && id < 3000 {
                id += 1;
                if !pg_psql(&format!(
                    "INSERT INTO t (id) VALUES ({id}) ON CONFLICT DO NOTHING"
                )) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            id
        })
    };

    tail.wait_for(Duration::from_secs(60), "first changes", |l| l.len() >= 200);
    let before = Instant::now();
    pg.restart(StopMode::Immediate).unwrap();
    let restart_took = before.elapsed();
    tail.wait_for(Duration::from_secs(60), "changes after the restart", |l| {
        l.len() >= 600
    });
    stop.store(true, Ordering::Relaxed);
    let last_id = writer.join().unwrap();

    let committed: Vec<i64> = db
        .sql("SELECT id FROM t ORDER BY id")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    tail.wait_for(Duration::from_secs(60), "every committed row", |l| {
        l.len() >= committed.len()
    });
    // Give a duplicate, if there were one, the time to show up.
    thread::sleep(Duration::from_millis(500));
    let (lines, stderr) = tail.stop();
    assert!(
        stderr.contains("reconnecting"),
        "tail should have lost its session:\n{stderr}"
    );

    let got = printed(&lines);
    let mut per_commit: BTreeMap<&str, usize> = BTreeMap::new();
    for (lsn, _) in &got {
        *per_commit.entry(lsn.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = per_commit.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "transactions printed more than once: {dupes:?}"
    );
    let mut ids: Vec<i64> = got.iter().map(|g| g.1).collect();
    ids.sort();
    assert_eq!(ids, committed, "printed ids differ from committed rows");

    // The untouched slot's view of the same WAL: the same transactions, same commit LSNs.
    let lsn = db.lsn();
    let truth = common::parse_lines(
        &common::run(db.tail_on("truth", &["--until-lsn", &lsn, "--no-ack"])).stdout,
    );
    let mut truth = printed(&truth);
    let mut got_sorted = got.clone();
    truth.sort();
    got_sorted.sort();
    assert_eq!(
        got_sorted, truth,
        "commit LSNs differ from an uninterrupted decode"
    );
    eprintln!(
        "restart -m immediate took {restart_took:?}; {} transactions printed once each; writer reached id {last_id}",
        got.len()
    );
}

#[test]
fn a_million_row_transaction_streams_in_bounded_memory() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(&pg, "CREATE TABLE big (id int PRIMARY KEY, payload text)");
    db.sql(
        "INSERT INTO big SELECT g, 'row ' || g || ' ' || md5(g::text) FROM generate_series(1, 1000000) g",
    );
    let lsn = db.lsn();
    let started = Instant::now();
    let mut child = db
        .tail(&["--until-lsn", &lsn, "--log", "info"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Memory measured from outside: the kernel's peak RSS of the process (`VmHWM` in
    // /proc/PID/status), sampled until the process exits.
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let (mut peak_kb, mut samples) = (0u64, 0u32);
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            // A zombie (exited, not yet reaped) has no memory lines.
            let Some(hwm) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            else {
                break;
            };
            peak_kb = peak_kb.max(hwm);
            samples += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        (peak_kb, samples)
    });
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut s).unwrap();
        s
    });
    // Count and check lines as they arrive, without holding a million of them.
    let mut n = 0u64;
    let mut commit = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap())) {
        let line = line.unwrap();
        n += 1;
        if n == 1 || n == 1_000_000 {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["new"]["id"], n as i64);
            let c = v["commit_lsn"].as_str().unwrap().to_owned();
            assert!(commit.as_ref().is_none_or(|x| *x == c), "one transaction");
            commit = Some(c);
        }
    }
    let (peak_kb, samples) = sampler.join().unwrap();
    let status = child.wait().unwrap();
    let took = started.elapsed();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(n, 1_000_000);
    assert!(
        samples >= 10 && peak_kb > 0,
        "could not read the process's memory from /proc/{pid}/status ({samples} samples)"
    );
    eprintln!(
        "1,000,000-row transaction: {took:?}, {:.0} rows/s, tail peak RSS {peak_kb} kB ({samples} samples from /proc)",
        1e6 / took.as_secs_f64()
    );
    // The transaction's raw changes alone are ~60 MB, its JSON ~200 MB: holding either
    // whole would blow through this.
    assert!(
        peak_kb < 64 * 1024,
        "tail peak RSS {peak_kb} kB: memory is not bounded"
    );
}
