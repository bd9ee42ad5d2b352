//! The `loraflow` binary: a real server process on an OS-chosen port, driven
//! by the client commands, stopped by SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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

fn start(dir: &Path) -> Server {
    std::fs::write(
        dir.join("loraflow.toml"),
        r#"
        [[auth.tenants]]
        tenant = "acme"
        token = "t-acme"
        "#,
    )
    .unwrap();
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--with-executors",
            "--config",
        ])
        .arg(dir.join("loraflow.toml"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("lf.db").display()))
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
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
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

fn client(server: &Server, dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("LORAFLOW_SERVER", format!("http://{}", server.addr))
        .env("LORAFLOW_TOKEN", "t-acme")
        .env("LORAFLOW_ARTIFACTS", dir.join("artifacts"))
        .current_dir(dir)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_client_commands_drive_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    common::dataset(&dir.join("photos"), 3);
    let mut server = start(dir);

    // A submission with a local folder uploads it; the job file names the rest.
    std::fs::write(
        dir.join("job.toml"),
        r#"
        base_model = "tiny-sd"
        dataset = "photos"
        sample_prompts = ["a corgi"]
        [naming]
        subject = "corgi"
        [params]
        epochs = 1
        [labels]
        team = "vision"
        "#,
    )
    .unwrap();
    let job = json(&client(
        &server,
        dir,
        &["submit", "job.toml", "--json", "--priority", "5"],
    ));
    let id = job["job_id"].as_str().unwrap().to_owned();
    assert_eq!(job["tenant"], "acme");

    let status = json(&client(&server, dir, &["status", &id, "--json"]));
    assert_eq!(status["job_id"], id.as_str());
    let listed = client(&server, dir, &["list", "--label", "team=vision"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));

    let cancelled = json(&client(
        &server,
        dir,
        &["cancel", &id, "--reason", "cli test", "--json"],
    ));
    assert_eq!(cancelled["state"], "failed");
    assert_eq!(cancelled["failure"]["reason"], "cancelled");

    // Watching a finished job replays it and exits 1 because it failed.
    let watched = client(&server, dir, &["watch", &id, "--json"]);
    assert_eq!(watched.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&watched.stdout).contains("JobCancelled"));

    let history = client(&server, dir, &["history", &id, "--json"]);
    let types: Vec<String> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("JobCreated"));
    assert_eq!(types.last().map(String::as_str), Some("JobCancelled"));

    // Cancelling again is a harmless repeat; other refusals say why, with exit code 1.
    assert!(client(&server, dir, &["cancel", &id]).status.success());
    let bad = client(&server, dir, &["approve", &id, "--epoch", "1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("state Failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let no_token = bin()
        .args(["list"])
        .env("LORAFLOW_SERVER", format!("http://{}", server.addr))
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("--token"));
    let missing = client(
        &server,
        dir,
        &[
            "submit",
            "--base-model",
            "tiny-sd",
            "--dataset",
            "nowhere",
            "--subject",
            "x",
        ],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("neither an existing folder nor a URI")
    );

    // SIGTERM stops the server cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    // An unreachable server: exit code 3.
    let unreachable = bin()
        .args(["list"])
        .env("LORAFLOW_SERVER", format!("http://{}", server.addr))
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
}

/// `loraflow demo` trains a real LoRA with the native engine on the shipped
/// demo model and dataset, publishes the best epoch, and leaves an audit
/// trail that verifies.
#[test]
fn the_demo_trains_reviews_and_publishes_a_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = bin()
        .args(["demo", "--epochs", "2", "--json", "--dir"])
        .arg(&dir)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let status = json(&out);
    assert_eq!(status["state"], "Published", "{status:#}");
    let epochs = status["epochs"].as_object().unwrap();
    assert_eq!(epochs.len(), 2, "one LoRA per epoch: {status:#}");

    // The approved epoch is the suggested one: the lowest validation loss
    // when every epoch has one, else the lowest training loss.
    let key = if epochs.values().all(|e| e["validation_loss"].is_f64()) {
        "validation_loss"
    } else {
        "loss"
    };
    let loss = |e: &serde_json::Value| e[key].as_f64().unwrap();
    let best = epochs
        .values()
        .min_by(|a, b| loss(a).total_cmp(&loss(b)))
        .unwrap();
    assert_eq!(status["approved_epoch"], best["epoch"]);

    // Every file the job names exists with the digest the log holds.
    let path = |uri: &serde_json::Value| {
        url::Url::parse(uri.as_str().unwrap())
            .unwrap()
            .to_file_path()
            .unwrap()
    };
    let check = |artifact: &serde_json::Value| {
        let bytes = std::fs::read(path(&artifact["uri"])).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            artifact["sha256"].as_str().unwrap()
        );
        bytes
    };
    let published = check(&status["published"]);
    assert!(path(&status["published"]["uri"]).starts_with(dir.join("published")));
    let lora = safetensors::SafeTensors::deserialize(&published).unwrap();
    assert!(
        lora.names()
            .iter()
            .any(|n| n.starts_with("lora_unet_") && n.ends_with(".lora_down.weight")),
        "a kohya LoRA"
    );
    for e in epochs.values() {
        check(&e["lora"]);
        let samples = e["samples"].as_array().unwrap();
        // The demo's prompts are the shapes world's demo probes (four trigger prompts, four
        // of the base world), so that its concept score reads its own samples.
        assert_eq!(samples.len(), 8, "every demo prompt sampled");
        for s in samples {
            let png = check(s);
            image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
        }
    }
    let curve = status["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str().unwrap().ends_with("loss_curve.png"))
        .expect("a loss curve");
    image::load_from_memory(&check(curve)).unwrap();

    // The audit replays the job from the demo's store and verifies its chain.
    let store = format!("sqlite://{}", dir.join("loraflow.db").display());
    let replay = bin()
        .args([
            "replay",
            status["job_id"].as_str().unwrap(),
            "--store",
            &store,
        ])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stdout).contains("JobPublished"));
}
