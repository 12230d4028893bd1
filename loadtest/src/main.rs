//! `herald-loadtest`: a receiver farm that verifies every signature, and a
//! load run that accounts for every (event, subscription) pair.
//!
//! - `herald-loadtest receiver --listen 127.0.0.1:9000 --secret whsec_…`
//!   prints each delivery and whether its signature verifies.
//! - `herald-loadtest run` starts an embedded `herald serve` (or drives a
//!   running Herald with `--target`), subscribes its receiver farm, measures
//!   the raw POST rate of its own client, emits events (single or batched,
//!   open loop or flat out), waits for every delivery, and reports
//!   throughput, emit-to-delivery latency, losses, duplicates and the
//!   server's CPU and RSS (see docs/performance.md).
#![forbid(unsafe_code)]

mod accounting;
mod emitter;
mod external;
mod farm;
mod faults;
mod raw;
mod receiver;
mod report;
mod run;
mod server;

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
    /// Load Herald and account for every delivery.
    Run(Box<run::Args>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Receiver(args) => receiver::main(args).await,
        Command::Run(args) => run::main(*args).await,
    }
}
