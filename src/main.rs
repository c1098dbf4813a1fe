//! `roam`: the one binary. Parses the command line, loads the configuration and runs a
//! command: `serve` (the default: every role in one process), `token`, `send`, `tail`,
//! `bench`.
//!
//! Errors leave as one line on stderr (`error: <what>: <why>`) and a non-zero exit code.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod internal;
mod metrics;
mod serve;

/// jemalloc, not the system allocator: with glibc's malloc, `malloc`/`free` and its
/// consolidation were 28 % of the server's CPU under stored chat, and jemalloc's thread
/// caches carry 1.6× the messages per second (server CPU per message 84 → 53 µs) while an idle raw TLS
/// connection costs 100 B less (mimalloc was as fast but cost 600 B more per
/// idle connection). Figures: docs/benchmarks.md, "The allocator".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Send a message and print its acknowledgement (`id=<id> seq=<seq>`).
    Send(SendArgs),
    /// Print the token's user's messages as they come, `<seq> <from> <content>` a line.
    Tail(TailArgs),
    /// Run a benchmark scenario (see docs/benchmarks.md).
    Bench(roam_bench::BenchArgs),
}

/// Where `send` and `tail` connect, and as whom.
#[derive(Debug, Args)]
struct ClientArgs {
    /// The server: raw://HOST:PORT (the raw port), quic://HOST:PORT (the raw QUIC port), wss://HOST:PORT or https://HOST:PORT (the
    /// client port, WebSocket), h2://HOST:PORT (the client port, HTTP/2 stream), h3://HOST:PORT
    /// (the client port's UDP twin, HTTP/3 stream), or HOST:PORT (raw).
    #[arg(long, value_name = "URL", default_value = roam_client::cli::LOCAL_SERVER)]
    server: String,
    /// The client token (`roam token --user ID` prints one).
    #[arg(long, value_name = "TOKEN")]
    token: String,
    /// Trust the CA certificate in FILE (default: ./data/tls/cert.pem when it exists).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (a development server's).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The recipient: a user id or group:ID.
    #[arg(long, value_name = "USER|group:ID")]
    to: String,
    /// Give up after this many seconds without an acknowledgement.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// The message.
    text: String,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Start after this inbox seq (0: the whole inbox).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    after: u64,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
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
        Some(Command::Send(args)) => send_command(args),
        Some(Command::Tail(args)) => tail_command(args),
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

fn client_target(args: ClientArgs) -> anyhow::Result<roam_client::cli::Target> {
    let default_ca = PathBuf::from("data")
        .join("tls")
        .join(roam_tls::DEV_CERT_FILE);
    Ok(roam_client::cli::Target {
        server: args.server,
        token: args.token,
        trust: roam_client::cli::trust(args.ca, args.insecure, default_ca)?,
    })
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn send_command(args: SendArgs) -> anyhow::Result<()> {
    let target = client_target(args.client)?;
    let timeout = std::time::Duration::from_secs(args.timeout);
    let ack = client_runtime()?.block_on(roam_client::cli::send(
        &target, &args.to, &args.text, timeout,
    ))?;
    let duplicate = if ack.duplicate { " duplicate" } else { "" };
    println!("id={} seq={}{duplicate}", ack.id, ack.seq);
    Ok(())
}

fn tail_command(args: TailArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let target = client_target(args.client)?;
    let json = args.json;
    let mut stdout = std::io::stdout().lock();
    let print = move |m: &roam_proto::client::v1::Message| {
        if json {
            writeln!(stdout, "{}", roam_client::cli::message_json(m))?;
        } else {
            writeln!(stdout, "{}", roam_client::cli::message_line(m))?;
        }
        stdout.flush()
    };
    client_runtime()?.block_on(async {
        tokio::select! {
            r = roam_client::cli::tail(&target, args.after, print) => match r? {
                Ok(()) => Ok(()),
                // A closed pipe (`roam tail | head`) ends the tail quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Err(e) => Err(e.into()),
            },
            r = tokio::signal::ctrl_c() => Ok(r?),
        }
    })
}
