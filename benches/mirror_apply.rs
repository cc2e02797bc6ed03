//! Mirror apply of 1,000,000 decoded rows against a stock baseline measured in the same
//! run, on the same server, into an identical empty target table:
//!
//! - **baseline**: `psql` loads the same rows (a text file dumped from the source with
//!   `\copy`, so the values are byte for byte the ones the slot delivers) with `\copy` into
//!   a temporary table, then one `INSERT INTO target SELECT … FROM tmp ON CONFLICT (id) DO
//!   UPDATE SET …`, in one transaction; timed end to end (the `psql` process included);
//! - **pgprism**: a `mirror` projection of the source table into the target. The rows are
//!   decoded from a replication slot into memory first (`Vec<TxnChunk>`, 100 source
//!   transactions); only `Projector::push` of every chunk plus the final
//!   `Projector::flush` is timed — the apply path: routing, coalescing, the set-based
//!   writes and the fenced offset, with batches of up to 20,000 rows (bulk batches are
//!   `COPY`ed into staging tables and applied in the background, on two sink sessions in
//!   turn, while the next batch is routed; the final flush waits for all of them).
//!
//! Rounds rotate which of the two runs first; the target is truncated (and a checkpoint
//! taken) before each run, so both always write into an empty table. Medians reported.
//! After every run the target must hold every source row with the source's values (a
//! checksum over the rows' text form), or the bench fails.
//!
//! `PGPRISM_BENCH_SCALE=0.1` applies a tenth of the rows, `PGPRISM_BENCH_ROUNDS` sets the
//! rounds (default 3).
//!
//! Run: `cargo bench -p pgprism-sink --bench mirror_apply`

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgprism_decoder::stream::{ChangeKind, ReplicationStream, StreamConfig, StreamEvent, TxnChunk};
use pgprism_leader::Epoch;
use pgprism_pg::Dsn;
use pgprism_sink::spec::{BatchSpec, ProjectionSpec, SinkSpec};
use pgprism_sink::{FlushReport, Projector, ProjectorConfig};

/// Rows at scale 1.0.
const ROWS: u64 = 1_000_000;
/// Source transactions the rows are written (and decoded) in.
const TRANSACTIONS: u64 = 100;
/// The batch size pgprism starts at and never exceeds.
const BATCH_ROWS: usize = 20_000;

const SOURCE_TABLE: &str =
    "CREATE TABLE src (id bigint PRIMARY KEY, a text, b int, c timestamptz, d numeric)";
const TARGET_TABLE: &str =
    "CREATE TABLE target (id bigint PRIMARY KEY, a text, b int, c timestamptz, d numeric)";
/// The same checksum on source and target: equal iff the rows are (with overwhelming
/// probability).
const CHECKSUM: &str =
    "SELECT count(*) || ' ' || coalesce(sum(hashtext(t::text)::bigint), 0) FROM {table} t";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Baseline,
    Pgprism,
}

impl Contender {
    const ALL: [Contender; 2] = [Contender::Baseline, Contender::Pgprism];

