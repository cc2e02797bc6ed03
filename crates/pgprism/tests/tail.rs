//! `pgprism tail` against a real Postgres: what it prints is what was written.

mod common;

use common::Db;
use pgprism_testkit::PgServer;
use serde_json::Value as Json;

/// Rows read back by SQL in their output-function text form (the simple query protocol
/// returns that; a `::text` cast would not for bool or bpchar), under the session settings tail pins
/// (UTC, ISO dates, postgres intervals, round-trip floats).
fn read_back(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = db.pg.client(&db.name).await.expect("connect");
        client
            .batch_execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; \
                 SET IntervalStyle = 'postgres'; SET extra_float_digits = 3",
            )
            .await
            .unwrap();
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    })
}

fn ops(lines: &[Json]) -> Vec<&str> {
    lines.iter().map(|l| l["op"].as_str().unwrap()).collect()
}

const ALL_TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE all_types (
    id int PRIMARY KEY,
    b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
    n numeric, n_scaled numeric(36, 6),
    t text, vc varchar(20), bc char(5), nm name, c "char",
    u uuid, d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    j json, jb jsonb, by bytea,
    ai int4[], at text[], an numeric[], a2 int8[], ats timestamptz[], ab bool[],
    m mood, dom posint, o oid, ip inet
);
"#;

