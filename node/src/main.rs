//! `tahoe`: the Folio node's command line.
//!
//! Today it carries `tahoe demo`, which shows the handshake layer at work on 127.0.0.1.
//! `create-node`, `create-client`, `create-introducer` and `run` arrive with the node issue.

mod demo;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// A Tahoe-style storage node on the Folio RPC layer.
#[derive(Debug, Parser)]
#[command(name = "tahoe", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run two Tubs on 127.0.0.1 and show the handshake, including the Tahoe-LAFS #2861 case.
    Demo(demo::DemoArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Demo(args) => rt.block_on(demo::run(args)),
    }
}
