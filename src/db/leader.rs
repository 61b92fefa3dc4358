//! One leader per database for the shared work (docs/scaling.md): the catalog sweeps, new
//! markets, resolutions and history, partition maintenance (creation, retention, compaction)
//! and the archive. Every other instance records its slice of the stream and polls its books,
//! and stands by for the shared work.
//!
//! Leadership is a session advisory lock, `pg_try_advisory_lock(`[`LOCK_KEY`]`)`, held on a
//! dedicated connection outside the pool. PostgreSQL frees it when that session ends, so a
//! leader that dies (kill -9, a crash, a reboot: its socket closes) hands over within
//! [`RETRY`], the time the others wait between two tries. The leader asks its session a
//! question every [`CHECK`] and steps down when no answer comes within [`CHECK_TIMEOUT`]; its
//! session asks the server to drop it after [`SERVER_DROPS_AFTER`] of silence (TCP keepalives
//! and user timeout set on the session), later than the leader steps down, so two leaders
//! never work at once. Takeover bounds: a dead leader [`RETRY`] (+ a connect); a leader cut off
//! the network [`SERVER_DROPS_AFTER`] + [`RETRY`].
//!
//! The same connection keeps this instance's row in `stream_instances` (instance, slice, role,
//! version, start, heartbeat) current every [`HEARTBEAT`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::rest;
use crate::config::DatabaseConfig;
use crate::db;

/// The advisory lock's key: the bytes "collectr" (one bigint, the two-int form unused).
pub const LOCK_KEY: i64 = 0x636f_6c6c_6563_7472;
/// Between two tries of a standby instance (and before a reconnect).
pub const RETRY: Duration = Duration::from_secs(2);
/// Between two checks of the leader's session.
pub const CHECK: Duration = Duration::from_secs(2);
/// A check unanswered this long: the leader steps down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A leader's session silent this long is dropped by the server (the lock freed).
pub const SERVER_DROPS_AFTER: Duration = Duration::from_secs(12);
/// Between two heartbeats in `stream_instances`.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Whether this instance leads now (a cheap handle, cloned into every task that asks).
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Always the leader: one instance alone (`database.leader_election = false`) and the
    /// one-shot commands.
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        // The sender dropped: the value stays.
        drop(tx);
        Leadership(rx)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once this instance leads (at once if it does; never once the election has
    /// ended without it, as at a stop).
    pub async fn until_leader(&mut self) {
        if self.0.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn role(&self) -> &'static str {
        if self.is_leader() { "leader" } else { "standby" }
    }
}

/// What this instance says of itself in `stream_instances`.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `host:config-name` unless `daemon.instance` names it.
    pub instance: String,
    pub slice: String,
    pub started_at: DateTime<Utc>,
}

/// Starts the election task; the handle says whether this instance leads.
pub fn spawn(cfg: DatabaseConfig, me: Identity, cancel: CancellationToken) -> Leadership {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(cfg, me, tx, cancel));
    Leadership(rx)
}

async fn run(cfg: DatabaseConfig, me: Identity, tx: watch::Sender<bool>, cancel: CancellationToken) {
    let (pg, tls) = match (db::pg_config(&cfg), db::tls(&cfg)) {
        (Ok(pg), Ok(tls)) => (pg, tls),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "leader election cannot start: {e}; this instance stands by");
            return;
        }
    };
    loop {
        if cancel.is_cancelled() {
            break;
        }
        match pg.connect(tls.clone()).await {
            Ok((client, conn)) => {
                let conn = tokio::spawn(conn);
                session(&client, &me, &tx, &cancel).await;
                // Ends the session: the server frees the lock at once for another instance.
                drop(client);
                let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
            }
            Err(e) => tracing::warn!(error = %db::url::redact(&e.to_string()), "leader election: cannot connect: {e}"),
        }
        step_down(&tx, "its database session ended");
        if !rest(&cancel, RETRY).await {
            break;
        }
    }
    step_down(&tx, "stopping");
}

