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
//! The same connection holds the lock of this instance's slice writer (`db::writers`: one
//! instance of a slice writes its level changes, the others stand by with theirs in memory)
//! and publishes the [`SliceRole`]; it keeps this instance's row in `stream_instances`
//! (instance, slice, role, slice role, version, start, heartbeat) current every
//! [`HEARTBEAT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::rest;
use crate::config::DatabaseConfig;
use crate::db;
use crate::db::writers::{self, Foreign, Taken};
use crate::slice::Slice;

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
/// Longest wait of a takeover for the previous writer's batches in flight (their statements
/// end or their connections are dropped by then: `database.tcp_keepalive_secs`).
pub const FENCE_WAIT: Duration = Duration::from_secs(90);

/// This instance's part in writing its slice's level changes (`db::writers`).
#[derive(Debug, Clone, PartialEq)]
pub enum SliceRole {
    /// The first answer has not come yet: level changes are held.
    Starting,
    /// No election (`daemon.leader_election = false`, one-shot commands): writes everything.
    All,
    /// Another instance writes this slice: level changes are held in memory.
    Standby,
    /// Writes the slice's level changes, except the markets that `foreign` writers (of another
    /// slice count, there before this one, still alive) own.
    Writer { taken: Taken, foreign: Vec<Foreign> },
}

impl SliceRole {
    pub fn name(&self) -> &'static str {
        match self {
            SliceRole::Starting | SliceRole::Standby => "standby",
            SliceRole::All => "all",
            SliceRole::Writer { .. } => "writer",
        }
    }
}

/// Whether this instance leads now and what it writes (a cheap handle, cloned into every task
/// that asks).
#[derive(Clone, Debug)]
pub struct Leadership {
    leader: watch::Receiver<bool>,
    slice: watch::Receiver<SliceRole>,
    /// Receive time (µs since the epoch) through which this instance's rows are committed,
    /// set by the stream's writer, reported in `stream_writers` while it writes its slice.
    pub committed_us: Arc<AtomicI64>,
    /// A standby: how far its slice's writer's commits reached (µs since the epoch, 0:
    /// unknown), read every round; what a standby's window let go before it is no gap.
    pub writer_committed_us: Arc<AtomicI64>,
}

