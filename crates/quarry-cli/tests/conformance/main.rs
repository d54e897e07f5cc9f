//! The warehouse contract, written once (`harness.rs`) and run against every
//! backend (one file each): the reference sample through the whole pipeline
//! gives the expected tables and top lists; a re-run is idempotent; an abort
//! leaves nothing; partitions can be listed, read back exactly, dropped and
//! written back; the commit refuses what it was not sent. Each backend's
//! file adds what only that backend has (retries across a restart of its
//! server, its error classes, its login).
//!
//! The backends other than SQLite need a stand-in that `scripts/test.sh`
//! starts; without it their tests are reported as ignored.

#[path = "../common/mod.rs"]
mod common;
#[path = "../snowflake_proxy/mod.rs"]
mod snowflake_proxy;

mod harness;
mod own_server;
mod sneak;

mod bigquery;
mod clickhouse;
mod snowflake;
mod sqlite;
