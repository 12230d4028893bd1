//! The `herald` binary.
#![forbid(unsafe_code)]

use clap::Parser;
use herald_api::cli::{serve, Cli, Command};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc, which was a fifth of Herald's CPU
/// under load; mimalloc was as fast but held far more memory
/// (docs/performance.md, *jemalloc*).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
