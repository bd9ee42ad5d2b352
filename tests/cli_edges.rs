//! The `loraflow` binary at its edges, as real processes over loopback: a
//! refused request is said once with its field and what was given; a
//! closed stdout stops a command quietly with exit 0; a worker whose
//! registration is refused exits 3; SIGTERM stops a server within its grace
//! while a `watch` client reconnects to the server that replaces it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common;

struct Server {
    child: Child,
    addr: String,
}

/// A failing test must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    c.env("RUST_LOG", "warn")
        .env_remove("LORAFLOW_TOKEN")
        .env_remove("LORAFLOW_SERVER");
    c
}

/// `loraflow serve` without executors (jobs wait in their queue) on
/// `listen`, over the SQLite file `lf.db` in `dir`.
fn start(dir: &Path, listen: &str, extra: &[&str]) -> Server {
    std::fs::write(
        dir.join("loraflow.toml"),
        r#"
        [[auth.tenants]]
        tenant = "acme"
        token = "t-acme"
        [[auth.executors]]
        executor = "gpu-1"
        token = "e-gpu-1"
        "#,
    )
    .unwrap();
    let mut child = bin()
        .args(["serve", "--listen", listen, "--config"])
        .arg(dir.join("loraflow.toml"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("lf.db").display()))
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("loraflow serving on ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

fn client(server: &Server, dir: &Path) -> Command {
    let mut c = bin();
    c.env("LORAFLOW_SERVER", format!("http://{}", server.addr))
        .env("LORAFLOW_TOKEN", "t-acme")
        .env("LORAFLOW_ARTIFACTS", dir.join("artifacts"))
        .current_dir(dir);
    c
}

fn run(server: &Server, dir: &Path, args: &[&str]) -> Output {
    client(server, dir).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Submit a tiny-sd job on the dataset folder `photos`; its id.
fn submit(server: &Server, dir: &Path) -> String {
    let out = run(
        server,
        dir,
        &[
            "submit",
            "--base-model",
            "tiny-sd",
            "--dataset",
            "photos",
            "--subject",
            "corgi",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    job["job_id"].as_str().unwrap().to_owned()
}

fn wait_exit(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    common::dataset(&dir.join("photos"), 3);
    (tmp, dir)
}

#[test]
fn refusals_are_said_once_with_the_field_and_what_was_given() {
    let (_tmp, dir) = setup();
    let server = start(&dir, "127.0.0.1:0", &[]);
    let id = submit(&server, &dir);

    let out = run(&server, &dir, &["approve", &id, "--epoch", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("\n  epoch: 0 was given"), "{text}");
    assert_eq!(text.matches("epochs count from 1").count(), 1, "{text}");
    assert!(!text.contains("required"), "{text}");

    // Values the native engine cannot run are refused at submit, naming the parameter.
    for (param, field, says) in [
        (
            "resolution=63",
            "job.params.resolution",
            "resolution 63 is not a multiple of 16",
        ),
        (
            "lr_scheduler=cosine_with_restarts",
            "job.params.lr_scheduler",
            "\"cosine_with_restarts\" is not one of",
        ),
        (
            "optimizer=prodigy",
            "job.params.optimizer",
            "\"prodigy\" is not one of adamw",
        ),
    ] {
        let out = run(
            &server,
            &dir,
            &[
                "submit",
                "--base-model",
                "tiny-sd",
                "--dataset",
                "photos",
                "--subject",
                "corgi",
                "--param",
                param,
            ],
        );
        assert_eq!(out.status.code(), Some(1));
        let text = stderr(&out);
        assert!(text.contains(&format!("\n  {field}: ")), "{text}");
        assert_eq!(text.matches(says).count(), 1, "{text}");
    }
    let listed = run(&server, &dir, &["list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the first job exists"
    );
}

/// `loraflow status ID | head -1`: the reader is gone before the first
/// line is written; the command stops quietly with exit 0.
#[test]
fn a_closed_stdout_stops_a_command_quietly() {
    let (_tmp, dir) = setup();
    let server = start(&dir, "127.0.0.1:0", &[]);
    let id = submit(&server, &dir);
    for args in [
        vec!["status", id.as_str()],
        vec!["history", id.as_str(), "--json"],
        vec!["list"],
    ] {
        let mut child = client(&server, &dir)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end at once: every write the command makes fails.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        assert!(!text.contains("error"), "{args:?}: {text}");
    }
}

#[test]
fn a_worker_whose_registration_is_refused_exits_3() {
    let (_tmp, dir) = setup();
    let server = start(&dir, "127.0.0.1:0", &[]);
    let mut worker = bin()
        .args(["worker", "--id", "gpu-1", "--kinds", "validate_dataset"])
        .env("LORAFLOW_SERVER", format!("http://{}", server.addr))
        .env("LORAFLOW_TOKEN", "not-the-token")
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut worker, Duration::from_secs(30), "the refused worker");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(3), "{text}");
    assert!(
        text.contains("refused to register executor gpu-1"),
        "{text}"
    );
}

/// SIGTERM: the server stops accepting, ends the open watch stream, and
/// exits within its grace; the watcher reconnects to the server that
/// replaces it on the same address and store, and sees the job end there.
#[test]
fn sigterm_ends_watch_streams_and_stops_within_the_grace() {
    let (_tmp, dir) = setup();
    let mut first = start(&dir, "127.0.0.1:0", &["--shutdown-grace", "3s"]);
    let id = submit(&first, &dir);

    let mut watcher = client(&first, &dir)
        .args(["watch", &id, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let out = BufReader::new(watcher.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (err_tx, err_lines) = mpsc::channel::<String>();
    let err = BufReader::new(watcher.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let until = |event: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the watcher never printed {event}"));
        if line.contains(event) {
            break;
        }
    };
    until("StepQueued");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = Instant::now();
    let status = wait_exit(
        &mut first.child,
        Duration::from_secs(6),
        "the SIGTERM'd server",
    );
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "took {:?}",
        stopped.elapsed()
    );
    // The watcher was told, not left hanging.
    loop {
        let line = err_lines
            .recv_timeout(Duration::from_secs(5))
            .expect("the watcher said why its stream ended");
        if line.contains("the server is shutting down") {
            break;
        }
    }

    // A new server on the same address and store; the watcher finds it.
    let second = start(&dir, &first.addr, &[]);
    let out = run(&second, &dir, &["cancel", &id, "--reason", "after restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    until("JobCancelled");
    let status = wait_exit(&mut watcher, Duration::from_secs(30), "the watcher");
    assert_eq!(status.code(), Some(1), "a cancelled job is a failed one");
}
