//! A real local KMS endpoint: moto_server, one process per `Moto`.
//!
//! `scripts/test.sh` (via `ensure_moto` in scripts/services.sh) installs moto and
//! exports `SQLX_ENVELOPE_MOTO_SERVER`. Without it the tests fail loudly; they
//! never skip.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};

pub const MOTO_VAR: &str = "SQLX_ENVELOPE_MOTO_SERVER";

/// A running moto_server on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    dead: bool,
}

impl Moto {
    /// Spawn `moto_server -H 127.0.0.1 -p 0` and wait until it listens.
    pub fn start() -> Moto {
        let bin = std::env::var(MOTO_VAR).unwrap_or_else(|_| {
            panic!(
                "{MOTO_VAR} is not set: the KMS tests need a local KMS endpoint. \
                 Run scripts/test.sh, or `source scripts/services.sh && ensure_moto` \
                 (installs moto 5.2.5 into target/moto-venv and exports {MOTO_VAR})"
            )
        });
        if !std::path::Path::new(&bin).is_file() {
            panic!(
                "{MOTO_VAR}={bin} does not exist: run `source scripts/services.sh && ensure_moto`"
            );
        }
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<u16>();
        // Keep draining stderr for the server's whole life: it logs every
        // request, and a full pipe would stall it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = tx.as_ref().and_then(|_| parse_port(&line)) {
                    let _ = tx.take().expect("sender").send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("moto_server did not report its port within 60 s (exit status {status:?})");
            }
        };
        Moto {
            child,
            port,
            dead: false,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A KMS client for this server in `region`, with static test credentials
    /// and SDK defaults (the keyring replaces retries and timeouts).
    pub fn client(&self, region: &str) -> aws_sdk_kms::Client {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new(region.to_owned()))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }

    /// Create a symmetric key; returns its ARN.
    pub async fn create_key(&self, client: &aws_sdk_kms::Client) -> String {
        client
            .create_key()
            .description("sqlx-envelope test key")
            .send()
            .await
            .expect("moto CreateKey")
            .key_metadata
            .and_then(|m| m.arn)
            .expect("key ARN")
    }

    /// Create an alias `alias/<name>` for `key`.
    pub async fn create_alias(
        &self,
        client: &aws_sdk_kms::Client,
        name: &str,
        key: &str,
    ) -> String {
        let alias = format!("alias/{name}");
        client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(key)
            .send()
            .await
            .expect("moto CreateAlias");
        alias
    }

    /// SIGKILL the server (connections are refused from now on).
    pub fn kill(&mut self) {
        if !self.dead {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.dead = true;
        }
    }

    /// SIGSTOP: the port stays open and accepts connections, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: resume a frozen server.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.child.id());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        self.kill();
    }
}

fn parse_port(line: &str) -> Option<u16> {
    let rest =
        &line[line.find("Running on http://127.0.0.1:")? + "Running on http://127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
