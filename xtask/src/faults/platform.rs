//! The platform of one fault scenario: a fresh database, provider-sim, the api, and N relays and
//! M consumers as separate processes (one consumer group), each of which can be killed, stopped,
//! resumed and restarted. Logs go to `target/faults/<run>/<scenario>/`, one file per instance,
//! appended across restarts.

use crate::demo::services::{wait_ready, Service};
use crate::env::{free_port, Broker};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Short leases and a fast sweeper, so a killed or stalled consumer's bills come back quickly.
pub const LEASE_SECS: u64 = 5;
pub const SWEEP_INTERVAL_SECS: u64 = 1;
/// Bills a consumer holds at once. A SIGKILL loses the outcomes of the bills it had sent but
/// not yet recorded, and each of those is sent again (and refused by the provider's key): this
/// bounds those re-sends per kill. 64 in flight at 200 ms per send still allows ~300 sends/s.
pub const MAX_IN_FLIGHT: usize = 64;

/// What to run.
pub struct Shape {
    pub relays: usize,
    pub consumers: usize,
    pub latency_ms: u64,
    pub failure_rate: f64,
    pub seed: u64,
}

/// One relay or consumer instance: how to (re)start it and the process when it runs.
pub struct Slot {
    pub label: String,
    bin: &'static str,
    env: Vec<(&'static str, String)>,
    ready_url: String,
    pub svc: Option<Service>,
}

pub struct Platform {
    bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub database_url: String,
    pub api: String,
    pub sim: String,
    pub http: reqwest::Client,
    /// provider-sim and the api: never faulted.
    fixed: Vec<Service>,
    pub relays: Vec<Slot>,
    pub consumers: Vec<Slot>,
}

impl Platform {
    pub async fn start(
        bin_dir: &Path,
        server_url: &str,
        broker: &Broker,
        log_dir: PathBuf,
        db_name: &str,
        shape: &Shape,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&log_dir)?;
        let database_url = crate::env::fresh_database(server_url, db_name).await?;
        let keys = shared::crypto::Keyring::generate_spec("faults");
        let common = vec![
            ("DATABASE_URL", database_url.clone()),
            ("KAFKA_BROKERS", broker.bootstrap.clone()),
            ("BILLING_ENCRYPTION_KEYS", keys),
        ];
        let migrate = tokio::process::Command::new(bin_dir.join("billing-api"))
            .arg("migrate")
            .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .context("failed to run billing-api migrate")?;
        anyhow::ensure!(migrate.success(), "billing-api migrate failed");

