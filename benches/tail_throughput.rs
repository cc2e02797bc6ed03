//! Throughput of `pgprism tail` against two baselines measured in the same run, on
//! identical slots over the same backlog:
//!
//! - `pg_recvlogical` with pgoutput (`-o proto_version=1 -o publication_names=…`), output
//!   to /dev/null: the stock tool;
//! - a raw consumer that receives the slot through `pgwire-replication` and decodes
//!   nothing: the transport limit.
//!
//! Workloads: 1,000,000 single-row insert transactions, and 250,000 transactions of one
//! order + three items. Each consumer drains its own slot to the same end LSN, in rotating
//! order over several rounds; the median is reported. `PGPRISM_BENCH_SCALE=0.1` runs a
//! tenth of the rows, `PGPRISM_BENCH_ROUNDS` sets the rounds (default 3).
//!
//! Run: `cargo bench -p pgprism --bench tail_throughput`

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgprism_testkit::PgServer;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

struct Workload {
    name: &'static str,
    schema: &'static str,
    /// Backlog generator; `{n}` is the number of transactions.
    generate: &'static str,
    transactions: u64,
    rows_per_txn: u64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "1-row transactions",
        schema: "CREATE TABLE ev (id bigint PRIMARY KEY, kind text, at timestamptz DEFAULT now())",
        generate: "DO $$ BEGIN FOR i IN 1..{n} LOOP \
                     INSERT INTO ev (id, kind) VALUES (i, 'k' || (i % 7)); COMMIT; \
                   END LOOP; END $$",
        transactions: 1_000_000,
        rows_per_txn: 1,
    },
    Workload {
        name: "order + 3 items",
        schema: "CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint, status text, total_cents int);
                 CREATE TABLE order_items (id bigint PRIMARY KEY, order_id bigint, product bigint, quantity int, unit_cents int);",
        generate: "DO $$ BEGIN FOR i IN 1..{n} LOOP \
                     INSERT INTO orders VALUES (i, i % 1000, 'pending', 3000); \
                     INSERT INTO order_items VALUES (i * 3, i, 1, 1, 1000), (i * 3 + 1, i, 2, 1, 1000), (i * 3 + 2, i, 3, 1, 1000); \
                     COMMIT; \
                   END LOOP; END $$",
        transactions: 250_000,
        rows_per_txn: 4,
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Consumer {
    PgRecvlogical,
    Tail,
    Raw,
}

impl Consumer {
    const ALL: [Consumer; 3] = [Consumer::PgRecvlogical, Consumer::Tail, Consumer::Raw];

    fn label(self) -> &'static str {
        match self {
            Consumer::PgRecvlogical => "pg_recvlogical",
            Consumer::Tail => "pgprism tail",
            Consumer::Raw => "raw pgwire-replication",
        }
    }
}

