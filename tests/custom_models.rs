//! A tenant registers its own base model: a copy of the demo model in a
//! folder the operator allows it, checked by the server before it is
//! recorded. The record survives a server restart; another tenant neither
//! sees nor uses it; a URI outside the tenant's roots and a folder that is
//! not a model are refused with nothing written. A job on the registered
//! model trains on a worker that has only the catalogue's `tiny-sd`
//! installed: the worker fetches the model through the server, like the
//! dataset, and the job is published. Real processes on loopback sockets.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed when the test ends; its log is printed if the
/// test failed.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- {} ---\n{tail}", self.log.display());
        }
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    c.env("RUST_LOG", "info")
        .env_remove("LORAFLOW_TOKEN")
        .env_remove("LORAFLOW_SERVER")
        .env_remove("LORAFLOW_ARTIFACTS");
    c
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// `loraflow serve` in `dir` (its store and artifacts there); tenant acme
/// may also name `studio`.
fn start_server(dir: &Path, studio: &Path) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("loraflow.toml"),
        format!(
            r#"
            [artifacts]
            root = "artifacts"
            publish_root = "published"

            [[auth.tenants]]
            tenant = "acme"
            token = "t-acme"
            allowed_roots = ["file://{}/"]

            [[auth.tenants]]
            tenant = "other"
            token = "t-other"

            [[auth.executors]]
            executor = "gpu-1"
            token = "e-gpu-1"
            "#,
            studio.display()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "loraflow.toml",
        ])
        .args(["--store", "sqlite://lf.db"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        writeln!(file, "{line}").unwrap();
        if let Some(rest) = line.strip_prefix("loraflow serving on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
        }
    });
    (Proc { child, log }, addr)
}