/// Column name → kind of JSON value tail must print.
const COLUMNS: &[(&str, &str)] = &[
    ("b", "bool"),
    ("i2", "int"),
    ("i4", "int"),
    ("i8", "int"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("n", "text"),
    ("n_scaled", "text"),
    ("t", "text"),
    ("vc", "text"),
    ("bc", "text"),
    ("nm", "text"),
    ("c", "text"),
    ("u", "text"),
    ("d", "text"),
    ("tm", "text"),
    ("tmtz", "text"),
    ("ts", "text"),
    ("tstz", "text"),
    ("iv", "text"),
    ("j", "text"),
    ("jb", "text"),
    ("by", "text"),
    ("ai", "text"),
    ("at", "text"),
    ("an", "text"),
    ("a2", "text"),
    ("ats", "text"),
    ("ab", "text"),
    ("m", "text"),
    ("dom", "text"), // a domain: its own type OID, kept as Postgres text
    ("o", "int"),
    ("ip", "text"),
];

const ALL_TYPES_ROWS: &str = r#"
INSERT INTO all_types (id) VALUES (1);
INSERT INTO all_types VALUES (2,
    true, 1, 2, 3, 1.5, 2.25, 123.456, 1.5,
    'hello', 'v', 'ab', 'nm', 'x',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-11-23', '10:11:12.345678', '10:11:12+05:30',
    '2026-11-23 10:11:12.5', '2026-11-23 10:11:12.5+02', '1 year 2 mons 3 days 04:05:06.789',
    '{"a": 1,  "b": [true, null]}', '{"b": [1, 2], "a": "x"}', '\x00ff10',
    '{1,2,NULL}', ARRAY['a b', 'c,d', '', 'NULL', NULL, 'quo"te', 'back\slash', '{}'], '{1.5,NaN,-0.000001}',
    '{{1,2},{3,4}}', ARRAY['2026-01-01 00:00:00+00'::timestamptz, 'infinity'], '{t,f}',
    'happy', 5, 42, '10.0.0.1/8');
INSERT INTO all_types VALUES (3,
    false, -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity',
    '-123456789012345678901234567890.123456789012345678901234567890', -0.000001,
    '', '', '', '', '',
    '00000000-0000-0000-0000-000000000000', '0044-03-15 BC', '00:00:00', '23:59:59.999999-03:00:15',
    '4713-01-01 00:00:00 BC', '-infinity', '-1 days -00:00:00.000001',
    '""', '"é \t \u00e9 escaped"'::text::jsonb, '',
    '{}', '{}', '{}', '{}', '{}', '{}',
    'sad', 2147483647, 0, '::1');
INSERT INTO all_types VALUES (4,
    true, 32767, 2147483647, 9223372036854775807, 'Infinity', 1e308,
    'NaN', 99999999999999999999999999999.999999,
    E'héllo 🌍 ✓ "quoted" back\\slash\nnew line\ttab \u0001 ctl', repeat('x', 20), 'abcde', repeat('n', 63), '"',
    'ffffffff-ffff-ffff-ffff-ffffffffffff', 'infinity', '24:00:00', '00:00:00+14',
    '294276-12-31 23:59:59.999999', 'infinity', '178000000 years',
    '[1e400, 0.1]', '[1e400, 0.1, {"k": "\u00e9"}]', '\x5c22',
    '{-2147483648,2147483647}', '{"multi\nline","tab\there"}', '{Infinity,-Infinity}',
    '[0:1]={7,8}', '{NULL}', '{NULL,t}',
    'ok', 1, 4294967295, '2001:db8::1/64');
INSERT INTO all_types (id, f4, f8, n, iv) VALUES (5, 3.4028235e38, 1.1754943508222875e-38, 0.0000000000000000000000000000001, '-178000000 years');
INSERT INTO all_types (id, f4, f8, n, iv) VALUES (6, 1.17549435e-38, 5e-324, -0, '1 mon -1 days +00:00:00.000001');
INSERT INTO all_types (id, f4, f8) VALUES (7, -0, -0);
"#;

#[test]
fn every_type_round_trips_through_tail() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(&pg, ALL_TYPES);
    db.sql(ALL_TYPES_ROWS);
    let lines = db.tail_all(&[]);
    assert_eq!(ops(&lines), ["insert"; 7]);

    let cols: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let select = format!(
        "SELECT id::text, {} FROM all_types ORDER BY id",
        cols.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let expected = read_back(&db, &select);
    assert_eq!(expected.len(), 7);

    for (line, row) in lines.iter().zip(&expected) {
        let id = row[0].as_deref().unwrap();
        assert_eq!(line["new"]["id"], Json::from(id.parse::<i64>().unwrap()));
        assert_eq!(line["schema"], "public");
        assert_eq!(line["table"], "all_types");
        assert_eq!(line["key"], serde_json::json!({ "id": line["new"]["id"] }));
        assert_eq!(line["old"], Json::Null);
        for ((col, kind), want) in COLUMNS.iter().zip(&row[1..]) {
            let got = &line["new"][*col];
            let ctx = format!("row {id} column {col}: tail printed {got}, SQL says {want:?}");
            match (want, *kind) {
                (None, _) => assert!(got.is_null(), "{ctx}"),
                (Some(w), "bool") => assert_eq!(got.as_bool(), Some(w == "t"), "{ctx}"),
                (Some(w), "int") => {
                    assert!(got.is_number(), "{ctx}");
                    assert_eq!(&got.to_string(), w, "{ctx}");
                }
                (Some(w), "float4" | "float8") => match w.as_str() {
                    "NaN" | "Infinity" | "-Infinity" => {
                        assert_eq!(got.as_str(), Some(w.as_str()), "{ctx}")
                    }
                    _ => {
                        assert!(got.is_number(), "{ctx}");
                        let g = got.as_f64().unwrap();
                        let e: f64 = w.parse().unwrap();
                        if *kind == "float4" {
                            assert_eq!(g as f32, e as f32, "{ctx}");
                        } else {
                            assert_eq!(g, e, "{ctx}");
                        }
                        assert_eq!(g.is_sign_negative(), e.is_sign_negative(), "{ctx}");
                    }
                },
                (Some(w), _) => assert_eq!(got.as_str(), Some(w.as_str()), "{ctx}"),
            }
        }
    }
}

#[test]
fn updates_and_deletes_follow_each_replica_identity() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(
        &pg,
        "CREATE TABLE dflt (id int PRIMARY KEY, v text);
         CREATE TABLE full_id (id int PRIMARY KEY, v text);
         ALTER TABLE full_id REPLICA IDENTITY FULL;
         CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, v text);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         CREATE TABLE nothing_id (id int, v text);
         ALTER TABLE nothing_id REPLICA IDENTITY NOTHING;",
    );
    db.sql(
        "INSERT INTO dflt VALUES (1, 'a');
         UPDATE dflt SET v = 'b' WHERE id = 1;
         UPDATE dflt SET id = 2 WHERE id = 1;
         DELETE FROM dflt WHERE id = 2;
         INSERT INTO full_id VALUES (1, 'a');
         UPDATE full_id SET v = 'b';
         DELETE FROM full_id;
         INSERT INTO by_index VALUES (1, 'c1', 'a');
         UPDATE by_index SET v = 'b';
         UPDATE by_index SET code = 'c2';
         DELETE FROM by_index;
         INSERT INTO nothing_id VALUES (1, 'a');",
    );
    let l = db.tail_all(&[]);
    let by = |t: &str| {
        l.iter()
            .filter(|x| x["table"] == t)
            .cloned()
            .collect::<Vec<_>>()
    };
    use serde_json::json;

    let d = by("dflt");
    assert_eq!(ops(&d), ["insert", "update", "update", "delete"]);
    assert_eq!(d[1]["key"], json!({"id": 1}));
    assert_eq!(d[1]["old"], Json::Null, "key unchanged: no old tuple");
    assert_eq!(d[1]["new"], json!({"id": 1, "v": "b"}));
    assert_eq!(
        d[2]["key"],
        json!({"id": 1}),
        "key changed: key is the old key"
    );
    assert_eq!(d[2]["old"], json!({"id": 1}));
    assert_eq!(d[2]["new"], json!({"id": 2, "v": "b"}));
    assert_eq!(d[3]["key"], json!({"id": 2}));
    assert_eq!(d[3]["old"], json!({"id": 2}));
    assert_eq!(d[3]["new"], Json::Null);

    let f = by("full_id");
    assert_eq!(ops(&f), ["insert", "update", "delete"]);
    assert_eq!(f[1]["old"], json!({"id": 1, "v": "a"}));
    assert_eq!(f[1]["new"], json!({"id": 1, "v": "b"}));
    assert_eq!(f[2]["old"], json!({"id": 1, "v": "b"}));

    let i = by("by_index");
    assert_eq!(ops(&i), ["insert", "update", "update", "delete"]);
    assert_eq!(i[0]["key"], json!({"code": "c1"}));
    assert_eq!(i[1]["old"], Json::Null);
    assert_eq!(i[2]["key"], json!({"code": "c1"}));
    assert_eq!(i[2]["old"], json!({"code": "c1"}));
    assert_eq!(i[3]["old"], json!({"code": "c2"}));

    let n = by("nothing_id");
    assert_eq!(ops(&n), ["insert"]);
    assert_eq!(n[0]["key"], Json::Null);
    // Postgres itself refuses updates of a published table without replica identity.
    let err = pg
        .psql(&db.name, "UPDATE nothing_id SET v = 'b'")
        .expect_err("update without replica identity must fail");
    assert!(err.to_string().contains("replica identity"), "{err}");
}

