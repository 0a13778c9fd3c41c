//! Shared helpers of the benchmark binaries in `src/bin/`: each prints its figures and the
//! ratio to the physical limit it is compared with, measured in the same run.

/// Median of a set of samples (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of a set of samples (sorted in place), nearest-rank.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`, ...); `None` when the process
/// is gone or the field is missing.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// User + system CPU seconds a process has used so far (`/proc/<pid>/stat`, fields 14 and 15,
/// in clock ticks of 1/100 s, the value on every Linux this runs on).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The machine's 1, 5 and 15 minute load averages, as `uptime` prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, clock ticks), to derive
/// how busy all cores were over an interval.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The time at which a monotonically growing count, sampled as `(seconds, count)`, first
/// reached `target`, interpolated linearly between the two samples around it.
pub fn crossing_time(samples: &[(f64, u64)], target: u64) -> Option<f64> {
    let i = samples.iter().position(|&(_, n)| n >= target)?;
    if i == 0 {
        return Some(samples[0].0);
    }
    let (t0, n0) = samples[i - 1];
    let (t1, n1) = samples[i];
    let frac = (target - n0) as f64 / (n1 - n0).max(1) as f64;
    Some(t0 + (t1 - t0) * frac)
}

/// CPU seconds used so far by every process whose command name is `comm` (e.g. all
/// `postgres` backends of the server, whoever they serve).
pub fn cpu_secs_of_all(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(proc_cpu_secs)
        .sum()
}

/// The value of one series in a Prometheus text exposition, `series` written exactly as it
/// appears (`name` or `name{label="v"}`).
pub fn prometheus_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// A database created for one benchmark run on the server of `DATABASE_URL`, dropped by
/// [`ScratchDb::finish`] unless the caller keeps it.
pub struct ScratchDb {
    /// The server's connection options (any database of it).
    pub server: sqlx::postgres::PgConnectOptions,
    /// The scratch database's name: `<prefix>_<pid>`.
    pub name: String,
    admin: sqlx::PgConnection,
}

impl ScratchDb {
    pub async fn create(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        use sqlx::{ConnectOptions, Executor};
        use std::str::FromStr;
        let server = sqlx::postgres::PgConnectOptions::from_str(server_url)
            .context("DATABASE_URL is not a Postgres URL")?;
        let name = format!("{prefix}_{}", std::process::id());
        let mut admin = server
            .connect()
            .await
            .context("failed to connect to DATABASE_URL")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        Ok(Self {
            server,
            name,
            admin,
        })
    }

    /// Drops the database, or says where it was kept.
    pub async fn finish(mut self, keep: bool) -> anyhow::Result<()> {
        use sqlx::Executor;
        if keep {
            println!("kept database {}", self.name);
        } else {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            self.admin.execute(drop.as_str()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles_use_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(quantile(&mut v, 0.99), 5.0);
        assert_eq!(quantile(&mut v, 0.5), 3.0);
    }

    #[test]
    fn crossing_time_interpolates_between_samples() {
        let samples = [(0.0, 0), (1.0, 100), (2.0, 300)];
        assert_eq!(crossing_time(&samples, 200), Some(1.5));
        assert_eq!(crossing_time(&samples, 0), Some(0.0));
        assert_eq!(crossing_time(&samples, 301), None);
    }

    #[test]
    fn prometheus_values_are_found_by_exact_series() {
        let text = "# HELP x\nx_total 3\nx{c=\"email\"} 1.5\nx_sum{c=\"email\"} 9\n";
        assert_eq!(prometheus_value(text, "x_total"), Some(3.0));
        assert_eq!(prometheus_value(text, "x{c=\"email\"}"), Some(1.5));
        assert_eq!(prometheus_value(text, "x"), None);
    }

    #[test]
    fn this_process_has_a_resident_set_and_cpu_time() {
        let pid = std::process::id();
        assert!(proc_status_kb(pid, "VmRSS").is_some_and(|kb| kb > 0));
        assert!(proc_cpu_secs(pid).is_some());
    }
}
