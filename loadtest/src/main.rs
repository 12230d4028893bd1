//! `herald-loadtest`: a receiver that verifies signatures, and a load run
//! that accounts for every (event, subscription) pair.
//!
//! - `herald-loadtest receiver --listen 127.0.0.1:9000 --secret whsec_…`
//!   prints each delivery and whether its signature verifies.
//! - `herald-loadtest run --target http://127.0.0.1:8080 --admin-token …`
//!   creates a tenant, subscribes its own receivers, emits events, waits for
//!   every delivery, and reports throughput, emit-to-delivery latency,
//!   losses and duplicates.
#![forbid(unsafe_code)]

mod receiver;
mod run;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "herald-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive webhooks and print them, verifying signatures.
    Receiver(receiver::Args),
    /// Drive a running Herald and account for every delivery.
    Run(run::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Receiver(args) => receiver::main(args).await,
        Command::Run(args) => run::main(args).await,
    }
}