#[test]
fn unchanged_toast_is_reported_not_invented() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(
        &pg,
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)",
    );
    // ~40 kB of poorly compressible text: stored out of line (TOASTed).
    db.sql(
        "INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 1250) g;
         UPDATE docs SET n = 1;",
    );
    let body = read_back(&db, "SELECT body FROM docs")[0][0]
        .clone()
        .unwrap();
    assert!(body.len() > 8192);
    db.sql(
        "ALTER TABLE docs REPLICA IDENTITY FULL;
         UPDATE docs SET n = 2;",
    );
    let l = db.tail_all(&[]);
    assert_eq!(ops(&l), ["insert", "update", "update"]);
    assert_eq!(l[0]["new"]["body"], body.as_str());
    // Default identity: the body was not sent, and tail says so instead of printing a value.
    assert_eq!(l[1]["unchanged_toast"], serde_json::json!(["body"]));
    assert!(l[1]["new"].get("body").is_none(), "{}", l[1]["new"]);
    assert_eq!(l[1]["new"]["n"], 1);
    // FULL identity: the old row carries the whole value.
    assert_eq!(l[2]["old"]["body"], body.as_str());
    assert_eq!(l[2]["old"]["n"], 1);
    assert_eq!(l[2]["new"]["n"], 2);
}

