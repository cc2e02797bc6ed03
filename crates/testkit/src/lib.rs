//! Throwaway Postgres and Redis servers for pgprism's tests and benchmarks.
//!
//! Every server gets its own temp dir and a free port on 127.0.0.1, so tests run in
//! parallel (threads under `cargo test`, processes under nextest) without sharing
//! anything. Servers are torn down on drop, also when the test panics. The API is
//! synchronous so it serves sync and async tests alike; [`PgServer::client`] is the one
//! async convenience.
//!
//! What a fresh machine needs (Postgres server binaries, `redis-server`) is installed by
//! `scripts/install.sh`; the errors here say so when something is missing.
//!
//! A test process killed with SIGKILL (a nextest timeout) cannot run destructors: its
//! servers keep running until the machine's temp dir is cleaned. `pg_ctl` makes the
//! postmaster a session leader, so killing the test's process group does not reach it
//! either.

mod error;
pub mod http;
mod postgres;
mod process;
mod redis;
mod run_as;
mod server_log;
pub mod shop;
mod tls;

pub use error::TestkitError;
pub use postgres::{PgBuilder, PgServer, StopMode, bin_dir};
pub use process::{ChildGuard, Signal, pause, resume, signal};
pub use redis::{RedisBuilder, RedisServer};
pub use server_log::free_port;
pub use tls::TestCa;
