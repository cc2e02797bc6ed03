//! The demo's checks: the read models in Postgres and Redis against the ground truth
//! (`order_read_model_truth`, sql/read_models.sql) and the write model.

use std::collections::{BTreeMap, HashMap, HashSet};

use redis::aio::MultiplexedConnection;
use tokio_postgres::Client;

/// The columns of `order_read_model`, in order; also the fields of an `order:{id}` hash.
pub use pgprism_testkit::shop::ORDER_COLUMNS as COLUMNS;

/// `order_read_model` next to the truth.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// Rows of the truth.
    pub truth: usize,
    /// Rows of the read model.
    pub model: usize,
    /// Orders the truth has and the read model lacks.
    pub missing: usize,
    /// Orders the read model has and the truth does not (deleted from `orders`).
    pub extra: usize,
    /// Orders in both, with a column that differs.
    pub different: usize,
    /// A few of the differences, readable.
    pub examples: Vec<String>,
}

impl Tables {
    /// Row for row the same.
    pub fn equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    /// The counts, to tell whether anything still changes.
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.truth,
            self.model,
            self.missing,
            self.extra,
            self.different,
        )
    }
}

/// Compare `order_read_model` with `order_read_model_truth`, every column, by order id.
pub async fn tables(c: &Client) -> Result<Tables, tokio_postgres::Error> {
    let cols = COLUMNS.map(|c| format!("{c}::text")).join(", ");
    let read = |table: &'static str| {
        let sql = format!("SELECT {cols} FROM {table}");
        async move {
            let rows = c.query(&sql, &[]).await?;
            Ok::<_, tokio_postgres::Error>(
                rows.iter()
                    .map(|r| {
                        let row: Vec<Option<String>> =
                            (0..COLUMNS.len()).map(|i| r.get(i)).collect();
                        (row[0].clone().unwrap_or_default(), row)
                    })
                    .collect::<BTreeMap<String, Vec<Option<String>>>>(),
            )
        }
    };
    // One snapshot for both reads.
    c.batch_execute("SET TimeZone = 'UTC'; BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let truth = read("order_read_model_truth").await;
    let model = read("order_read_model").await;
    c.batch_execute("COMMIT").await?;
    let (truth, model) = (truth?, model?);
    let mut t = Tables {
        truth: truth.len(),
        model: model.len(),
        ..Tables::default()
    };
    for (id, want) in &truth {
        match model.get(id) {
            None => {
                t.missing += 1;
                t.examples.push(format!(
                    "order {id}: in orders, missing from order_read_model"
                ));
            }
            Some(got) if got != want => {
                t.different += 1;
                let (i, _) = want
                    .iter()
                    .zip(got)
                    .enumerate()
                    .find(|(_, (w, g))| w != g)
                    .unwrap_or((0, (&None, &None)));
                t.examples.push(format!(
                    "order {id}: {} is {:?} in order_read_model, {:?} in the truth",
                    COLUMNS[i], got[i], want[i]
                ));
            }
            Some(_) => {}
        }
    }
    for id in model.keys().filter(|id| !truth.contains_key(*id)) {
        t.extra += 1;
        t.examples.push(format!(
            "order {id}: deleted from orders, still in order_read_model"
        ));
    }
    Ok(t)
}

/// Redis next to the truth.
#[derive(Debug, Default)]
pub struct Keys {
    /// Keys compared (one per truth row, or per customer).
    pub expected: usize,
    /// Keys present under the prefix.
    pub present: usize,
    /// Expected keys missing or with a wrong field, with the first difference.
    pub wrong: Vec<String>,
}

impl Keys {
    /// Every expected key right and no other key.
    pub fn equal(&self) -> bool {
        self.wrong.is_empty() && self.present == self.expected
    }
}

/// Every `order:{id}` hash against the truth row, field by field (a NULL is an absent
/// field), and no `order:*` key without a truth row.
pub async fn order_hashes(
    c: &Client,
    r: &mut MultiplexedConnection,
) -> Result<Keys, Box<dyn std::error::Error + Send + Sync>> {
    // The sink's sessions run with TimeZone UTC: the same text form here.
    c.batch_execute("SET TimeZone = 'UTC'").await?;
    let cols = COLUMNS.map(|c| format!("{c}::text")).join(", ");
    let truth = c
        .query(&format!("SELECT {cols} FROM order_read_model_truth"), &[])
        .await?;
    let present = scan(r, "order:*").await?;
    let mut keys = Keys {
        expected: truth.len(),
        present: present.len(),
        ..Keys::default()
    };
    let ids: HashSet<String> = truth.iter().map(|row| row.get(0)).collect();
    let mut extra: Vec<&String> = present
        .iter()
        .filter(|k| !ids.contains(&k["order:".len()..]))
        .collect();
    extra.sort();
    for key in extra {
        keys.wrong.push(format!(
            "{key}: the order was deleted, the key is still there"
        ));
    }
    for row in &truth {
        let id: String = row.get(0);
        let key = format!("order:{id}");
        let h: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(r).await?;
        if h.is_empty() {
            keys.wrong.push(format!("{key}: missing"));
            continue;
        }
        for (i, col) in COLUMNS.iter().enumerate() {
            let want: Option<String> = row.get(i);
            if h.get(*col) != want.as_ref() {
                keys.wrong.push(format!(
                    "{key}: {col} is {:?} in Redis, {want:?} in the truth",
                    h.get(*col)
                ));
                break;
            }
        }
    }
    Ok(keys)
}

/// Every `customer:{id}` JSON document against `customers` (the mirror keeps id and name).
pub async fn customer_documents(
    c: &Client,
    r: &mut MultiplexedConnection,
) -> Result<Keys, Box<dyn std::error::Error + Send + Sync>> {
    let rows = c.query("SELECT id::text, name FROM customers", &[]).await?;
    let mut keys = Keys {
        expected: rows.len(),
        present: scan(r, "customer:*").await?.len(),
        ..Keys::default()
    };
    for row in &rows {
        let (id, name): (String, String) = (row.get(0), row.get(1));
        let key = format!("customer:{id}");
        let doc: Option<String> = redis::cmd("GET").arg(&key).query_async(r).await?;
        let got = doc.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok());
        let ok = got.as_ref().is_some_and(|v| {
            v["id"] == id.as_str() && v["name"] == name.as_str() && v.get("email").is_none()
        });
        if !ok {
            keys.wrong.push(match got {
                None => format!("{key}: missing"),
                Some(v) => format!("{key}: {v} in Redis, name {name:?} in customers"),
            });
        }
    }
    Ok(keys)
}

/// The keys matching `pattern`.
async fn scan(r: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<HashSet<String>> {
    let mut cursor: u64 = 0;
    let mut keys = HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(r)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Rows in `pgprism.dead_letters`.
pub async fn dead_letters(c: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(
        c.query_one("SELECT count(*) FROM pgprism.dead_letters", &[])
            .await?
            .get(0),
    )
}
