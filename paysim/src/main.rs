//! `orderflow-paysim`: the payment provider simulator, serving Stripe's PaymentIntents subset.

use anyhow::Context;
use orderflow_paysim::SimConfig;
use orderflow_shared::{settings, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("info");
    let config = SimConfig::from_env()?;
    let addr = settings::paysim_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    tracing::info!(%addr, ?config, "orderflow-paysim listening");
    orderflow_paysim::run(listener, config, shutdown::signal()).await?;
    Ok(())
}
