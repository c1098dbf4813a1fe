//! `roam`: the one binary. Parses the command line, loads the configuration and runs a
//! command: `serve` (the default: every role in one process), `token`, `bench`.
//!
//! Errors leave as one line on stderr (`error: <what>: <why>`) and a non-zero exit code.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod internal;
mod metrics;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use config::{Config, Overrides, Role};

/// Roam: an HTTP/2- and QUIC-first messaging platform.
#[derive(Debug, Parser)]
#[command(name = "roam", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default command): edge, core and idsvc in one process unless
    /// `--role` says otherwise.
    Serve(ServeArgs),
    /// Print a client token (JWT) that a server on the same data directory accepts.
    Token(TokenArgs),
    /// Run a benchmark scenario (see docs/benchmarks.md).
    Bench(roam_bench::BenchArgs),
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// TOML configuration file (every key has a default; see docs/config.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which roles to run.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Data directory (overrides `data` in the file and ROAM_DATA).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Once every listener is bound, write their addresses as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The user the token is for (`sub`).
    #[arg(long, value_name = "ID")]
    user: String,
    /// Bind the token to this device id.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Seconds until the token expires.
    #[arg(long, value_name = "SECS", default_value_t = 24 * 3600)]
    ttl: u64,
    /// Data directory holding the token secret (as for `serve`).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Configuration file (for its `data` directory).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve_command(args),
        None => serve_command(cli.serve),
        Some(Command::Token(args)) => token_command(args),
        Some(Command::Bench(args)) => roam_bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        role: args.role,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::serve(config, args.ready_file))
}

fn token_command(args: TokenArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        role: None,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    let secret = roam_core::auth::Secret::load_or_create(&config.data)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{}",
        secret.mint(&args.user, args.device.as_deref(), args.ttl, now)?
    );
    Ok(())
}
