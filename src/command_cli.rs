//! `fieldline command …`: commands to devices from the command line, through a running
//! service's HTTP API (the service holds the devices' connections and the dispatcher).
//!
//! The API address is the configured `--http-listen` unless `--api-url` says otherwise; a
//! token, when the API needs one, comes from `--token` or `FIELDLINE_API_TOKEN`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct CommandCli {
    #[command(subcommand)]
    action: Action,
    /// The service's HTTP API [default: http://<http-listen>]
    #[arg(long, global = true)]
    api_url: Option<String>,
    /// An operator or admin API token.
    #[arg(
        long,
        env = "FIELDLINE_API_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Send a command; prints the command (with --wait, its final state and reply).
    Send {
        device: String,
        name: String,
        /// The command's payload, as JSON.
        #[arg(long)]
        payload: Option<String>,
        /// How long the command may wait for its device: 30s, 10m, 1h, 2d [default: 1h]
        #[arg(long)]
        ttl: Option<String>,
        /// 0 or 1 [default: 1]
        #[arg(long)]
        qos: Option<u8>,
        /// Waits until the command is replied, failed, expired or cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// List a device's commands, newest first.
    List {
        device: String,
        /// Only commands in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a command that was not delivered yet.
    Cancel { id: String },
}

pub async fn run(cli: CommandCli, http_listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let base = cli
        .api_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_listen}"));
    let api = Api {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_string(),
        token: cli.token.clone(),
    };
    match cli.action {
        Action::Send {
            device,
            name,
            payload,
            ttl,
            qos,
            wait,
        } => {
            let mut body = json!({ "name": name });
            if let Some(payload) = payload {
                let value: Value = serde_json::from_str(&payload)
                    .context("--payload must be JSON (quote it for the shell)")?;
                body["payload"] = value;
            }
            if let Some(ttl) = ttl {
                body["ttl_s"] = json!(parse_duration(&ttl)?.as_secs_f64());
            }
            if let Some(qos) = qos {
                body["qos"] = json!(qos);
            }
            let path = format!("/api/devices/{device}/commands");
            let command = api.call(reqwest::Method::POST, &path, Some(body)).await?;
            if !wait {
                println!("{}", serde_json::to_string_pretty(&command)?);
                return Ok(());
            }
            let id = command["id"]
                .as_str()
                .context("the API gave no command id")?;
            eprintln!("command {id} queued; waiting for the device");
            let done = api.wait_final(id).await?;
            let state = done["state"].as_str().unwrap_or_default();
            println!("{state}");
            if let Some(reply) = done.get("reply") {
                println!("{reply}");
            }
            if state != "replied" {
                bail!("the command ended {state}");
            }
        }
        Action::List {
            device,
            state,
            limit,
        } => {
            let mut path = format!("/api/devices/{device}/commands?limit={limit}");
            if let Some(state) = state {
                path.push_str(&format!("&state={state}"));
            }
            let list = api.call(reqwest::Method::GET, &path, None).await?;
            println!(
                "{:<16}  {:<20}  {:<9}  {:<24}  reply",
                "id", "name", "state", "created"
            );
            for c in list.as_array().into_iter().flatten() {
                let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<16}  {:<20}  {:<9}  {:<24}  {}",
                    text("id"),
                    text("name"),
                    text("state"),
                    text("created"),
                    c.get("reply").map(Value::to_string).unwrap_or_default()
                );
            }
        }
        Action::Cancel { id } => {
            let command = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/commands/{id}"),
                    None,
                )
                .await?;
            println!("{}", command["state"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach the Fieldline API at {url}; is the service running (--api-url)?")
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let why = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("{status}: {why}");
        }
        Ok(value)
    }

    /// Polls the command until it is final (its own expiry bounds the wait).
    async fn wait_final(&self, id: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        let mut last_state = String::new();
        loop {
            let command = self
                .call(reqwest::Method::GET, &format!("/api/commands/{id}"), None)
                .await?;
            let state = command["state"].as_str().unwrap_or_default().to_string();
            if state != last_state {
                eprintln!("{:>6.1} s  {state}", started.elapsed().as_secs_f64());
                last_state = state.clone();
            }
            if matches!(
                state.as_str(),
                "replied" | "failed" | "expired" | "cancelled"
            ) {
                return Ok(command);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `30s`, `10m`, `1h`, `2d`, or plain seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, ""), |at| text.split_at(at));
    let n: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (30s, 10m, 1h, 2d)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => bail!("{text:?} is not a duration (30s, 10m, 1h, 2d)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("{text:?} is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
