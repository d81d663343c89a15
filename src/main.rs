//! The `fieldline` binary: reads configuration, starts the service, reports errors.

mod access_sync;
mod check;
mod cluster_node;
mod command_cli;
mod config;
mod judging;
mod live_epoch;
mod live_seed;
mod registry_cli;
mod service;
mod wal_dir;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// What the binary does besides running the service.
#[derive(clap::Subcommand, Debug)]
pub enum Tool {
    #[command(flatten)]
    Registry(registry_cli::Command),
    /// Send, list and cancel commands to devices (through a running service's API).
    Command(command_cli::CommandCli),
    /// Check the configuration and what it points to (listeners, database, write-ahead log)
    /// without starting; exits non-zero when a start would fail.
    Check,
}

fn main() -> ExitCode {
    let mut args = config::Args::parse();
    let command = args.command.take();
    // rumqttd logs every ordinary disconnect at error level; Fieldline logs what matters itself.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    // Colour only on a terminal: logs sent to files and journals stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = config::Config::load(args).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        match command {
            Some(Tool::Registry(command)) => runtime.block_on(registry_cli::run(
                command,
                &config.database_url,
                &config.database_url_redacted(),
            )),
            Some(Tool::Command(cli)) => runtime.block_on(command_cli::run(cli, config.http_listen)),
            Some(Tool::Check) => runtime.block_on(check::run(&config)),
            None => runtime.block_on(service::run(config)),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
