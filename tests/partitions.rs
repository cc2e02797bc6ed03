//! Partitioned tables, as teams keep events and time series, under `pgprism run`: a
//! mirror of a range-partitioned table receives its existing rows through the backfill,
//! then inserts, updates, deletes, rows moving between partitions and rows of a partition
//! created while it runs — all under the partitioned table's own name, because the
//! publication pgprism creates has `publish_via_partition_root`. A publication without
//! it is refused by `pgprism check` and `pgprism run` with the fix. Changes of a
//! published table that no projection reads are counted and warned about once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, Log, PATIENCE, eventually, pgprism, seeded_rng, start_run};
use pgprism_decoder::Lsn;
use pgprism_testkit::shop::assert_same;
use rand::Rng;

const DDL: &str = "
CREATE TABLE events (
    id      bigint NOT NULL,
    day     date   NOT NULL,
    kind    text,
    payload jsonb,
    PRIMARY KEY (id, day)
) PARTITION BY RANGE (day);
CREATE TABLE events_jan PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE events_feb PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE events_mar PARTITION OF events FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
INSERT INTO events
     SELECT g, date '2026-01-01' + (g % 90), 'k' || (g % 7), jsonb_build_object('n', g)
       FROM generate_series(1, 20000) g;
ANALYZE events;
CREATE TABLE notes (id int PRIMARY KEY, body text);
CREATE SCHEMA read;
CREATE TABLE read.events (
    id      bigint NOT NULL,
    day     date   NOT NULL,
    kind    text,
    payload jsonb,
    PRIMARY KEY (id, day)
);";

const SOURCE: &str =
    "SELECT id::text, day::text, coalesce(kind, '∅'), coalesce(payload::text, '∅') FROM events";
const COPY: &str = "SELECT id::text, day::text, coalesce(kind, '∅'), coalesce(payload::text, '∅') FROM read.events";

