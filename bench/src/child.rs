//! A `roam serve` child process on a private data directory and ephemeral ports.
//!
//! Used by `roam bench` (when no `--target` is given) and by the end-to-end tests (`tests/`):
//! both need a real server that nobody else talks to, whose addresses they learn from
//! `--ready-file`. It lives in the bench crate, which the tests crate depends on, rather than
//! in the SDK (`roam-client`): starting and signalling server processes is test and bench
//! tooling that an application embedding the SDK should not compile.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long a child gets to bind its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child gets to drain and exit after a stop signal before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `roam serve` child. Killed on drop if not stopped.
#[derive(Debug)]
pub struct ChildServer {
    child: Child,
    addrs: BTreeMap<String, SocketAddr>,
    dir: tempfile::TempDir,
    /// What started it, to start it again ([`kill_and_restart`](Self::kill_and_restart)).
    command: Vec<std::ffi::OsString>,
}

impl ChildServer {
    /// Starts `binary serve` with every listener on `127.0.0.1:0`, a fresh data directory, and
    /// `extra_toml` appended to its config file (e.g. `"[limits]\nmax_packet = 1024\n"`).
    /// `ROAM_*` variables of this process are not passed on, so the child is configured by
    /// its file alone.
    pub fn start(binary: &Path, extra_toml: &str) -> Result<Self> {
        Self::start_with(binary, extra_toml, &[])
    }

    /// Like [`start`](Self::start), with extra command-line arguments after `serve`.
    pub fn start_with(binary: &Path, extra_toml: &str, args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("roam-child-")
            .tempdir()
            .with_context(|| format!("cannot prepare {}", std::env::temp_dir().display()))?;
        let config = dir.path().join("roam.toml");
        let data = dir.path().join("data");
        let toml = format!(
            "data = {data:?}\n{extra_toml}\n[listen]\nclient_tcp = \"127.0.0.1:0\"\nclient_quic = \"127.0.0.1:0\"\nraw = \"127.0.0.1:0\"\nraw_quic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ninternal = \"127.0.0.1:0\"\n",
            data = data.display().to_string()
        );
        std::fs::write(&config, toml)
            .with_context(|| format!("cannot prepare {}", config.display()))?;
        let ready = dir.path().join("ready.json");
        let mut command = vec![binary.as_os_str().to_owned(), "serve".into()];
        command.extend(args.iter().map(Into::into));
        command.extend([
            "--config".into(),
            config.into_os_string(),
            "--ready-file".into(),
            ready.clone().into_os_string(),
        ]);
        let child = spawn(&command, dir.path())?;
        let mut server = ChildServer {
            child,
            addrs: BTreeMap::new(),
            dir,
            command,
        };
        server.addrs = server.wait_ready(&ready)?;
        Ok(server)
    }

    /// Kills the child with SIGKILL (no drain, no flush: a crash), then starts it again on
    /// the same data directory and configuration; its listeners get new ports.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        let pid = self.pid();
        send_signal(pid, rustix::process::Signal::KILL).with_context(|| stop_failed(pid))?;
        self.child.wait().with_context(|| stop_failed(pid))?;
        let ready = self.dir.path().join("ready.json");
        match std::fs::remove_file(&ready) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", ready.display()));
            }
            _ => {}
        }
        self.child = spawn(&self.command, self.dir.path())?;
        self.addrs = self.wait_ready(&ready)?;
        Ok(())
    }

    fn wait_ready(&mut self, ready: &Path) -> Result<BTreeMap<String, SocketAddr>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready) {
                return serde_json::from_str(&text)
                    .map_err(|e| anyhow!("bad ready file: {e}: {text}"));
            }
            let pid = self.pid();
            match self.child.try_wait() {
                Ok(Some(status)) => bail!(
                    "roam serve exited with {status} before it was ready: {}",
                    self.stderr_tail()
                ),
                Ok(None) => {}
                Err(e) => return Err(e).context(stop_failed(pid)),
            }
            if Instant::now() > deadline {
                bail!("roam serve wrote no ready file within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id (for `/proc/<pid>` figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A bound address from the ready file (`client_tcp`, `admin`, ...).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    /// Every bound address from the ready file.
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// The child's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The development certificate the child generated (trust it to connect).
    pub fn dev_cert(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    /// What the child printed on stdout so far (its banner).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The last lines the child wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Sends SIGTERM and waits for the child to drain and exit; returns its exit status.
    pub fn stop(self) -> Result<ExitStatus> {
        self.stop_with(rustix::process::Signal::TERM)
    }

    /// Sends `signal` (e.g. `INT` for Ctrl-C) and waits for the child to exit.
    pub fn stop_with(mut self, signal: rustix::process::Signal) -> Result<ExitStatus> {
        let pid = self.pid();
        send_signal(pid, signal).with_context(|| stop_failed(pid))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    bail!(
                        "roam serve (pid {pid}) did not exit within {STOP_TIMEOUT:?} of its stop signal; killed"
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e).context(stop_failed(pid)),
            }
        }
    }
}

/// Starts `command` (the binary, then its arguments) with its output appended to `dir`'s
/// logs and without this process's `ROAM_*` variables.
fn spawn(command: &[std::ffi::OsString], dir: &Path) -> Result<Child> {
    let open = |name: &str| {
        let path = dir.join(name);
        File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot prepare {}", path.display()))
    };
    let (binary, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("no binary to start"))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(open("stdout.log")?)
        .stderr(open("stderr.log")?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ROAM_") {
            cmd.env_remove(key);
        }
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", Path::new(binary).display()))
}

fn stop_failed(pid: u32) -> String {
    format!("cannot stop roam serve (pid {pid})")
}

fn send_signal(pid: u32, signal: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("pid out of range"))?;
    rustix::process::kill_process(pid, signal).map_err(Into::into)
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
