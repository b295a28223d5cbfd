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
        /// Take the listening sockets from the ringlb running on `upgrade_socket` (a
        /// zero-downtime binary upgrade: the old one drains and exits).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print the effective config (exit 0), or the error (exit 1).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the companion autoscaler (or, with --plot, draw its events file).
    Scale {
        #[arg(short, long, required_unless_present = "plot")]
        config: Option<PathBuf>,
        /// Only validate the config and print it (exit 0), or the error (exit 1).
        #[arg(long)]
        check: bool,
        /// Draw an events file (the scaler's `events_file`) as an SVG timeline.
        #[arg(long, value_name = "EVENTS")]
        plot: Option<PathBuf>,
        /// Where --plot writes the SVG.
        #[arg(short, long, default_value = "timeline.svg")]
        out: PathBuf,
    },
    /// A tiny HTTP backend that answers with its name (for demos, tests and the process actuator).
    Backend {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        #[arg(long)]
        name: Option<String>,
    },
    /// Start three built-in backends and a balancer on loopback, to try ringlb out.
    Demo {
        /// Also run the autoscaler against a built-in staged load, with a live progress line.
        #[arg(long)]
        autoscale: bool,
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

/// The process's own log on stderr: text, or JSON lines with `log_format = "json"` in the
/// config being served (or RINGLB_LOG_FORMAT=json, which wins).
fn init_tracing(json: bool) {
    let json = match std::env::var("RINGLB_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGLB_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() {
    let cli = Cli::parse();
    // `serve` logs as its config says; a config that does not load is reported in text.
    let json = match &cli.command {
        Command::Serve { config, .. } => ringlb::config::Config::load(config)
            .map(|c| c.log_format == ringlb::config::LogFormat::Json)
            .unwrap_or(false),
        _ => false,
    };
    init_tracing(json);
    let code = match cli.command {
        Command::Serve { config, upgrade } => ringlb::server::serve(&config, upgrade),
        Command::Check { config } => match ringlb::config::Config::load(&config) {
            Ok(c) => {
                print!("{}{}", c.route_table(), c.to_toml());
                eprintln!("ringlb: {} is valid", config.display());
                // The config is fine; whether this host can run it is the preflight's say.
                match ringlb::proxy::preflight::check() {
                    Ok(ok) => {
                        eprintln!("ringlb: {ok}");
                        0
                    }
                    Err(e) => {
                        eprintln!("ringlb: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                eprintln!("ringlb: config error: {e}");
                1
            }
        },
        Command::Scale {
            plot: Some(events),
            out,
            ..
        } => match ringlb::scaler::plot::plot_file(&events, &out) {
            Ok(n) => {
                eprintln!("ringlb scale: {n} evaluations drawn in {}", out.display());
                0
            }
            Err(e) => {
                eprintln!("ringlb scale: {e}");
                1
            }
        },
        Command::Scale {
            config: Some(config),
            check: false,
            ..
        } => ringlb::scaler::main(&config),
        Command::Scale { config: None, .. } => {
            eprintln!("ringlb scale: --config is needed");
            2
        }
        Command::Scale {
            config: Some(config),
            check: true,
            ..
        } => match ringlb::scaler::ScalerConfig::load(&config) {
            Ok(c) => {
                print!("{}", toml::to_string_pretty(&c).unwrap_or_default());
                eprintln!("ringlb: {} is valid", config.display());
                0
            }
            Err(e) => {
                eprintln!("ringlb scale: config error: {e}");
                1
            }
        },
        Command::Backend { port, host, name } => {
            let name = name.unwrap_or_else(|| format!("backend-{port}"));
            report(
                "backend",
                ringlb::demo::run_backend(std::net::SocketAddr::new(host, port), &name),
            )
        }
        Command::Demo {
            autoscale,
            listen,
            metrics,
            admin,
        } => {
            let run = if autoscale {
                ringlb::demo::run_autoscale
            } else {
                ringlb::demo::run
            };
            report("demo", run(listen, metrics, admin))
        }
    };
    std::process::exit(code);
}

/// Exit code 0, or 1 with the error on stderr.
fn report(what: &str, r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringlb {what}: {e}");
            1
        }
    }
}
