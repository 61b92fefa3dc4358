//! Connection URL rules: libpq's `sslmode` values tokio-postgres does not parse, URL checks,
//! and redaction of passwords for every place that prints a URL.

use url::Url;

/// libpq's `sslmode=verify-ca` / `verify-full` (which tokio-postgres does not parse) become
/// `require` plus certificate verification. Returns the URL tokio-postgres accepts and whether
/// the server certificate must be verified against the trusted roots.
pub fn split_sslmode(url: &str) -> (String, bool) {
    let mut verify = false;
    let mut out = url.to_string();
    for mode in ["sslmode=verify-full", "sslmode=verify-ca"] {
        if out.contains(mode) {
            out = out.replace(mode, "sslmode=require");
            verify = true;
        }
    }
    (out, verify)
}

/// The problem with `url` as a PostgreSQL connection string, if any (for `check-config`).
pub fn problem(url: &str) -> Option<String> {
    match split_sslmode(url).0.parse::<tokio_postgres::Config>() {
        Ok(_) => None,
        Err(e) => Some(format!("database.url: not a PostgreSQL connection URL ({e}): {}", redact(url))),
    }
}

/// Replaces the password of a connection URL with `***`.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Key-value form ("host=... password=..."): redact the password word by word.
        Err(_) => url
            .split_whitespace()
            .map(|w| if w.starts_with("password=") { "password=***" } else { w })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_with_verification() {
        assert_eq!(split_sslmode("postgresql://a@b/c?sslmode=verify-full"), ("postgresql://a@b/c?sslmode=require".into(), true));
        assert_eq!(split_sslmode("host=x sslmode=verify-ca"), ("host=x sslmode=require".into(), true));
        assert_eq!(split_sslmode("postgresql://a@b/c?sslmode=require"), ("postgresql://a@b/c?sslmode=require".into(), false));
        assert_eq!(problem("postgresql://a@b/c?sslmode=verify-full"), None);
        assert!(problem("postgresql://a@b/c?sslmode=sometimes").is_some());
    }

    #[test]
    fn redact_url_and_key_value_forms() {
        assert_eq!(redact("postgresql://u:s3cret@db.example/x"), "postgresql://u:***@db.example/x");
        assert_eq!(redact("host=x password=y user=z"), "host=x password=*** user=z");
    }
}
