//! Chaos tests: replicas as processes of their own (`pgprism-candidate`), killed with
//! SIGKILL, frozen with SIGSTOP and restarted, against a real Postgres. The assertions are
//! on what a user sees: who `pgprism.pipelines` says leads, which rows landed in the sink
//! table, and the sink's offset.
//!
//! A thread per candidate stream reads its lines into one [`Log`], each stamped with the
//! instant it was read; takeover times are measured from those stamps.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_testkit::{ChildGuard, PgServer, Signal, pause, resume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

const PIPELINE: &str = "orders";
const SINK_TABLE: &str = "chaos_writes";
/// For the tests that freeze a leader or restart one often: retry and heartbeat every
/// 100 ms, take over from a leader whose heartbeat is 1 s old (defaults: 1 s, 1 s, 5 s).
const FAST: &[&str] = &[
    "--retry-ms",
    "100",
    "--heartbeat-ms",
    "100",
    "--takeover-ms",
    "1000",
];
/// How long any one step may take on a loaded machine before the test gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// A line a candidate printed, and when the test read it.
#[derive(Debug, Clone)]
struct Line {
    at: Instant,
    replica: String,
    text: String,
}

/// Every line of every candidate (stdout and stderr), in the order read.
#[derive(Debug, Clone)]
struct Log {
    began: Instant,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Log {
    fn new() -> Log {
        Log {
            began: Instant::now(),
            lines: Arc::default(),
        }
    }

    fn push(&self, line: Line) {
        self.lines.lock().unwrap().push(line);
    }

    /// The lines from the `from`th on.
    fn since(&self, from: usize) -> Vec<Line> {
        self.lines.lock().unwrap()[from..].to_vec()
    }

    /// The last lines, for failure messages.
    fn tail(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(60);
        lines[skip..]
            .iter()
            .map(|l| {
                let ms = l.at.duration_since(self.began).as_millis();
                format!("  +{ms}ms {}: {}\n", l.replica, l.text)
            })
            .collect::<String>()
    }
}

/// What a candidate says about its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Leading,
    Lost,
    Fenced,
}

/// Parse `leading epoch=N`, `lost epoch=N`, `fenced epoch=N`.
fn role(text: &str) -> Option<(Role, i64)> {
    let (word, epoch) = text.split_once(" epoch=")?;
    let role = match word {
        "leading" => Role::Leading,
        "lost" => Role::Lost,
        "fenced" => Role::Fenced,
        _ => return None,
    };
    Some((role, epoch.parse().ok()?))
}

/// A `pgprism-candidate` process, SIGKILLed when dropped.
struct Candidate {
    replica: String,
    child: ChildGuard,
}

impl Candidate {
    fn start(dsn: &str, replica: &str, extra: &[&str], log: &Log) -> Candidate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgprism-candidate"))
            .args(["--dsn", dsn, "--pipeline", PIPELINE])
            .args(["--replica", replica, "--sink-table", SINK_TABLE])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pgprism-candidate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = ChildGuard::new(child);
        read_lines(stdout, replica, "", log);
        read_lines(stderr, replica, "stderr: ", log);
        Candidate {
            replica: replica.to_owned(),
            child,
        }
    }

    /// SIGKILL and reap; the instant just before the signal.
    fn kill(mut self) -> Instant {
        let at = Instant::now();
        self.child.signal(Signal::Kill).unwrap();
        assert!(
            self.child.wait_timeout(PATIENCE).is_some(),
            "{} survived SIGKILL",
            self.replica
        );
        at
    }
}

/// A thread that copies `from` into `log` line by line until EOF.
fn read_lines(from: impl Read + Send + 'static, replica: &str, prefix: &'static str, log: &Log) {
    let (replica, log) = (replica.to_owned(), log.clone());
    std::thread::spawn(move || {
        for text in BufReader::new(from).lines().map_while(Result::ok) {
            log.push(Line {
                at: Instant::now(),
                replica: replica.clone(),
                text: format!("{prefix}{text}"),
            });
        }
    });
}

/// Who believes it leads, replayed from the role lines in the order they were read;
/// checks after every line that no two live candidates do.
#[derive(Debug, Default)]
struct Beliefs {
    read: usize,
    leading: HashMap<String, (i64, Instant)>,
    dead: HashSet<String>,
}

