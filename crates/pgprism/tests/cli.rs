//! The operator commands against a real Postgres and Redis: `check` (problems one line
//! each, with the fix), `slot create|info|drop`, `status`, and `replay --from-lsn` end to
//! end with a running replica.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::pgprism;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, Signal};

const SCHEMA: &str = include_str!("../../../sql/schema.sql");
const READ_MODELS: &str = include_str!("../../../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../../../pgprism.example.toml");

struct Setup {
    pg: PgServer,
    redis: RedisServer,
    db: String,
    dsn: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(pg: PgServer) -> Setup {
        let redis = RedisServer::start().unwrap();
        let (db, dsn) = pg.fresh_database().unwrap();
        pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgprism.toml"), EXAMPLE).unwrap();
        Setup {
            pg,
            redis,
            db,
            dsn,
            dir,
        }
    }

    /// `pgprism ARGS -c FILE` with the servers filled in through the environment.
    fn cmd(&self, args: &[&str], source_dsn: &str) -> std::process::Command {
        let mut c = pgprism();
        c.args(args)
            .arg("-c")
            .arg(self.dir.path().join("pgprism.toml"))
            .env("PGPRISM_SOURCE_DSN", source_dsn)
            .env("PGPRISM_SINKS_PG_DSN", &self.dsn)
            .env("PGPRISM_SINKS_CACHE_URL", self.redis.url())
            .env("PGPRISM_HTTP_BIND", "");
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args, &self.dsn).output().unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql).unwrap().trim().to_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_reports_each_problem_on_one_line_with_the_fix() {
    let s = Setup::new(PgServer::builder().wal_level("replica").start().unwrap());
    s.sql("CREATE ROLE app LOGIN PASSWORD 'app-secret'");
    let app_dsn = format!(
        "postgres://app:app-secret@{}:{}/{}",
        s.pg.host(),
        s.pg.port(),
        s.db
    );
    let out = s
        .cmd(&["check"], &app_dsn)
        .env("PGPRISM_SOURCE_CREATE", "false")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for want in [
        "PROBLEM  wal_level is 'replica' on 127.0.0.1:",
        "fix: ALTER SYSTEM SET wal_level = logical; then restart Postgres",
        "PROBLEM  user \"app\" has no REPLICATION attribute, so it cannot stream the slot; fix: ALTER ROLE \"app\" REPLICATION",
        "PROBLEM  publication \"pgprism\" does not exist; fix: CREATE PUBLICATION \"pgprism\" FOR TABLE \"public\".\"customers\", \"public\".\"order_items\", \"public\".\"orders\", \"public\".\"products\" (",
        "PROBLEM  slot \"pgprism\" does not exist and source.create is false; fix: pgprism slot create -c FILE",
    ] {
        assert!(all.contains(want), "want {want:?} in:\n{all}");
    }
    assert!(
        !all.contains("app-secret") && !all.contains("pgprism-secret"),
        "{all}"
    );
    assert!(all.contains("error: "), "{all}");
}