/// `loraflow worker` in `dir`, knowing only the server and its token, with
/// only the catalogue's tiny-sd installed.
fn start_worker(dir: &Path, server: SocketAddr) -> Proc {
    copy_dir(&assets().join("tiny-sd"), &dir.join("models/tiny-sd"));
    let log = dir.join("worker.log");
    let child = bin()
        .args(["worker", "--id", "gpu-1", "--token", "e-gpu-1"])
        .args(["--models", "models", "--workdir", "work"])
        .arg("--server")
        .arg(format!("http://{server}"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc { child, log }
}

fn cli(dir: &Path, server: SocketAddr, token: &str, args: &[&str]) -> Output {
    bin()
        .env("RUST_LOG", "warn")
        .env("LORAFLOW_SERVER", format!("http://{server}"))
        .env("LORAFLOW_TOKEN", token)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The ids `models --json` lists for `token`'s tenant, and the registered
/// ones' URIs.
fn models(dir: &Path, server: SocketAddr, token: &str) -> Vec<(String, String)> {
    let out = cli(dir, server, token, &["models", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                m["id"].as_str().unwrap().to_owned(),
                m["uri"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn registered(dir: &Path, server: SocketAddr, token: &str) -> Vec<String> {
    models(dir, server, token)
        .into_iter()
        .filter(|(_, uri)| !uri.is_empty())
        .map(|(id, _)| id)
        .collect()
}

fn wait_state(dir: &Path, server: SocketAddr, job: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = json(&cli(dir, server, "t-acme", &["status", job, "--json"]));
        let now = status["state"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .replace('_', "");
        if now == want {
            return status;
        }
        assert!(now != "failed", "the job failed: {status:#}");
        assert!(Instant::now() < deadline, "still {now}: {status:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const SUBMIT: &[&str] = &[
    "submit",
    "--dataset",
    "photos",
    "--engine",
    "native",
    "--param",
    "epochs=1",
    "--param",
    "num_repeats=1",
    "--param",
    "resolution=64",
    "--param",
    "network_dim=4",
    "--param",
    "network_alpha=4",
    "--param",
    "learning_rate=0.001",
    "--param",
    "unet_lr=0.001",
    "--param",
    "trigger_word=lfdemo",
    "--prompt",
    "lfdemo, a red circle, white background, flat shapes",
    "--subject",
    "shapes",
    "--json",
];

#[test]
fn a_registered_model_is_checked_kept_private_and_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_dir, worker_dir, client_dir, studio) = (
        tmp.path().join("server"),
        tmp.path().join("worker"),
        tmp.path().join("client"),
        tmp.path().join("studio"),
    );
    copy_dir(&assets().join("tiny-sd"), &studio.join("studio-sd"));
    std::fs::create_dir_all(studio.join("not-a-model")).unwrap();
    std::fs::write(studio.join("not-a-model/readme.txt"), "hello").unwrap();
    copy_dir(&assets().join("demo-dataset"), &client_dir.join("photos"));
    let (server, addr) = start_server(&server_dir, &studio);

    // Registered: checked on the server's disk, family told by its config.
    let uri = format!("file://{}/studio-sd/", studio.display());
    let out = cli(
        &client_dir,
        addr,
        "t-acme",
        &["models", "register", "studio-sd", &uri, "--json"],
    );
    let m = json(&out);
    assert_eq!(m["id"], "studio-sd");
    assert_eq!(m["family"], "sd15");
    assert_eq!(m["uri"], uri.as_str());

    // Outside the tenant's roots (the checkout's own copy): refused, naming
    // the field, the URI and what is allowed.
    let outside = format!("file://{}/", assets().join("tiny-sd").display());
    let out = cli(
        &client_dir,
        addr,
        "t-acme",
        &["models", "register", "elsewhere", &outside],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("uri"), "{err}");
    assert!(err.contains("may not read"), "{err}");
    assert!(err.contains(&studio.display().to_string()), "{err}");
    // Not a model: refused, saying why.
    let not_model = format!("file://{}/not-a-model/", studio.display());
    let out = cli(
        &client_dir,
        addr,
        "t-acme",
        &["models", "register", "broken", &not_model],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a diffusers folder"),
        "{}",
        stderr(&out)
    );
    // A catalogue id and a taken name: refused.
    for name in ["tiny-sd", "studio-sd"] {
        let out = cli(
            &client_dir,
            addr,
            "t-acme",
            &["models", "register", name, &uri],
        );
        assert!(!out.status.success(), "{name}");
    }
    // Nothing of the refusals was written.
    assert_eq!(registered(&client_dir, addr, "t-acme"), ["studio-sd"]);

    // It survives a restart of the server.
    drop(server);
    let (_server, addr) = start_server(&server_dir, &studio);
    assert_eq!(registered(&client_dir, addr, "t-acme"), ["studio-sd"]);

    // Another tenant neither sees nor uses it.
    assert!(registered(&client_dir, addr, "t-other").is_empty());
    let mut other = SUBMIT.to_vec();
    other.extend(["--base-model", "studio-sd"]);
    let out = cli(&client_dir, addr, "t-other", &other);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("base_model"), "{}", stderr(&out));
    let out = cli(
        &client_dir,
        addr,
        "t-other",
        &["models", "delete", "studio-sd"],
    );
    assert!(!out.status.success());
    assert_eq!(registered(&client_dir, addr, "t-acme"), ["studio-sd"]);

    // A job on it trains on a worker that only has tiny-sd installed.
    std::fs::create_dir_all(&worker_dir).unwrap();
    let _worker = start_worker(&worker_dir, addr);
    let mut submit = SUBMIT.to_vec();
    submit.extend(["--base-model", "studio-sd"]);
    let job = json(&cli(&client_dir, addr, "t-acme", &submit));
    let id = job["job_id"].as_str().unwrap().to_owned();
    wait_state(&client_dir, addr, &id, "inreview");
    let approved = cli(
        &client_dir,
        addr,
        "t-acme",
        &["approve", &id, "--epoch", "1"],
    );
    assert!(approved.status.success(), "{}", stderr(&approved));
    wait_state(&client_dir, addr, &id, "published");
    // The worker fetched the model into its attempt's folder.
    let worker_log = std::fs::read_to_string(worker_dir.join("worker.log")).unwrap();
    assert!(!worker_log.contains("not installed"), "{worker_log}");

    // Deleted: new jobs cannot name it; the published job keeps it.
    let out = cli(
        &client_dir,
        addr,
        "t-acme",
        &["models", "delete", "studio-sd"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(registered(&client_dir, addr, "t-acme").is_empty());
    let out = cli(&client_dir, addr, "t-acme", &submit);
    assert!(!out.status.success());
    let status = json(&cli(
        &client_dir,
        addr,
        "t-acme",
        &["status", &id, "--json"],
    ));
    assert_eq!(status["base_model"], "studio-sd", "{status:#}");
}