impl Leadership {
    /// Always the leader: one instance alone (`database.leader_election = false`) and the
    /// one-shot commands.
    pub fn always() -> Leadership {
        let (tx, leader) = watch::channel(true);
        let (stx, slice) = watch::channel(SliceRole::All);
        // The senders dropped: the values stay.
        drop((tx, stx));
        Leadership { leader, slice, committed_us: Arc::default(), writer_committed_us: Arc::default() }
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// What this instance writes of its slice now.
    pub fn slice_role(&self) -> SliceRole {
        self.slice.borrow().clone()
    }

    /// The slice role's changes (a receiver of its own).
    pub fn slice_roles(&self) -> watch::Receiver<SliceRole> {
        self.slice.clone()
    }

    /// Resolves once this instance leads (at once if it does; never once the election has
    /// ended without it, as at a stop).
    pub async fn until_leader(&mut self) {
        if self.leader.wait_for(|l| *l).await.is_err() {
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
    pub slice: Slice,
    /// Whether it records the stream (else it takes no slice writer's lock).
    pub stream: bool,
    pub started_at: DateTime<Utc>,
}

/// The election's senders.
struct Roles {
    leader: watch::Sender<bool>,
    slice: watch::Sender<SliceRole>,
    committed_us: Arc<AtomicI64>,
    writer_committed_us: Arc<AtomicI64>,
}

/// Starts the election task; the handle says whether this instance leads.
pub fn spawn(cfg: DatabaseConfig, me: Identity, cancel: CancellationToken) -> Leadership {
    let (tx, leader) = watch::channel(false);
    let (stx, slice) = watch::channel(SliceRole::Starting);
    let (committed_us, writer_committed_us) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let roles = Roles { leader: tx, slice: stx, committed_us: committed_us.clone(), writer_committed_us: writer_committed_us.clone() };
    tokio::spawn(run(cfg, me, roles, cancel));
    Leadership { leader, slice, committed_us, writer_committed_us }
}

async fn run(cfg: DatabaseConfig, me: Identity, tx: Roles, cancel: CancellationToken) {
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
                // The shared work stops first: this session no longer answers for it.
                step_down(&tx, "its database session ended");
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

/// The session ended: the shared work stops. The slice role stays: a writer cut off from the
/// database (its restart, a network cut) goes on queueing and spooling its level changes, as
/// an instance alone always did; its fence refuses them if another instance took the slice
/// meanwhile, and the next session finds out which ([`slice_writer`]).
fn step_down(tx: &Roles, why: &str) {
    if tx.leader.send_replace(false) {
        tracing::warn!(message_id = crate::journal::LIFECYCLE, "no longer the leader ({why}): the shared work stops here");
    }
}

/// One session: tries the lock until it is granted, then holds it while the session answers;
/// the same for the slice writer's lock.
async fn session(client: &tokio_postgres::Client, me: &Identity, tx: &Roles, cancel: &CancellationToken) {
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
    // Whether this session holds the slice writer's lock.
    let mut holds_slice = false;
    loop {
        let leading = *tx.leader.borrow();
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
                tx.leader.send_replace(true);
                tracing::info!(message_id = crate::journal::LIFECYCLE, instance = %me.instance,
                    "leader for this database: the catalog, history, partitions, retention and archive run here");
            }
            Ok(_) => {}
        }
        if me.stream {
            // A takeover waits for the previous writer's batches in flight: bounded apart.
            if let Err(e) = slice_writer(client, me, tx, &mut holds_slice).await {
                tracing::warn!("slice writer's database session: {e}: stepping down");
                return;
            }
        }
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            let leading = *tx.leader.borrow();
            let slice_role = tx.slice.borrow().name();
            // Bounded like a check: a leader whose session hangs here steps down all the same.
            match tokio::time::timeout(CHECK_TIMEOUT, heartbeat(client, me, leading, slice_role)).await {
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
        let wait = if *tx.leader.borrow() { CHECK } else { RETRY };
        if !rest(cancel, wait).await {
            return;
        }
    }
}

/// One round of the slice writer's part. Holding the slice's lock (`held`): report how far
/// the commits reached and follow the writers of other slice counts (retiring those whose lock
/// is free). Not holding it: try it; granted, take the slice (`writers::take`) — or, when this
/// instance wrote it under an epoch nobody raised since (its session was lost, not the
/// slice), go on under that epoch; refused, another instance writes the slice: stand by.
async fn slice_writer(client: &tokio_postgres::Client, me: &Identity, tx: &Roles, held: &mut bool) -> Result<(), String> {
    let current = tx.slice.borrow().clone();
    if *held {
        if let SliceRole::Writer { taken, foreign } = current {
            let through = tx.committed_us.load(Ordering::Relaxed);
            if let Some(through) = DateTime::from_timestamp_micros(through).filter(|_| through > 0) {
                quick(writers::report(client, &me.instance, through)).await?;
            }
            let now = live_foreign(client, me, taken.since).await?;
            if now != foreign {
                tx.slice.send_replace(SliceRole::Writer { taken, foreign: now });
            }
        }
        return Ok(());
    }
    let key = writers::lock_key(&me.slice);
    let granted: bool = quick(client.query_one("SELECT pg_try_advisory_lock($1)", &[&key])).await?.get(0);
    if !granted {
        let through = quick(writers::writer_committed(client, &me.slice)).await?;
        tx.writer_committed_us.store(through.map_or(0, |t| t.timestamp_micros()), Ordering::Relaxed);
        if current != SliceRole::Standby {
            tracing::info!(message_id = crate::journal::LIFECYCLE, slice = %me.slice,
                "another instance writes the level changes of slice {}: standing by with them in memory", me.slice);
            tx.slice.send_replace(SliceRole::Standby);
        }
        return Ok(());
    }
    *held = true;
    if let SliceRole::Writer { taken, .. } = &current {
        if quick(writers::still_ours(client, &taken.fence, &me.instance)).await? {
            tracing::info!(message_id = crate::journal::LIFECYCLE, slice = %me.slice, epoch = taken.fence.epoch,
                "slice writer's lock held again, nobody wrote the slice meanwhile: going on");
            return Ok(());
        }
    }
    let taken = long(client, writers::take(client, &me.slice, &me.instance)).await?;
    let foreign = live_foreign(client, me, taken.since).await?;
    tracing::info!(message_id = crate::journal::LIFECYCLE, slice = %me.slice, epoch = taken.fence.epoch,
        previous = taken.previous.as_deref().unwrap_or("none"), foreign = foreign.len(),
        "writer of the level changes of slice {}", me.slice);
    tx.slice.send_replace(SliceRole::Writer { taken, foreign });
    Ok(())
}

/// The writers of other slice counts there before this one (`since`) and still alive (their
/// lock is held); those whose lock is free are retired (fenced) on the way.
async fn live_foreign(client: &tokio_postgres::Client, me: &Identity, since: DateTime<Utc>) -> Result<Vec<Foreign>, String> {
    let mut live = Vec::new();
    for f in quick(writers::foreign(client, me.slice.count)).await? {
        let key = writers::lock_key(&f.slice);
        let free: bool = quick(client.query_one("SELECT pg_try_advisory_lock($1)", &[&key])).await?.get(0);
        if free {
            quick(client.execute("SELECT pg_advisory_unlock($1)", &[&key])).await?;
            long(client, writers::retire(client, &f.slice)).await?;
            tracing::info!(message_id = crate::journal::LIFECYCLE, slice = %f.slice, "the writer of slice {} is gone: its markets are taken over", f.slice);
        } else if f.since < since {
            live.push(f);
        }
    }
    Ok(live)
}

/// A question to the session, answered within [`CHECK_TIMEOUT`] or taken for a dead session.
async fn quick<T>(f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// Runs `f` on the session with the statement timeout raised to [`FENCE_WAIT`] (it waits for
/// another writer's batches in flight; a deposed writer is fenced meanwhile, not trusted).
async fn long<T>(
    client: &tokio_postgres::Client,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    quick(client.batch_execute(&format!("SET statement_timeout = {}", FENCE_WAIT.as_millis()))).await?;
    let out = tokio::time::timeout(FENCE_WAIT + CHECK_TIMEOUT, f).await;
    quick(client.batch_execute(&format!("SET statement_timeout = {}", CHECK_TIMEOUT.as_millis()))).await?;
    match out {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// This instance's row in `stream_instances`; rows silent for a week are removed.
async fn heartbeat(client: &tokio_postgres::Client, me: &Identity, leading: bool, slice_role: &str) -> Result<(), tokio_postgres::Error> {
    let role = if leading { "leader" } else { "standby" };
    client
        .execute(
            "INSERT INTO stream_instances (instance, slice, role, slice_role, version, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (instance) DO UPDATE SET slice = EXCLUDED.slice, role = EXCLUDED.role, slice_role = EXCLUDED.slice_role,
               version = EXCLUDED.version, started_at = EXCLUDED.started_at, heartbeat_at = now()",
            &[&me.instance, &me.slice.to_string(), &role, &slice_role, &env!("CARGO_PKG_VERSION"), &me.started_at],
        )
        .await?;
    client.execute("DELETE FROM stream_instances WHERE heartbeat_at < now() - interval '7 days'", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leader's key is "collectr" in ASCII (high bit clear); every slice writer's has the
    /// high bit set: never the same lock.
    #[test]
    fn the_leaders_key_is_no_writers() {
        for n in 1..=8u32 {
            for i in 0..n {
                assert_ne!(writers::lock_key(&Slice { index: i, count: n }), LOCK_KEY);
            }
        }
        assert_eq!(&LOCK_KEY.to_be_bytes(), b"collectr");
    }

    #[tokio::test]
    async fn a_standby_waits_until_it_leads_and_stays_waiting_once_the_election_ends() {
        let mut always = Leadership::always();
        assert!(always.is_leader());
        always.until_leader().await;
        let (tx, rx) = watch::channel(false);
        let (_stx, slice) = watch::channel(SliceRole::Starting);
        let mut l = Leadership { leader: rx, slice, committed_us: Arc::default(), writer_committed_us: Arc::default() };
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
