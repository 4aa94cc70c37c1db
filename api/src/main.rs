//! `orderflow-api`: loads settings, applies migrations and serves the HTTP API until Ctrl-C or SIGTERM.

use anyhow::Context;
use orderflow_shared::{db, settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("info,sqlx=warn");
    let url = settings::database_url();
    let api_settings = settings::ApiSettings::from_env()?;
    // Migrations run on a connection of their own: the serving pool's statement_timeout is not for them.
    let migrating = db::connect(&url, 1, "orderflow-api-migrate")
        .await
        .context("failed to connect to PostgreSQL")?;
    db::migrate(&migrating)
        .await
        .context("failed to migrate the database")?;
    migrating.close().await;
    let pool = db::connect_with(
        &url,
        settings::db_max_connections()?,
        "orderflow-api",
        api_settings.limits.session(),
    )
    .await
    .context("failed to connect to PostgreSQL")?;
    if api_settings.admin.tokens.is_empty() {
        tracing::warn!("ORDERFLOW_ADMIN_TOKENS is not set: the admin API and dashboard refuse everyone");
    }
    let addr = settings::api_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    tracing::info!(%addr, "orderflow-api listening");
    orderflow_api::run(listener, pool, api_settings, orderflow_shared::shutdown::signal()).await?;
    Ok(())
}
