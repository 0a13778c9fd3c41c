//! The Kafka-protocol broker of the local environment: `KAFKA_BROKERS` if it answers, else a
//! tansu process (when installed and asked for), else librdkafka's mock cluster running in this
//! process on real TCP ports (other processes connect to it like to any broker).

use super::BrokerKind;
use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

pub const TOPICS: [&str; 3] = ["bills.email", "bills.sms", "bills.dlt"];

pub struct Broker {
    pub bootstrap: String,
    origin: Origin,
}

/// Brokers of the mock cluster (ids 1..=MOCK_BROKERS).
const MOCK_BROKERS: i32 = 3;

/// What the mock cluster's thread can be asked to do.
enum MockCommand {
    /// Take every broker down (true) or bring them back up (false); the log is kept.
    Outage(bool, mpsc::Sender<anyhow::Result<()>>),
}

enum Origin {
    External,
    /// The mock cluster lives on its own thread; it takes commands over this channel, and
    /// dropping the sender stops it.
    Mock(mpsc::Sender<MockCommand>),
    Tansu(Box<TansuProcess>),
}

/// A tansu process and what it takes to start it again on the same port.
struct TansuProcess {
    child: tokio::process::Child,
    bin: PathBuf,
    port: u16,
    partitions: i32,
}

impl Broker {
    pub async fn ensure(kind: BrokerKind, partitions: i32) -> anyhow::Result<Self> {
        if let Ok(bootstrap) = std::env::var("KAFKA_BROKERS") {
            if answers(&bootstrap).await {
                shared::kafka::ensure_topics(&bootstrap, &TOPICS, partitions).await?;
                return Ok(Self {
                    bootstrap,
                    origin: Origin::External,
                });
            }
            eprintln!("xtask: no broker answers at KAFKA_BROKERS={bootstrap}");
        }
        let tansu = tansu_binary();
        match (kind, tansu) {
            (BrokerKind::Tansu, None) => bail!(
                "tansu is not installed: cargo install tansu --locked --features dynostore \
                 --root ~/.cache/billing-outbox/tansu (or use --broker mock)"
            ),
            (BrokerKind::Tansu | BrokerKind::Auto, Some(bin)) => start_tansu(bin, partitions).await,
            (BrokerKind::Mock | BrokerKind::Auto, _) => start_mock(partitions),
        }
    }

    pub fn origin(&self) -> &'static str {
        match self.origin {
            Origin::External => "existing broker",
            Origin::Mock(_) => "librdkafka mock cluster inside xtask",
            Origin::Tansu(_) => "tansu broker process started by xtask",
        }
    }

    /// Always librdkafka's mock cluster in this process, whatever `KAFKA_BROKERS` says: the
    /// fault tests need a broker they can take down ([`Self::outage`]) and a fresh log.
    pub fn mock(partitions: i32) -> anyhow::Result<Self> {
        start_mock(partitions)
    }

    /// Takes every broker of the mock cluster down (`down`) or brings them back, keeping their
    /// data: clients see refused connections, like a broker process that is restarting.
    pub fn outage(&self, down: bool) -> anyhow::Result<()> {
        let Origin::Mock(commands) = &self.origin else {
            bail!("a broker outage needs the mock cluster started by xtask");
        };
        let (reply_tx, reply_rx) = mpsc::channel();
        commands
            .send(MockCommand::Outage(down, reply_tx))
            .context("mock cluster thread is gone")?;
        reply_rx.recv().context("mock cluster thread is gone")?
    }

    /// A tansu process (memory storage), whatever `KAFKA_BROKERS` says; fails when tansu is not
    /// installed.
    pub async fn tansu(partitions: i32) -> anyhow::Result<Self> {
        let bin = tansu_binary().context("tansu is not installed (see README)")?;
        start_tansu(bin, partitions).await
    }

    /// SIGKILL of the tansu process and a new one on the same port (topics created again). With
    /// memory storage everything the old one held is gone: records and committed offsets.
    pub async fn restart_process(&mut self) -> anyhow::Result<()> {
        let Origin::Tansu(t) = &mut self.origin else {
            bail!("a broker process restart needs the tansu broker started by xtask");
        };
        t.child.kill().await?;
        t.child = spawn_tansu(&t.bin, t.port)?;
        wait_answering(&self.bootstrap).await?;
        shared::kafka::ensure_topics(&self.bootstrap, &TOPICS, t.partitions).await
    }

    pub async fn stop(self) {
        match self.origin {
            Origin::External => {}
            Origin::Mock(stop) => drop(stop),
            Origin::Tansu(mut t) => {
                let _ = t.child.kill().await;
            }
        }
    }
}

async fn answers(bootstrap: &str) -> bool {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = match ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
        {
            Ok(p) => p,
            Err(_) => return false,
        };
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(3))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

fn start_mock(partitions: i32) -> anyhow::Result<Broker> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (command_tx, command_rx) = mpsc::channel::<MockCommand>();
    std::thread::Builder::new()
        .name("mock-kafka".into())
        .spawn(move || {
            let mock = match MockCluster::<DefaultProducerContext>::new(MOCK_BROKERS) {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("mock cluster: {e}")));
                    return;
                }
            };
            for topic in TOPICS {
                if let Err(e) = mock.create_topic(topic, partitions, 1) {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("mock create_topic {topic}: {e}")));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
            // Serves commands until the sender is dropped.
            while let Ok(command) = command_rx.recv() {
                match command {
                    MockCommand::Outage(down, reply) => {
                        let result = (1..=MOCK_BROKERS).try_for_each(|id| {
                            if down {
                                mock.broker_down(id)
                            } else {
                                mock.broker_up(id)
                            }
                            .map_err(|e| anyhow::anyhow!("mock broker {id} down={down}: {e}"))
                        });
                        let _ = reply.send(result);
                    }
                }
            }
        })?;
    let bootstrap = ready_rx.recv().context("mock cluster thread died")??;
    Ok(Broker {
        bootstrap,
        origin: Origin::Mock(command_tx),
    })
}

fn tansu_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").ok()?;
    let cached = PathBuf::from(home).join(".cache/billing-outbox/tansu/bin/tansu");
    cached.exists().then_some(cached)
}

async fn start_tansu(bin: PathBuf, partitions: i32) -> anyhow::Result<Broker> {
    let port = super::postgres::free_port()?;
    let child = spawn_tansu(&bin, port)?;
    let bootstrap = format!("127.0.0.1:{port}");
    wait_answering(&bootstrap).await?;
    shared::kafka::ensure_topics(&bootstrap, &TOPICS, partitions).await?;
    Ok(Broker {
        bootstrap,
        origin: Origin::Tansu(Box::new(TansuProcess {
            child,
            bin,
            port,
            partitions,
        })),
    })
}

fn spawn_tansu(bin: &Path, port: u16) -> anyhow::Result<tokio::process::Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    tokio::process::Command::new(bin)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {}", bin.display()))
}

async fn wait_answering(bootstrap: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !answers(bootstrap).await {
        if tokio::time::Instant::now() > deadline {
            bail!("tansu did not answer on {bootstrap}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
