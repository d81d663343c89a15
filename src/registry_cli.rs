//! `fieldline device …` and `fieldline token …`: the access registry from the command line,
//! against the configured database.
//!
//! A new secret or token goes to standard output alone (`SECRET=$(fieldline device add d1)`),
//! everything said about it to standard error. A running service picks up every change within
//! a few seconds (it polls the registry's revision), and cuts off connections of devices that
//! were disabled or given a new secret.

use anyhow::Context;
use clap::Subcommand;
use fieldline_broker::credentials::{hash_secret, new_secret};
use fieldline_dashboard::auth::token::{new_token, Role};
use fieldline_ingest::document::is_valid_name;
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::{open_store, Store};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage devices allowed to connect over MQTT.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage HTTP API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Register a device; prints its secret, which is shown only this once.
    Add { id: String },
    /// List registered devices.
    List,
    /// Stop a device from connecting; its open connections are cut off.
    Disable { id: String },
    /// Let a disabled device connect again.
    Enable { id: String },
    /// Give a device a new secret; the old one stops working at once.
    Rotate { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token; prints it, shown only this once.
    Add {
        /// What the token is for (shown in lists).
        name: String,
        /// admin (devices, tokens, everything), operator (commands to devices, and reading) or
        /// viewer (read and live streams).
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List API tokens (never their secrets).
    List,
    /// Revoke a token by its id; open live streams using it end within seconds.
    Revoke { id: String },
}

/// Runs `command` against the database at `database_url` (`shown` is how errors name it:
/// without its password).
pub async fn run(command: Command, database_url: &str, shown: &str) -> anyhow::Result<()> {
    let store = open_store(database_url)
        .await
        .with_context(|| format!("cannot open storage {shown}"))?;
    match command {
        Command::Device(command) => device(command, store.as_ref()).await,
        Command::Token(command) => token(command, store.as_ref()).await,
    }
}

async fn device(command: DeviceCommand, store: &dyn Store) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add { id } => {
            let id = checked(&id)?;
            let secret = new_secret();
            store
                .add_device(id, &hash_secret(&secret)?, now_ms())
                .await
                .with_context(|| format!("cannot register device {id}"))?;
            eprintln!("device {id} registered; its MQTT username is {id} and its password (shown only now) is:");
            println!("{secret}");
        }
        DeviceCommand::Rotate { id } => {
            let id = checked(&id)?;
            let secret = new_secret();
            store
                .set_device_secret(id, &hash_secret(&secret)?, now_ms())
                .await
                .with_context(|| format!("cannot rotate the secret of device {id}"))?;
            eprintln!("device {id} has a new secret; the old one no longer works. New secret (shown only now):");
            println!("{secret}");
        }
        DeviceCommand::Disable { ref id } | DeviceCommand::Enable { ref id } => {
            let enabled = matches!(command, DeviceCommand::Enable { .. });
            let id = checked(id)?;
            store
                .set_device_enabled(id, enabled, now_ms())
                .await
                .with_context(|| format!("cannot change device {id}"))?;
            eprintln!(
                "device {id} {}",
                if enabled { "enabled" } else { "disabled" }
            );
        }
        DeviceCommand::List => {
            let devices = store.access_changes(0).await?.devices;
            println!(
                "{:<64}  {:<8}  {:<24}  updated",
                "device", "state", "created"
            );
            for d in devices {
                println!(
                    "{:<64}  {:<8}  {:<24}  {}",
                    d.device,
                    if d.enabled { "enabled" } else { "disabled" },
                    format_ms(d.created_at_ms),
                    format_ms(d.updated_at_ms)
                );
            }
        }
    }
    Ok(())
}

async fn token(command: TokenCommand, store: &dyn Store) -> anyhow::Result<()> {
    match command {
        TokenCommand::Add { name, role } => {
            let role = Role::parse(&role)
                .with_context(|| format!("unknown role {role:?}: use admin, operator or viewer"))?;
            let made = new_token(&name, role, now_ms());
            store
                .add_token(&made.record)
                .await
                .context("cannot store the token")?;
            eprintln!(
                "token {} ({}, {}) created; use it as \"Authorization: Bearer <token>\". Token (shown only now):",
                made.record.id,
                name,
                role.as_str()
            );
            println!("{}", made.token);
        }
        TokenCommand::Revoke { id } => {
            store
                .revoke_token(&id, now_ms())
                .await
                .with_context(|| format!("cannot revoke token {id}"))?;
            eprintln!("token {id} revoked");
        }
        TokenCommand::List => {
            let tokens = store.access_changes(0).await?.tokens;
            println!(
                "{:<12}  {:<6}  {:<24}  {:<24}  name",
                "id", "role", "created", "revoked"
            );
            for t in tokens {
                println!(
                    "{:<12}  {:<6}  {:<24}  {:<24}  {}",
                    t.id,
                    t.role,
                    format_ms(t.created_at_ms),
                    t.revoked_at_ms.map(format_ms).unwrap_or_default(),
                    t.name
                );
            }
        }
    }
    Ok(())
}

fn checked(id: &str) -> anyhow::Result<&str> {
    if is_valid_name(id) {
        Ok(id)
    } else {
        anyhow::bail!("invalid device id {id:?}: use 1 to 64 characters from [A-Za-z0-9_.-]")
    }
}
