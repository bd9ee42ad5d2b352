//! A real S3-compatible server on loopback for the S3 tests: moto's server
//! mode (`moto_server`, PyPI `moto[server]`; `.ci/run` installs it). It is
//! started on a free port, waited for, given a bucket, and killed on drop.
//!
//! moto accepts any credentials unless started with
//! `INITIAL_NO_AUTH_ACTION_COUNT=N`: then after N unauthenticated actions it
//! checks every request's signature against its IAM users, of which a fresh
//! server has none, so every access key is refused as `InvalidAccessKeyId`.
//!
//! Outside CI a missing `moto_server` skips the test with a printed reason;
//! under `CI=true` it fails it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every server is started with.
pub const BUCKET: &str = "loraflow-test";

pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

fn program() -> String {
    std::env::var("LORAFLOW_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// A server that accepts any credentials, with [`BUCKET`] created;
    /// `None` (after printing why) when `moto_server` is not installed
    /// and this is not CI.
    pub fn start() -> Option<Self> {
        Self::launch(false)
    }

    /// A server that checks credentials and knows none: every signed
    /// request is refused. [`BUCKET`] exists.
    pub fn start_refusing_credentials() -> Option<Self> {
        Self::launch(true)
    }

    fn launch(check_credentials: bool) -> Option<Self> {
        let program = program();
        let installed = Command::new(&program)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let reason = format!(
                "{program} is not installed (pip install 'moto[server]'; or set LORAFLOW_MOTO_SERVER)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true: the S3 tests must run, but {reason}");
            }
            eprintln!("skipping: {reason}");
            return None;
        }
        // A port found free may be taken before the server binds it: try again.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let mut cmd = Command::new(&program);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap());
            if check_credentials {
                // The first action (creating the bucket) goes unchecked.
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "1");
            } else {
                cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
            }
            let child = cmd.spawn().unwrap();
            let mut server = S3Server {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log,
            };
            match server.wait_ready() {
                Ok(()) => {
                    server.create_bucket(BUCKET);
                    return Some(server);
                }
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.log_text()));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "not answering on {} after 30s: {}",
            self.addr,
            self.log_text()
        ))
    }

    /// What the server printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The endpoint to configure: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Create a bucket (an unsigned path-style `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = http("PUT", &format!("{}/{bucket}", self.endpoint()), &[]);
        assert_eq!(status, 200, "creating bucket {bucket}: {body:?}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request, no credentials, connection closed after:
/// the status and the body. What a user's `curl` on a presigned URL does.
pub fn http(method: &str, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let parsed = url::Url::parse(url).unwrap();
    assert_eq!(parsed.scheme(), "http", "{url}");
    let host = parsed.host_str().unwrap();
    let port = parsed.port().unwrap_or(80);
    let mut target = parsed.path().to_owned();
    if let Some(q) = parsed.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut stream = TcpStream::connect((host, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&data[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