fn step_down(tx: &watch::Sender<bool>, why: &str) {
    if tx.send_replace(false) {
        tracing::warn!(message_id = crate::journal::LIFECYCLE, "no longer the leader ({why}): the shared work stops here");
    }
}

/// One session: tries the lock until it is granted, then holds it while the session answers.
async fn session(client: &tokio_postgres::Client, me: &Identity, tx: &watch::Sender<bool>, cancel: &CancellationToken) {
    let ask = |sql: String| async move {
        tokio::time::timeout(CHECK_TIMEOUT, client.batch_execute(&sql)).await.map_err(|_| "timed out")?.map_err(|_| "failed")
    };
    // The server drops this session when its peer is gone, later than the leader steps down.
    let drop_ms = SERVER_DROPS_AFTER.as_millis();
    if ask(format!(
        "SET tcp_keepalives_idle = 4; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 4; SET tcp_user_timeout = {drop_ms}; \
         SET statement_timeout = {}",
        CHECK_TIMEOUT.as_millis()
    ))
    .await
    .is_err()
    {
        return;
    }
    let mut last_beat: Option<tokio::time::Instant> = None;
    loop {
        let leading = *tx.borrow();
        let granted = if leading {
            ask("SELECT 1".into()).await.map(|_| true)
        } else {
            match tokio::time::timeout(CHECK_TIMEOUT, client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])).await {
                Ok(Ok(row)) => Ok(row.get::<_, bool>(0)),
                _ => Err("failed"),
            }
        };
        match granted {
            Err(e) => {
                if leading {
                    tracing::warn!("leader's database session did not answer ({e}): stepping down");
                }
                return;
            }
            Ok(true) if !leading => {
                tx.send_replace(true);
                tracing::info!(message_id = crate::journal::LIFECYCLE, instance = %me.instance,
                    "leader for this database: the catalog, history, partitions, retention and archive run here");
            }
            Ok(_) => {}
        }
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            let leading = *tx.borrow();
            // Bounded like a check: a leader whose session hangs here steps down all the same.
            match tokio::time::timeout(CHECK_TIMEOUT, heartbeat(client, me, leading)).await {
                Err(_) => {
                    if leading {
                        tracing::warn!("leader's database session did not answer (heartbeat timed out): stepping down");
                    }
                    return;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "stream_instances heartbeat not written: {e}"),
                Ok(Ok(())) => {}
            }
            last_beat = Some(tokio::time::Instant::now());
        }
        let wait = if *tx.borrow() { CHECK } else { RETRY };
        if !rest(cancel, wait).await {
            return;
        }
    }
}

/// This instance's row in `stream_instances`; rows silent for a week are removed.
async fn heartbeat(client: &tokio_postgres::Client, me: &Identity, leading: bool) -> Result<(), tokio_postgres::Error> {
    let role = if leading { "leader" } else { "standby" };
    client
        .execute(
            "INSERT INTO stream_instances (instance, slice, role, version, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (instance) DO UPDATE SET slice = EXCLUDED.slice, role = EXCLUDED.role, version = EXCLUDED.version,
               started_at = EXCLUDED.started_at, heartbeat_at = now()",
            &[&me.instance, &me.slice, &role, &env!("CARGO_PKG_VERSION"), &me.started_at],
        )
        .await?;
    client.execute("DELETE FROM stream_instances WHERE heartbeat_at < now() - interval '7 days'", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_standby_waits_until_it_leads_and_stays_waiting_once_the_election_ends() {
        let mut always = Leadership::always();
        assert!(always.is_leader());
        always.until_leader().await;
        let (tx, rx) = watch::channel(false);
        let mut l = Leadership(rx);
        assert_eq!(l.role(), "standby");
        let waiting = tokio::spawn({
            let mut l = l.clone();
            async move { l.until_leader().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        assert_eq!(l.role(), "leader");
        // The election ended (a stop) without this instance leading: no pass starts.
        tx.send_replace(false);
        drop(tx);
        assert!(tokio::time::timeout(Duration::from_millis(200), l.until_leader()).await.is_err());
    }
}
