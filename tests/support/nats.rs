//! A JetStream cluster of three Debian `nats-server` processes on loopback, for cluster mode's
//! tests (`scripts/test.sh` installs the package).

use std::process::{Child, Command, Stdio};

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
    /// Three servers in one JetStream cluster; their data under `dir`.
    pub fn start(dir: &TempDir) -> NatsCluster {
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
                let store = dir.0.join(format!("nats-{name}"));
                let log = std::fs::File::create(dir.0.join(format!("nats-{name}.log")))
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

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