fn main() {
    let Some(common::Bench {
        scale,
        rounds,
        pg,
        rt,
    }) = common::start()
    else {
        return;
    };
    let tail_bin = env!("CARGO_BIN_EXE_pgprism");
    let recvlogical = pgprism_testkit::bin_dir().unwrap().join("pg_recvlogical");

    println!(
        "pgprism tail throughput — {rounds} rounds, scale {scale}, Postgres {}",
        pg.psql("postgres", "SHOW server_version").unwrap().trim()
    );
    for w in WORKLOADS {
        let txns = ((w.transactions as f64) * scale).max(1.0) as u64;
        let rows = txns * w.rows_per_txn;
        let (db, dsn) = pg.fresh_database().unwrap();
        pg.psql(&db, w.schema).unwrap();
        pg.psql(&db, "CREATE PUBLICATION bench FOR ALL TABLES")
            .unwrap();
        let slots: Vec<Vec<String>> = (0..rounds)
            .map(|r| {
                Consumer::ALL
                    .iter()
                    .map(|c| {
                        let slot = format!("bench_{}_{:?}_{r}", w.rows_per_txn, c).to_lowercase();
                        pg.psql(
                            &db,
                            &format!(
                                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                            ),
                        )
                        .unwrap();
                        slot
                    })
                    .collect()
            })
            .collect();
        let gen_start = Instant::now();
        pg.psql(&db, &w.generate.replace("{n}", &txns.to_string()))
            .unwrap();
        let end = pg
            .psql(&db, "SELECT pg_current_wal_lsn()")
            .unwrap()
            .trim()
            .to_owned();
        println!(
            "\n## {} — {txns} transactions, {rows} rows (backlog written in {:.1?})",
            w.name,
            gen_start.elapsed()
        );

        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); 3];
        let mut tail_rss = 0u64;
        for (r, round_slots) in slots.iter().enumerate() {
            for k in 0..3 {
                // Rotate the order so no consumer always runs first (cold caches) or last.
                let i = (k + r) % 3;
                let slot = &round_slots[i];
                let elapsed = match Consumer::ALL[i] {
                    Consumer::PgRecvlogical => {
                        let t = Instant::now();
                        let st = Command::new(&recvlogical)
                            .args([
                                "-d",
                                &dsn,
                                "--slot",
                                slot,
                                "--start",
                                "-E",
                                &end,
                                "-f",
                                "/dev/null",
                                "-o",
                                "proto_version=1",
                                "-o",
                                "publication_names=bench",
                                "--no-loop",
                            ])
                            .stderr(Stdio::null())
                            .status()
                            .unwrap();
                        assert!(st.success(), "pg_recvlogical failed");
                        t.elapsed()
                    }
                    Consumer::Tail => {
                        let t = Instant::now();
                        let out = Command::new(tail_bin)
                            .args([
                                "tail",
                                "--dsn",
                                &dsn,
                                "--slot",
                                slot,
                                "--publication",
                                "bench",
                                "--until-lsn",
                                &end,
                                "--log",
                                "info",
                            ])
                            .stdout(std::fs::File::create("/dev/null").unwrap())
                            .stderr(Stdio::piped())
                            .output()
                            .unwrap();
                        let took = t.elapsed();
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        assert!(out.status.success(), "tail failed: {stderr}");
                        let printed: u64 = field(&stderr, "printed=");
                        assert_eq!(printed, rows, "tail printed {printed} of {rows} rows");
                        tail_rss = tail_rss.max(field(&stderr, "peak_rss_kb="));
                        took
                    }
                    Consumer::Raw => rt.block_on(raw_consume(&pg, &db, slot, &end, rows)),
                };
                times[i].push(elapsed);
            }
        }
        // Paired per round before the medians sort the rounds.
        let vs_recvlogical = common::paired(&times[0], &times[1]);
        let vs_raw = common::paired(&times[2], &times[1]);
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        let m: Vec<Duration> = times.iter_mut().map(median).collect();
        println!("| consumer | median time | rows/s | all rounds |");
        println!("|---|---|---|---|");
        for (i, c) in Consumer::ALL.iter().enumerate() {
            println!(
                "| {} | {:.2?} | {:.0} | {:?} |",
                c.label(),
                m[i],
                rate(m[i]),
                times[i]
                    .iter()
                    .map(|d| format!("{:.2?}", d))
                    .collect::<Vec<_>>()
            );
        }
        println!(
            "ratios (tail rows/s ÷ theirs, paired per round): vs pg_recvlogical {vs_recvlogical}; \
             vs raw {vs_raw}; tail peak RSS {tail_rss} kB"
        );
    }
}

fn field(text: &str, key: &str) -> u64 {
    text.split(key)
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

/// Receive `slot` to `end` through `pgwire-replication`, decoding nothing, acknowledging
/// each commit like the other consumers do.
async fn raw_consume(pg: &PgServer, db: &str, slot: &str, end: &str, rows: u64) -> Duration {
    let end = Lsn::parse(end).unwrap();
    let cfg = ReplicationConfig::new(pg.host(), pg.user(), pg.password(), db, slot, "bench")
        .with_port(pg.port())
        .with_status_interval(Duration::from_secs(1));
    let t = Instant::now();
    let mut client = ReplicationClient::connect(cfg).await.unwrap();
    let mut data = 0u64;
    loop {
        match client.recv().await.unwrap() {
            Some(ReplicationEvent::XLogData { data: d, .. }) => {
                // Relation messages are data too; count row changes only.
                if matches!(d.first(), Some(b'I' | b'U' | b'D')) {
                    data += 1;
                }
            }
            Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                client.update_applied_lsn(end_lsn);
                // The same end rule as tail's --until-lsn and pg_recvlogical's --endpos.
                if end_lsn >= end {
                    break;
                }
            }
            Some(ReplicationEvent::KeepAlive { wal_end, .. }) if wal_end >= end => break,
            Some(_) => {}
            None => break,
        }
    }
    let took = t.elapsed();
    client.stop();
    assert_eq!(data, rows, "raw consumer saw {data} of {rows} rows");
    took
}
