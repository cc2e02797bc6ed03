//! `drive` from a source other than the replication stream (`ChangeSource`): events
//! recorded once from a real slot and played back. The loop needs nothing of the stream
//! but its events and an acknowledgement handle; the projector's own offsets, not the
//! stream's resume dedup, keep a second delivery from applying anything twice.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use common::{Env, READ_MODELS, SCHEMA, TRUTH, assert_orders_match_truth, order_read_model_toml};
use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{ReplicationStream, StreamConfig, StreamError, StreamEvent};
use pgprism_pg::Dsn;
use pgprism_sink::Projector;
use pgprism_sink::drive::{Acknowledge, ChangeSource, DriveOptions, drive};
use tokio::sync::watch;

/// Events played back in order, then a keepalive at the last one's position for ever.
struct Recorded {
    events: VecDeque<StreamEvent>,
    end: Lsn,
    acks: Acks,
}

/// Every acknowledgement, in order.
#[derive(Clone, Default)]
struct Acks(Rc<RefCell<Vec<Lsn>>>);

impl Acknowledge for Acks {
    fn ack(&self, lsn: Lsn) {
        self.0.borrow_mut().push(lsn);
    }
}

impl ChangeSource for Recorded {
    type Acker = Acks;

    fn acker(&self) -> Acks {
        self.acks.clone()
    }

    async fn next(&mut self) -> Result<StreamEvent, StreamError> {
        match self.events.pop_front() {
            Some(ev) => Ok(ev),
            None => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(StreamEvent::Keepalive { wal_end: self.end })
            }
        }
    }
}

/// Every event of the slot up to the first transaction committed at or after `until`
/// (included), read from a real replication stream that is then closed without
/// acknowledging anything.
async fn record(env: &Env, until: Lsn) -> Vec<StreamEvent> {
    let cfg = StreamConfig::new(Dsn::parse(&env.dsn).unwrap(), "pgprism", "pgprism");
    let mut stream = ReplicationStream::open(cfg).await.expect("stream");
    let mut events = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the stream reached the marker within 60 s")
            .expect("stream");
        let last = matches!(&ev, StreamEvent::Chunk(c) if c.txn.commit_lsn >= until);
        events.push(ev);
        if last {
            return events;
        }
    }
}

/// Drive a new projector (`epoch`) from `events` until everything before `until` is
/// durable; the flushes' rows written and the acknowledgements.
async fn play(env: &Env, epoch: i64, events: &[StreamEvent], until: Lsn) -> (u64, Vec<Lsn>) {
    let cfg = env.config(vec![common::projection(&order_read_model_toml())], epoch);
    let mut projector = Projector::start(&cfg).await.expect("projector starts");
    let acks = Acks::default();
    let mut source = Recorded {
        events: events.iter().cloned().collect(),
        end: until,
        acks: acks.clone(),
    };
    let (_stop_tx, mut stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window: 0,
        until: Some(until),
    };
    let mut written = 0;
    tokio::time::timeout(
        Duration::from_secs(60),
        drive(&mut projector, &mut source, &mut stop, &opts, |r| {
            written += r.written
        }),
    )
    .await
    .expect("drive finished within 60 s")
    .expect("drive");
    let acks = acks.0.borrow().clone();
    (written, acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_events_drive_the_projector_and_a_second_delivery_changes_nothing() {
    let env = Env::new(&format!("{SCHEMA}\n{READ_MODELS}"));
    let writer = env.client().await;
    common::shop_workload(&writer, 400, 71).await;
    let until = env.marker();
    let events = record(&env, until).await;
    let chunks = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Chunk(_)))
        .count();
    assert!(chunks > 400, "{chunks} chunks recorded");

    let (written, acks) = play(&env, 1, &events, until).await;
    let truth = assert_orders_match_truth(&env, "after the recorded events").await;
    assert!(!truth.is_empty() && written > 0, "written {written}");
    assert!(
        acks.windows(2).all(|w| w[0] <= w[1]),
        "acknowledgements went back: {acks:?}"
    );
    let last = *acks.last().expect("acknowledged");
    assert!(
        last > Lsn::ZERO && last <= until,
        "the last acknowledgement {last} is within what was delivered (before {until})"
    );

    // The same events again, to a new leader: every one is behind the stored offsets.
    let (written, acks) = play(&env, 2, &events, until).await;
    assert_eq!(written, 0, "a second delivery wrote rows");
    assert!(
        acks.windows(2).all(|w| w[0] <= w[1]) && acks.iter().all(|a| *a <= until),
        "acknowledgements of the second delivery: {acks:?}"
    );
    assert_orders_match_truth(&env, "after the second delivery").await;
    assert_eq!(env.rows(TRUTH).await, truth, "the source did not change");
}
