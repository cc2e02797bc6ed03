//! A projection that cannot work is refused at start with one clear line naming the fix,
//! before anything is written.

mod common;

use common::{Env, READ_MODELS, SCHEMA, order_read_model_toml, projection};
use pgprism_sink::Projector;

async fn start_error(env: &Env, toml_text: &str) -> String {
    let cfg = env.config(vec![projection(toml_text)], 1);
    Projector::start(&cfg)
        .await
        .expect_err("the projector refuses to start")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_projections_are_refused_with_the_fix() {
    let env = Env::new(&format!(
        "{SCHEMA}\n{READ_MODELS}\nALTER TABLE order_items REPLICA IDENTITY DEFAULT;
         CREATE TABLE no_pk (a int, b text);
         CREATE TABLE narrow_copy (id uuid PRIMARY KEY);"
    ));
    let cases = [
        (
            order_read_model_toml(),
            "column \"order_id\" of public.order_items maps changes to keys but is not in the table's replica identity",
        ),
        (
            order_read_model_toml(),
            "fix: ALTER TABLE \"public\".\"order_items\" REPLICA IDENTITY FULL",
        ),
        (
            r#"name = "m"
kind = "mirror"
source = "public.customers"
[[targets]]
sink = "pg"
table = "public.missing""#
                .to_owned(),
            "table \"public\".\"missing\" does not exist in the sink",
        ),
        (
            r#"name = "m"
kind = "mirror"
source = "public.customers"
[[targets]]
sink = "pg"
table = "public.narrow_copy""#
                .to_owned(),
            "has no column \"name\"",
        ),
        (
            r#"name = "m"
kind = "mirror"
source = "public.nope"
[[targets]]
sink = "pg"
table = "public.narrow_copy""#
                .to_owned(),
            "the source has no table public.nope",
        ),
        (
            r#"name = "m"
kind = "mirror"
source = "public.no_pk"
[[targets]]
sink = "cache"
key = "x:{a}""#
                .to_owned(),
            "public.no_pk has no primary key; set `key`",
        ),
        (
            r#"name = "q"
kind = "query"
key = ["id"]
query = "SELECT id FROM orders WHERE id = ANY($1) AND customer_id = ANY($2)"
[keys]
"public.orders" = { column = "id" }
[[targets]]
sink = "cache"
key = "o:{id}""#
                .to_owned(),
            "the query takes 2 parameters; it must take one array per key column",
        ),
        (
            r#"name = "q"
kind = "query"
key = ["id"]
query = "SELECT id FROM ordrs WHERE id = ANY($1)"
[keys]
"public.orders" = { column = "id" }
[[targets]]
sink = "cache"
key = "o:{id}""#
                .to_owned(),
            "relation \"ordrs\" does not exist",
        ),
    ];
    // An unreachable sink names its host and port.
    let mut cfg = env.config(
        vec![projection(
            "name = \"m\"\nkind = \"mirror\"\nsource = \"public.customers\"\n[[targets]]\nsink = \"pg\"\ntable = \"public.x\"",
        )],
        1,
    );
    cfg.sinks.insert(
        "pg".to_owned(),
        pgprism_sink::spec::SinkSpec::postgres(
            pgprism_pg::Dsn::parse("postgres://app:hunter2@127.0.0.1:1/shop").unwrap(),
        ),
    );
    let got = Projector::start(&cfg).await.unwrap_err().to_string();
    assert!(
        got.contains("cannot connect to Postgres at 127.0.0.1:1"),
        "{got}"
    );
    assert!(!got.contains("hunter2"), "{got}");
    for (toml_text, want) in cases {
        let got = start_error(&env, &toml_text).await;
        assert!(got.contains(want), "want {want:?} in:\n{got}");
        assert!(!got.contains("pgprism-secret"), "no password in {got}");
    }
}