#[test]
fn truncate_messages_and_schema_changes_decode() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(
        &pg,
        "CREATE TABLE parent (id serial PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
         CREATE TABLE evolving (id int PRIMARY KEY, a text);",
    );
    db.sql(
        "INSERT INTO parent DEFAULT VALUES;
         INSERT INTO child VALUES (1, 1);
         TRUNCATE parent, child RESTART IDENTITY CASCADE;
         BEGIN; SELECT pg_logical_emit_message(true, 'app', 'in txn'); INSERT INTO parent DEFAULT VALUES; COMMIT;
         SELECT pg_logical_emit_message(false, 'app', '\\x00ff'::bytea);
         SELECT pg_logical_emit_message(false, 'heartbeat', 'beat');
         INSERT INTO evolving VALUES (1, 'x');
         ALTER TABLE evolving ADD COLUMN b int DEFAULT 7;
         INSERT INTO evolving VALUES (2, 'y', 8);
         UPDATE evolving SET a = 'z' WHERE id = 1;
         ALTER TABLE evolving DROP COLUMN a;
         INSERT INTO evolving VALUES (3, 9);",
    );
    let l = db.tail_all(&[]);
    use serde_json::json;
    let trunc: Vec<_> = l.iter().filter(|x| x["op"] == "truncate").collect();
    assert_eq!(trunc.len(), 2);
    let mut tables: Vec<_> = trunc.iter().map(|t| t["table"].as_str().unwrap()).collect();
    tables.sort();
    assert_eq!(tables, ["child", "parent"]);
    assert!(
        trunc
            .iter()
            .all(|t| t["cascade"] == true && t["restart_identity"] == true)
    );
    assert_eq!(
        trunc[0]["commit_lsn"], trunc[1]["commit_lsn"],
        "one transaction"
    );

    let msgs: Vec<_> = l.iter().filter(|x| x["op"] == "message").collect();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["transactional"], true);
    assert_eq!(msgs[0]["content"], "in txn");
    assert!(msgs[0]["commit_lsn"].is_string());
    let in_txn_insert = l.iter().find(|x| {
        x["table"] == "parent" && x["op"] == "insert" && x["commit_lsn"] == msgs[0]["commit_lsn"]
    });
    assert!(
        in_txn_insert.is_some(),
        "the message and the insert share a transaction"
    );
    assert_eq!(msgs[1]["transactional"], false);
    assert_eq!(msgs[1]["commit_lsn"], Json::Null);
    assert_eq!(msgs[1]["content"], "\\x00ff");
    assert_eq!(msgs[2]["prefix"], "heartbeat");

    let ev: Vec<_> = l.iter().filter(|x| x["table"] == "evolving").collect();
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0]["new"], json!({"id": 1, "a": "x"}));
    assert_eq!(ev[1]["new"], json!({"id": 2, "a": "y", "b": 8}));
    assert_eq!(ev[2]["new"], json!({"id": 1, "a": "z", "b": 7}));
    assert_eq!(ev[3]["new"], json!({"id": 3, "b": 9}));
}

