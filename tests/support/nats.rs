//! A JetStream cluster of three Debian `nats-server` processes on loopback, for cluster mode's
//! tests (`scripts/test.sh` installs the package).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::nats_auth::{Account, Operator};
use super::raw_mqtt::make_certificates;
use super::{free_port, TempDir};

pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Three servers in one JetStream cluster, their data under `dir`; returns once their
    /// JetStream meta group has all three (a port found free can be taken meanwhile by
    /// another process: then it starts over on other ports).
    pub async fn start(dir: &TempDir) -> NatsCluster {
        let mut logs = String::new();
        for attempt in 0..3 {
            let cluster = Self::spawn(dir, attempt);
            if cluster.wait_formed().await {
                return cluster;
            }
            for server in &cluster.servers {
                let log = dir.0.join(format!("nats-{}-{attempt}.log", server.name));
                logs.push_str(&std::fs::read_to_string(log).unwrap_or_default());
            }
        }
        panic!("no JetStream cluster formed in three attempts:\n{logs}");
    }

    /// Whether, within 30 s, a server says the meta group has a leader and three current peers.
    async fn wait_formed(&self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            for server in &self.servers {
                let url = format!("http://127.0.0.1:{}/jsz", server.monitor_port);
                let Ok(response) = reqwest::get(&url).await else {
                    continue;
                };
                let Ok(jsz) = response.json::<serde_json::Value>().await else {
                    continue;
                };
                let meta = &jsz["meta_cluster"];
                let peers = meta["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter(|p| p["current"] == true).count());
                if meta["leader"].as_str().is_some_and(|l| !l.is_empty()) && peers == 2 {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        false
    }

    fn spawn(dir: &TempDir, attempt: usize) -> NatsCluster {
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let servers = (0..3)
            .map(|i| {
                let (port, cluster_port, monitor_port) = ports[i];
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c, _))| format!("nats://127.0.0.1:{c}"))
                    .collect();
                let name = format!("n{i}");
                let store = dir.0.join(format!("nats-{name}-{attempt}"));
                let log = std::fs::File::create(dir.0.join(format!("nats-{name}-{attempt}.log")))
                    .expect("NATS log file");
                let child = Command::new("nats-server")
                    .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-n", &name])
                    .args(["-js", "-sd", &store.display().to_string()])
                    .args(["--cluster_name", "fieldline-test"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                    .args(["--routes", &routes.join(",")])
                    .args(["-m", &monitor_port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("nats-server is installed (scripts/test.sh installs it)");
                NatsServer {
                    name,
                    port,
                    monitor_port,
                    child: Some(child),
                }
            })
            .collect();
        NatsCluster { servers }
    }

    /// `--cluster` for a node: every server.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl NatsCluster {
    /// The server that leads the stream `FIELDLINE` now, as the servers' monitoring says.
    pub async fn stream_leader(&self) -> String {
        for server in &self.servers {
            if server.child.is_none() {
                continue;
            }
            let url = format!(
                "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
                server.monitor_port
            );
            let Ok(response) = reqwest::get(&url).await else {
                continue;
            };
            let Ok(jsz) = response.json::<serde_json::Value>().await else {
                continue;
            };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for stream in account["stream_detail"].as_array().into_iter().flatten() {
                    if stream["name"] == "FIELDLINE" {
                        if let Some(leader) = stream["cluster"]["leader"].as_str() {
                            return leader.to_owned();
                        }
                    }
                }
            }
        }
        panic!("no server says which one leads the stream FIELDLINE");
    }

    /// SIGKILL of the server named `name`.
    pub fn kill(&mut self, name: &str) {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.name == name)
            .expect("a server of that name");
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One JetStream server that takes TLS only and trusts an operator's accounts only: what a
/// node's `--cluster-ca` and `--cluster-credentials` are for.
pub struct SecuredNats {
    pub server: NatsServer,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A user of the account with JetStream.
    pub creds: PathBuf,
    /// A user of an account the server does not know.
    pub stranger_creds: PathBuf,
}

impl SecuredNats {
    pub async fn start(dir: &TempDir) -> SecuredNats {
        let files = dir.0.join("nats-secured");
        std::fs::create_dir_all(&files).expect("directory");
        make_certificates(&files);
        let operator = Operator::new();
        let creds = files.join("fieldline.creds");
        std::fs::write(&creds, operator.app.user_creds("fieldline")).expect("write");
        let stranger_creds = files.join("stranger.creds");
        std::fs::write(&stranger_creds, Account::stranger().user_creds("stranger")).expect("write");
        let (port, monitor_port) = (free_port(), free_port());
        let config = files.join("server.conf");
        let path = |name: &str| files.join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
                 server_name: secured\njetstream {{ store_dir: \"{}\" }}\n\
                 tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n{}",
                path("store"),
                path("server.pem"),
                path("server.key"),
                operator.server_config()
            ),
        )
        .expect("write");
        let log = std::fs::File::create(files.join("server.log")).expect("NATS log file");
        let child = Command::new("nats-server")
            .args(["-c", &config.display().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        let server = NatsServer {
            name: "secured".to_owned(),
            port,
            monitor_port,
            child: Some(child),
        };
        // Ready once its monitoring says JetStream is up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let health = format!("http://127.0.0.1:{monitor_port}/healthz");
        loop {
            if let Ok(response) = reqwest::get(&health).await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the secured nats-server did not start:\n{}",
                std::fs::read_to_string(files.join("server.log")).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        SecuredNats {
            server,
            ca: files.join("ca.pem"),
            creds,
            stranger_creds,
        }
    }

    /// `--cluster` for a node.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.server.port)
    }
}