/// The mirror of `public.events`; the publication (created by the first leader unless it
/// exists) also holds `notes`, which no projection reads.
fn config(env: &Env, dir: &Path, port: u16) -> PathBuf {
    let text = format!(
        r#"
pipeline = "parts"
[source]
dsn = "{dsn}"
slot = "pgprism"
publication = "pgprism"
tables = ["public.events", "public.notes"]
[http]
bind = "127.0.0.1:{port}"
[sinks.pg]
kind = "postgres"
dsn = "{dsn}"
[[projections]]
name = "events"
kind = "mirror"
source = "public.events"
[[projections.targets]]
sink = "pg"
table = "read.events"
"#,
        dsn = env.dsn
    );
    let path = dir.join("pgprism.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `pgprism check -c config`: its exit code and what it printed.
fn check(config: &Path) -> (Option<i32>, String) {
    let out = pgprism()
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The mirror's committed position.
async fn offset(sql: &tokio_postgres::Client) -> Option<Lsn> {
    sql.query_opt(
        "SELECT resume_lsn::text FROM pgprism.offsets WHERE pipeline = 'parts' AND sink = 'events.pg'",
        &[],
    )
    .await
    .unwrap()
    .map(|r| r.get::<_, String>(0).parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_mirrored_through_its_root_and_unread_tables_are_counted() {
    let env = Env::new(DDL);
    let dir = tempfile::tempdir().unwrap();
    let port = pgprism_testkit::free_port().unwrap();
    let config = config(&env, dir.path(), port);
    let log = Log::default();
    let sql = env.client().await;
    let _run = start_run(&config, "p", None, &log);

    // The existing rows, through the backfill.
    let what = || "the backfill never loaded the 20,000 existing rows".to_owned();
    eventually(&log, Duration::from_millis(50), what, async || {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM read.events", &[])
            .await
            .unwrap()
            .get(0);
        (n == 20_000).then_some(())
    })
    .await;

    // Then the application: inserts, updates, deletes and moves between partitions, a
    // partition created meanwhile, and notes nobody projects.
    let (mut rng, _) = seeded_rng();
    let mut next_id = 20_001i64;
    let mut ops = [0usize; 4];
    for round in 0..1_000 {
        if round == 500 {
            sql.batch_execute(
                "CREATE TABLE events_apr PARTITION OF events
                     FOR VALUES FROM ('2026-04-01') TO ('2026-05-01')",
            )
            .await
            .unwrap();
        }
        // Days of January to March; from the partition's creation on, April too.
        let days = if round >= 500 { 120 } else { 90 };
        let day = format!("date '2026-01-01' + {}", rng.random_range(0..days));
        let id = rng.random_range(1..next_id);
        let op = rng.random_range(0..4);
        ops[op] += 1;
        let statement = match op {
            0 => {
                next_id += 1;
                format!(
                    "INSERT INTO events VALUES ({next_id}, {day}, 'new', jsonb_build_object('round', {round}))"
                )
            }
            1 => format!(
                "UPDATE events SET kind = 'u{round}', payload = payload || jsonb_build_object('u', {round}) WHERE id = {id}"
            ),
            2 => format!("DELETE FROM events WHERE id = {id}"),
            // Into another partition: a delete from one and an insert into the other.
            _ => format!("UPDATE events SET day = {day} WHERE id = {id}"),
        };
        sql.batch_execute(&format!(
            "BEGIN; {statement}; INSERT INTO notes VALUES ({round}, 'n') ON CONFLICT (id) DO UPDATE SET body = 'again'; COMMIT"
        ))
        .await
        .unwrap();
    }
    let marker = env.marker();
    let what = || format!("the mirror never reached the marker {marker}");
    eventually(&log, Duration::from_millis(50), what, async || {
        offset(&sql).await.filter(|o| *o >= marker).map(|_| ())
    })
    .await;

    let source = env.rows(SOURCE).await;
    assert_same(&env.rows(COPY).await, &source, "read.events vs events");
    let moved: i64 = sql
        .query_one("SELECT count(*) FROM events_apr", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        moved > 0,
        "no row reached the partition created while running"
    );

    // The notes are counted, one per change, and said once; no partition of events is.
    let (_, metrics) = pgprism_testkit::http::get(port, "/metrics").expect("/metrics");
    let unclaimed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pgprism_unclaimed_changes_total{"))
        .collect();
    let notes: f64 = unclaimed
        .iter()
        .find(|l| l.contains(r#"table="public.notes""#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of the notes' changes: {unclaimed:?}"));
    assert!(
        notes >= 1_000.0,
        "{notes} of the 1,000 notes changes counted"
    );
    assert_eq!(
        unclaimed.len(),
        1,
        "only the notes are unclaimed: {unclaimed:?}"
    );
    let warned = log
        .of("p")
        .iter()
        .filter(|l| l.text.contains("no projection reads") && l.text.contains("public.notes"))
        .count();
    assert_eq!(warned, 1, "warned once\n{}", log.tail());
    eprintln!(
        "partitioned mirror: 20,000 rows backfilled, then {} inserts, {} updates, {} deletes, \
         {} moves between partitions ({moved} rows in the partition created while running); \
         {} rows at the end; {notes} unclaimed notes changes",
        ops[0],
        ops[1],
        ops[2],
        ops[3],
        source.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_names_partitions_is_refused_with_the_fix() {
    let env = Env::new(&format!(
        "{DDL}\nCREATE PUBLICATION pgprism FOR TABLE events, notes;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let port = pgprism_testkit::free_port().unwrap();
    let config = config(&env, dir.path(), port);
    let fix = r#"fix: ALTER PUBLICATION "pgprism" SET (publish_via_partition_root = true)"#;

    let (code, said) = check(&config);
    assert_eq!(code, Some(1), "{said}");
    let line = said
        .lines()
        .find(|l| l.contains("lacks publish_via_partition_root"))
        .unwrap_or_else(|| panic!("no word of the partitions: {said}"));
    assert!(
        line.starts_with("PROBLEM") && line.contains("public.events") && line.ends_with(fix),
        "{line}"
    );
    assert!(
        !said.contains("does not include public.events"),
        "a misleading second problem: {said}"
    );

    // `run` refuses too, before streaming anything, in one line.
    let log = Log::default();
    let mut run = start_run(&config, "r", None, &log);
    let status = run.wait_timeout(PATIENCE).expect("pgprism run exits");
    assert_eq!(status.code(), Some(1), "{}", log.tail());
    let what = || "run never said why".to_owned();
    let said = eventually(&log, Duration::from_millis(20), what, async || {
        log.of("r")
            .into_iter()
            .find(|l| l.text.contains("lacks publish_via_partition_root"))
    })
    .await;
    assert!(said.text.ends_with(fix), "{}", said.text);
    assert!(
        !log.of("r").iter().any(|l| l.text.contains(" streaming ")),
        "{}",
        log.tail()
    );

    // Fixed as it says: check has nothing more to say about it.
    env.sql("ALTER PUBLICATION pgprism SET (publish_via_partition_root = true)");
    let (_, said) = check(&config);
    assert!(
        !said.contains("publish_via_partition_root") && !said.contains("does not include"),
        "{said}"
    );
}
