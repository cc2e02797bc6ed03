//! `pgprism dlq` against a real Postgres: list, retry and discard mark whole keys.

mod common;

use common::pgprism;
use pgprism_testkit::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_and_marks_whole_keys() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let client = pg.client(&db).await.unwrap();
    pgprism_sink::dead_letter::ensure(&client).await.unwrap();
    pg.psql(
        &db,
        r#"INSERT INTO pgprism.dead_letters (pipeline, target, key, commit_lsn, seq, change, status, sqlstate, error)
           VALUES ('shop', 'products.pg', '["15"]', '0/16B3A28', 0, '{"op":"upsert"}', 'failed', '23514', 'violates check constraint "price"'),
                  ('shop', 'products.pg', '["15"]', '0/16B3F00', 1, '{"op":"upsert"}', 'held', NULL, 'held behind an earlier dead letter of the same key'),
                  ('shop', 'products.pg', '["16"]', '0/16B3A28', 1, '{"op":"delete"}', 'failed', '23503', 'violates foreign key'),
                  ('other', 'x.pg', '["1"]', '0/1', 0, '{}', 'failed', '22P02', 'bad value')"#,
    )
    .unwrap();

    let list = pgprism()
        .args(["dlq", "list", "--dsn", &dsn, "--pipeline", "shop"])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let out = String::from_utf8(list.stdout).unwrap();
    assert!(
        out.contains(r#"#1 products.pg 0/16B3A28+0 failed 23514 ["15"]"#),
        "{out}"
    );
    assert!(out.contains("violates check constraint"), "{out}");
    assert!(
        out.contains("3 dead letter(s)") && !out.contains("bad value"),
        "{out}"
    );

    // Retrying letter 1 marks its whole key (the held change too), nothing else.
    let retry = pgprism()
        .args([
            "dlq",
            "retry",
            "--dsn",
            &dsn,
            "--pipeline",
            "shop",
            "--id",
            "1",
        ])
        .output()
        .unwrap();
    assert!(retry.status.success());
    assert!(String::from_utf8_lossy(&retry.stdout).contains("marked 2 dead letter(s) to retry"));
    let discard = pgprism()
        .args([
            "dlq",
            "discard",
            "--dsn",
            &dsn,
            "--pipeline",
            "shop",
            "--target",
            "products.pg",
            "--id",
            "3",
        ])
        .output()
        .unwrap();
    assert!(discard.status.success());
    let json = pgprism()
        .args(["dlq", "list", "--dsn", &dsn, "--pipeline", "shop", "--json"])
        .output()
        .unwrap();
    let actions: Vec<(i64, Option<String>)> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_i64().unwrap(),
                v["action"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            (1, Some("retry".to_owned())),
            (2, Some("retry".to_owned())),
            (3, Some("discard".to_owned()))
        ]
    );

    // An unreachable database names the host, never the password.
    let bad = pgprism()
        .args(["dlq", "list", "--dsn", "postgres://u:hunter2@127.0.0.1:1/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("hunter2"),
        "{err}"
    );
}
