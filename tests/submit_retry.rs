//! Submitting is safe to retry. A real `loraflow serve` process is stopped
//! exactly after a job's commit and before its answer (the
//! `create-job-after-commit` fail point aborts it there, as a crash would),
//! then started again on the same address; the `loraflow submit` that was
//! waiting for an answer retries with the same request id and gets the job,
//! or `loraflow submit --resume` gets it later. Either way there is one
//! job, with one `JobCreated` and one `JobSubmitted`. (A job created and
//! submitted in one commit is never left `Pending` by a crash; one left so
//! by an earlier release is finished by a repeat: `tests/request_ids.rs`.)

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loraflow::Engine;
use loraflow::core::catalogue::Catalogue;
use loraflow::core::ids::TenantId;
use loraflow::core::job::{JobServices, JobState};
use loraflow::store::Store;

/// The fail point, as `FAILPOINTS` names it, that aborts the server after
/// it committed a new job and before it answered.
const CRASH_AFTER_COMMIT: &str = "create-job-after-commit=return";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    c.env("RUST_LOG", "warn")
        .env_remove("LORAFLOW_TOKEN")
        .env_remove("LORAFLOW_SERVER")
        .env_remove("FAILPOINTS");
    c
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("lf.db").display())
}

/// `loraflow serve` on `listen` (`127.0.0.1:0` for any port), with the
/// crash hook armed when `crash` is set.
fn serve(dir: &Path, listen: &str, crash: bool) -> Server {
    std::fs::write(
        dir.join("loraflow.toml"),
        "[[auth.tenants]]\ntenant = \"acme\"\ntoken = \"t-acme\"\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cmd = bin();
        cmd.args(["serve", "--listen", listen, "--config"])
            .arg(dir.join("loraflow.toml"))
            .arg("--store")
            .arg(store_url(dir))
            .arg("--artifacts")
            .arg(dir.join("artifacts"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if crash {
            cmd.env("FAILPOINTS", CRASH_AFTER_COMMIT);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("loraflow serving on ")
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        });
        match addr {
            Some(addr) => {
                // Keep draining stderr so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Server { child, addr };
            }
            // The address of a server just killed may take a moment to free.
            None if Instant::now() < deadline => {
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
            }
            None => panic!("the server did not start on {listen}"),
        }
    }
}

fn client(addr: &str, dir: &Path) -> Command {
    let mut c = bin();
    c.env("LORAFLOW_SERVER", format!("http://{addr}"))
        .env("LORAFLOW_TOKEN", "t-acme")
        .env("LORAFLOW_ARTIFACTS", dir.join("artifacts"))
        .current_dir(dir);
    c
}

fn submit_args() -> Vec<&'static str> {
    vec![
        "submit",
        "--base-model",
        "tiny-sd",
        "--dataset",
        "photos",
        "--subject",
        "corgi",
        "--prompt",
        "a corgi",
        "--json",
    ]
}

/// Wait for a process to end by itself.
fn exits_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The event types of the job `acme` created with `request_id`, read from
/// the store file while no server runs.
async fn stored_events(dir: &Path, request_id: &str) -> Vec<&'static str> {
    let store = Store::open(&store_url(dir), JobServices::new(Catalogue::builtin()))
        .await
        .unwrap();
    let id = Engine::job_id_for_request(&TenantId::new("acme"), request_id);
    let names = store
        .history(&id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.name())
        .collect();
    store.close().await;
    names
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    common::dataset(&dir.join("photos"), 3);
    (tmp, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_answer_a_crash_lost_is_answered_by_its_retry() {
    let (_tmp, dir) = setup();
    let mut first = serve(&dir, "127.0.0.1:0", true);
    let addr = first.addr.clone();
    let rid = uuid::Uuid::new_v4().to_string();
    let mut submit = client(&addr, &dir)
        .args(submit_args())
        .args(["--request-id", &rid, "--retries", "12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The server dies after the commit, before its answer: the job is
    // submitted, and the client does not know it.
    let crashed = exits_within(&mut first.child, Duration::from_secs(60));
    assert!(
        !crashed.success(),
        "the fail point aborts the server: {crashed:?}"
    );
    assert_eq!(
        stored_events(&dir, &rid).await,
        ["JobCreated", "JobSubmitted", "StepQueued"]
    );

    // Back on the same address, the client's retry gets the job.
    let second = serve(&dir, &addr, false);
    exits_within(&mut submit, Duration::from_secs(90));
    let out = submit.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let job = json(&out);
    assert!(
        stderr.contains("retry 1 of 12"),
        "each retry is said: {stderr}"
    );
    assert!(stderr.contains(&rid), "with its request id: {stderr}");
    let id = Engine::job_id_for_request(&TenantId::new("acme"), &rid);
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["state"], "submitted", "{job:#}");

    // One job, and each of its events once.
    let listed = client(&addr, &dir)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let jobs: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    drop(second);
    assert_eq!(
        stored_events(&dir, &rid).await,
        ["JobCreated", "JobSubmitted", "StepQueued"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_resume_answers_for_a_job_the_server_did_not_confirm() {
    let (_tmp, dir) = setup();
    let mut first = serve(&dir, "127.0.0.1:0", true);
    let addr = first.addr.clone();

    // No retries: the client reports what it knows and how to finish.
    let out = client(&addr, &dir)
        .args(submit_args())
        .args(["--retries", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let rid = stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitting with request id "))
        .unwrap_or_else(|| panic!("the request id is printed: {stderr}"))
        .trim()
        .to_owned();
    assert!(
        stderr.contains(&format!("rerun with `loraflow submit --resume {rid}`")),
        "{stderr}"
    );
    exits_within(&mut first.child, Duration::from_secs(30));
    assert_eq!(
        stored_events(&dir, &rid).await,
        ["JobCreated", "JobSubmitted", "StepQueued"]
    );
    let pending = Engine::job_id_for_request(&TenantId::new("acme"), &rid);

    let second = serve(&dir, &addr, false);
    let resumed = json(
        &client(&addr, &dir)
            .args(["submit", "--resume", &rid, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(resumed["job_id"], pending.as_str());
    assert_eq!(resumed["state"], "submitted");
    // A second resume changes nothing.
    let again = json(
        &client(&addr, &dir)
            .args(["submit", "--resume", &rid, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["job_id"], pending.as_str());

    // A request id that made no job: nothing to resume, and nothing made.
    let unknown = client(&addr, &dir)
        .args(["submit", "--resume", "never-sent"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no job was created with request id \"never-sent\""),
        "{stderr}"
    );
    // `--resume` takes no job description.
    let mixed = client(&addr, &dir)
        .args(["submit", "--resume", &rid, "--subject", "corgi"])
        .output()
        .unwrap();
    assert_eq!(mixed.status.code(), Some(2));
    drop(second);
    assert_eq!(
        stored_events(&dir, &rid).await,
        ["JobCreated", "JobSubmitted", "StepQueued"]
    );
    let store = Store::open(&store_url(&dir), JobServices::new(Catalogue::builtin()))
        .await
        .unwrap();
    let job = store.load(&pending).await.unwrap().unwrap();
    assert_eq!(job.job.state(), Some(JobState::Submitted));
    store.close().await;
}
