//! Connection URL rules: libpq's `sslmode` values tokio-postgres does not parse, URL checks,
//! and redaction of passwords for every place that prints a URL.

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

/// Replaces every password in `text` with `***`: a connection string in any form libpq
/// accepts — a URI with `user:password@` (one host or several), a `password=` query
/// parameter, a key-value string (`password=secret`, `password = 'it''s'`, `password='a\'b'`)
/// — or free text that contains one (an error message). The one redaction for every place
/// that prints a URL or an error that may hold one.
pub fn redact(text: &str) -> String {
    redact_key_values(&redact_uris(text))
}

/// `postgres://` and `postgresql://` URIs anywhere in `text`: the userinfo password and any
/// `password` query parameter.
fn redact_uris(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_uri(rest) {
        out.push_str(&rest[..start]);
        let uri_and_more = &rest[start..];
        // The authority (user, password, hosts) ends only at a '/', '?', '#' or whitespace: a
        // quote there is part of a user name or password (`o'brien:it's@host`). The rest of the
        // URI ends at a quote too (a URI quoted in a message).
        let scheme_end = uri_and_more.find("://").map_or(0, |i| i + 3);
        let authority_end = scheme_end
            + uri_and_more[scheme_end..].find(|c: char| c.is_whitespace() || "/?#".contains(c)).unwrap_or(uri_and_more.len() - scheme_end);
        let end = authority_end
            + uri_and_more[authority_end..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
                .unwrap_or(uri_and_more.len() - authority_end);
        out.push_str(&redact_uri(&uri_and_more[..end]));
        rest = &uri_and_more[end..];
    }
    out.push_str(rest);
    out
}

fn find_uri(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    [lower.find("postgresql://"), lower.find("postgres://")].into_iter().flatten().min()
}

fn redact_uri(uri: &str) -> String {
    let scheme_end = uri.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = uri.split_at(scheme_end);
    // The authority ends at the first '/', '?' or '#'; its userinfo at its last '@'.
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{hosts}", &userinfo[..colon]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// `password = value` pairs (key-value connection strings, anywhere in `text`): the value —
/// bare, or single-quoted with `\'` or `''` escapes — becomes `***`.
fn redact_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password") {
        let key_start = i + found;
        let key_end = key_start + "password".len();
        // A whole word: not part of another identifier, and not a URI query (done already).
        let boundary_before = key_start == 0 || !(bytes[key_start - 1].is_ascii_alphanumeric() || bytes[key_start - 1] == b'_');
        let mut j = key_end;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if !boundary_before || j >= bytes.len() || bytes[j] != b'=' {
            out.push_str(&text[i..key_end]);
            i = key_end;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        out.push_str(&text[i..j]);
        // The value: quoted, or up to whitespace (or '&' in a URI query).
        let mut k = j;
        if k < bytes.len() && bytes[k] == b'\'' {
            k += 1;
            while k < bytes.len() {
                match bytes[k] {
                    b'\\' => k += 2,
                    b'\'' if k + 1 < bytes.len() && bytes[k + 1] == b'\'' => k += 2,
                    b'\'' => {
                        k += 1;
                        break;
                    }
                    _ => k += 1,
                }
            }
        } else {
            while k < bytes.len() && !bytes[k].is_ascii_whitespace() && bytes[k] != b'&' {
                k += 1;
            }
        }
        out.push_str("***");
        i = k.min(bytes.len());
    }
    out.push_str(&text[i..]);
    out
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
    fn every_form_libpq_accepts_is_redacted() {
        let cases = [
            ("postgresql://u:s3cret@db.example/x", "postgresql://u:***@db.example/x"),
            ("postgres://u:s3cret@db.example:5432/x?sslmode=require", "postgres://u:***@db.example:5432/x?sslmode=require"),
            ("postgresql://u@host/db?password=s3cret", "postgresql://u@host/db?password=***"),
            (
                "postgresql://u@host/db?sslmode=require&password=s3cret&application_name=c",
                "postgresql://u@host/db?sslmode=require&password=***&application_name=c",
            ),
            ("postgresql://u:s3cret@h1:5432,h2:5432/db", "postgresql://u:***@h1:5432,h2:5432/db"),
            ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
            ("postgresql://o'brien:s3cret@h/db", "postgresql://o'brien:***@h/db"),
            ("postgresql://u:it's-s3cret@h/db", "postgresql://u:***@h/db"),
            ("'postgresql://u:s3cret@h/db' refused", "'postgresql://u:***@h/db' refused"),
            ("'postgresql://u:s3cret@h' refused", "'postgresql://u:***@h' refused"),
            ("host=x password=s3cret user=z", "host=x password=*** user=z"),
            ("host=x password = s3cret user=z", "host=x password = *** user=z"),
            ("host=x password='s3 cret' user=z", "host=x password=*** user=z"),
            (r"host=x password='it\'s secret' user=z", "host=x password=*** user=z"),
            ("host=x password='it''s secret' user=z", "host=x password=*** user=z"),
            ("PASSWORD=s3cret host=x", "PASSWORD=*** host=x"),
            ("postgresql://collector@localhost/collector", "postgresql://collector@localhost/collector"),
            ("host=/run/postgresql user=collector", "host=/run/postgresql user=collector"),
        ];
        for (given, want) in cases {
            assert_eq!(redact(given), want, "{given}");
        }
    }

    #[test]
    fn urls_inside_error_text_are_redacted() {
        let e = "db error: cannot connect to postgresql://u:s3cret@h1,h2/db?password=x2 (timeout); retry with host=h password=s3cret";
        let r = redact(e);
        assert!(!r.contains("s3cret") && !r.contains("x2 "), "{r}");
        assert!(r.contains("postgresql://u:***@h1,h2/db?password=***"), "{r}");
        assert_eq!(redact("no_password_here=1 passwords are fine"), "no_password_here=1 passwords are fine");
    }
}
