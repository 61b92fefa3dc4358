//! The real binary: exit codes, output, and `collect` end to end against the fake upstream.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::fake::{self, Fake};
use crate::{config_text, eventually, pg};

fn collector() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_collector"));
    c.env_remove("COLLECTOR_DATABASE_URL").env_remove("CREDENTIALS_DIRECTORY").env_remove("NOTIFY_SOCKET");
    c.env_remove("JOURNAL_STREAM").env("RUST_LOG", "info");
    c.kill_on_drop(true);
    c
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = collector().args(args).output().await.unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn version_and_usage_errors() {
    let (code, out, _) = run(&["--version"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("collector {}", env!("CARGO_PKG_VERSION")));
    let (code, _, err) = run(&["frobnicate"]).await;
    assert_eq!(code, 64, "{err}");
}

#[tokio::test]
async fn bad_config_exits_78_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[database]\nurl = 5\npool_size = -1\n[upstream]\nclob_url = \"nope\"\n[surprise]\n");
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 78, "{out}{err}");
    for needle in [
        "database.url: expected a string",
        "database.pool_size: -1 is out of range",
        "upstream.clob_url: not a URL",
        "surprise: unknown key",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    // collect refuses the same file the same way, before touching anything.
    let (code, _, err) = run(&["collect", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 78, "{err}");
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/collector.toml"]).await;
    assert_eq!(code, 78);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "hunter2-secret\n").unwrap();
    let path = write_config(
        &dir,
        &format!(
            "[database]\nurl = \"postgresql://app:inline-secret@db.internal/c\"\npassword_file = \"{}\"\n",
            dir.path().join("pw").display()
        ),
    );
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("postgresql://app:***@db.internal/c"), "{out}");
    assert!(out.contains("log_interval_secs = 60"), "defaults are shown: {out}");
    assert!(!out.contains("hunter2") && !out.contains("inline-secret") && !err.contains("hunter2"), "{out}{err}");
}

#[tokio::test]
async fn unreachable_database_exits_69_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-server-here");
    let path =
        write_config(&dir, &format!("[database]\nurl = \"host={} user=nobody dbname=x\"\nstartup_deadline_secs = 2\n", missing.display()));
    let started = std::time::Instant::now();
    let (code, _, err) = run(&["collect", "--config", path.to_str().unwrap()]).await;
    let took = started.elapsed();
    assert_eq!(code, 69, "{err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "took {took:?}");
    assert!(err.matches("database unreachable, retrying").count() >= 2, "each retry is logged: {err}");
    assert!(err.contains("No such file or directory") || err.contains("error connecting"), "the real cause is logged: {err}");
}

