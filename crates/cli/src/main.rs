//! `atrest`: one binary for every part of atrest.
//!
//! This file only parses the command line and hands over to the crate that owns the work;
//! the demo layout of `atrest up` lives in [`demo`], the benchmarks in [`bench`].

mod bench;
mod bench_control;
mod bench_node;
mod control;
mod demo;
mod demo_cluster;
mod node;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "atrest",
    version,
    about = "Customer-managed-key encryption at rest with Azure Key Vault, without customer secrets"
)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `atrest_emulator=debug`.
    #[arg(long, env = "ATREST_LOG", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local Azure emulator (Entra ID, Graph, ARM, Key Vault) on one TLS listener.
    ///
    /// When ready it writes DIR/ca.pem and DIR/emulator.json (listen address, CA path and the
    /// bootstrap principal). State persists in DIR.
    Emulator {
        /// Loopback address to listen on; port 0 picks a free port.
        #[arg(long, env = "ATREST_EMULATOR_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Directory for state, keys, ca.pem and emulator.json.
        #[arg(long, env = "ATREST_EMULATOR_DATA_DIR")]
        data_dir: PathBuf,
        /// Lifetime of issued access tokens in seconds (first start only; later use the admin API).
        #[arg(long)]
        token_lifetime: Option<u64>,
        /// Largest request body accepted, in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        max_body_bytes: usize,
    },
    /// Run everything locally: the emulator with a demo layout and the control plane on its
    /// embedded store, and print how to walk the secretless flow step by step.
    ///
    /// When ready it writes DATA_DIR/up.json (mode 0600): the control plane URL, the emulator's
    /// contract file, the platform app id, and the bootstrap organization, API key and service
    /// account.
    Up {
        /// Directory for all local state.
        #[arg(long, env = "ATREST_DATA_DIR", default_value = ".atrest")]
        data_dir: PathBuf,
        /// Emulator listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        emulator_listen: SocketAddr,
        /// Control plane listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Set everything up, print the guide, and exit instead of serving.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run the control plane (Atlas Admin API v2 subset) from a config file and ATREST_*
    /// environment variables. See docs/control-plane.md.
    Serve {
        /// TOML config file; without it, defaults and environment variables apply.
        #[arg(long, env = "ATREST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a project's Azure Key Vault configuration (or a candidate one) without changing
    /// anything, and print every check with the command that fixes it.
    Doctor(control::DoctorArgs),
    /// Local administration on the control plane's store: projects, API keys, service accounts.
    Admin {
        #[command(flatten)]
        target: control::AdminTarget,
        #[command(subcommand)]
        cmd: control::Admin,
    },
    /// Run a data node: join a cluster, unlock its data with the customer's Key Vault key and
    /// serve the data API; it shuts down when access is denied and recovers when it returns.
    Node(node::NodeArgs),
    /// Benchmarks that print a figure next to a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR")))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Emulator { listen, data_dir, token_lifetime, max_body_bytes } => {
                let mut cfg = atrest_emulator::EmulatorConfig::new(listen, data_dir);
                cfg.token_lifetime_secs = token_lifetime;
                cfg.max_body_bytes = max_body_bytes;
                let emu = atrest_emulator::Emulator::start(cfg).await?;
                let info = emu.info();
                println!("atrest emulator listening on https://{}", info.listen);
                println!("  CA certificate: {}", info.ca_pem);
                println!("  contract file:  {}/emulator.json", info.data_dir);
                println!("  admin API:      https://{}/_emulator/ (see docs/emulator.md)", info.listen);
                println!("Press Ctrl-C to stop.");
                wait_for_shutdown().await;
                emu.shutdown().await;
                Ok(())
            }
            Command::Up { data_dir, emulator_listen, listen, no_wait } => {
                demo::up(demo::UpOptions { data_dir, emulator_listen, control_listen: listen, no_wait }).await
            }
            Command::Serve { config } => control::serve(config).await,
            Command::Doctor(args) => {
                if !control::doctor(args).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Admin { target, cmd } => control::admin(target, cmd).await,
            Command::Node(args) => node::run(args).await,
            Command::Bench { which } => bench::run(which).await,
        }
    })
}

/// Colour in log lines only on a terminal, and never when `NO_COLOR` is set to anything but the
/// empty string (<https://no-color.org>).
fn log_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_colour_only_on_a_terminal_without_no_color() {
        assert!(super::log_colour(true, None));
        assert!(!super::log_colour(false, None), "not a terminal");
        assert!(!super::log_colour(true, Some("1".into())), "NO_COLOR=1");
        assert!(super::log_colour(true, Some("".into())), "an empty NO_COLOR does not count");
    }
}