    fn label(self) -> &'static str {
        match self {
            Contender::Baseline => "psql \\copy + INSERT … ON CONFLICT",
            Contender::Pgprism => "pgprism mirror (push + flush)",
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
    let rows = ((ROWS as f64 * scale) as u64).max(TRANSACTIONS);
    println!(
        "mirror apply — {rows} rows, {rounds} rounds, scale {scale}, Postgres {}",
        pg.psql("postgres", "SHOW server_version").unwrap().trim()
    );

    // The source: rows written in TRANSACTIONS transactions, read back from a slot.
    let (src_db, src_dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &src_db,
        &format!(
            "{SOURCE_TABLE};
             CREATE PUBLICATION bench FOR TABLE src;
             SELECT pg_create_logical_replication_slot('bench', 'pgoutput');"
        ),
    )
    .unwrap();
    let per_txn = rows / TRANSACTIONS;
    let mut script = String::new();
    for t in 0..TRANSACTIONS {
        let (lo, hi) = (
            t * per_txn + 1,
            if t + 1 == TRANSACTIONS {
                rows
            } else {
                (t + 1) * per_txn
            },
        );
        // Texts of 32 characters, ints, timestamps, numerics with two decimals; no NULLs.
        script.push_str(&format!(
            "INSERT INTO src SELECT g, md5(g::text), (g * 7919) % 1000003,
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '1.5 seconds',
                    (g % 1000003) / 100.0
               FROM generate_series({lo}::bigint, {hi}) g;\n"
        ));
    }
    let t = Instant::now();
    pg.psql(&src_db, &script).unwrap();
    let end: String = pg
        .psql(&src_db, "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .to_owned();
    println!("source written in {:.1?}", t.elapsed());

    let t = Instant::now();
    let chunks = rt.block_on(decode(&src_dsn, rows));
    println!(
        "decoded {} chunks, {rows} rows in {:.1?} (up to {end})",
        chunks.len(),
        t.elapsed()
    );
    pg.psql(&src_db, "SELECT pg_drop_replication_slot('bench')")
        .unwrap();

    // The same rows as a text file, in the session time zone the stream uses (UTC), so
    // the baseline loads exactly the values pgprism applies.
    let file =
        std::env::temp_dir().join(format!("pgprism-mirror-apply-{}.txt", std::process::id()));
    let file_sql = file.to_str().unwrap().replace('\'', "''");
    pg.psql(
        &src_db,
        &format!("SET TimeZone = 'UTC';\n\\copy (SELECT * FROM src ORDER BY id) TO '{file_sql}'"),
    )
    .unwrap();
    let want = pg
        .psql(&src_db, &CHECKSUM.replace("{table}", "src"))
        .unwrap()
        .trim()
        .to_owned();

    let (sink_db, sink_dsn) = pg.fresh_database().unwrap();
    pg.psql(&sink_db, TARGET_TABLE).unwrap();
    let baseline_sql = format!(
        "BEGIN;
CREATE TEMP TABLE tmp (LIKE target) ON COMMIT DROP;
\\copy tmp FROM '{file_sql}'
INSERT INTO target (id, a, b, c, d) SELECT id, a, b, c, d FROM tmp
    ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a, b = EXCLUDED.b, c = EXCLUDED.c, d = EXCLUDED.d;
COMMIT;"
    );

    // For profiling one side alone: PGPRISM_BENCH_ONLY=baseline|pgprism.
    let only = std::env::var("PGPRISM_BENCH_ONLY").ok();
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut flushes = Vec::new();
    for r in 0..rounds {
        for k in 0..2 {
            let c = Contender::ALL[(k + r) % 2];
            if only
                .as_deref()
                .is_some_and(|o| !format!("{c:?}").eq_ignore_ascii_case(o))
            {
                continue;
            }
            pg.psql(&sink_db, "TRUNCATE target; CHECKPOINT").unwrap();
            let took = match c {
                Contender::Baseline => {
                    let t = Instant::now();
                    pg.psql(&sink_db, &baseline_sql).unwrap();
                    t.elapsed()
                }
                Contender::Pgprism => {
                    let cfg = config(&src_dsn, &sink_dsn, r);
                    let (took, reports) = rt.block_on(apply(&cfg, &chunks));
                    let written: u64 = reports.iter().map(|r| r.written).sum();
                    assert_eq!(written, rows, "pgprism wrote {written} of {rows} rows");
                    flushes.push(reports.len());
                    took
                }
            };
            let got = pg
                .psql(&sink_db, &CHECKSUM.replace("{table}", "target"))
                .unwrap()
                .trim()
                .to_owned();
            assert_eq!(
                got,
                want,
                "{}: the target differs from the source (count, checksum)",
                c.label()
            );
            println!(
                "round {r}: {:<36} {:>8.2?}  {:>9.0} rows/s",
                c.label(),
                took,
                rows as f64 / took.as_secs_f64()
            );
            times.entry(c.label()).or_default().push(took);
        }
    }

    std::fs::remove_file(&file).ok();
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("\n| contender | median time | rows/s | all rounds |");
    println!("|---|---|---|---|");
    for c in Contender::ALL {
        let Some(v) = times.get(c.label()) else {
            return;
        };
        println!(
            "| {} | {:.2?} | {:.0} | {:?} |",
            c.label(),
            median(v),
            rate(median(v)),
            v.iter().map(|d| format!("{d:.2?}")).collect::<Vec<_>>()
        );
    }
    let (Some(base), Some(ours)) = (
        times.get(Contender::Baseline.label()),
        times.get(Contender::Pgprism.label()),
    ) else {
        return;
    };
    println!(
        "ratio (baseline time / pgprism time, >1 = pgprism faster), paired per round: {}; \
         pgprism flushes per round: {flushes:?} (batch {BATCH_ROWS} rows)",
        common::paired(base, ours)
    );
}

/// Read every change of the slot up to the `rows`-th row into memory.
async fn decode(dsn: &str, rows: u64) -> Vec<TxnChunk> {
    let cfg = StreamConfig::new(Dsn::parse(dsn).unwrap(), "bench", "bench");
    let mut stream = ReplicationStream::open(cfg).await.expect("open the slot");
    let mut chunks = Vec::new();
    let mut seen = 0u64;
    while seen < rows {
        let ev = tokio::time::timeout(Duration::from_secs(300), stream.next())
            .await
            .expect("the slot delivers the rows within 300 s")
            .expect("stream");
        if let StreamEvent::Chunk(chunk) = ev {
            seen += chunk
                .changes
                .iter()
                .filter(|c| matches!(c.kind, ChangeKind::Insert { .. }))
                .count() as u64;
            chunks.push(chunk);
        }
    }
    assert_eq!(seen, rows, "decoded inserts");
    assert!(
        chunks.last().is_some_and(|c| c.end.is_some()),
        "the last transaction is whole"
    );
    stream.shutdown(Duration::from_secs(5)).await.ok();
    chunks
}

/// The mirror `src` → `target` (another database of the same server); a pipeline name per
/// round, so every round starts from an empty offset.
fn config(src_dsn: &str, sink_dsn: &str, round: usize) -> ProjectorConfig {
    let projection: ProjectionSpec = toml::from_str(
        r#"
name = "mirror"
kind = "mirror"
source = "public.src"
[[targets]]
sink = "sink"
table = "public.target"
"#,
    )
    .expect("projection TOML");
    ProjectorConfig {
        pipeline: format!("bench_{round}"),
        lock_key: pgprism_leader::lock_key(&format!("bench_{round}")),
        epoch: Epoch(1),
        source: Dsn::parse(src_dsn).unwrap(),
        sinks: BTreeMap::from([(
            "sink".to_owned(),
            SinkSpec::postgres(Dsn::parse(sink_dsn).unwrap()),
        )]),
        projections: vec![projection],
        batch: BatchSpec {
            max_rows: BATCH_ROWS,
            start_rows: BATCH_ROWS,
            ..BatchSpec::default()
        },
        takeover_after: Duration::from_secs(5),
        // Measures the stream: nothing exists before the first start to load.
        backfill: pgprism_sink::spec::BackfillSpec {
            initial: false,
            ..Default::default()
        },
    }
}

/// Start a projector (not timed), then time pushing every chunk and the final flush.
async fn apply(cfg: &ProjectorConfig, chunks: &[TxnChunk]) -> (Duration, Vec<FlushReport>) {
    let mut projector = Projector::start(cfg).await.expect("projector starts");
    let mut reports = Vec::new();
    let t = Instant::now();
    for chunk in chunks {
        if let Some(report) = projector.push(chunk).await.expect("push") {
            reports.push(report);
        }
    }
    reports.push(projector.flush().await.expect("flush"));
    let took = t.elapsed();
    (took, reports)
}
