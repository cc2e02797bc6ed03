//! The Redis fence against a real Redis: a deposed leader's scripts change nothing.

use pgprism_decoder::Lsn;
use pgprism_leader::{Epoch, LeaderError, Offset, RedisFence};
use pgprism_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write_to_redis_and_offsets_only_grow() {
    let server = RedisServer::start().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut old = client.get_multiplexed_async_connection().await.unwrap();
    let mut new = client.get_multiplexed_async_connection().await.unwrap();
    // A sink write: set a key, fenced.
    let write = RedisFence::fenced_script("return redis.call('SET', KEYS[2], ARGV[2])");

    let (a, start) = RedisFence::stamp(&mut old, "orders", "cache", Epoch(1))
        .await
        .unwrap();
    assert_eq!(start, Offset::default());
    a.invoke(&mut old, &write, &["order:1"], &["from-a"])
        .await
        .unwrap();
    a.commit_offset(&mut old, Offset::after_transaction(Lsn(100)))
        .await
        .unwrap();

    let (b, resume) = RedisFence::stamp(&mut new, "orders", "cache", Epoch(2))
        .await
        .unwrap();
    assert_eq!(resume, Offset::after_transaction(Lsn(100)));
    b.invoke(&mut new, &write, &["order:1"], &["from-b"])
        .await
        .unwrap();

    // A wakes up: its write and its offset are refused, and change nothing.
    let err = a
        .invoke(&mut old, &write, &["order:1"], &["stale"])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LeaderError::Fenced {
                ours: Epoch(1),
                current: Epoch(2),
                ..
            }
        ),
        "{err}"
    );
    let err = a
        .commit_offset(&mut old, Offset::after_transaction(Lsn(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, LeaderError::Fenced { .. }), "{err}");
    assert!(matches!(
        RedisFence::stamp(&mut old, "orders", "cache", Epoch(1)).await,
        Err(LeaderError::Fenced { .. })
    ));
    let value: String = redis::cmd("GET")
        .arg("order:1")
        .query_async(&mut new)
        .await
        .unwrap();
    assert_eq!(value, "from-b");

    // Offsets only grow, exactly over the whole 64-bit range; rewind is the exception.
    let high = Lsn(u64::MAX - 1);
    b.commit_offset(&mut new, Offset::inside_transaction(Lsn(0x1_0000_0000), 3))
        .await
        .unwrap();
    b.commit_offset(&mut new, Offset::after_transaction(high))
        .await
        .unwrap();
    for back in [
        Offset::inside_transaction(Lsn(0x1_0000_0000), 9),
        Offset::after_transaction(Lsn(u64::MAX - 2)),
    ] {
        let err = b.commit_offset(&mut new, back).await.unwrap_err();
        assert!(matches!(err, LeaderError::Backwards { .. }), "{err}");
    }
    assert_eq!(
        RedisFence::read(&mut new, "orders", "cache").await.unwrap(),
        Some(Offset::after_transaction(high))
    );
    b.rewind(&mut new, Offset::after_transaction(Lsn(50)))
        .await
        .unwrap();
    assert_eq!(
        RedisFence::read(&mut new, "orders", "cache").await.unwrap(),
        Some(Offset::after_transaction(Lsn(50)))
    );
    assert_eq!(
        RedisFence::read(&mut new, "orders", "other").await.unwrap(),
        None
    );
}
