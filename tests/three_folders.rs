//! A server, a worker and a client that share no folder: each real process
//! runs in its own current directory with its own files, the worker knows
//! only the server's address and its token, and every file (the dataset,
//! the LoRAs, the samples, the published LoRA) travels through the
//! server's `ArtifactService`. Transfers cut in the middle resume; wrong
//! digests, other jobs' files and other tenants' uploads are refused.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loraflow::core::artifact::Sha256;
use loraflow::executors::worker::{RetryPolicy, TransferClient, UploadTarget};
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::artifact_service_client::ArtifactServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

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
            let tail: String = log
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
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
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `loraflow serve` in `dir`: tenants acme and other, executors gpu-1 and
/// gpu-2, everything it stores under `dir`.
fn start_server(dir: &Path) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("loraflow.toml"),
        r#"
        [artifacts]
        root = "artifacts"
        publish_root = "published"

        [[auth.tenants]]
        tenant = "acme"
        token = "t-acme"

        [[auth.tenants]]
        tenant = "other"
        token = "t-other"

        [[auth.executors]]
        executor = "gpu-1"
        token = "e-gpu-1"

        [[auth.executors]]
        executor = "gpu-2"
        token = "e-gpu-2"
        "#,
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
            "--store",
            "sqlite://lf.db",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut file = std::fs::File::create(&log).unwrap();
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

/// `loraflow worker` in `dir`, knowing only the server and its token.
fn start_worker(dir: &Path, server: SocketAddr) -> Proc {
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-sd"),
        &dir.join("models/tiny-sd"),
    );
    let log = dir.join("worker.log");
    let child = bin()
        .args([
            "worker",
            "--id",
            "gpu-1",
            "--token",
            "e-gpu-1",
            "--models",
            "models",
            "--workdir",
            "work",
            "--native-work",
            "native",
        ])
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

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn state(status: &serde_json::Value) -> String {
    status["state"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn wait_state(dir: &Path, server: SocketAddr, job: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = json(&cli(dir, server, "t-acme", &["status", job, "--json"]));
        let now = state(&status);
        if now.replace('_', "") == want {
            return status;
        }
        assert!(now != "failed", "the job failed: {status:#}");
        assert!(Instant::now() < deadline, "still {now}: {status:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A TCP proxy to `upstream` that cuts its first connection once `limit`
/// bytes went from the server to the client (`downstream`) or the other
/// way; later connections pass untouched.
async fn cutting_proxy(
    upstream: SocketAddr,
    limit: usize,
    downstream: bool,
) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let cut_this = !flag.load(Ordering::SeqCst);
            let flag = flag.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let budget = if cut_this { limit } else { usize::MAX };
                let up = async {
                    let b = if downstream { usize::MAX } else { budget };
                    pump(&mut cr, &mut sw, b).await
                };
                let down = async {
                    let b = if downstream { budget } else { usize::MAX };
                    pump(&mut sr, &mut cw, b).await
                };
                // Whichever side ends first (the cut, or a close) ends both.
                let cut_happened = tokio::select! {
                    c = up => c,
                    c = down => c,
                };
                if cut_happened {
                    flag.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, cut)
}

/// Copy until EOF or until `budget` bytes went through; true when cut.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut budget: usize,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let n = n.min(budget);
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        budget -= n;
        if budget == 0 {
            return true;
        }
    }
}

fn fast_retries(client: TransferClient) -> TransferClient {
    client.with_retry(RetryPolicy {
        attempts: 6,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    })
}

#[test]
fn a_server_a_worker_and_a_client_with_no_folder_in_common_publish_a_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_dir, worker_dir, client_dir) = (
        tmp.path().join("server"),
        tmp.path().join("worker"),
        tmp.path().join("client"),
    );
    let (_server, addr) = start_server(&server_dir);
    std::fs::create_dir_all(&worker_dir).unwrap();
    let _worker = start_worker(&worker_dir, addr);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-dataset"),
        &client_dir.join("photos"),
    );

    let submit = [
        "submit",
        "--dataset",
        "photos",
        "--base-model",
        "tiny-sd",
        "--engine",
        "native",
        "--param",
        "epochs=1",
        "--param",
        "trigger_word=lfdemo",
        "--prompt",
        "lfdemo, a red circle, white background, flat shapes",
        "--subject",
        "shapes",
        "--json",
    ];
    let out = cli(&client_dir, addr, "t-acme", &submit);
    let job = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uploaded"), "{stderr}");
    let id = job["job_id"].as_str().unwrap().to_owned();

    // The dataset is in the server's folder, under the tenant's namespace.
    let uploads = server_dir.join("artifacts/datasets/acme");
    let stored: Vec<_> = std::fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(stored.len(), 1, "one content-addressed folder: {stored:?}");
    for f in std::fs::read_dir(client_dir.join("photos")).unwrap() {
        let f = f.unwrap().path();
        let copy = uploads.join(&stored[0]).join(f.file_name().unwrap());
        assert_eq!(sha256_file(&f), sha256_file(&copy), "{}", f.display());
    }

    let review = wait_state(&client_dir, addr, &id, "inreview");
    let approved = cli(
        &client_dir,
        addr,
        "t-acme",
        &["approve", &id, "--epoch", "1"],
    );
    assert!(
        approved.status.success(),
        "{}: {review:#}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let done = wait_state(&client_dir, addr, &id, "published");

    // Published by the server into its own publish root: the approved
    // LoRA's bytes.
    let uri = done["published"].as_str().unwrap().to_owned();
    let path = url::Url::parse(&uri).unwrap().to_file_path().unwrap();
    assert!(
        path.starts_with(server_dir.join("published")),
        "{uri} is not under the server's publish root"
    );
    let lora = url::Url::parse(done["epochs"][0]["lora"].as_str().unwrap())
        .unwrap()
        .to_file_path()
        .unwrap();
    assert!(
        lora.starts_with(server_dir.join("artifacts/jobs")),
        "{}",
        lora.display()
    );
    let digest = sha256_file(&lora);
    assert_eq!(sha256_file(&path), digest);
    // The worker kept no store of its own: its files went to the server.
    assert!(!worker_dir.join("loraflow-artifacts").exists());
    assert!(!worker_dir.join("loraflow-published").exists());
    assert!(
        server_dir
            .join(format!("artifacts/jobs/{id}/train/1"))
            .is_dir()
    );

    // The tenant downloads its published LoRA through a connection cut
    // after 4 KiB of the answer: the download resumes from what it has.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (proxy, cut) = cutting_proxy(addr, 4096, true).await;
        let client =
            fast_retries(TransferClient::connect(&format!("http://{proxy}"), "t-acme").unwrap());
        let dest = client_dir.join("downloads/lora.safetensors");
        let lease = pb::StepLeaseRef {
            job_id: id.clone(),
            lease_id: String::new(),
        };
        client
            .download(&uri, lease.clone(), &dest, Some(&Sha256(digest.clone())))
            .await
            .unwrap();
        assert!(
            cut.load(Ordering::SeqCst),
            "the proxy cut the first connection"
        );
        assert_eq!(sha256_file(&dest), digest);

        // Another tenant may not read it.
        let other = TransferClient::connect(&format!("http://{addr}"), "t-other").unwrap();
        let refused = other
            .download(&uri, lease, &client_dir.join("downloads/stolen"), None)
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(!client_dir.join("downloads/stolen").exists());
    });

    // Submitting the same folder again uploads nothing.
    let again = cli(&client_dir, addr, "t-acme", &submit);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{again_err}");
    assert!(again_err.contains("nothing uploaded"), "{again_err}");
}

