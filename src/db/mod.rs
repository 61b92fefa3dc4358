//! PostgreSQL: connection settings, TLS (rustls), the bb8 pool, start-up retries, and one
//! module per table family.

pub mod archive;
pub mod books;
pub mod catalog;
pub mod copy;
pub mod copy_out;
pub mod distribute;
pub mod gaps;
pub mod leader;
pub mod migrate;
pub mod partitions;
pub mod stream;
pub mod url;
pub mod writers;

use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio::time::Instant;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use self::url::{redact as redact_url, split_sslmode};
use crate::backoff::Backoff;
use crate::config::DatabaseConfig;
use crate::errors::error_chain;

pub type Pool = bb8::Pool<PostgresConnectionManager<MakeTls>>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unreachable for {waited:?} (startup deadline), last error: {last}")]
    Unreachable { waited: Duration, last: String },
    #[error("bad database settings: {0}")]
    Settings(String),
    /// The server answered and refused us: waiting will not help, the configuration must change.
    #[error("database refused the connection: {0}")]
    Refused(String),
    #[error("database: timed out waiting for a pooled connection")]
    PoolTimeout,
    #[error("database: {what} timed out")]
    TimedOut { what: &'static str },
    #[error("database: {}", error_chain(.0))]
    Query(#[from] tokio_postgres::Error),
}

impl From<bb8::RunError<tokio_postgres::Error>> for DbError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(e) => DbError::Query(e),
            bb8::RunError::TimedOut => DbError::PoolTimeout,
        }
    }
}

impl DbError {
    /// The server's SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Query(e) => e.code(),
            _ => None,
        }
    }

    /// Whether trying again later can succeed: the connection or the server is away, busy or
    /// shutting down, or a transaction lost a race. `false` for errors about the statement or
    /// its data (SQLSTATE classes 22 data exception, 23 integrity, 42 syntax or access, …)
    /// and for settings the server refused.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unreachable { .. } | DbError::PoolTimeout | DbError::TimedOut { .. } => true,
            DbError::Settings(_) | DbError::Refused(_) => false,
            // No SQLSTATE: the connection broke (I/O, closed, TLS), not the statement.
            DbError::Query(e) => e.code().is_none_or(|c| sqlstate_is_transient(c.code())),
        }
    }
}

impl DbError {
    /// Whether the server refused the data itself: SQLSTATE class 22 (data exception: bad
    /// encoding, a NUL byte, an unsupported `\u0000` in JSON, a value out of range) or 23
    /// (integrity) other than the unique violation idempotent writes expect. Such a row never
    /// goes in, however often it is retried.
    pub fn is_content_error(&self) -> bool {
        self.sqlstate().is_some_and(|c| {
            let code = c.code();
            (code.starts_with("22") || code.starts_with("23")) && code != "23505"
        })
    }
}

/// SQLSTATEs that say "the server or connection, not the statement": class 08 (connection
/// exception), 53 (insufficient resources), 57P01–57P03 (shutdown, cannot connect now), 40001
/// and 40P01 (serialization failure, deadlock), 55P03 (lock not available), 58 (system error).
pub fn sqlstate_is_transient(code: &str) -> bool {
    matches!(&code[..2.min(code.len())], "08" | "53" | "58") || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03")
}

/// This database's identity: its name and the id migration 3 made once for it (a copy of the
/// database, e.g. a restored backup, keeps it; a new database gets another).
pub async fn identity(pool: &Pool) -> Result<String, DbError> {
    let conn = pool.get().await?;
    let row = conn
        .query_one("SELECT current_database() || '/' || (SELECT id::text FROM collector_database ORDER BY created_at LIMIT 1)", &[])
        .await?;
    Ok(row.get(0))
}

/// TCP keepalive probes after the idle time (`database.tcp_keepalive_secs`): one every
/// [`KEEPALIVE_INTERVAL`], the connection dead after [`KEEPALIVE_PROBES`] unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// The `tokio_postgres::Config` for `cfg`, password applied, with the collector's session
/// settings: `statement_timeout`, `lock_timeout` (unless the URL's `options` set them) and TCP
/// keepalives.
pub fn pg_config(cfg: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let mut pg: tokio_postgres::Config =
        split_sslmode(&cfg.url).0.parse().map_err(|e| DbError::Settings(format!("{e}: {}", redact_url(&cfg.url))))?;
    if let Some(p) = &cfg.password {
        pg.password(p);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("collector");
    }
    pg.connect_timeout(cfg.connect_timeout);
    // Timeouts as the session's settings: the URL's own `options` come first and win for a
    // setting they name.
    let mut options = pg.get_options().unwrap_or_default().to_string();
    for (name, limit) in [("statement_timeout", cfg.statement_timeout), ("lock_timeout", cfg.lock_timeout)] {
        if let Some(limit) = limit.filter(|_| !options.contains(name)) {
            options.push_str(&format!(" -c {name}={}", limit.as_millis()));
        }
    }
    if !options.trim().is_empty() {
        pg.options(options.trim());
    }
    pg.keepalives(true).keepalives_idle(cfg.tcp_keepalive).keepalives_interval(KEEPALIVE_INTERVAL).keepalives_retries(KEEPALIVE_PROBES);
    pg.tcp_user_timeout(cfg.tcp_keepalive * KEEPALIVE_PROBES);
    Ok(pg)
}