#[test]
fn identifiers_with_quotes_spaces_and_unicode() {
    let pg = PgServer::start().unwrap();
    let (name, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &name,
        r#"CREATE TABLE "Odd ""Table"" ñ" ("Key Col" int PRIMARY KEY, "välue" text);
           CREATE PUBLICATION "Mixed Pub" FOR ALL TABLES;
           SELECT pg_create_logical_replication_slot('odd_slot', 'pgoutput');
           INSERT INTO "Odd ""Table"" ñ" VALUES (1, 'v');"#,
    )
    .unwrap();
    let lsn = pg.psql(&name, "SELECT pg_current_wal_lsn()").unwrap();
    let out = common::run({
        let mut c = common::pgprism();
        c.args([
            "tail",
            "--dsn",
            &dsn,
            "--slot",
            "odd_slot",
            "--publication",
            "Mixed Pub",
            "--until-lsn",
            lsn.trim(),
        ]);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = common::parse_lines(&out.stdout);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["table"], "Odd \"Table\" ñ");
    assert_eq!(l[0]["key"], serde_json::json!({"Key Col": 1}));
    assert_eq!(l[0]["new"]["välue"], "v");
}

#[test]
fn limit_acknowledges_exactly_what_was_printed() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(&pg, "CREATE TABLE t (id int PRIMARY KEY)");
    for i in 1..=10 {
        db.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    let first = common::parse_lines(&common::run(db.tail(&["--limit", "4"])).stdout);
    assert_eq!(
        first
            .iter()
            .map(|l| l["new"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let peek = db.tail_all(&["--no-ack"]);
    assert_eq!(peek.len(), 6, "--no-ack peeks without moving the slot");
    let rest = db.tail_all(&[]);
    assert_eq!(
        rest.iter()
            .map(|l| l["new"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [5, 6, 7, 8, 9, 10],
        "the next run continues after the last printed change, nothing lost, nothing repeated"
    );
    assert!(db.tail_all(&[]).is_empty());
}

#[test]
fn sigterm_stops_cleanly_and_acknowledges_what_was_printed() {
    let pg = PgServer::start().unwrap();
    let db = Db::new(&pg, "CREATE TABLE t (id int PRIMARY KEY)");
    let tail = common::LiveTail::spawn(db.tail(&[]));
    for i in 1..=50 {
        db.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    tail.wait_for(std::time::Duration::from_secs(30), "50 inserts", |l| {
        l.len() == 50
    });
    let (lines, _stderr) = tail.stop();
    assert_eq!(lines.len(), 50);
    // The slot is confirmed past the last printed transaction: a new run prints nothing.
    assert!(
        db.tail_all(&[]).is_empty(),
        "everything printed was acknowledged on SIGTERM"
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let pg = PgServer::start().unwrap();
    let replica = PgServer::builder().wal_level("replica").start().unwrap();
    let db = Db::new(&pg, "CREATE TABLE t (id int PRIMARY KEY)");
    let secret = pg.password().to_owned();
    let wrong_pw = db.dsn.replace(&format!(":{secret}@"), ":not-the-password@");
    assert_ne!(wrong_pw, db.dsn);
    let (rname, _) = replica.fresh_database().unwrap();
    let replica_dsn = replica.dsn(&rname);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--dsn".into(), replica_dsn.clone()],
            "wal_level is 'replica'",
        ),
        (
            vec![
                "--dsn".into(),
                db.dsn.clone(),
                "--slot".into(),
                "nope".into(),
                "--publication".into(),
                "pub".into(),
            ],
            "replication slot \"nope\" does not exist",
        ),
        (
            vec![
                "--dsn".into(),
                db.dsn.clone(),
                "--slot".into(),
                "slot".into(),
                "--publication".into(),
                "nopub".into(),
            ],
            "publication \"nopub\" does not exist",
        ),
        (
            vec![
                "--dsn".into(),
                wrong_pw.clone(),
                "--slot".into(),
                "slot".into(),
            ],
            "authentication failed",
        ),
        (
            vec!["--dsn".into(), "postgres://u:hunter2@127.0.0.1:1/db".into()],
            "cannot connect to Postgres at 127.0.0.1:1",
        ),
        (
            vec![
                "--dsn".into(),
                db.dsn.clone(),
                "--from-lsn".into(),
                "12/XYZ".into(),
            ],
            "invalid LSN",
        ),
        (
            vec![
                "--dsn".into(),
                db.dsn.clone(),
                "--slot".into(),
                "Bad-Slot".into(),
            ],
            "invalid slot name",
        ),
        (
            vec![
                "--dsn".into(),
                "postgres://u:hunter2@host:notaport/db".into(),
            ],
            "invalid DSN",
        ),
    ];
    for (args, expect) in cases {
        let mut cmd = common::pgprism();
        cmd.arg("tail").args(&args);
        let out = common::run(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: expected one line, got:\n{stderr}"
        );
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
        for pw in [secret.as_str(), "hunter2", "not-the-password"] {
            assert!(!stderr.contains(pw), "password leaked: {stderr}");
        }
    }
    let wal = {
        let mut cmd = common::pgprism();
        cmd.args(["tail", "--dsn", &replica_dsn]);
        String::from_utf8_lossy(&common::run(cmd).stderr).into_owned()
    };
    assert!(
        wal.contains("ALTER SYSTEM SET wal_level = logical"),
        "{wal}"
    );
}

#[test]
fn creates_slot_and_publication_on_request_and_drops_temporary_slots() {
    use std::time::Duration;
    let pg = PgServer::start().unwrap();
    let (name, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &name,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)",
    )
    .unwrap();
    let sql = |q: &str| pg.psql(&name, q).unwrap().trim().to_owned();
    let run = |slot: &str, extra: &[&str], first_id: i32| {
        let mut cmd = common::pgprism();
        cmd.args([
            "tail",
            "--dsn",
            &dsn,
            "--slot",
            slot,
            "--publication",
            "made",
            "--create-slot",
            "--log",
            "info",
        ]);
        cmd.args(extra);
        let tail = common::LiveTail::spawn(cmd);
        let start = std::time::Instant::now();
        while !tail.stderr.lock().unwrap().contains("streaming") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tail did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let during = sql(&format!(
            "SELECT temporary FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        sql(&format!(
            "INSERT INTO other VALUES (1); INSERT INTO t VALUES ({first_id}), ({})",
            first_id + 1
        ));
        tail.wait_for(Duration::from_secs(30), "two inserts", |l| l.len() == 2);
        let (lines, _) = tail.stop();
        assert!(
            lines.iter().all(|l| l["table"] == "t"),
            "only the published table: {lines:?}"
        );
        during
    };

    assert_eq!(run("made_slot", &["--tables", "public.t"], 1), "f");
    assert_eq!(
        sql("SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'made'"),
        "t"
    );
    assert_eq!(
        sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'made_slot'"),
        "1"
    );

    assert_eq!(run("temp_slot", &["--temporary"], 10), "t");
    // Postgres drops a temporary slot when its walsender exits, which it does once it
    // notices that tail has gone: a moment after tail's exit, not at it.
    let start = std::time::Instant::now();
    loop {
        let left = sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'temp_slot'");
        if left == "0" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a temporary slot goes away with tail: {left} left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
