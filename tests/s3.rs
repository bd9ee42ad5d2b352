//! The engine on S3: configured from `loraflow.toml`'s `[artifacts]`, it
//! checks the bucket when it starts, and a real tiny-sd job (the native
//! engine, in-process) runs from upload to publication with every artifact
//! in a bucket of a real S3-compatible server on loopback (moto).

#![cfg(feature = "s3")]

use crate::s3_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use loraflow::config::Config;
use loraflow::core::artifact::Sha256;
use loraflow::core::catalogue::{Engine as EngineKind, ParamValue};
use loraflow::core::ids::TenantId;
use loraflow::core::job::{DatasetRef, JobSpec, JobState, Naming};
use loraflow::executors::native::NativeOptions;
use loraflow::executors::{
    Label, LocalDataset, NativeSampler, NativeTrainer, Publish, ValidateDataset,
};
use loraflow::{Engine, NewJob};
use s3_server::{BUCKET, S3Server, http};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// `loraflow.toml` for artifacts in `bucket` on the test server.
fn config(server: &S3Server, bucket: &str) -> Config {
    let text = format!(
        r#"
[artifacts]
url = "s3://{bucket}/loraflow"
publish_root = "s3://{bucket}/published"
endpoint = "{}"
region = "us-east-1"
allow_http = true
access_key_id = "AKIALORAFLOWTEST"
secret_access_key = "loraflow-test-secret"
"#,
        server.endpoint()
    );
    Config::from_toml(&text, Path::new("loraflow.toml")).unwrap()
}

/// The object's bytes as a plain HTTP client sees them (a presigned GET).
async fn raw_get(engine: &Engine, uri: &str) -> (u16, Vec<u8>) {
    let url = engine
        .artifacts()
        .presign_get(uri, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("an S3 store presigns");
    http("GET", url.as_str(), &[])
}

#[tokio::test]
async fn the_engine_refuses_to_start_on_a_missing_bucket() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Err(err) = Engine::builder()
        .config(&config(&server, "no-such-bucket"))
        .store(format!("sqlite://{}", tmp.path().join("db").display()))
        .build()
        .await
    else {
        panic!("a missing bucket stops the start");
    };
    let text = err.to_string();
    assert!(
        text.contains("bucket \"no-such-bucket\" does not exist"),
        "{text}"
    );
    assert!(text.contains(&server.endpoint()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_sd_job_runs_to_publication_with_its_artifacts_on_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&server, BUCKET);
    let native = NativeOptions::new(assets()).with_device("cpu");
    let engine = Engine::builder()
        .config(&config)
        .store(format!(
            "sqlite://{}",
            tmp.path().join("loraflow.db").display()
        ))
        .workdir(tmp.path().join("work"))
        .executor(ValidateDataset::default())
        .executor(Label::default())
        .executor(NativeTrainer::new(native.clone()).unwrap())
        .executor(NativeSampler::new(native).unwrap())
        .executor(Publish {
            destination: config.artifacts.publish_root.clone(),
        })
        .build()
        .await
        .unwrap();
    assert_eq!(
        engine.artifacts().root().as_str(),
        format!("s3://{BUCKET}/loraflow/")
    );

    let tenant = TenantId::new("studio");
    let upload = engine
        .artifacts()
        .upload_dataset(
            "studio",
            &LocalDataset::read(&assets().join("demo-dataset")).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        upload
            .uri
            .starts_with(&format!("s3://{BUCKET}/loraflow/datasets/studio/")),
        "{}",
        upload.uri
    );
    let spec = JobSpec {
        tenant: tenant.clone(),
        base_model: "tiny-sd".into(),
        engine: EngineKind::Native,
        profile: Some("quick_test".into()),
        params: [("epochs".to_owned(), ParamValue::Int(2))].into(),
        dataset: DatasetRef {
            uri: upload.uri.clone(),
            sha256: None,
        },
        sample_prompts: vec!["a green circle, white background, flat shapes".into()],
        priority: 0,
        naming: Naming {
            subject: "shapes".into(),
            version: "v1".into(),
        },
        labels: Default::default(),
        workflow: None,
        webhooks: Vec::new(),
    };
    let job = engine
        .create_job(
            &tenant,
            NewJob {
                spec,
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id;

    crate::common::approve_last_epoch_until_ended(&engine, &tenant, &job, "s3 test").await;

    let status = engine.get_job(&tenant, &job).await.unwrap().status;
    assert_eq!(status.state, JobState::Published, "{:?}", status.failure);
    // Every LoRA and sample of every epoch is in the bucket.
    for epoch in status.epochs.values() {
        let lora = epoch.lora.as_ref().unwrap();
        assert!(
            lora.uri
                .starts_with(&format!("s3://{BUCKET}/loraflow/jobs/{job}/")),
            "{}",
            lora.uri
        );
        for artifact in std::iter::once(lora).chain(&epoch.samples) {
            let (code, body) = raw_get(&engine, &artifact.uri).await;
            assert_eq!(code, 200, "{}", artifact.uri);
            assert_eq!(Sha256::of(&body), artifact.sha256, "{}", artifact.uri);
        }
    }
    // The published LoRA is in the publish prefix, byte for byte the approved one.
    let published = status.published.unwrap();
    assert!(
        published
            .uri
            .starts_with(&format!("s3://{BUCKET}/published/")),
        "{}",
        published.uri
    );
    let (code, body) = raw_get(&engine, &published.uri).await;
    assert_eq!(code, 200);
    assert_eq!(Sha256::of(&body), published.sha256);
    assert_eq!(body.len() as u64, published.size_bytes);

    engine.shutdown().await;
}