        let addr = || -> anyhow::Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
        let (api_addr, sim_addr) = (addr()?, addr()?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut sim = Service::spawn(
            bin_dir,
            "provider-sim",
            &[],
            &[
                ("PROVIDER_SIM_ADDR", sim_addr.clone()),
                ("SIM_LATENCY_MS", shape.latency_ms.to_string()),
                ("SIM_FAILURE_RATE", shape.failure_rate.to_string()),
                ("SIM_SEED", shape.seed.to_string()),
            ],
            &log_dir,
        )?;
        let sim_url = format!("http://{sim_addr}");
        wait_ready(&http, &mut sim, &format!("{sim_url}/healthz")).await?;
        let mut api = Service::spawn(
            bin_dir,
            "billing-api",
            &[],
            &with(
                &common,
                &[
                    ("API_ADDR", api_addr.clone()),
                    ("ADMIN_TOKEN", format!("{:032x}", rand::random::<u128>())),
                ],
            ),
            &log_dir,
        )?;
        let api_url = format!("http://{api_addr}");
        wait_ready(&http, &mut api, &format!("{api_url}/readyz")).await?;

        let group = format!("faults-{db_name}-{:08x}", rand::random::<u32>());
        let mut relays = Vec::new();
        for i in 1..=shape.relays {
            let admin = addr()?;
            relays.push(Slot {
                label: format!("relay-{i}"),
                bin: "billing-relay",
                env: with(&common, &[("RELAY_ADMIN_ADDR", admin.clone())]),
                ready_url: format!("http://{admin}/readyz"),
                svc: None,
            });
        }
        let mut consumers = Vec::new();
        for i in 1..=shape.consumers {
            let admin = addr()?;
            consumers.push(Slot {
                label: format!("consumer-{i}"),
                bin: "billing-consumer",
                env: with(
                    &common,
                    &[
                        ("CONSUMER_ADMIN_ADDR", admin.clone()),
                        ("CONSUMER_GROUP", group.clone()),
                        ("EMAIL_PROVIDER_URL", format!("{sim_url}/v1/email")),
                        ("SMS_PROVIDER_URL", format!("{sim_url}/v1/sms")),
                        ("LEASE_SECS", LEASE_SECS.to_string()),
                        ("SWEEP_INTERVAL_SECS", SWEEP_INTERVAL_SECS.to_string()),
                        ("SHUTDOWN_GRACE_SECS", "2".into()),
                        ("MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string()),
                        // Timeout x (retries + 1) below the lease, so a slow send never
                        // outlives its own lease.
                        ("PROVIDER_TIMEOUT_MS", "1500".into()),
                        ("EMAIL_MAX_RETRIES", "2".into()),
                        // Retries after a transient error or a timeout are logged at debug; the
                        // report counts them (a retry of a send that did reach the provider is
                        // a re-send).
                        ("RUST_LOG", "info,billing_consumer::process=debug".into()),
                    ],
                ),
                ready_url: format!("http://{admin}/readyz"),
                svc: None,
            });
        }
        let mut platform = Self {
            bin_dir: bin_dir.to_owned(),
            log_dir,
            database_url,
            api: api_url,
            sim: sim_url,
            http,
            fixed: vec![sim, api],
            relays,
            consumers,
        };
        for i in 0..platform.relays.len() {
            platform.start_relay(i).await?;
        }
        for i in 0..platform.consumers.len() {
            platform.start_consumer(i).await?;
        }
        Ok(platform)
    }

    pub async fn start_relay(&mut self, i: usize) -> anyhow::Result<()> {
        start_slot(
            &self.bin_dir,
            &self.log_dir,
            &self.http,
            &mut self.relays[i],
        )
        .await
    }

    pub async fn start_consumer(&mut self, i: usize) -> anyhow::Result<()> {
        start_slot(
            &self.bin_dir,
            &self.log_dir,
            &self.http,
            &mut self.consumers[i],
        )
        .await
    }

    /// Restarts any relay or consumer that exited on its own (what a supervisor would do) and
    /// returns what it found, so the report can name it. provider-sim or the api exiting is an
    /// error: nothing in the scenarios touches them.
    pub async fn supervise(&mut self) -> anyhow::Result<Vec<String>> {
        for svc in &mut self.fixed {
            svc.check_alive()?;
        }
        let mut found = Vec::new();
        for (kind, i) in (0..self.relays.len())
            .map(|i| (0, i))
            .chain((0..self.consumers.len()).map(|i| (1, i)))
        {
            let slot = if kind == 0 {
                &mut self.relays[i]
            } else {
                &mut self.consumers[i]
            };
            let Some(svc) = slot.svc.as_mut() else {
                continue;
            };
            if let Err(e) = svc.check_alive() {
                found.push(format!("{} exited on its own ({e:#})", slot.label));
                slot.svc = None;
                start_slot(&self.bin_dir, &self.log_dir, &self.http, slot).await?;
            }
        }
        Ok(found)
    }

    pub async fn stop(self) {
        let services = self
            .consumers
            .into_iter()
            .chain(self.relays)
            .filter_map(|s| s.svc)
            .chain(self.fixed.into_iter().rev());
        for svc in services {
            // A stopped process cannot see SIGTERM; continue it first (harmless otherwise).
            let _ = svc.signal("CONT").await;
            svc.stop(Duration::from_secs(10)).await;
        }
    }
}

impl Slot {
    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let svc = self
            .svc
            .take()
            .with_context(|| format!("{} is not running", self.label))?;
        svc.kill_hard().await
    }

    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.svc
            .as_ref()
            .with_context(|| format!("{} is not running", self.label))?
            .signal(signal)
            .await
    }
}

async fn start_slot(
    bin_dir: &Path,
    log_dir: &Path,
    http: &reqwest::Client,
    slot: &mut Slot,
) -> anyhow::Result<()> {
    let mut svc = Service::spawn_logged(bin_dir, slot.bin, &slot.label, &[], &slot.env, log_dir)?;
    wait_ready(http, &mut svc, &slot.ready_url).await?;
    slot.svc = Some(svc);
    Ok(())
}

fn with(
    common: &[(&'static str, String)],
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    common.iter().chain(extra).cloned().collect()
}
