//! A real `loraflow serve` process on an OS-chosen loopback port, with a
//! SQLite store and artifacts in a temporary folder of its own, and the
//! `loraflow` binary to drive it as a user would. The server is killed when
//! the [`Server`] is dropped, so a failing test leaves nothing running.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The `loraflow` binary, with no server or token from the environment
/// and quiet logs.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    c.env("RUST_LOG", "warn")
        .env_remove("LORAFLOW_TOKEN")
        .env_remove("LORAFLOW_SERVER")
        .env_remove("LORAFLOW_ARTIFACTS")
        .env_remove("LORAFLOW_STORE");
    c
}

/// A running `loraflow serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Holds `loraflow.toml`, the store (`lf.db`) and `artifacts/`.
    pub tmp: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Run a client command against this server with `token`, in the
    /// server's folder, its artifact store named for uploads.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        bin()
            .args(args)
            .env("LORAFLOW_SERVER", self.url())
            .env("LORAFLOW_TOKEN", token)
            .env("LORAFLOW_ARTIFACTS", self.dir().join("artifacts"))
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Start `loraflow serve` with `config` as its `loraflow.toml`, a SQLite
/// store and artifacts in a fresh folder, and `extra_args` (such as
/// `--with-executors`); return once it printed the address it listens on.
pub fn start(config: &str, extra_args: &[&str]) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("loraflow.toml"), config).unwrap();
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("loraflow.toml"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("lf.db").display()))
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .args(extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            panic!(
                "the server exited before printing its address:\n{}",
                said.join("\n")
            );
        };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("loraflow serving on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        said.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr, tmp }
}
