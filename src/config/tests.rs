// Tests of the configuration reader.

use super::*;

#[test]
fn empty_file_gives_documented_defaults() {
    let c = Config::parse("", &Env::default()).unwrap();
    assert_eq!(c.health.log_interval, Duration::from_secs(60));
    assert_eq!(c.books.batch_size, 100);
    assert_eq!(c.upstream.gamma_url.as_str(), "https://gamma-api.polymarket.com/");
    assert_eq!(c.database.url, "postgresql://collector@localhost/collector");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
            colour = "blue"
            [database]
            url = 42
            pool_size = 0
            [upstream]
            gamma_url = "ftp://x"
            timeout = 3
            [health]
            log_interval_secs = "soon"
            [log]
            level = "collector=loud"
        "#;
    let problems = Config::parse(text, &Env::default()).unwrap_err();
    let all = problems.join("\n");
    for needle in [
        "colour: unknown key",
        "database.url: expected a string",
        "database.pool_size: 0 is out of range",
        "upstream.gamma_url: scheme ftp",
        "upstream.timeout: unknown key",
        "health.log_interval_secs: expected an integer",
        "log.level: not a valid log filter",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(problems.len(), 7, "{all}");
}

#[test]
fn env_url_overrides_file_and_password_is_never_rendered() {
    let env = Env {
        database_url: Some("postgresql://u:s3cret@db.example/x".into()),
        credentials_directory: None,
        runtime_directory: None,
        state_directory: None,
    };
    let c = Config::parse("[database]\nurl = \"postgresql://a@b/c\"\n", &env).unwrap();
    assert_eq!(c.database.url, "postgresql://u:s3cret@db.example/x");
    let shown = c.render(|u| u.replace("s3cret", "***"));
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("url = \"postgresql://u:***@db.example/x\"  # from COLLECTOR_DATABASE_URL"), "{shown}");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn every_key_is_recorded_once_with_its_default() {
    let c = Config::parse("[books]\nbatch_size = 50\n", &Env::default()).unwrap();
    let mut keys: Vec<String> = c.settings.iter().map(|s| format!("{}.{}", s.section, s.key)).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a key recorded twice");
    let batch = c.settings.iter().find(|s| s.section == "books" && s.key == "batch_size").unwrap();
    assert_eq!(batch.value, Some(toml::Value::Integer(50)));
    assert_eq!(batch.default, Some(toml::Value::Integer(100)));
    let shown = c.render(|u| u.to_string());
    assert!(shown.contains("batch_size = 50  # default 100"), "{shown}");
    assert!(shown.contains("interval_secs = 60\n"), "{shown}");
    assert!(shown.contains("# password_file is not set"), "{shown}");
    // The rendered text is itself a valid configuration giving the same values.
    let again = Config::parse(&shown, &Env::default()).unwrap();
    assert_eq!(again.books.batch_size, 50);
}

#[test]
fn password_comes_from_credential_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(PASSWORD_CREDENTIAL), "pa55\n").unwrap();
    let env = Env {
        database_url: None,
        credentials_directory: Some(dir.path().display().to_string()),
        runtime_directory: None,
        state_directory: None,
    };
    let c = Config::parse("", &env).unwrap();
    assert_eq!(c.database.password.as_deref(), Some("pa55"));
    assert!(!c.render(|u| u.to_string()).contains("pa55"));
}

#[test]
fn unreadable_password_file_is_a_problem() {
    let problems = Config::parse("[database]\npassword_file = \"/nonexistent/pw\"\n", &Env::default()).unwrap_err();
    assert!(problems[0].starts_with("database.password_file: cannot read"), "{problems:?}");
}
