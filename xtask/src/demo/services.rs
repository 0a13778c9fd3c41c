//! The platform's four binaries started as separate processes, each logging JSON to its own
//! file (`RUST_LOG` from `DEMO_RUST_LOG`, default `info,billing_relay=debug`), stopped with
//! SIGTERM (graceful) and killed only if they do not exit in time.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const BINARIES: [&str; 4] = [
    "billing-api",
    "billing-relay",
    "billing-consumer",
    "provider-sim",
];

/// Builds the binaries with cargo and returns the directory holding them.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["build", "--quiet"]);
    for p in BINARIES {
        cmd.args(["-p", p]);
    }
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "xtask: building {} binaries ...",
        if release { "release" } else { "debug" }
    );
    if !cmd.status().context("failed to run cargo build")?.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    Ok(target.join(if release { "release" } else { "debug" }))
}

/// `RUST_LOG` of every service unless `DEMO_RUST_LOG` says otherwise: info, plus the relay's
/// per-record lines, so one bill's trace id can be followed through every service's log.
const DEFAULT_LOG: &str = "info,billing_relay=debug";

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Service {
    pub fn spawn(
        bin_dir: &Path,
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_logged(bin_dir, name, name, args, env, log_dir)
    }

    /// Like [`Self::spawn`], logging (appending) to `{log_name}.log`, so several instances of a
    /// binary, and restarts of one, keep separate or continued logs.
    pub fn spawn_logged(
        bin_dir: &Path,
        name: &'static str,
        log_name: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{log_name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin_dir.join(name))
            .args(args)
            .env("LOG_FORMAT", "json")
            // The relay logs each published record (bill.id, trace_id) at debug only.
            .env(
                "RUST_LOG",
                std::env::var("DEMO_RUST_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()),
            )
            // After the defaults: a caller's own RUST_LOG wins.
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self { name, log, child })
    }

    /// Fails when the process has already exited (a crash at start, a bad setting).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// Sends `signal` (a `kill` name: KILL, STOP, CONT, TERM) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} has already exited", self.name))?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILL (no chance to clean up, like a crash or an OOM kill) and reap the process.
    pub async fn kill_hard(mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// Waits until `url` answers 200, or fails naming the service's log.
pub async fn wait_ready(
    http: &reqwest::Client,
    svc: &mut Service,
    url: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        svc.check_alive()?;
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not become ready at {url}; see {}",
                svc.name,
                svc.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
