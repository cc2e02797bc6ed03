//! Real Postgres servers from the testkit: settings, auth, restarts, isolation, cleanup.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use pgprism_testkit::{PgServer, StopMode, TestkitError, bin_dir};

fn sql(pg: &PgServer, db: &str, sql: &str) -> String {
    pg.psql(db, sql)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_owned()
}

/// psql from the server's bin dir with an explicit conninfo and password, no testkit help.
fn raw_psql(pg: &PgServer, conninfo: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new(bin_dir().unwrap().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "host={} port={} user={} {conninfo}",
            pg.host(),
            pg.port(),
            pg.user()
        ))
        .args(["-c", sql])
        .env("PGPASSWORD", password)
        .env("LC_ALL", "C")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn default_server_has_logical_wal_and_decodes_with_pgoutput() {
    let pg = PgServer::start().unwrap();
    assert_eq!(sql(&pg, "postgres", "SHOW wal_level"), "logical");

    let client = pg.client("postgres").await.unwrap();
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots'), current_setting('fsync'), \
             current_user::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "20");
    assert_eq!(row.get::<_, String>(1), "off");
    assert_eq!(row.get::<_, String>(2), "pgprism");

    let (db, _) = pg.fresh_database().unwrap();
    let out = sql(
        &pg,
        &db,
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE PUBLICATION p FOR ALL TABLES;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');
         INSERT INTO t VALUES (1);
         SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
             'proto_version', '1', 'publication_names', 'p');",
    );
    // The slot line (`(s,LSN)`), then the message count: Begin, Relation, Insert, Commit.
    assert_eq!(out.lines().last(), Some("4"), "{out}");
}

#[test]
fn replication_connections_need_the_password_over_tcp() {
    let pg = PgServer::start().unwrap();
    let ok = raw_psql(
        &pg,
        "dbname=postgres replication=database",
        pg.password(),
        "IDENTIFY_SYSTEM",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let wrong = raw_psql(
        &pg,
        "dbname=postgres replication=database",
        "not-the-password",
        "IDENTIFY_SYSTEM",
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn wrong_password_is_refused_over_tcp() {
    let pg = PgServer::start().unwrap();
    let out = raw_psql(&pg, "dbname=postgres", "not-the-password", "SELECT 1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"pgprism\""),
        "{stderr}"
    );

    let right = raw_psql(&pg, "dbname=postgres", pg.password(), "SELECT 1");
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_is_refused_for_the_async_client_too() {
    let pg = PgServer::start().unwrap();
    let wrong = pg.dsn("postgres").replace(pg.password(), "nope");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("wrong password must fail");
    let message = err.as_db_error().expect("a server error").message();
    assert!(
        message.contains("password authentication failed"),
        "{err:?}"
    );

    let err = pg
        .client("no_such_db")
        .await
        .expect_err("missing db must fail");
    assert!(
        err.to_string()
            .contains("database \"no_such_db\" does not exist"),
        "{err}"
    );
    let (client, conn) = tokio_postgres::connect(&pg.dsn("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn immediate_restart_keeps_committed_data_and_replaces_the_postmaster() {
    let pg = PgServer::start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    sql(
        &pg,
        &db,
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')",
    );
    let before = pg.postmaster_pid().expect("running");

    pg.restart(StopMode::Immediate).unwrap();

    let after = pg.postmaster_pid().expect("running again");
    assert_ne!(before, after);
    assert_eq!(sql(&pg, &db, "SELECT v FROM kept"), "before");
}

#[test]
fn stopped_server_starts_again_on_the_same_port() {
    let pg = PgServer::start().unwrap();
    let port = pg.port();
    sql(&pg, "postgres", "CREATE TABLE t AS SELECT 42 AS v");

    pg.stop(StopMode::Fast).unwrap();
    assert_eq!(pg.postmaster_pid(), None);
    assert!(pg.psql("postgres", "SELECT 1").is_err());

    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(sql(&pg, "postgres", "SELECT v FROM t"), "42");
}

#[test]
fn parallel_servers_get_their_own_ports_and_dirs() {
    let servers: Vec<PgServer> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| PgServer::start().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, pg) in servers.iter().enumerate() {
        sql(
            pg,
            "postgres",
            &format!("CREATE TABLE mine AS SELECT {i} AS v"),
        );
    }
    for (i, pg) in servers.iter().enumerate() {
        assert_eq!(sql(pg, "postgres", "SELECT v FROM mine"), i.to_string());
        assert_eq!(sql(pg, "postgres", "SHOW port"), pg.port().to_string());
    }
    let mut ports: Vec<u16> = servers.iter().map(PgServer::port).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    assert_ne!(servers[0].data_dir(), servers[1].data_dir());
}

#[test]
fn drop_stops_the_server_and_removes_its_dir_even_when_the_test_panics() {
    let seen: Mutex<Option<(PathBuf, u32)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pg = PgServer::start().unwrap();
        *seen.lock().unwrap() = Some((pg.socket_dir().to_owned(), pg.postmaster_pid().unwrap()));
        panic!("test failure while the server runs");
    }));
    assert!(result.is_err());
    let (dir, pid) = seen.lock().unwrap().clone().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Exited; init may take a moment to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "postmaster still running: {stat}"
    );
}

