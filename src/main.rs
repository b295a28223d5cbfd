use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// ringlb: a layer-4 TCP load balancer on io_uring.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer.
    Serve {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config (exit 0), or the error (exit 1).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three built-in backends and a balancer on loopback, to try ringlb out.
    Demo {
        /// Where the balancer listens.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// Where /metrics is served.
        #[arg(long, default_value = "127.0.0.1:9100")]
        metrics: std::net::SocketAddr,
        /// Where the admin API listens.
        #[arg(long, default_value = "127.0.0.1:9101")]
        admin: std::net::SocketAddr,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGLB_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config } => ringlb::server::serve(&config),
        Command::Check { config } => match ringlb::config::Config::load(&config) {
            Ok(c) => {
                print!("{}", c.to_toml());
                eprintln!("ringlb: {} is valid", config.display());
                0
            }
            Err(e) => {
                eprintln!("ringlb: config error: {e}");
                1
            }
        },
        Command::Demo {
            listen,
            metrics,
            admin,
        } => match ringlb::demo::run(listen, metrics, admin) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ringlb demo: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
