//! A throwaway PostgreSQL for the whole test run, and a fresh database per test.
//!
//! `COLLECTOR_TEST_DATABASE_URL` (an admin URL) uses an existing server instead. Otherwise one
//! cluster is created from the machine's binaries in a temp dir, listening only on a unix
//! socket there (no TCP port at all), run as `postgres` when the tests run as root (initdb
//! refuses root). A shell guard stops it and removes the dir when this process exits: it holds
//! the read end of a pipe whose write end only this process has.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Cluster {
    /// Admin connection string (key-value form).
    admin: String,
    _guard_stdin: Option<std::process::ChildStdin>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort();
    dirs.pop().expect("PostgreSQL server binaries (apt-get install postgresql)")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// Runs `program args` as postgres when root.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_cluster() -> Cluster {
    if let Ok(url) = std::env::var("COLLECTOR_TEST_DATABASE_URL") {
        return Cluster { admin: url, _guard_stdin: None };
    }
    let bin = bin_dir();
    let dir = tempfile::Builder::new().prefix("collector-pg-").tempdir().unwrap().keep();
    if is_root() {
        let ok = Command::new("chown").arg("postgres:").arg(&dir).status().unwrap().success();
        assert!(ok, "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    let out = as_pg(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));

    // The guard: postgres in the background; when our end of stdin closes, stop it, clean up.
    // `COLLECTOR_TEST_PG_OPTIONS` adds server options (benchmarks: e.g. `-c max_wal_size=8GB`).
    let script = format!(
        "{pg} -D {data} -k {dir} -c listen_addresses= -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200 {extra} >{dir}/log 2>&1 & pid=$!; \
         cat >/dev/null; kill -INT $pid; wait $pid; rm -rf {dir}",
        extra = std::env::var("COLLECTOR_TEST_PG_OPTIONS").unwrap_or_default(),
        pg = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut guard = as_pg(Path::new("/bin/sh"))
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = guard.stdin.take();
    std::mem::forget(guard);

    let admin = format!("host={} user=postgres dbname=postgres", dir.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready =
            Command::new(bin.join("pg_isready")).arg("-h").arg(&dir).args(["-U", "postgres", "-q"]).status().is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not start; see {}/log", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Cluster { admin, _guard_stdin: stdin }
}

/// The admin connection string of the test server.
pub fn admin_url() -> String {
    CLUSTER.get_or_init(start_cluster).admin.clone()
}

/// A database of one test.
pub struct TestDb {
    pub name: String,
    /// Connection string for the collector's config.
    pub url: String,
}

fn with_dbname(admin: &str, name: &str) -> String {
    if admin.starts_with("postgres://") || admin.starts_with("postgresql://") {
        let mut u = url::Url::parse(admin).unwrap();
        u.set_path(&format!("/{name}"));
        u.to_string()
    } else {
        format!("{admin} dbname={name}")
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Creates an empty database for one test.
pub async fn fresh_db() -> TestDb {
    let admin = admin_url();
    let name = format!("t_{}", fastrand::u64(..));
    connect(&admin).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    TestDb { url: with_dbname(&admin, &name), name }
}

impl TestDb {
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// The pool the collector would build for this database, schema migrated.
    pub async fn pool(&self) -> collector::db::Pool {
        let cfg = super::config_for(self, "http://127.0.0.1:9");
        let pool = collector::db::connect(&cfg.database).await.unwrap();
        let mut conn = pool.get().await.unwrap();
        collector::db::migrate::run(&mut conn).await.unwrap();
        drop(conn);
        pool
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Every token of the catalog with its market's condition id, by token id.
    pub async fn tokens_with_markets(&self) -> Vec<(String, String)> {
        let rows = self.client().await.query("SELECT token_id, condition_id FROM tokens ORDER BY token_id", &[]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Like `count`, but `None` while the query cannot run yet (schema not migrated).
    pub async fn try_count(&self, sql: &str) -> Option<i64> {
        self.client().await.query_one(sql, &[]).await.ok().map(|r| r.get(0))
    }
}

/// A cluster of one test's own, which the test may stop and start (a database restart).
pub struct PrivateCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub url: String,
}

impl PrivateCluster {
    /// A cluster that also listens on 127.0.0.1 (a free port) with TLS on and a self-signed
    /// certificate, like Debian's packaged PostgreSQL. Returns the cluster and its TCP port.
    pub fn start_tls() -> (PrivateCluster, u16) {
        let c = PrivateCluster::start();
        c.down();
        let data = c.dir.join("data");
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=snakeoil"])
            .arg("-keyout")
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(data.join("server.crt"))
            .output()
            .unwrap();
        assert!(ok.status.success(), "openssl: {}", String::from_utf8_lossy(&ok.stderr));
        if is_root() {
            Command::new("chown").args(["postgres:"]).arg(data.join("server.key")).arg(data.join("server.crt")).status().unwrap();
        }
        std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        use std::io::Write;
        writeln!(conf, "ssl = on\nlisten_addresses = '127.0.0.1'\nport = {port}").unwrap();
        let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).unwrap();
        writeln!(hba, "hostssl all all 127.0.0.1/32 trust").unwrap();
        let out = as_pg(&c.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(c.dir.join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!("-k {}", c.dir.display()))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        (c, port)
    }

    pub fn start() -> PrivateCluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("collector-pgp-").tempdir().unwrap().keep();
        if is_root() {
            assert!(Command::new("chown").arg("postgres:").arg(&dir).status().unwrap().success());
        }
        let out = as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let c = PrivateCluster { url: format!("host={} user=postgres dbname=postgres", dir.display()), dir, bin };
        c.up();
        c
    }

    pub fn up(&self) {
        let out = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!("-k {} -c listen_addresses= -c fsync=off", self.dir.display()))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn down(&self) {
        let out = as_pg(&self.bin.join("pg_ctl")).arg("-D").arg(self.dir.join("data")).args(["-m", "fast", "-w", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn test_db(&self) -> TestDb {
        TestDb { name: "postgres".into(), url: self.url.clone() }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl")).arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a [`PrivateCluster`]'s unix socket that can be switched to a
/// blackhole: connections stay open and every byte is held, as when a database host hangs
/// (no error, no answer).
pub struct HangingProxy {
    pub port: u16,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set: every connection through the proxy is closed on the server's side (as the server
    /// drops sessions whose peer went silent: `tcp_user_timeout`, keepalives).
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HangingProxy {
    pub async fn start(cluster: &PrivateCluster) -> HangingProxy {
        let socket = cluster.dir.join(".s.PGSQL.5432");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, d) = (hang.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(unix) = tokio::net::UnixStream::connect(&socket).await else { continue };
                let (tr, tw) = tcp.into_split();
                let (ur, uw) = unix.into_split();
                pipe(tr, uw, h.clone(), d.clone());
                pipe(ur, tw, h.clone(), d.clone());
            }
        });
        HangingProxy { port, hang, dropped }
    }

    /// A network cut as the server lives it: every byte held from now on, and after
    /// `server_drops_after` the server's side of every connection closed (the sessions end,
    /// their advisory locks are freed). New connections made after that pass again.
    pub fn cut(&self, server_drops_after: Duration) {
        self.hang(true);
        let (hang, dropped) = (self.hang.clone(), self.dropped.clone());
        tokio::spawn(async move {
            tokio::time::sleep(server_drops_after).await;
            dropped.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            dropped.store(false, std::sync::atomic::Ordering::SeqCst);
            hang.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Connection string for the collector (plain TCP through the proxy).
    pub fn test_db(&self) -> TestDb {
        TestDb { name: "postgres".into(), url: format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable", self.port) }
    }

    /// Holds every byte from now on (true) or forwards again (false).
    pub fn hang(&self, on: bool) {
        self.hang.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `r` to `w`, holding the bytes while `hang` is set; ends (closing both) when
/// `dropped` is set.
fn pipe<R, W>(
    mut r: R,
    mut w: W,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = r.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if dropped.load(SeqCst) {
                        return;
                    }
                    continue;
                }
            };
            while hang.load(SeqCst) {
                if dropped.load(SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
}
