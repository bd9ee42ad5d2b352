//! `loraflow worker --artifacts s3://...` reaches the bucket with the same
//! settings as the server's `[artifacts]` section, from a `loraflow.toml`
//! (`--artifacts-config`) or from flags, with no `AWS_*` variable set;
//! the worker checks the bucket when it starts and says which endpoint
//! refused it. Against a real S3-compatible server on loopback (moto).

#![cfg(feature = "s3")]

use crate::s3_server;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use s3_server::{BUCKET, S3Server};

/// A worker started with `args`, its environment cleared of AWS settings,
/// stopped once it said it serves (or on its own): its exit and stderr.
fn worker(args: &[&str], envs: &[(&str, &str)], dir: &std::path::Path) -> (Option<Output>, String) {
    let log = dir.join(format!("worker-{}.log", rand::random::<u32>()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    cmd.args(["worker", "--id", "gpu-1", "--token", "e-gpu-1"])
        .args([
            "--kinds",
            "validate_dataset",
            "--server",
            "http://127.0.0.1:9",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("LORAFLOW_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving") {
            let _ = child.kill();
            let _ = child.wait();
            return (None, text);
        }
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (Some(out), std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "the worker neither served nor stopped: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_takes_the_s3_settings_from_a_config_file_or_flags() {
    let Some(s3) = S3Server::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = format!("s3://{BUCKET}/loraflow");

    // The server's own file, as it is.
    std::fs::write(
        tmp.path().join("loraflow.toml"),
        format!(
            "[artifacts]\nurl = \"{root}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             allow_http = true\naccess_key_id = \"AKIALORAFLOWTEST\"\n\
             secret_access_key = \"loraflow-test-secret\"\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    let (stopped, log) = worker(
        &["--artifacts", &root, "--artifacts-config", "loraflow.toml"],
        &[],
        tmp.path(),
    );
    assert!(stopped.is_none(), "{log}");
    assert!(log.contains(&format!("in the store at {root}")), "{log}");

    // Flags, the secret from its variable.
    let endpoint = s3.endpoint();
    let flags = [
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-region",
        "us-east-1",
        "--s3-allow-http",
        "--s3-access-key-id",
        "AKIALORAFLOWTEST",
    ];
    let mut args = vec!["--artifacts", root.as_str()];
    args.extend(flags);
    let secret = [("LORAFLOW_S3_SECRET_ACCESS_KEY", "loraflow-test-secret")];
    let (stopped, log) = worker(&args, &secret, tmp.path());
    assert!(stopped.is_none(), "{log}");

    // A bucket that is not there: the start ends, naming the bucket and
    // the endpoint the flag gave.
    let missing = "s3://no-such-bucket/loraflow";
    let mut args = vec!["--artifacts", missing];
    args.extend(flags);
    let (stopped, log) = worker(&args, &secret, tmp.path());
    let out = stopped.expect("the worker stops");
    assert!(!out.status.success());
    assert!(log.contains("no-such-bucket"), "{log}");
    assert!(log.contains(&endpoint), "{log}");
}