impl Beliefs {
    fn update(&mut self, log: &Log) {
        for line in log.since(self.read) {
            self.read += 1;
            if self.dead.contains(&line.replica) {
                continue;
            }
            match role(&line.text) {
                Some((Role::Leading, epoch)) => {
                    self.leading.insert(line.replica, (epoch, line.at));
                }
                Some((Role::Lost | Role::Fenced, _)) => {
                    self.leading.remove(&line.replica);
                }
                None => {}
            }
            assert!(
                self.leading.len() <= 1,
                "two live candidates believe they lead at once: {:?}\n{}",
                self.leading,
                log.tail()
            );
        }
    }

    /// Marked before the SIGKILL: whatever a dead process printed last, it leads no more.
    fn killed(&mut self, replica: &str) {
        self.dead.insert(replica.to_owned());
        self.leading.remove(replica);
    }

    /// The one candidate that believes it leads: `(replica, epoch, when it said so)`.
    fn leader(&self) -> Option<(String, i64, Instant)> {
        self.leading
            .iter()
            .next()
            .map(|(r, &(epoch, at))| (r.clone(), epoch, at))
    }
}

/// One sample: replay new lines, then check that the source agrees with the believed
/// leader. The lines come after the epoch is committed, and no leader is killed between
/// the two reads, so they must agree.
async fn sample(beliefs: &mut Beliefs, log: &Log, sql: &Client) {
    beliefs.update(log);
    let Some((replica, epoch, _)) = beliefs.leader() else {
        return;
    };
    let row = sql
        .query_one(
            "SELECT leader, epoch FROM pgprism.pipelines WHERE name = $1",
            &[&PIPELINE],
        )
        .await
        .unwrap();
    let stored: (String, i64) = (row.get(0), row.get(1));
    assert_eq!(
        stored,
        (replica, epoch),
        "pgprism.pipelines disagrees with the candidate that believes it leads\n{}",
        log.tail()
    );
}

/// Call `attempt` every `every` until it yields a value; after `PATIENCE`, fail saying
/// `what` with the tail of the candidates' output.
async fn eventually<T>(
    log: &Log,
    every: Duration,
    what: impl Fn() -> String,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = attempt().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{}\n{}", what(), log.tail());
        tokio::time::sleep(every).await;
    }
}

/// Sample until a live candidate believes it leads.
async fn next_leader(beliefs: &mut Beliefs, log: &Log, sql: &Client) -> (String, i64, Instant) {
    let every = Duration::from_millis(5);
    eventually(
        log,
        every,
        || "nobody leads".to_owned(),
        async || {
            sample(beliefs, log, sql).await;
            beliefs.leader()
        },
    )
    .await
}

/// Wait for `replica` to print a `role` line read after `after`: `(epoch, when read)`.
async fn wait_line(log: &Log, replica: &str, after: Instant, role_: Role) -> (i64, Instant) {
    let what = || format!("{replica} never printed {role_:?}");
    eventually(log, Duration::from_millis(5), what, async || {
        log.since(0).into_iter().find_map(|l| {
            let (r, epoch) = role(&l.text)?;
            (l.replica == replica && l.at > after && r == role_).then_some((epoch, l.at))
        })
    })
    .await
}

/// Run `query` (one bigint or NULL); `None` if it is NULL or the sink table does not
/// exist yet.
async fn sink_value(sql: &Client, query: &str, epoch: i64) -> Option<i64> {
    match sql.query_one(query, &[&epoch]).await {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
        Err(e) => panic!("{query}: {e}"),
    }
}

/// The first row (lowest `seq`) written with `epoch`, once there is one.
async fn first_row_of(epoch: i64, log: &Log, sql: &Client) -> i64 {
    let what = || format!("epoch {epoch} never wrote");
    eventually(log, Duration::from_millis(10), what, async || {
        sink_value(
            sql,
            "SELECT min(seq) FROM chaos_writes WHERE epoch = $1",
            epoch,
        )
        .await
    })
    .await
}

/// Rows whose epoch is older than that of a row written before them (by `seq`): writes
/// of a deposed leader that landed after its successor's.
async fn rows_out_of_epoch_order(sql: &Client) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM (
             SELECT epoch, max(epoch) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS newest
               FROM chaos_writes) w
          WHERE epoch < newest",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The epoch stamped on the sink's offset row.
async fn offset_epoch(sql: &Client) -> i64 {
    sql.query_one(
        "SELECT epoch FROM pgprism.offsets WHERE pipeline = $1 AND sink = $2",
        &[&PIPELINE, &SINK_TABLE],
    )
    .await
    .unwrap()
    .get(0)
}

