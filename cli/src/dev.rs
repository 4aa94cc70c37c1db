//! `orderflow dev`: the whole product in one process (API, worker, payment simulator) on DATABASE_URL, the
//! local server, or a private throwaway cluster; seeds demo skus and prints a request that works as pasted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use orderflow_shared::api_key::{self, NewKeyRequest, Scope};
use orderflow_shared::settings::{self, RelaySettings, WorkerSettings};
use orderflow_shared::{db, inventory};
use tokio::sync::watch;

use orderflow_shared::pgcluster::PrivateCluster;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the API listens.
    #[arg(long, env = "ORDERFLOW_API_ADDR", default_value = settings::DEFAULT_API_ADDR)]
    api_addr: SocketAddr,
    /// Where the payment simulator listens.
    #[arg(long, env = "ORDERFLOW_PAYSIM_ADDR", default_value = settings::DEFAULT_PAYSIM_ADDR)]
    paysim_addr: SocketAddr,
}

/// Demo catalogue: (sku, on_hand, price in cents).
const DEMO_SKUS: [(&str, i64, i64); 3] = [
    ("tee-black-m", 25, 1999),
    ("mug-logo", 10, 1250),
    ("sticker-pack", 100, 499),
];

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let explicit = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let url = settings::database_url();
    let max_connections = settings::db_max_connections()?;
    let (pool, cluster) = match db::connect(&url, max_connections, "orderflow-dev").await {
        Ok(pool) => (pool, None),
        Err(error @ db::DbError::Connect { .. }) if explicit.is_none() => {
            tracing::warn!(%error, "no PostgreSQL at the default address; starting a private one");
            let cluster = PrivateCluster::start()?;
            let pool = db::connect(&cluster.url(), max_connections, "orderflow-dev")
                .await
                .context("failed to connect to the private cluster")?;
            (pool, Some(cluster))
        }
        Err(error) => return Err(error).context("failed to connect to PostgreSQL"),
    };
    db::migrate(&pool)
        .await
        .context("failed to migrate the database")?;
    for (sku, on_hand, price) in DEMO_SKUS {
        if inventory::find(&pool, sku).await?.is_none() {
            let conn = &mut *pool.acquire().await?;
            let set = inventory::StockSet {
                sku,
                location: inventory::ledger::DEFAULT_LOCATION,
                on_hand,
                price,
                currency: "USD",
                fulfilment: None,
                expected: &inventory::Expected::Any,
                actor: "orderflow dev",
            };
            inventory::upsert(conn, &set).await?;
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let paysim_listener = tokio::net::TcpListener::bind(args.paysim_addr)
        .await
        .with_context(|| format!("failed to bind the payment simulator to {}", args.paysim_addr))?;
    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("failed to bind the API to {}", args.api_addr))?;
    let paysim_url = format!("http://{}", paysim_listener.local_addr()?);
    let mut worker_settings = WorkerSettings::from_env()?;
    if std::env::var("ORDERFLOW_PAYMENTS_URL").is_err() {
        worker_settings.payments_url = paysim_url;
    }
    // Publish events to a local NATS when one runs and nothing else was asked for.
    if worker_settings.relay.is_none()
        && std::env::var_os("ORDERFLOW_NATS_URL").is_none()
        && tokio::net::TcpStream::connect(settings::DEFAULT_NATS_ADDR)
            .await
            .is_ok()
    {
        worker_settings.relay = Some(RelaySettings::for_url(&format!(
            "nats://{}",
            settings::DEFAULT_NATS_ADDR
        ))?);
    }
    let nats = worker_settings.relay.as_ref().map(|r| {
        format!(
            "{} (stream {}, subjects {}.>)",
            r.nats_url, r.stream, r.subject_prefix
        )
    });

    // The simulator's webhooks go to this API's `/v1/provider/webhooks` under a secret new each run, unless
    // either end is configured.
    let mut sim = orderflow_paysim::SimConfig::from_env()?;
    let mut api_settings = settings::ApiSettings::from_env()?;
    if sim.webhook_url.is_none() && api_settings.provider_webhooks.secrets.is_empty() {
        let secret = format!("whsec_dev_{}", uuid::Uuid::new_v4().simple());
        let mut api = api_listener.local_addr()?;
        if api.ip().is_unspecified() {
            api.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        sim.webhook_url = Some(format!("http://{api}/v1/provider/webhooks"));
        sim.webhook_secrets = vec![secret.clone()];
        api_settings.provider_webhooks.secrets = vec![secret];
    }
    // Endpoints on this machine are for development: dev allows them unless told otherwise.
    if std::env::var_os("ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK").is_none() {
        api_settings.webhook_allow_loopback = true;
        worker_settings.webhooks.allow_loopback = true;
    }
    let paysim = tokio::spawn(orderflow_paysim::run(paysim_listener, sim, stopped()));
    // Without configured tokens, dev makes one operator token for this run and prints it.
    let admin = &mut api_settings.admin;
    let dev_token = admin.tokens.is_empty().then(|| {
        let token = uuid::Uuid::new_v4().simple().to_string();
        admin.tokens.push(settings::AdminToken {
            name: "dev".to_owned(),
            role: settings::Role::Operator,
            token: token.clone(),
        });
        token
    });
    // And an API key with every scope, new each run (a key is shown only when it is created).
    let key = api_key::create(
        &mut *pool.acquire().await?,
        &NewKeyRequest {
            name: "dev".to_owned(),
            scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
            rate_per_second: None,
        },
        api_settings.keys.default_rate,
        "orderflow dev",
        settings::Role::Operator,
    )
    .await
    .context("failed to create the dev API key")?
    .secret;
    // The API's own pool, with its statement and lock timeouts (the worker's steps have none).
    let database = cluster.as_ref().map_or_else(|| url.clone(), PrivateCluster::url);
    let api_pool = db::connect_with(
        &database,
        max_connections,
        "orderflow-dev-api",
        api_settings.limits.session(),
    )
    .await
    .context("failed to connect the API's pool")?;
    let api = tokio::spawn(orderflow_api::run(
        api_listener,
        api_pool,
        api_settings,
        stopped(),
    ));
    let worker = tokio::spawn(orderflow_worker::run(pool.clone(), worker_settings, stopped()));

    let api_addr = args.api_addr;
    println!(
        "\nOrderFlow is running: API http://{api_addr}, payment simulator http://{}\n\
         Demo skus: tee-black-m, mug-logo, sticker-pack (USD).\n\
         API key (every scope; shown this once): {key}\n\nTry (each line works as pasted):\n\n\
         export ORDERFLOW_KEY={key}\n\
         order=$(curl -s -o /dev/null -w '%header{{location}}' -X POST http://{api_addr}/v1/orders \
         -H \"Authorization: Bearer $ORDERFLOW_KEY\" -H 'Content-Type: application/json' -H \"Idempotency-Key: $(date +%s%N)\" \
         -d '{{\"customer_id\":\"c1\",\"currency\":\"USD\",\"lines\":[{{\"sku\":\"mug-logo\",\"quantity\":2}}],\"payment_token\":\"pm_card_visa\"}}')\n\
         sleep 1; curl -s http://{api_addr}$order -H \"Authorization: Bearer $ORDERFLOW_KEY\"\n\
         curl -s http://{api_addr}/v1/events -H \"Authorization: Bearer $ORDERFLOW_KEY\"\n\n\
         Events to NATS: {}\n{}\nCtrl-C stops everything.\n",
        args.paysim_addr,
        nats.as_deref()
            .unwrap_or("off (no NATS at 127.0.0.1:4222; the /v1/events feed serves them)"),
        match &dev_token {
            Some(token) => format!(
                "Dashboard: http://{api_addr}/admin (token {token})\n\
                 CLI: ORDERFLOW_ADMIN_TOKEN={token} orderflow queues"
            ),
            None => format!("Dashboard: http://{api_addr}/admin (a token from ORDERFLOW_ADMIN_TOKENS)"),
        },
    );

    orderflow_shared::shutdown::signal().await;
    let _ = stop_tx.send(true);
    let drain = async {
        let _ = api.await;
        let _ = worker.await;
        let _ = paysim.await;
    };
    if tokio::time::timeout(Duration::from_secs(35), drain)
        .await
        .is_err()
    {
        tracing::warn!("shutdown took too long; exiting anyway");
    }
    pool.close().await;
    Ok(())
}
