//! Test harness: runs real server processes on 127.0.0.1 with ephemeral ports.
//!
//! `Server::start()` runs the `quorate` binary built by Cargo. With
//! `QUORATE_TEST_TARGET=etcd` it runs a real etcd instead (from `$ETCD_BIN`,
//! else `etcd` on PATH), so the same tests double as a check of our
//! expectations against etcd itself.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to print its client URL.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Quorate,
    Etcd,
}

impl Target {
    pub fn from_env() -> Target {
        match std::env::var("QUORATE_TEST_TARGET").as_deref() {
            Ok("etcd") => Target::Etcd,
            _ => Target::Quorate,
        }
    }
}

pub fn quorate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quorate"))
}

pub fn quoratectl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quoratectl"))
}

/// Finds a program on PATH (or at an explicit path in `env_var`).
pub fn find_program(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn etcdctl_bin() -> Option<PathBuf> {
    find_program("etcdctl", "ETCDCTL_BIN")
}

pub fn etcd_bin() -> Option<PathBuf> {
    find_program("etcd", "ETCD_BIN")
}

/// A free port, for programs (etcd) that cannot report an ephemeral one.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// One running server process.
pub struct Server {
    pub target: Target,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl Server {
    /// Starts the target chosen by `QUORATE_TEST_TARGET` on a fresh data dir.
    pub fn start() -> Server {
        Self::start_target(Target::from_env(), &[])
    }

    /// Starts a quorate server on a fresh data dir with extra flags.
    pub fn start_with_args(args: &[&str]) -> Server {
        Self::start_target(Target::Quorate, args)
    }

    pub fn start_target(target: Target, args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let log_path = tmp.path().join("server.log");
        let mut s = Server {
            target,
            child: None,
            endpoint: String::new(),
            data_dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
            log_path,
        };
        s.spawn();
        s
    }

    /// Starts quorate on an existing data dir (the caller keeps the dir alive).
    pub fn start_on(data_dir: &Path, args: &[&str]) -> Server {
        let log_path = data_dir.with_extension("log");
        let mut s = Server {
            target: Target::Quorate,
            child: None,
            endpoint: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            _tmp: None,
            log_path,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        match self.target {
            Target::Quorate => self.spawn_quorate(),
            Target::Etcd => self.spawn_etcd(),
        }
    }

    fn spawn_quorate(&mut self) {
        let mut cmd = Command::new(quorate_bin());
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg("http://127.0.0.1:0")
            .arg("--advertise-client-urls")
            .arg("http://127.0.0.1:0")
            // A single member: nobody dials its peer port.
            .arg("--listen-peer-urls")
            .arg("http://127.0.0.1:0")
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn quorate");
        let stderr = child.stderr.take().expect("stderr piped");
        let endpoint = wait_for_line(stderr, &self.log_path, "serving client requests on ")
            .unwrap_or_else(|e| {
                panic!(
                    "quorate did not start: {e}; log at {}",
                    self.log_path.display()
                )
            });
        self.endpoint = endpoint;
        self.child = Some(child);
    }

    fn spawn_etcd(&mut self) {
        let etcd =
            etcd_bin().expect("QUORATE_TEST_TARGET=etcd needs an etcd binary (ETCD_BIN or PATH)");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut cmd = Command::new(etcd);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcd");
        let stderr = child.stderr.take().expect("stderr piped");
        wait_for_line(stderr, &self.log_path, "ready to serve client requests").unwrap_or_else(
            |e| {
                panic!(
                    "etcd did not start: {e}; log at {}",
                    self.log_path.display()
                )
            },
        );
        self.endpoint = client;
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same server again on the same data dir (new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect etcd-client")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies `stream` to `log_path` in a thread; returns the rest of the first
/// line containing `marker` (trimmed to its first token), or the URL for etcd.
fn wait_for_line(
    stream: impl std::io::Read + Send + 'static,
    log_path: &Path,
    marker: &'static str,
) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        use std::io::Write;
        let mut tx = Some(tx);
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if let Some(pos) = line.find(marker) {
                if let Some(tx) = tx.take() {
                    let rest = line[pos + marker.len()..].trim();
                    let token = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(token);
                }
            }
        }
    });
    rx.recv_timeout(START_TIMEOUT).map_err(|e| format!("{e}"))
}