#[tokio::test]
async fn migrate_applies_once_and_refuses_a_newer_schema() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config_text(&db, "http://127.0.0.1:9", ""));
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["migrate", "--config", p]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied 0001 catalog_and_books"), "{out}");
    let (code, out, _) = run(&["migrate", "--config", p]).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing applied"), "{out}");
    db.client()
        .await
        .execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'from_the_future', 'x')", &[])
        .await
        .unwrap();
    let (code, _, err) = run(&["collect", "--config", p]).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("does not know"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_fills_the_catalog_and_books_keeps_them_current_and_stops_cleanly() {
    let db = pg::fresh_db().await;
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..20).map(|e| fake::event(e, 2)).collect());
    fake::books_for_all(&fake, 1_795_683_663_127);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &config_text(
            &db,
            &fake.url(),
            "[catalog]\nfull_sweep_interval_secs = 1\nnew_markets_interval_secs = 1\nresolutions_interval_secs = 1\n\
         [books]\ninterval_secs = 1\n[health]\nlog_interval_secs = 1\n",
        ),
    );
    let mut child = collector().args(["collect", "--config", path.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();

    eventually(30, "catalog and books stored", || async {
        db.try_count("SELECT count(*) FROM markets").await == Some(40)
            && db.try_count("SELECT count(*) FROM tokens").await == Some(80)
            && db.try_count("SELECT count(*) FROM events").await == Some(20)
            && db.try_count("SELECT count(*) FROM book_snapshots").await == Some(80)
    })
    .await;

    // A new listing and a moved book are picked up while running.
    fake.with(|s| {
        let mut m = fake::market(9999);
        m["createdAt"] = json_now();
        s.events[0]["markets"].as_array_mut().unwrap().push(m);
        let t = fake::token_id(9999, 0);
        s.books.insert(t.clone(), fake::book(&t, 1_795_683_700_000, "abababababababababababababababababababab"));
    });
    eventually(30, "new market and its book stored", || async {
        db.count("SELECT count(*) FROM markets WHERE id = '709999'").await == 1
            && db.count("SELECT count(*) FROM book_snapshots").await == 81
    })
    .await;

    let pid = child.id().unwrap() as i32;
    // SAFETY: plain kill(2) on our own child.
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    assert_eq!(unsafe { kill(pid, 15) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("stops within 30 s").unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("=== Daemon Health === uptime:"), "{err}");
    assert!(err.contains("  books: items="), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    assert_eq!(db.count("SELECT count(*) FROM book_snapshots").await, 81, "no duplicates after many polls");
}

fn json_now() -> serde_json::Value {
    serde_json::json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[tokio::test]
async fn the_packaged_example_config_is_valid_and_shows_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/collector.toml");
    let (code, out, err) = run(&["check-config", "--config", path]).await;
    assert_eq!(code, 0, "{err}");
    // Every key the example documents has the value the binary would use without it.
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")) {
        let (key, value) = line.split_once(" = ").unwrap();
        let value = value.trim_matches('"');
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{key} = ")) && l.contains(value)),
            "example says {key} = {value}, effective config:\n{out}"
        );
    }
}

#[tokio::test]
async fn a_database_that_refuses_the_login_is_a_configuration_error() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{} user=no_such_role", db.url);
    let path = write_config(&dir, &config_text(&pg::TestDb { name: db.name.clone(), url }, "http://127.0.0.1:9", ""));
    let started = std::time::Instant::now();
    let (code, _, err) = run(&["collect", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 78, "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "no retrying a refusal");
    assert!(err.contains("no_such_role") && err.contains("Install"), "{err}");
}

/// The reader records every key it knows with its default; the packaged example documents
/// each of them (set to the default, or commented out when it has none or a computed one).
#[test]
fn the_packaged_example_documents_every_key_the_reader_knows() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/collector.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut documented = std::collections::HashSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = l.split_once(" = ") {
            if !key.contains(' ') {
                documented.insert(format!("{section}.{key}"));
            }
        }
    }
    let cfg = collector::config::Config::parse("", &collector::config::Env::default()).unwrap();
    let missing: Vec<String> = cfg
        .settings
        .iter()
        .filter(|s| s.key != "password")
        .map(|s| format!("{}.{}", s.section, s.key))
        .filter(|k| !documented.contains(k))
        .collect();
    assert!(missing.is_empty(), "keys the example does not document: {missing:?}");
}

/// Every URL form libpq accepts keeps its password out of `check-config` and the logs of a
/// failed start.
#[tokio::test]
async fn no_url_form_leaks_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let forms = [
        "postgresql://app@127.0.0.1:9/c?password=leak-q&connect_timeout=1",
        "postgresql://app:leak-m@127.0.0.1:9,127.0.0.1:8/c",
        "host=127.0.0.1 port=9 user=app password='leak k v' dbname=c",
    ];
    for form in forms {
        let path = write_config(&dir, &format!("[database]\nurl = \"{}\"\nstartup_deadline_secs = 1\n", form));
        let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{form}: {err}");
        assert!(!out.contains("leak") && !err.contains("leak"), "{form}:\n{out}{err}");
        assert!(out.contains("***"), "{out}");
        let (code, out, err) = run(&["collect", "--config", path.to_str().unwrap()]).await;
        assert_eq!(code, 69, "{form}: {err}");
        assert!(!out.contains("leak") && !err.contains("leak"), "{form}:\n{err}");
    }
}
