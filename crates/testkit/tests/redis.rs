//! Real `redis-server`s from the testkit: readiness, kill and restart, persistence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use pgprism_testkit::RedisServer;

/// Send one inline command and return the first reply line.
fn command(redis: &RedisServer, line: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    if first.starts_with('$') && first.trim() != "$-1" {
        let mut value = String::new();
        reader.read_line(&mut value).unwrap();
        return value.trim_end().to_owned();
    }
    first.trim_end().to_owned()
}

#[test]
fn answers_ping_on_its_url() {
    let redis = RedisServer::start().unwrap();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(command(&redis, "PING"), "+PONG");
    assert_eq!(command(&redis, "CONFIG GET appendonly"), "*2");
}

#[test]
fn kill_and_restart_lose_data_without_persistence() {
    let redis = RedisServer::start().unwrap();
    assert_eq!(command(&redis, "SET k v"), "+OK");
    let pid = redis.pid().unwrap();

    redis.kill();
    assert_eq!(redis.pid(), None);
    assert!(TcpStream::connect(("127.0.0.1", redis.port())).is_err());

    redis.restart().unwrap();
    assert_ne!(redis.pid().unwrap(), pid);
    assert_eq!(command(&redis, "GET k"), "$-1");
}

#[test]
fn persistent_server_keeps_acknowledged_writes_across_kill() {
    let redis = RedisServer::builder().persistent(true).start().unwrap();
    assert_eq!(command(&redis, "SET k survived"), "+OK");
    redis.restart().unwrap();
    assert_eq!(command(&redis, "GET k"), "survived");
}

#[test]
fn parallel_servers_are_independent_and_drop_cleans_up() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    command(&a, "SET only a");
    assert_eq!(command(&b, "GET only"), "$-1");

    let (pid, dir) = (a.pid().unwrap(), a.dir().to_owned());
    drop(a);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
    assert_eq!(command(&b, "PING"), "+PONG");
}

#[test]
fn paused_server_stops_answering_until_resumed() {
    let redis = RedisServer::start().unwrap();
    let pid = redis.pid().unwrap();
    pgprism_testkit::pause(pid).unwrap();

    let mut stream = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 7];
    assert!(
        stream.read_exact(&mut reply).is_err(),
        "a paused server answered"
    );

    pgprism_testkit::resume(pid).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
}
