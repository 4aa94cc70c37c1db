//! `orderflow`: the command line. `orderflow dev` runs the whole product in one process for local use.

mod dev;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_shared::telemetry::init("info,sqlx=warn,apalis=warn");
    match Cli::parse().command {
        Command::Dev(args) => dev::run(args).await,
    }
}