fn raw(addr: SocketAddr) -> ArtifactServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    ArtifactServiceClient::new(channel)
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn announce(name: &str, data: &[u8]) -> pb::RemoteFile {
    pb::RemoteFile {
        name: name.into(),
        size_bytes: data.len() as u64,
        sha256: Sha256::of(data).0,
        uri: String::new(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_resume_after_a_cut_and_refuse_what_they_must() {
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = tmp.path().join("server");
    let client_dir = tmp.path().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let (_server, addr) = start_server(&server_dir);
    let datasets = server_dir.join("artifacts/datasets");

    // A 3 MiB file through a connection cut after 1.5 MiB of the upload:
    // the client asks where the server stands and sends the rest.
    let big: Vec<u8> = (0..3 * (1 << 20) + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(client_dir.join("big.bin"), &big).unwrap();
    let (proxy, cut) = cutting_proxy(addr, 3 << 19, false).await;
    let acme = fast_retries(TransferClient::connect(&format!("http://{proxy}"), "t-acme").unwrap());
    let start = acme
        .start_dataset(vec![announce("big.bin", &big)])
        .await
        .unwrap();
    assert_eq!(start.missing, ["big.bin"]);
    let target = UploadTarget::DatasetFile(pb::DatasetFileTarget {
        dataset_upload_id: start.dataset_upload_id.clone(),
        name: "big.bin".into(),
    });
    acme.upload(
        target,
        &client_dir.join("big.bin"),
        big.len() as u64,
        &Sha256::of(&big),
    )
    .await
    .unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy cut the upload");
    let done = acme.commit_dataset(&start.dataset_upload_id).await.unwrap();
    assert_eq!(done.stored, 1);
    let stored = url::Url::parse(&done.dataset_uri)
        .unwrap()
        .to_file_path()
        .unwrap()
        .join("big.bin");
    assert!(
        stored.starts_with(datasets.join("acme")),
        "{}",
        stored.display()
    );
    assert_eq!(sha256_file(&stored), Sha256::of(&big).0);
    // The same dataset again: nothing to upload.
    let again = acme
        .start_dataset(vec![announce("big.bin", &big)])
        .await
        .unwrap();
    assert!(again.dataset_upload_id.is_empty() && again.missing.is_empty());

    // Bytes that do not match the announced digest are refused and nothing
    // is stored.
    let mut c = raw(addr);
    let claimed = b"the bytes the client announced";
    let sent = b"other bytes of the same length!";
    let start = c
        .start_dataset(authed(
            "t-acme",
            pb::StartDatasetRequest {
                files: vec![announce("a.txt", claimed)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let session = c
        .start_upload(authed(
            "t-acme",
            pb::StartUploadRequest {
                target: Some(UploadTarget::DatasetFile(pb::DatasetFileTarget {
                    dataset_upload_id: start.dataset_upload_id.clone(),
                    name: "a.txt".into(),
                })),
                size_bytes: claimed.len() as u64,
                sha256: Sha256::of(claimed).0,
                upload_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let chunk = pb::UploadChunk {
        upload_id: session.upload_id.clone(),
        offset: 0,
        data: sent[..claimed.len()].to_vec(),
    };
    let refused = c
        .upload(authed("t-acme", futures::stream::iter([chunk])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    let commit = c
        .commit_dataset(authed(
            "t-acme",
            pb::CommitDatasetRequest {
                dataset_upload_id: start.dataset_upload_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition, "{commit:?}");
    let dataset_dir = url::Url::parse(&start.dataset_uri)
        .unwrap()
        .to_file_path()
        .unwrap();
    assert!(
        !dataset_dir.exists(),
        "nothing committed at {}",
        dataset_dir.display()
    );
    assert!(
        files_under(&datasets).iter().all(|f| f == &stored),
        "only the first dataset is stored: {:?}",
        files_under(&datasets)
    );

    // A tenant cannot write into another tenant's upload, nor act for a
    // step; an executor cannot upload datasets.
    let denied = c
        .start_upload(authed(
            "t-other",
            pb::StartUploadRequest {
                target: Some(UploadTarget::DatasetFile(pb::DatasetFileTarget {
                    dataset_upload_id: start.dataset_upload_id.clone(),
                    name: "a.txt".into(),
                })),
                size_bytes: claimed.len() as u64,
                sha256: Sha256::of(claimed).0,
                upload_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let step_output = |token: &str, job: &str| {
        authed(
            token,
            pb::StartUploadRequest {
                target: Some(UploadTarget::StepOutput(pb::StepOutputTarget {
                    lease: Some(pb::StepLeaseRef {
                        job_id: job.into(),
                        lease_id: "a-lease".into(),
                    }),
                    name: "lora.safetensors".into(),
                })),
                size_bytes: 3,
                sha256: Sha256::of(b"abc").0,
                upload_id: String::new(),
            },
        )
    };
    let denied = c
        .start_upload(step_output("t-other", "job-1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = c
        .start_dataset(authed(
            "e-gpu-2",
            pb::StartDatasetRequest {
                files: vec![announce("a.txt", claimed)],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // A name that climbs out of its folder is refused, naming the field.
    let bad = c
        .start_dataset(authed(
            "t-acme",
            pb::StartDatasetRequest {
                files: vec![announce("../escape.txt", claimed)],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("files[0].name"), "{bad:?}");

    // A job of acme's, queued (no worker runs here): an executor that holds
    // no lease on it reads nothing of it and writes nothing for it.
    std::fs::create_dir_all(client_dir.join("photos")).unwrap();
    std::fs::write(client_dir.join("photos/a.png"), b"not really a png").unwrap();
    std::fs::write(client_dir.join("photos/a.txt"), b"a caption").unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = client_dir.clone();
        move || {
            cli(
                &dir,
                addr,
                "t-acme",
                &[
                    "submit",
                    "--dataset",
                    "photos",
                    "--base-model",
                    "tiny-sd",
                    "--engine",
                    "native",
                    "--subject",
                    "x",
                    "--json",
                ],
            )
        }
    })
    .await
    .unwrap();
    let job = json(&out);
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    let file = files_under(&datasets.join("acme"))
        .into_iter()
        .find(|f| f.ends_with("a.txt"))
        .expect("the job's dataset is stored");
    let file_uri = url::Url::from_file_path(file).unwrap().to_string();
    let gpu2 = TransferClient::connect(&format!("http://{addr}"), "e-gpu-2").unwrap();
    let lease = pb::StepLeaseRef {
        job_id: job_id.clone(),
        lease_id: "not-a-lease-of-mine".into(),
    };
    let read = gpu2
        .download(
            &file_uri,
            lease.clone(),
            &client_dir.join("stolen.txt"),
            None,
        )
        .await;
    assert!(
        matches!(read, Err(loraflow::core::executor::ArtifactError::Unsupported { ref hint, .. }) if hint.contains("permission denied")),
        "{read:?}"
    );
    assert!(!client_dir.join("stolen.txt").exists());
    let listed = c
        .list_files(authed(
            "e-gpu-2",
            pb::ListFilesRequest {
                uri: file_uri.trim_end_matches("a.txt").to_owned(),
                lease: Some(lease),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied, "{listed:?}");
    let denied = c
        .start_upload(step_output("e-gpu-2", &job_id))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(!server_dir.join(format!("artifacts/jobs/{job_id}")).exists());
}
