//! Connecting to PostgreSQL and bringing its schema up to date (ours and apalis's).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Our own migrations, embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot reach PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("failed to create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("failed to apply OrderFlow's migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("failed to apply apalis's migrations: {0}")]
    Apalis(#[source] apalis_postgres::Error),
}

/// Connects a pool, creating the database first if it does not exist. `application_name` labels every
/// connection in `pg_stat_activity`; a worker passes its instance name, which is how the reconciler tells that a
/// worker process is gone (its connections close when it dies, even by `kill -9`).
pub async fn connect(url: &str, max_connections: u32, application_name: &str) -> Result<PgPool, DbError> {
    connect_with(url, max_connections, application_name, Session::default()).await
}

/// Bounds on every statement of a pool's sessions (PostgreSQL's `statement_timeout` and `lock_timeout`):
/// the API's pool has them, so no request waits long on a lock a step holds or on a slow statement; the
/// worker's and migrations' sessions have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    pub statement_timeout: Option<Duration>,
    pub lock_timeout: Option<Duration>,
}

/// [`connect`], with `session`'s bounds on every connection.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    application_name: &str,
    session: Session,
) -> Result<PgPool, DbError> {
    // A session left idle inside a transaction (a bug, a cancelled future) is ended by PostgreSQL after a
    // minute, so it cannot hold row or advisory locks for ever. Our transactions never wait on anything outside
    // the database.
    let mut settings = vec![("idle_in_transaction_session_timeout", "60s".to_owned())];
    if let Some(timeout) = session.statement_timeout {
        settings.push(("statement_timeout", format!("{}ms", timeout.as_millis())));
    }
    if let Some(timeout) = session.lock_timeout {
        settings.push(("lock_timeout", format!("{}ms", timeout.as_millis())));
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::Url)?
        .application_name(application_name)
        .options(settings);
    create_database_if_missing(&options).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            url: redact(url),
            source,
        })
}

/// Applies pending migrations, apalis's first (ours index its jobs table). Safe when several processes start at
/// once: sqlx's migrator holds a PostgreSQL advisory lock while it runs, and apalis's uses the same mechanism.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .map_err(DbError::Apalis)?;
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)?;
    Ok(())
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let url = options.to_url_lossy().to_string();
    // Connect to the maintenance database to look the target up.
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(|source| DbError::Connect {
            url: redact(&url),
            source,
        })?;
    let exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        &name
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|source| DbError::Create {
        name: name.clone(),
        source,
    })?;
    if !exists {
        // A name, not a value: it cannot be a parameter, so the statement is built (quoted) and not checked.
        let statement = format!("create database \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our create: that is what we wanted. A create
            // that races another one fails on the catalogue's unique index (23505) rather than with 42P04.
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(source) => return Err(DbError::Create { name, source }),
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// True when the error is one a retry can cure: connection trouble, serialization failure, deadlock, or the
/// database shutting down or starting up.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            true
        }
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => {
            matches!(
                e.code().as_deref(),
                // serialization_failure, deadlock_detected, admin_shutdown, crash_shutdown, cannot_connect_now,
                // too_many_connections, lock_not_available, query_canceled (statement_timeout)
                Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "55P03" | "57014")
            ) || e.code().is_some_and(|c| c.starts_with("08"))
        }
        _ => false,
    }
}

/// Ends `tx` without committing it, now. A dropped transaction only queues its rollback, which the pool sends in
/// a task of its own when it takes the connection back: until then the transaction keeps its locks, and a client
/// that sends its next request as soon as it has the answer can find them held (an Idempotency-Key's lock read
/// as a request in flight, 409). A request that answers without committing rolls back with this before it
/// answers. If the rollback fails (a broken connection), the transaction is left to the pool's check on release,
/// as before: it sends the rollback again, or closes the connection, which ends the transaction too.
pub async fn roll_back(tx: sqlx::Transaction<'_, sqlx::Postgres>) {
    if let Err(error) = tx.rollback().await {
        tracing::warn!(%error, "rollback failed; the pool retries it or closes the connection when it takes it back");
    }
}

/// Ends `tx` before its caller answers with `outcome`: commits it when the outcome is a success that made
/// something to keep (`keep`), else rolls it back now ([`roll_back`]): an error, a refusal, a replay that only
/// read.
pub async fn finish<T, E: From<sqlx::Error>>(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    outcome: Result<T, E>,
    keep: bool,
) -> Result<T, E> {
    match outcome {
        Ok(value) if keep => {
            tx.commit().await?;
            Ok(value)
        }
        outcome => {
            roll_back(tx).await;
            outcome
        }
    }
}
