//! Running the collectors: the polling loop and its stats, the supervisor that restarts
//! crashed tasks, health (snapshot, log, `STATUS=`), systemd notifications and the watchdog,
//! the `collector status` socket, journald message ids, and the test-only fault hook.

pub mod fault;
pub mod health;
pub mod journal;
pub mod poll;
pub mod status;
pub mod supervisor;
pub mod systemd;