#[test]
fn drop_ends_a_paused_server_promptly() {
    let pg = PgServer::start().unwrap();
    let (dir, pid) = (pg.socket_dir().to_owned(), pg.postmaster_pid().unwrap());
    pgprism_testkit::pause(pid).unwrap();
    let started = Instant::now();
    drop(pg);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!dir.exists());
}

#[test]
fn replica_wal_level_is_configurable_and_refuses_logical_slots() {
    let pg = PgServer::builder().wal_level("replica").start().unwrap();
    assert_eq!(sql(&pg, "postgres", "SHOW wal_level"), "replica");
    let err = pg
        .psql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        )
        .unwrap_err();
    assert!(err.to_string().contains("wal_level"), "{err}");
}

#[test]
fn builder_settings_override_the_defaults() {
    let pg = PgServer::builder()
        .setting("max_wal_size", "2GB")
        .setting("max_connections", "50")
        .setting("application_name", "it's quoted")
        .start()
        .unwrap();
    assert_eq!(sql(&pg, "postgres", "SHOW max_wal_size"), "2GB");
    assert_eq!(sql(&pg, "postgres", "SHOW max_connections"), "50");
}

#[test]
fn an_invalid_setting_fails_start_with_the_server_log() {
    let err = PgServer::builder()
        .setting("shared_buffers", "plenty")
        .start()
        .unwrap_err();
    assert!(matches!(err, TestkitError::Command { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("pg_ctl"), "{msg}");
    assert!(msg.contains("shared_buffers"), "{msg}");
}

#[test]
fn sql_errors_carry_psql_stderr_and_scripts_run_statement_by_statement() {
    let pg = PgServer::start().unwrap();
    let (name, dsn) = pg.fresh_database().unwrap();
    assert!(dsn.ends_with(&format!("/{name}")), "{dsn}");
    let (other, _) = pg.fresh_database().unwrap();
    assert_ne!(name, other);

    let err = pg
        .psql(&name, "SELECT * FROM missing")
        .unwrap_err()
        .to_string();
    assert!(err.contains("relation \"missing\" does not exist"), "{err}");
    assert!(
        pg.log_contents()
            .contains("relation \"missing\" does not exist")
    );

    // A slot cannot be created in a transaction that wrote; psql runs each statement in
    // its own, so this script works.
    sql(
        &pg,
        &name,
        "CREATE TABLE t (id int); SELECT pg_create_logical_replication_slot('x', 'pgoutput');",
    );
}

#[test]
fn databases_with_odd_names_work_through_dsn_and_psql() {
    let pg = PgServer::start().unwrap();
    let name = "Odd \"db\" ñ/x";
    let dsn = pg.create_database(name).unwrap();
    assert_eq!(sql(&pg, name, "SELECT current_database()"), name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name);
    });
}

#[test]
fn debug_output_never_shows_the_password() {
    let pg = PgServer::start().unwrap();
    let shown = format!("{pg:?}");
    assert!(shown.contains(&pg.port().to_string()), "{shown}");
    assert!(!shown.contains(pg.password()), "{shown}");
    assert!(pg.dsn("postgres").contains(pg.password()));
}

#[test]
fn runs_as_an_unprivileged_user() {
    let pg = PgServer::start().unwrap();
    let pid = pg.postmaster_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let groups_line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    let euid: u32 = uid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_ne!(euid, 0, "postmaster runs as root: {uid_line}");
    assert!(
        !groups_line.split_whitespace().skip(1).any(|g| g == "0"),
        "root's group leaked: {groups_line}"
    );
}
