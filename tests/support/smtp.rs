//! A real SMTP receiver for the tests: `tests/smtp_receiver.py` (aiosmtpd) on loopback, whose
//! accepted messages the test reads back from the file it writes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TempDir;

pub struct SmtpReceiver {
    pub port: u16,
    out: PathBuf,
    child: Option<Child>,
}

impl SmtpReceiver {
    /// Starts one on `port` that refuses its first `refuse_first` messages (451).
    pub fn start(dir: &TempDir, port: u16, refuse_first: u32) -> SmtpReceiver {
        let out = dir.0.join(format!("smtp-{port}.jsonl"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&out)
            .arg("--refuse-first")
            .arg(refuse_first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs tests/smtp_receiver.py (aiosmtpd from scripts/test.sh)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver says it is ready");
        assert_eq!(line.trim(), "ready", "the SMTP receiver did not start");
        SmtpReceiver {
            port,
            out,
            child: Some(child),
        }
    }

    /// Every message accepted so far, in order of arrival.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }

    /// Waits until at least `count` messages have arrived; returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages arrived: {messages:#?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}
