//! Running the collectors: the polling loop and its stats, the supervisor that decides every
//! restart (polling collectors, stream shards and helpers), health (snapshot, log, `STATUS=`,
//! and the progress-gated `WATCHDOG=1` from the same tick), systemd notifications, and the
//! `collector status` socket.

pub mod health;
pub mod metrics;
pub mod poll;
pub mod status;
pub mod supervisor;
pub mod systemd;