/// Random timings, from `PGPRISM_CHAOS_SEED` if set; the seed is printed to rerun a
/// failure with the same choices (the machine's timing still differs).
fn seeded_rng() -> StdRng {
    let seed = std::env::var("PGPRISM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("PGPRISM_CHAOS_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_never_two_leaders_and_kill_9_takeover_is_fast() {
    let began = Instant::now();
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let sql = pg.client(&db).await.unwrap();
    let log = Log::new();
    let mut rng = seeded_rng();
    let mut beliefs = Beliefs::default();
    let mut names = (0..).map(|i| format!("r{i}"));
    // Default election settings: this measures what a deployment gets.
    let mut candidates: Vec<Candidate> = (0..3)
        .map(|_| Candidate::start(&dsn, &names.next().unwrap(), &[], &log))
        .collect();
    let (mut leader, mut epoch, _) = next_leader(&mut beliefs, &log, &sql).await;
    let mut takeovers = Vec::new();
    for _ in 0..20 {
        // Kill it while it writes, sampling the invariant until then.
        let deadline = Instant::now() + PATIENCE;
        let q = "SELECT count(*) FROM chaos_writes WHERE epoch = $1";
        while sink_value(&sql, q, epoch).await.unwrap_or(0) < 3 {
            sample(&mut beliefs, &log, &sql).await;
            assert!(
                Instant::now() < deadline,
                "{leader} never wrote\n{}",
                log.tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // At a random point of the standbys' retry cycle: killing in step with the last
        // takeover would measure this loop's rhythm, not the election.
        let until = Instant::now() + Duration::from_millis(rng.random_range(0..1000));
        while Instant::now() < until {
            sample(&mut beliefs, &log, &sql).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let i = candidates.iter().position(|c| c.replica == leader).unwrap();
        beliefs.killed(&leader);
        let killed_at = candidates.swap_remove(i).kill();
        let (next, next_epoch, at) = next_leader(&mut beliefs, &log, &sql).await;
        assert!(next_epoch > epoch, "epoch {next_epoch} after {epoch}");
        takeovers.push(at.saturating_duration_since(killed_at));
        candidates.push(Candidate::start(&dsn, &names.next().unwrap(), &[], &log));
        (leader, epoch) = (next, next_epoch);
    }
    first_row_of(epoch, &log, &sql).await;
    sample(&mut beliefs, &log, &sql).await;
    assert_eq!(offset_epoch(&sql).await, epoch);
    assert_eq!(rows_out_of_epoch_order(&sql).await, 0);

    // SIGTERM is a clean exit, as leader and as standby.
    for mut c in candidates {
        c.child.signal(Signal::Term).unwrap();
        let status = c.child.wait_timeout(PATIENCE);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} on SIGTERM: {status:?}\n{}",
            c.replica,
            log.tail()
        );
    }

    takeovers.sort();
    let (p50, max) = (
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
    );
    eprintln!(
        "kill -9 of the leader, default settings, {} trials: takeover p50 {p50:?}, max {max:?}; \
         test took {:?}",
        takeovers.len(),
        began.elapsed()
    );
    assert!(max < Duration::from_secs(5), "takeovers: {takeovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_leader_is_fenced_and_steps_down() {
    let began = Instant::now();
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let sql = pg.client(&db).await.unwrap();
    let log = Log::new();
    // A's batches move the offset a long way each (as if it had streamed far ahead of the
    // durable offset), so after B resumes from that offset A's stale commits are still
    // ahead of B's: only the epoch, not the offset's monotonicity, can refuse them.
    let a_args = [FAST, &["--lsn-step", "1000000"]].concat();
    let a = Candidate::start(&dsn, "a", &a_args, &log);
    let (epoch_a, _) = wait_line(&log, "a", began, Role::Leading).await;
    first_row_of(epoch_a, &log, &sql).await;

    // A standby does not replace a live leader...
    let _b = Candidate::start(&dsn, "b", FAST, &log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !log.since(0)
            .iter()
            .any(|l| l.replica == "b" && role(&l.text).is_some_and(|(r, _)| r == Role::Leading)),
        "B took over from a live leader\n{}",
        log.tail()
    );

    // ...but does replace a frozen one.
    let stopped_at = Instant::now();
    pause(a.child.pid()).unwrap();
    let (epoch_b, b_leads_at) = wait_line(&log, "b", stopped_at, Role::Leading).await;
    assert!(epoch_b > epoch_a);
    let first_b = first_row_of(epoch_b, &log, &sql).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let q = "SELECT max(seq) FROM chaos_writes WHERE epoch = $1";
    let last_b_before_resume = sink_value(&sql, q, epoch_b).await.unwrap();
    let resumed_at = Instant::now();
    resume(a.child.pid()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A says so once it has noticed, however long a loaded machine makes that take; it
    // starts no batch after that, so its stale writes are all in by then.
    let what = || "A did not step down after waking up".to_owned();
    let stepped_down = eventually(&log, Duration::from_millis(5), what, async || {
        log.since(0).into_iter().find(|l| {
            l.replica == "a"
                && l.at > resumed_at
                && role(&l.text).is_some_and(|(r, e)| r != Role::Leading && e == epoch_a)
        })
    })
    .await;

    let q = "SELECT count(*) FROM chaos_writes WHERE epoch = $1 AND seq > $2";
    let stale: i64 = sql
        .query_one(q, &[&epoch_a, &first_b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stale,
        0,
        "{stale} writes of the frozen leader's epoch {epoch_a} landed after the first write \
         of epoch {epoch_b} (seq {first_b})\n{}",
        log.tail()
    );
    assert_eq!(rows_out_of_epoch_order(&sql).await, 0);
    // B leads on, undisturbed: its epoch owns the sink and it kept writing.
    assert_eq!(offset_epoch(&sql).await, epoch_b);
    let q = "SELECT count(*) FROM chaos_writes WHERE epoch = $1 AND seq > $2";
    let b_after: i64 = sql
        .query_one(q, &[&epoch_b, &last_b_before_resume])
        .await
        .unwrap()
        .get(0);
    assert!(b_after > 0, "B stopped writing when A woke up");
    assert!(
        !log.since(0)
            .iter()
            .any(|l| l.replica == "b" && role(&l.text).is_some_and(|(r, _)| r != Role::Leading)),
        "B was deposed\n{}",
        log.tail()
    );
    let row = sql
        .query_one(
            "SELECT leader, epoch FROM pgprism.pipelines WHERE name = $1",
            &[&PIPELINE],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("b".to_owned(), epoch_b)
    );
    eprintln!(
        "SIGSTOP of the leader (takeover after 1 s): B led {:?} after the stop, A said {:?} \
         {:?} after SIGCONT; test took {:?}",
        b_leads_at.duration_since(stopped_at),
        stepped_down.text,
        stepped_down.at.duration_since(resumed_at),
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_never_go_backwards_across_random_kill_9() {
    let began = Instant::now();
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let sql = pg.client(&db).await.unwrap();
    let log = Log::new();
    let mut rng = seeded_rng();
    let mut last = Lsn::ZERO;
    let mut lives_that_wrote = 0;
    for i in 0..100 {
        let replica = format!("c{i}");
        let c = Candidate::start(&dsn, &replica, FAST, &log);
        wait_line(&log, &replica, began, Role::Leading).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        c.kill();

        let exists: bool = sql
            .query_one(
                "SELECT to_regclass('chaos_writes') IS NOT NULL
                    AND to_regclass('pgprism.offsets') IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !exists {
            continue;
        }
        // In one statement, so that offset and rows come from one snapshot.
        let row = sql
            .query_one(
                "SELECT (SELECT resume_lsn::text FROM pgprism.offsets
                          WHERE pipeline = $1 AND sink = $2),
                        count(*), count(DISTINCT lsn), coalesce(max(lsn), 0)
                   FROM chaos_writes",
                &[&PIPELINE, &SINK_TABLE],
            )
            .await
            .unwrap();
        let offset: Lsn = row
            .get::<_, Option<&str>>(0)
            .map_or(Lsn::ZERO, |s| s.parse().unwrap());
        let (rows, distinct, max): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        assert!(
            offset >= last,
            "crash {i}: the offset went back from {last} to {offset}"
        );
        assert_eq!(
            (rows, distinct, max),
            (offset.0 as i64, offset.0 as i64, offset.0 as i64),
            "crash {i}: the sink's rows (count, distinct LSNs, highest LSN) disagree with its \
             offset {offset}: a batch landed without its offset or the other way round"
        );
        lives_that_wrote += usize::from(offset > last);
        last = offset;
    }
    // Crash points in the middle of writing are the ones that matter; a loaded machine
    // makes fewer of them (slower startup), but not this few.
    assert!(
        lives_that_wrote >= 10,
        "only {lives_that_wrote} of 100 lives committed a batch"
    );
    assert_eq!(rows_out_of_epoch_order(&sql).await, 0);
    eprintln!(
        "100 kill -9 crash points: {} batches committed, by {lives_that_wrote} lives; \
         test took {:?}",
        last.0,
        began.elapsed()
    );
}
