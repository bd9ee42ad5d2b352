//! The artifact store against a real S3-compatible server on loopback
//! (moto's server mode, started by each test): uploads, downloads with
//! digest checks, dataset folders, publishing, presigned URLs, and the
//! errors an operator sees for a missing bucket or refused credentials.

#![cfg(feature = "s3")]

#[path = "support/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::time::Duration;

use loraflow_core::artifact::{ArtifactKind, Sha256};
use loraflow_core::executor::{ArtifactError, ArtifactIo};
use loraflow_core::ids::{JobId, StepId};
use loraflow_executors::{ArtifactStore, S3Options};
use s3_server::{BUCKET, S3Server, http};

fn options(server: &S3Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        access_key_id: Some("AKIALORAFLOWTEST".into()),
        secret_access_key: Some("loraflow-test-secret".into()),
        session_token: None,
    }
}

fn store(server: &S3Server, root: &str) -> ArtifactStore {
    ArtifactStore::open_with(root, &options(server)).unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    p
}

/// The object's bytes as a plain HTTP client sees them (through a
/// presigned GET; the server refuses anonymous reads).
async fn raw_get(store: &ArtifactStore, uri: &str) -> (u16, Vec<u8>) {
    let url = store
        .presign_get(uri, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    http("GET", url.as_str(), &[])
}

/// Replace the object behind the store's back (a presigned PUT).
async fn raw_put(store: &ArtifactStore, uri: &str, data: &[u8]) -> u16 {
    let url = store
        .presign_put(uri, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    http("PUT", url.as_str(), data).0
}

#[tokio::test]
async fn a_put_artifact_is_fetched_back_with_its_digest_checked() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/runs"));
    store.probe().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let local = write(tmp.path(), "lora.safetensors", &data);

    let step = store.for_step(&JobId::new("job-1"), &StepId::new("train"), 1);
    let artifact = step
        .put(&local, "lora-e1.safetensors", ArtifactKind::Lora, Some(1))
        .await
        .unwrap();
    assert_eq!(
        artifact.uri,
        format!("s3://{BUCKET}/runs/jobs/job-1/train/1/lora-e1.safetensors")
    );
    assert_eq!(artifact.sha256, Sha256::of(&data));
    assert_eq!(artifact.size_bytes, data.len() as u64);

    // The object is really on the server, under the key the URI names.
    let (status, body) = raw_get(&store, &artifact.uri).await;
    assert_eq!(status, 200);
    assert_eq!(body, data);

    let dest = tmp.path().join("down/lora.safetensors");
    step.fetch(&artifact, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn a_dataset_folder_is_uploaded_listed_and_fetched_whole() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/artifacts"));
    let tmp = tempfile::tempdir().unwrap();
    let upload = tmp.path().join("upload");
    write(&upload, "a.png", b"image a");
    write(&upload, "a.txt", b"a corgi");
    write(&upload, "nested/b.png", b"image b");

    let (uri, n) = store
        .upload_dir(&upload, "datasets/acme/corgi")
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(uri, format!("s3://{BUCKET}/artifacts/datasets/acme/corgi/"));
    assert_eq!(
        store.list_dir(&uri).await.unwrap(),
        [
            ("a.png".to_owned(), 7),
            ("a.txt".to_owned(), 7),
            ("nested/b.png".to_owned(), 7)
        ]
    );

    let step = store.for_step(&JobId::new("job-2"), &StepId::new("validate"), 1);
    let dest = tmp.path().join("fetched");
    let paths = step.fetch_dir(&uri, &dest).await.unwrap();
    assert_eq!(
        paths,
        [
            dest.join("a.png"),
            dest.join("a.txt"),
            dest.join("nested/b.png")
        ]
    );
    assert_eq!(
        std::fs::read(dest.join("nested/b.png")).unwrap(),
        b"image b"
    );

    // An empty prefix is a missing dataset, named.
    let missing = format!("s3://{BUCKET}/artifacts/datasets/acme/none/");
    let err = step
        .fetch_dir(&missing, &tmp.path().join("none"))
        .await
        .unwrap_err();
    assert_eq!(err, ArtifactError::NotFound { uri: missing });
}

#[tokio::test]
async fn publishing_copies_to_another_prefix_and_checks_the_copy() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/artifacts"));
    let tmp = tempfile::tempdir().unwrap();
    let local = write(tmp.path(), "lora.safetensors", b"approved weights");
    let step = store.for_step(&JobId::new("job-3"), &StepId::new("train"), 1);
    let lora = step
        .put(&local, "lora-e2.safetensors", ArtifactKind::Lora, Some(2))
        .await
        .unwrap();

    let dest = format!("s3://{BUCKET}/published/corgi/v1/corgi-v1.safetensors");
    let published = step.publish(&lora, &dest).await.unwrap();
    assert_eq!(published.kind, ArtifactKind::Published);
    assert_eq!(published.uri, dest);
    assert_eq!(published.name, "corgi-v1.safetensors");
    assert_eq!(published.sha256, lora.sha256);
    assert_eq!(published.epoch, Some(2));
    let (status, body) = raw_get(&store, &dest).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"approved weights");
    // The published copy reads back through the store, verified.
    assert_eq!(
        &store.get_verified(&published).await.unwrap()[..],
        b"approved weights"
    );
}

