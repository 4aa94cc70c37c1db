//! `orderflow-worker`: loads settings, applies migrations and runs the saga steps until Ctrl-C or SIGTERM.

use anyhow::Context;
use orderflow_shared::settings::{self, WorkerSettings};
use orderflow_shared::{db, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("info,sqlx=warn,apalis=warn");
    // Test builds only: failpoints configured by the FAILPOINTS variable (e.g. `name=return(customer)`).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let settings = WorkerSettings::from_env()?;
    let pool = db::connect(
        &settings::database_url(),
        settings::db_max_connections()?,
        "orderflow-worker",
    )
    .await
    .context("failed to connect to PostgreSQL")?;
    db::migrate(&pool)
        .await
        .context("failed to migrate the database")?;
    orderflow_worker::run(pool, settings, shutdown::signal()).await
}