/// The rustls connector. Certificates are verified (system roots plus `ssl_root_cert`) with
/// `sslmode=verify-full`/`verify-ca` or when `ssl_root_cert` is set; with `prefer` (the
/// default) and `require` the connection is encrypted without verifying the certificate, as
/// libpq does — a packaged PostgreSQL serves a self-signed "snakeoil" certificate. Whether TLS
/// is negotiated at all follows `sslmode` (disable, prefer, require).
pub fn tls(cfg: &DatabaseConfig) -> Result<MakeTls, DbError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verify = split_sslmode(&cfg.url).1 || cfg.ssl_root_cert.is_some();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Settings(format!("TLS: {e}")))?;
    if !verify {
        let config = builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth();
        return Ok(MakeTls(MakeRustlsConnect::new(config)));
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &cfg.ssl_root_cert {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| DbError::Settings(format!("ssl_root_cert {}: {e}", path.display()));
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
        for cert in certs {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    Ok(MakeTls(MakeRustlsConnect::new(builder.with_root_certificates(roots).with_no_client_auth())))
}

/// Encryption without certificate verification (`sslmode=prefer`/`require`): the handshake
/// signatures are still checked against the presented certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls connector, except for unix-socket hosts: tokio-postgres asks for a connector
/// with an empty host name there, which rustls refuses, although PostgreSQL never speaks TLS
/// over a unix socket (it answers the TLS request with "no" and the connection goes on plain).
#[derive(Clone)]
pub struct MakeTls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for MakeTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
    <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect: Send + 'static,
    <<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect as TlsConnect<S>>::Future: Send + 'static,
    S: Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = MaybeTls<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        if domain.is_empty() || domain.starts_with('/') {
            return Ok(MaybeTls(None));
        }
        self.0.make_tls_connect(domain).map(|c| MaybeTls(Some(c)))
    }
}

/// A TLS connector, or none for a unix socket.
pub struct MaybeTls<T>(Option<T>);

impl<S, T> TlsConnect<S> for MaybeTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send + 'static,
    S: Send + 'static,
{
    type Stream = T::Stream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T::Stream, Self::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        match self.0 {
            Some(c) => Box::pin(async move { c.connect(stream).await.map_err(Into::into) }),
            None => Box::pin(async { Err("TLS over a unix socket is not supported".into()) }),
        }
    }
}

/// Connects once directly (to surface the real cause of a failure, which bb8 hides behind
/// "timed out"), retrying with capped backoff until `startup_deadline`, then builds the pool.
pub async fn connect(cfg: &DatabaseConfig) -> Result<Pool, DbError> {
    let pg = pg_config(cfg)?;
    let tls = tls(cfg)?;
    let started = Instant::now();
    let mut retries = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).start();
    loop {
        let attempt = retries.attempts() + 1;
        match pg.connect(tls.clone()).await {
            Ok((client, conn)) => {
                drop(client);
                drop(conn);
                break;
            }
            Err(e) => {
                let last = redact_url(&error_chain(&e));
                use tokio_postgres::error::SqlState;
                let refused = e.code().is_some_and(|code| {
                    [SqlState::INVALID_PASSWORD, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, SqlState::INVALID_CATALOG_NAME]
                        .contains(code)
                });
                // The server asked for a password and none is configured. tokio-postgres has
                // no error kind or code for this one, only its text.
                let no_password = e.code().is_none() && last.contains("password missing");
                if refused || no_password {
                    return Err(DbError::Refused(format!(
                        "{last} (create the role and database, or set database.url and the password; see the README's Install section)"
                    )));
                }
                let waited = started.elapsed();
                if waited >= cfg.startup_deadline {
                    return Err(DbError::Unreachable { waited, last });
                }
                let delay = retries.next_delay().min(cfg.startup_deadline.saturating_sub(waited) + Duration::from_millis(10));
                tracing::warn!(
                    attempt, error = %last, url = %redact_url(&cfg.url),
                    retry_in_ms = delay.as_millis() as u64,
                    deadline_secs = cfg.startup_deadline.as_secs(),
                    "database unreachable, retrying: {last}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    let manager = PostgresConnectionManager::new(pg, tls);
    bb8::Pool::builder()
        .max_size(cfg.pool_size)
        .connection_timeout(cfg.connect_timeout)
        .error_sink(Box::new(LogSink))
        .build(manager)
        .await
        .map_err(DbError::Query)
}

/// Logs every connection error the pool meets, with its source chain.
#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<tokio_postgres::Error> for LogSink {
    fn sink(&self, e: tokio_postgres::Error) {
        let text = redact_url(&error_chain(&e));
        tracing::warn!(error = %text, "database connection error: {text}");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates_are_about_the_server_not_the_statement() {
        for code in ["08006", "08001", "57P01", "57P03", "53300", "40001", "40P01"] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in ["22021", "22P05", "23505", "23502", "42P01", "42601", "XX000"] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
        assert!(DbError::PoolTimeout.is_transient());
        assert!(!DbError::Refused("no role".into()).is_transient());
    }
}
