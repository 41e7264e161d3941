//! Child processes of the end-to-end benchmarks: `trawler run` and the
//! simulator started from this binary, read through their HTTP API and
//! `/proc`, killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A child that printed `listening on http://ADDR` as its first line.
pub struct Listening {
    /// The process.
    pub child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Listening {
    /// Starts `cmd` (stdout is taken) and waits for its address.
    pub fn start(mut cmd: Command, what: &str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            bail!("{what} printed {line:?} instead of its address");
        };
        let addr = url.parse()?;
        Ok(Self { child, addr })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This binary, to start `trawler run` or `trawler mockstagram` from.
pub fn this_binary() -> anyhow::Result<Command> {
    Ok(Command::new(std::env::current_exe()?))
}

/// A folder removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `trawler-bench-<name>-<pid>` in the temporary folder.
    pub fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("trawler-bench-{name}-{}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The body of `GET path` (HTTP/1.1, connection closed).
pub fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// `GET path` as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&get_text(addr, path)?)?)
}

/// CPU seconds (user + system) the process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Resident memory of the process in MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// Peak resident memory of the process in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// A kB figure of /proc/PID/status, in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1e3)
}

/// The value of the first sample of `name` (any labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    metric_where(text, name, "")
}

/// The value of the first sample of `name` whose labels contain `label`.
pub fn metric_where(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(label)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until every tracked account of the `trawler run` at `api` has a
/// value (one full interval), for at most 5 minutes.
pub fn wait_crawled(api: SocketAddr, accounts: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let progress = crate::progress::spinner("waiting for the first full crawl");
    loop {
        let stats = get_json(api, "/api/v1/influencers/stats")?;
        let crawled = stats["crawledAccounts"].as_u64().unwrap_or(0);
        progress.set_message(format!(
            "first full crawl: {crawled} of {accounts} accounts"
        ));
        if crawled >= accounts {
            progress.finish_and_clear();
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            anyhow::bail!("only {crawled} of {accounts} accounts crawled after 5 minutes");
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_found_by_name_and_label() {
        let text = "# HELP a_total x\na_total{job=\"j\"} 5\na_total_more{job=\"j\"} 7\nq{job=\"j\",quantile=\"0.5\"} 0.1\nq{job=\"j\",quantile=\"0.99\"} 0.3\n";
        assert_eq!(metric(text, "a_total"), Some(5.0));
        assert_eq!(metric(text, "a_total_more"), Some(7.0));
        assert_eq!(metric_where(text, "q", "quantile=\"0.99\""), Some(0.3));
        assert_eq!(metric(text, "missing"), None);
    }
}
