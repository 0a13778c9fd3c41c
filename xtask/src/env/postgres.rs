//! Postgres for the local environment: the configured server if it answers, otherwise a
//! throwaway cluster (initdb + pg_ctl, as the `postgres` user when we are root) on a free port.

use anyhow::{bail, Context};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct Postgres {
    /// A URL whose role may create databases (sqlx tests and the demo create their own).
    pub url: String,
    started: Option<Throwaway>,
}

struct Throwaway {
    dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    pub async fn ensure(fresh: bool) -> anyhow::Result<Self> {
        if fresh {
            return Self::start_throwaway().await;
        }
        let mut candidates = Vec::new();
        if let Ok(url) = std::env::var("DATABASE_URL") {
            candidates.push(url);
        }
        candidates.push(DEFAULT_URL.to_owned());
        for url in candidates {
            if answers(&url).await {
                return Ok(Self { url, started: None });
            }
            eprintln!(
                "xtask: no Postgres answers at {}",
                shared::config::redact_url(&url)
            );
        }
        Self::start_throwaway().await
    }

    pub fn origin(&self) -> &'static str {
        if self.started.is_some() {
            "throwaway cluster started by xtask"
        } else {
            "existing server"
        }
    }

    async fn start_throwaway() -> anyhow::Result<Self> {
        let bindir = find_bindir().context(
            "no Postgres server binaries found (initdb, pg_ctl); install them with \
             `apt-get install -y postgresql` or set DATABASE_URL to a running server",
        )?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("billing-outbox-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let data = dir.join("data");
        let port = free_port()?;
        eprintln!(
            "xtask: starting a throwaway Postgres on port {port} in {}",
            dir.display()
        );
        let pg = |tool: &str| -> Command {
            let exe = bindir.join(tool);
            if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            }
        };
        run(pg("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB",
            dir.display()
        );
        run(pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start"]))?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !answers(&url).await {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "throwaway Postgres did not answer; see {}",
                    dir.join("postgres.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            url,
            started: Some(Throwaway {
                dir,
                bindir,
                as_postgres,
            }),
        })
    }

    /// `pg_ctl restart -m immediate` of the throwaway cluster: every backend dies at once
    /// without a checkpoint (like a crash), then the server recovers from its WAL. Fails for a
    /// server xtask did not start.
    pub async fn restart_immediate(&self) -> anyhow::Result<()> {
        let Some(t) = &self.started else {
            bail!("restarting Postgres needs the throwaway cluster (--fresh-postgres)");
        };
        let exe = t.bindir.join("pg_ctl");
        let (data, log, as_postgres) = (
            t.dir.join("data"),
            t.dir.join("postgres.log"),
            t.as_postgres,
        );
        tokio::task::spawn_blocking(move || {
            let mut c = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            };
            // -l again: without it the new postmaster would write to our pipe and keep it open.
            run(c.arg("-D").arg(&data).arg("-l").arg(&log).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "restart",
            ]))
        })
        .await?
    }

    pub async fn stop(self) {
        if let Some(t) = self.started {
            let exe = t.bindir.join("pg_ctl");
            let data = t.dir.join("data");
            let mut c = if t.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            };
            let _ = c
                .arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w", "stop"])
                .output();
            let _ = std::fs::remove_dir_all(&t.dir);
            eprintln!("xtask: throwaway Postgres stopped and removed");
        }
    }
}

/// Drops and recreates database `name` on the server of `server_url` and returns its URL: each
/// demo, canary and fault run starts from an empty database.
pub async fn fresh_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = sqlx::PgPool::connect(server_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (base, _) = server_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    Ok(format!("{base}/{name}"))
}

async fn answers(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(url)).await,
        Ok(Ok(_))
    )
}

fn find_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Some(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| version_of(p));
    found.pop()
}

fn version_of(bindir: &Path) -> u32 {
    bindir
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
