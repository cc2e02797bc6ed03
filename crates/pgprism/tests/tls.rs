//! TLS everywhere: `pgprism run` against a Postgres that refuses TCP sessions without TLS
//! (`hostssl` lines only) and a Redis sink over `rediss://`, both with a certificate from a
//! throwaway CA. Every kind of session pgprism opens (replication, election, sink, query,
//! monitor) must be encrypted and verified; `sslmode=require` against a server without
//! TLS fails with one clear line.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually_or, pgprism, rows};
use pgprism_testkit::http::get;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, TestCa};

const SCHEMA: &str = include_str!("../../../sql/schema.sql");
const READ_MODELS: &str = include_str!("../../../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../../../pgprism.example.toml");

/// The example configuration with the Redis sink over TLS, trusting `ca`.
fn tls_config(dir: &Path, redis_url: &str, ca: &Path) -> std::path::PathBuf {
    let plain = "url = \"redis://localhost:6379\"";
    assert!(EXAMPLE.contains(plain), "the example's Redis sink moved");
    let text = EXAMPLE.replace(
        plain,
        &format!("url = \"{redis_url}\"\nca_file = \"{}\"", ca.display()),
    );
    let path = dir.join("pgprism.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_session_is_encrypted_and_verified_when_the_dsn_asks() {
    let ca = TestCa::new().unwrap();
    let pg = PgServer::builder().tls(&ca).unwrap().start().unwrap();
    let redis = RedisServer::builder().tls(&ca).start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
    pg.psql(
        &db,
        "INSERT INTO customers (name, email) VALUES ('Ada', 'ada@example.com');
         INSERT INTO products (name, price_cents) VALUES ('Pen', 250);",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(dir.path(), &redis.tls_url().unwrap(), &ca.ca_file());
    // verify-full: the chain up to our CA and the host name `localhost` it names.
    let dsn = format!(
        "postgres://{}:{}@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        pg.user(),
        pg.password(),
        pg.port(),
        ca.ca_file().display()
    );

    // `check` opens the source, the sinks and Redis the way `run` does.
    let out = pgprism()
        .args(["check", "-c"])
        .arg(&config)
        .env("PGPRISM_SOURCE_DSN", &dsn)
        .env("PGPRISM_SINKS_PG_DSN", &dsn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check over TLS:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let port = pgprism_testkit::free_port().unwrap();
    let log = dir.path().join("run.log");
    let mut run = ChildGuard::new(
        pgprism()
            .args(["run", "-c"])
            .arg(&config)
            .env("PGPRISM_SOURCE_DSN", &dsn)
            .env("PGPRISM_SINKS_PG_DSN", &dsn)
            .env("PGPRISM_HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("PGPRISM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let run_log = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually_or(
        "pgprism leads and streams over TLS",
        Duration::from_secs(60),
        || get(port, "/readyz").filter(|(s, b)| *s == 200 && b.contains("leader")),
        run_log,
    );
    pg.psql(
        &db,
        "INSERT INTO orders (customer_id) SELECT id FROM customers, generate_series(1, 20);
         INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
           SELECT o.id, p.id, 2, p.price_cents FROM orders o, products p;
         UPDATE orders SET status = 'confirmed'
          WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 10);",
    )
    .unwrap();
    let truth = "SELECT * FROM order_read_model_truth";
    eventually_or(
        "order_read_model equals the truth",
        Duration::from_secs(60),
        || {
            let t = rows(&pg, &db, truth);
            (t.len() == 20 && t == rows(&pg, &db, "SELECT * FROM order_read_model")).then_some(())
        },
        run_log,
    );
    // Redis over TLS holds every order too (the plain port is not what pgprism was given).
    let id = rows(
        &pg,
        &db,
        "SELECT id FROM orders WHERE status = 'confirmed' ORDER BY id LIMIT 1",
    )[0]
    .clone();
    let status = eventually_or(
        "Redis (rediss://) has the orders",
        Duration::from_secs(30),
        || {
            let mut conn = redis::Client::open(redis.url())
                .ok()?
                .get_connection()
                .ok()?;
            let s: Option<String> = redis::cmd("HGET")
                .arg(format!("order:{id}"))
                .arg("status")
                .query(&mut conn)
                .ok()?;
            s
        },
        run_log,
    );
    assert_eq!(status, "confirmed");

    // Every pgprism session on the server, by kind: each over TLS.
    let sessions = rows(
        &pg,
        &db,
        "SELECT CASE WHEN a.backend_type = 'walsender' THEN 'replication'
                     ELSE split_part(a.application_name, ' ', 2) END,
                s.ssl, coalesce(s.version, '')
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name LIKE 'pgprism%'",
    );
    let kinds: std::collections::BTreeSet<&str> = sessions
        .iter()
        .filter_map(|l| l.split('|').next())
        .collect();
    for kind in ["replication", "election", "sink", "query", "monitor"] {
        assert!(kinds.contains(kind), "no {kind} session in {sessions:#?}");
    }
    for s in &sessions {
        assert!(
            s.contains("|t|TLSv1."),
            "a session without TLS: {s} in {sessions:#?}"
        );
    }
    // And nothing even tried without TLS (the server refuses it: `hostssl` only).
    let server_log = pg.log_contents();
    assert!(
        !server_log.contains("no encryption"),
        "a session tried without TLS:\n{server_log}"
    );
    assert!(!run_log().contains("ERROR"), "{}", run_log());
    run.signal(pgprism_testkit::Signal::Term).unwrap();
    let code = run.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(code.success(), "{}", run_log());
}

#[test]
fn tls_failures_are_one_clear_line() {
    let ca = TestCa::new().unwrap();
    let plain = PgServer::start().unwrap();
    let (db, _) = plain.fresh_database().unwrap();
    plain
        .psql(&db, &format!("{SCHEMA}\n{READ_MODELS}"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(&config, EXAMPLE).unwrap();
    let check = |dsn: &str| {
        let out = pgprism()
            .args(["check", "-c"])
            .arg(&config)
            .env("PGPRISM_SOURCE_DSN", dsn)
            .env("PGPRISM_SINKS_PG_DSN", dsn)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let base = format!(
        "postgres://{}:{}@127.0.0.1:{}/{db}",
        plain.user(),
        plain.password(),
        plain.port()
    );
    // `require` against a server without TLS.
    let out = check(&format!("{base}?sslmode=require"));
    let line = out
        .lines()
        .find(|l| l.contains("source"))
        .unwrap_or_else(|| panic!("no line about the source:\n{out}"));
    assert!(
        line.contains("127.0.0.1") && line.contains("does not offer TLS") && line.contains("fix:"),
        "{out}"
    );
    assert!(!out.contains(plain.password()), "{out}");

    // The run command says the same and exits.
    let out = pgprism()
        .args(["run", "-c"])
        .arg(&config)
        .env("PGPRISM_SOURCE_DSN", format!("{base}?sslmode=require"))
        .env("PGPRISM_SINKS_PG_DSN", format!("{base}?sslmode=require"))
        .env("PGPRISM_HTTP_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("does not offer TLS"), "{text}");

    // A certificate from another CA fails verification, naming the problem.
    let tls = PgServer::builder().tls(&ca).unwrap().start().unwrap();
    let other = TestCa::new().unwrap();
    let (db2, _) = tls.fresh_database().unwrap();
    let dsn = format!(
        "postgres://{}:{}@localhost:{}/{db2}?sslmode=verify-ca&sslrootcert={}",
        tls.user(),
        tls.password(),
        tls.port(),
        other.ca_file().display()
    );
    let out = check(&dsn);
    assert!(
        out.lines()
            .any(|l| l.contains("localhost:") && l.to_lowercase().contains("certificate")),
        "{out}"
    );
    // A missing root certificate file is a configuration error naming the file.
    let out = check(&format!(
        "{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    ));
    assert!(out.contains("/nonexistent/ca.pem"), "{out}");
    // verify-ca checks the chain but not the name; verify-full checks both.
    let hostaddr = |mode: &str| {
        format!(
            "host=not-the-name.invalid hostaddr=127.0.0.1 port={} user={} password={} dbname={db2} sslmode={mode} sslrootcert={}",
            tls.port(),
            tls.user(),
            tls.password(),
            ca.ca_file().display()
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ok = pgprism_pg::Dsn::parse(&hostaddr("verify-ca")).unwrap();
        let (client, _) = pgprism_pg::connect(&ok)
            .await
            .expect("verify-ca ignores the name");
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        let full = pgprism_pg::Dsn::parse(&hostaddr("verify-full")).unwrap();
        let err = pgprism_pg::connect(&full)
            .await
            .expect_err("verify-full checks the name");
        let text = pgprism_pg::error_text(&err);
        assert!(text.to_lowercase().contains("certificate"), "{text}");
        // Without TLS the server refuses the session outright.
        let off = pgprism_pg::Dsn::parse(&hostaddr("disable")).unwrap();
        let err = pgprism_pg::connect(&off).await.expect_err("hostssl only");
        assert!(
            pgprism_pg::error_text(&err).contains("no encryption"),
            "{err}"
        );
    });
}
