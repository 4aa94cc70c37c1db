//! `orderflow`: the command line. `orderflow dev` runs the whole product in one process for local use.
//!
//! # Layout
//! - here: the commands and their arguments;
//! - `dev.rs`: `orderflow dev` (migrations, API, worker, simulator and, when needed, a private PostgreSQL, in one
//!   process; demo skus);
//! - `ops.rs`: the operators' commands, a client of the admin API (`queues`, `sagas`, and `saga <id>` with
//!   `retry`, `compensate` or `resolve`; `keys create|list|revoke`; `webhooks create|list|enable|disable|
//!   deliveries|delivery|replay`).

mod dev;
mod ops;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "OrderFlow: crash-proof order sagas on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run migrations, the API, a worker and the payment simulator in one process, with demo skus.
    Dev(dev::DevArgs),
    /// Jobs per queue: pending, scheduled, running, failed, dead, and the oldest pending age.
    Queues {
        #[command(flatten)]
        connection: ops::Connection,
    },
    /// List sagas, e.g. `orderflow sagas --stuck --older-than 5m`.
    Sagas {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::SagasArgs,
    },
    /// One saga's steps, jobs and events, or an action on it: `orderflow saga <id> retry|compensate|resolve`.
    Saga {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::SagaArgs,
    },
    /// API keys: `orderflow keys create --name storefront --scope orders:write --scope orders:read`, `keys list`,
    /// `keys revoke <id>`.
    Keys {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(subcommand)]
        command: ops::KeysCommand,
    },
    /// Webhook endpoints: `orderflow webhooks create https://shop.example/hooks`, `webhooks list`,
    /// `webhooks deliveries <endpoint>`, `webhooks replay <delivery>`.
    Webhooks {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(subcommand)]
        command: ops::WebhooksCommand,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => {
            orderflow_shared::telemetry::init("info,sqlx=warn,apalis=warn");
            dev::run(args).await
        }
        Command::Queues { connection } => ops::queues(connection).await,
        Command::Sagas { connection, args } => ops::sagas(connection, args).await,
        Command::Saga { connection, args } => ops::saga(connection, args).await,
        Command::Keys { connection, command } => ops::keys(connection, command).await,
        Command::Webhooks { connection, command } => ops::webhooks(connection, command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
