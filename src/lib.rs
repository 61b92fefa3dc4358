//! `collector` records Polymarket's public market data into PostgreSQL.
//!
//! # Layout
//! The tree reads as the data flows. Floors, top to bottom — a module imports only from its
//! own floor or below (checked by `tests/integration/layout.rs`):
//!
//! 1. `main.rs` — the boot story: arguments → configuration → logging → command → exit code.
//! 2. [`app`] — the commands; `collect` wires database → collectors → health → READY → drain.
//! 3. [`daemon`] — supervisor (every restart decision), polling loop and stats, health (log,
//!    `STATUS=`, `WATCHDOG=1`), systemd notifications, the status socket.
//! 4. [`collectors`] — what collects: polling collectors (`catalog`, `books`; a new one is a
//!    module implementing `Collector`) and the live `stream` (`spawn` → `StreamHandle`:
//!    manager → shards → sink → writer, plus gaps and backfill; a new streaming collector
//!    follows its shape).
//! 5. [`db`] — PostgreSQL: pool, TLS, URL rules, migrations, and all SQL, one module per
//!    table family (`catalog`, `books`, `stream`, `gaps`).
//! 6. [`polymarket`] — the upstream: REST client (budgets, retries), WebSocket protocol,
//!    exact decoding.
//! 7. [`config`], [`logging`] — the TOML configuration (each key read in one place) and the
//!    log output.
//! 8. Leaves: [`journal`] (message ids), [`errors`] (error chains), [`backoff`] (the one
//!    capped exponential backoff with full jitter), [`clock`] (the wall clock, movable in tests), [`fault`] (test-only fault hook), [`exit`],
//!    [`allocator`] (mimalloc, tuned for resident memory), [`slice`] (which markets an
//!    instance records: `[stream] shard`).
//!
//! Data flow: Gamma → catalog tables → subscription set → stream connections → sink (queue,
//! spool) → writer → stream tables; active tokens → `POST /books` → `book_snapshots`.

pub mod allocator;
pub mod app;
pub mod backoff;
pub mod clock;
pub mod collectors;
pub mod config;
pub mod daemon;
pub mod db;
pub mod errors;
pub mod fault;
pub mod journal;
pub mod logging;
pub mod polymarket;
pub mod slice;

/// Process exit codes (sysexits).
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CONFIG: u8 = 78;
}
