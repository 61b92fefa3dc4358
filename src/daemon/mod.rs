//! Running the collectors: the polling loop, per-collector stats, the supervisor that
//! restarts crashed tasks, and the health log.

pub mod health;
pub mod poll;
pub mod supervisor;
