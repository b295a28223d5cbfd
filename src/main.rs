//! The `ringlb` binary: the command line, and nothing else; every command is a call into
//! the library.
#![deny(unsafe_code)]

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
        /// The config file (TOML; see config/ringlb.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets from the ringlb running on `upgrade_socket` (a
        /// zero-downtime binary upgrade: the old one drains and exits).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print the effective config (exit 0), or the error (exit 1).
    Check {
        /// The config file to check.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the companion autoscaler (or, with --plot, draw its events file).
    Scale {
        /// The scaler's config file (TOML; see config/scaler.toml).
        #[arg(short, long, required_unless_present = "plot", value_name = "FILE")]
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
        /// The port to listen on.
        #[arg(long)]
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// What it answers with (default: backend-PORT).
        #[arg(long)]
        name: Option<String>,
        /// Not HTTP: write the name and a newline, then echo every byte back; at the
        /// client's EOF, shut the write side once all is echoed (the soak's backends).
        #[arg(long)]
        echo: bool,
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
    /// Talk to a running ringlb's admin API: list, drain, ready, weigh, add, delete and
    /// protect backends (exit 1 when the API refuses, 2 when it cannot be asked).
    Ctl(ringlb::ctl::CtlArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: ringlb.1 and one per subcommand (ringlb-ctl.1, ...).
    Man {
        /// The directory to write them to.
        #[arg(short, long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
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
        Command::Ctl(args) => ringlb::ctl::main(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ringlb", &mut std::io::stdout());
            0
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            match clap_mangen::generate_to(Cli::command(), &out) {
                Ok(()) => {
                    eprintln!("ringlb: man pages written to {}", out.display());
                    0
                }
                Err(e) => {
                    eprintln!("ringlb man: {}: {e}", out.display());
                    1
                }
            }
        }
        Command::Backend {
            port,
            host,
            name,
            echo,
        } => {
            let name = name.unwrap_or_else(|| format!("backend-{port}"));
            report(
                "backend",
                ringlb::demo::run_backend(std::net::SocketAddr::new(host, port), &name, echo),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "ringlb", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
