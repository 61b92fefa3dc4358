//! `collector` records Polymarket's public market data into PostgreSQL.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated, every problem reported at once.
//! - [`app`]: the commands (`collect`, `migrate`, `check-config`) wiring the parts together.
//! - [`db`]: pool, migrations, one module per table family.
//! - [`polymarket`]: REST client with budgets and retries, lenient exact decoding.
//! - [`collectors`]: the polling collectors (`catalog`, `new_markets`, `resolutions`, `books`),
//!   all of one shape.
//! - [`daemon`]: polling loop and stats, supervisor, health log.
//! - [`logging`]: journald or stderr.
//!
//! Data flow: Gamma → catalog tables → active tokens → `POST /books` → `book_snapshots`.

pub mod app;
pub mod backoff;
pub mod collectors;
pub mod config;
pub mod daemon;
pub mod db;
pub mod errors;
pub mod fault;
pub mod journal;
pub mod logging;
pub mod polymarket;

/// Process exit codes (sysexits).
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CONFIG: u8 = 78;
}