#[tokio::test]
async fn a_corrupted_object_is_refused_by_the_digest_check() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/artifacts"));
    let tmp = tempfile::tempdir().unwrap();
    let local = write(tmp.path(), "lora.safetensors", b"the real weights");
    let step = store.for_step(&JobId::new("job-4"), &StepId::new("train"), 1);
    let lora = step
        .put(&local, "lora.safetensors", ArtifactKind::Lora, Some(1))
        .await
        .unwrap();

    // Someone overwrites the object in the bucket.
    assert_eq!(raw_put(&store, &lora.uri, b"tampered bytes!!").await, 200);

    let dest = tmp.path().join("down.safetensors");
    let err = step.fetch(&lora, &dest).await.unwrap_err();
    assert_eq!(
        err,
        ArtifactError::DigestMismatch {
            uri: lora.uri.clone(),
            expected: lora.sha256.clone(),
            actual: Sha256::of(b"tampered bytes!!"),
        }
    );
    assert!(!dest.exists(), "corrupted bytes must not reach the disk");

    // Nor is a corrupted LoRA published.
    let dest_uri = format!("s3://{BUCKET}/published/x.safetensors");
    let err = step.publish(&lora, &dest_uri).await.unwrap_err();
    assert!(matches!(err, ArtifactError::DigestMismatch { .. }), "{err}");
    let (status, _) = raw_get(&store, &dest_uri).await;
    assert_eq!(status, 404, "nothing was published");
}

#[tokio::test]
async fn a_missing_bucket_is_named_with_its_endpoint_at_probe_and_on_use() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, "s3://no-such-bucket/artifacts");
    let err = store.probe().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bucket \"no-such-bucket\" does not exist"),
        "{text}"
    );
    assert!(text.contains(&server.endpoint()), "{text}");
    assert!(text.contains("create it"), "{text}");

    // The same explanation when a step writes there.
    let tmp = tempfile::tempdir().unwrap();
    let local = write(tmp.path(), "f.bin", b"x");
    let step = store.for_step(&JobId::new("job-5"), &StepId::new("train"), 1);
    let err = step
        .put(&local, "f.bin", ArtifactKind::Lora, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("bucket \"no-such-bucket\" does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn refused_credentials_say_which_bucket_and_what_to_check() {
    let Some(server) = S3Server::start_refusing_credentials() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/artifacts"));
    let err = store.probe().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(text.contains(&format!("bucket \"{BUCKET}\"")), "{text}");
    assert!(text.contains("InvalidAccessKeyId"), "{text}");
    assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
    assert!(text.contains(&server.endpoint()), "{text}");
    assert!(
        !text.contains("loraflow-test-secret"),
        "the secret is never printed: {text}"
    );
}

#[tokio::test]
async fn a_presigned_put_then_get_moves_bytes_without_credentials() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let store = store(&server, &format!("s3://{BUCKET}/artifacts"));
    let uri = format!("{}jobs/job-6/train/1/upload.bin", store.root());
    let ttl = Duration::from_secs(300);

    let put = store.presign_put(&uri, ttl).await.unwrap().unwrap();
    assert!(put.as_str().starts_with(&server.endpoint()), "{put}");
    assert!(put.query().unwrap().contains("X-Amz-Signature="), "{put}");
    assert!(put.query().unwrap().contains("X-Amz-Expires=300"), "{put}");
    let data = b"bytes straight to the bucket".to_vec();
    let (status, body) = http("PUT", put.as_str(), &data);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let get = store.presign_get(&uri, ttl).await.unwrap().unwrap();
    let (status, body) = http("GET", get.as_str(), &[]);
    assert_eq!(status, 200);
    assert_eq!(body, data);

    // What was uploaded is an ordinary object of the store.
    let artifact = loraflow_core::artifact::Artifact {
        kind: ArtifactKind::Lora,
        name: "upload.bin".into(),
        uri: uri.clone(),
        sha256: Sha256::of(&data),
        size_bytes: data.len() as u64,
        epoch: None,
    };
    assert_eq!(&store.get_verified(&artifact).await.unwrap()[..], &data[..]);
}