#[test]
fn check_warns_of_source_tables_without_statistics_until_analyzed() {
    let s = Setup::new(PgServer::start().unwrap());
    assert!(s.output(&["slot", "create"]).status.success());
    // Existing data, loaded in bulk and never analyzed (autovacuum has not got to it).
    s.sql(
        "ALTER TABLE orders SET (autovacuum_enabled = off);
         ALTER TABLE order_items SET (autovacuum_enabled = off);
         INSERT INTO customers (name, email) VALUES ('c', 'c@example.com');
         INSERT INTO orders (customer_id) SELECT id FROM customers, generate_series(1, 500);
         ANALYZE customers",
    );
    let out = s.output(&["check"]);
    let all = text(&out);
    // A warning, not a problem: the pipeline works, only slower.
    assert!(out.status.success(), "{all}");
    let want = "WARNING  projection \"order_read_model\": public.orders never analyzed (no planner statistics)";
    assert!(all.contains(want), "want {want:?} in:\n{all}");
    assert!(all.contains("fix: ANALYZE public.orders"), "{all}");
    // Empty tables (order_items, products) and analyzed ones (customers) are not named.
    assert!(
        !all.contains("public.order_items never") && !all.contains("customers never"),
        "{all}"
    );
    s.sql("ANALYZE orders");
    let all = text(&s.output(&["check"]));
    assert!(!all.contains("WARNING"), "{all}");
    assert!(
        all.contains(
            "ok       projection \"order_read_model\": its source tables have planner statistics"
        ),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_status_and_replay_from_the_command_line() {
    let s = Setup::new(PgServer::start().unwrap());
    // Healthy: everything passes.
    let out = s.output(&["slot", "create"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("slot \"pgprism\" created at"),
        "{}",
        text(&out)
    );
    let out = s.output(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("all checks passed"));
    let info = text(&s.output(&["slot", "info"]));
    assert!(
        info.contains("plugin          pgoutput") && info.contains("public.order_items"),
        "{info}"
    );

    let log = std::fs::File::create(s.dir.path().join("a.log")).unwrap();
    let mut replica = ChildGuard::new(
        s.cmd(&["run"], &s.dsn)
            .env("PGPRISM_LEADER_REPLICA_ID", "a")
            .env("PGPRISM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let writer = s.pg.client(&s.db).await.unwrap();
    pgprism_testkit::shop::workload(&writer, 200, 5).await;
    let saved = s.sql("SELECT pg_current_wal_lsn()");
    pgprism_testkit::shop::workload(&writer, 200, 6).await;
    let caught_up = || {
        s.sql("SELECT count(*) FROM (SELECT * FROM order_read_model_truth EXCEPT SELECT * FROM order_read_model) d")
            == "0"
            && s.sql("SELECT count(*) FROM (SELECT * FROM order_read_model EXCEPT SELECT * FROM order_read_model_truth) d")
                == "0"
    };
    let wait = |what: &str| {
        let start = Instant::now();
        while !caught_up() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: read model never caught up\n{}",
                std::fs::read_to_string(s.dir.path().join("a.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("first run");

    let status = text(&s.output(&["status"]));
    assert!(status.contains("leader a (epoch 1)"), "{status}");
    assert!(
        status.contains("order_read_model.pg") && status.contains("customers.cache"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&s.output(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["targets"].as_array().unwrap().len(), 3, "{json}");
    assert!(
        json["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["dead_letters"] == 0)
    );

    // Replay from the saved LSN: the running leader steps down, leads again with a newer
    // epoch, re-applies, and the read models end as they were.
    let out = s.output(&["replay", "--from-lsn", &saved]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("order_read_model.pg: rewound from") && said.contains(&format!("to {saved}")),
        "{said}"
    );
    assert!(said.contains("took epoch 2"), "{said}");
    let start = Instant::now();
    while s.sql("SELECT epoch FROM pgprism.pipelines") != "3" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "re-elected with epoch 3"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait("after the replay");
    let start = Instant::now();
    while s.sql("SELECT count(*) FROM pgprism.offsets WHERE epoch = 3 AND resume_lsn > $$0/0$$::pg_lsn AND replay_lsn IS NULL") != "1" {
        assert!(start.elapsed() < Duration::from_secs(60), "the new epoch finished the replay and wrote its offset");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A replay from before the slot's position is refused with the way out.
    let out = s.output(&["replay", "--from-lsn", "0/10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot replay from 0/10") && text(&out).contains("rebuild"),
        "{}",
        text(&out)
    );
    let out = s.output(&["replay", "--from-lsn", &saved, "--sink", "nope"]);
    assert!(
        text(&out).contains("no target or sink named \"nope\""),
        "{}",
        text(&out)
    );

    // Dropping the slot while streamed needs --force.
    let out = s.output(&["slot", "drop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("stop pgprism first, or pass --force"),
        "{}",
        text(&out)
    );
    replica.signal(Signal::Term).unwrap();
    assert!(
        replica
            .wait_timeout(Duration::from_secs(15))
            .is_some_and(|c| c.success())
    );
    let out = s.output(&["slot", "drop"]);
    assert!(out.status.success(), "{}", text(&out));
}
