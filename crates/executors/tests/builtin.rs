//! The built-in executors against real files in a real (local) artifact store.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use image::{ImageFormat, Rgb, RgbImage};
use loraflow_core::artifact::{Artifact, ArtifactKind, EpochOutput, Sha256};
use loraflow_core::catalogue::{Engine, ParamValue, Params};
use loraflow_core::executor::{ArtifactIo, Executor, StepAssignment, StepContext};
use loraflow_core::ids::{JobId, LeaseId, StepId};
use loraflow_core::job::{DatasetRef, Naming, StepErrorKind};
use loraflow_executors::label::CaptionSource;
use loraflow_executors::{
    ArtifactStore, Label, LabellerCommand, Labels, Manifest, Publish, ValidateDataset,
};

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    encode(w, h, seed, ImageFormat::Png)
}

fn encode(w: u32, h: u32, seed: u8, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x as u8).wrapping_add(seed), y as u8, seed])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

struct Env {
    _tmp: tempfile::TempDir,
    store: ArtifactStore,
    dataset_uri: String,
    work: std::path::PathBuf,
}

async fn env(files: &[(&str, Vec<u8>)]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("upload");
    for (name, data) in files {
        write(&local, name, data);
    }
    let store = ArtifactStore::open(tmp.path().join("artifacts").to_str().unwrap()).unwrap();
    let (dataset_uri, n) = store.upload_dir(&local, "datasets/corgi").await.unwrap();
    assert_eq!(n, files.len());
    let work = tmp.path().join("work");
    Env {
        _tmp: tmp,
        store,
        dataset_uri,
        work,
    }
}

fn assignment(kind: &str, dataset_uri: &str) -> StepAssignment {
    StepAssignment {
        job_id: JobId::new("job-1"),
        step_id: StepId::new(kind),
        kind: kind.into(),
        attempt: 1,
        lease_id: LeaseId::new("lease-1"),
        params: Params::from([("trigger_word".to_owned(), ParamValue::Str("sks".into()))]),
        step_params: serde_json::Value::Null,
        base_model: "tiny-sd".into(),
        engine: Engine::Native,
        model_family: None,
        base_model_uri: None,
        dataset: DatasetRef {
            uri: dataset_uri.to_owned(),
            sha256: None,
        },
        sample_prompts: vec![],
        naming: Naming {
            subject: "corgi".into(),
            version: "v2".into(),
        },
        inputs: vec![],
        epochs: vec![],
        approved_epoch: None,
        approved_step: None,
    }
}

fn context(env: &Env, step: &StepAssignment) -> StepContext {
    let io = Arc::new(
        env.store
            .for_step(&step.job_id, &step.step_id, step.attempt),
    );
    StepContext::new(io, env.work.clone(), tracing::Span::none()).0
}

#[tokio::test]
async fn a_clean_dataset_gets_a_manifest_with_every_image() {
    let env = env(&[
        ("a.png", png(96, 80, 1)),
        ("a.txt", b"a corgi".to_vec()),
        ("b.jpg", encode(128, 64, 2, ImageFormat::Jpeg)),
        ("sub/c.webp", encode(64, 64, 3, ImageFormat::WebP)),
    ])
    .await;
    let step = assignment("validate_dataset", &env.dataset_uri);
    let out = ValidateDataset::default()
        .run(&step, &context(&env, &step))
        .await
        .unwrap();
    assert_eq!(out.outputs["image_count"], 3);
    let manifest_artifact = &out.artifacts[0];
    assert_eq!(manifest_artifact.kind, ArtifactKind::Manifest);
    let bytes = env.store.get_verified(manifest_artifact).await.unwrap();
    let manifest: Manifest = serde_json::from_slice(&bytes).unwrap();
    let files: Vec<_> = manifest
        .images
        .iter()
        .map(|i| (i.file.as_str(), i.width, i.height, i.format.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            ("a.png", 96, 80, "png"),
            ("b.jpg", 128, 64, "jpeg"),
            ("sub/c.webp", 64, 64, "webp")
        ]
    );
    assert_eq!(manifest.images[0].caption_file.as_deref(), Some("a.txt"));
    assert_eq!(manifest.images[0].sha256, Sha256::of(&png(96, 80, 1)));
}

#[tokio::test]
async fn every_bad_file_is_named_with_its_reason() {
    let good = png(96, 96, 7);
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0]);
    let env = env(&[
        ("good.png", good.clone()),
        ("copy.png", good.clone()),
        ("corrupt.png", vec![0x13; 300]),
        ("truncated.png", good[..good.len() / 2].to_vec()),
        ("tiny.png", png(16, 16, 1)),
        ("anim.png", gif),
        ("notes.pdf", b"%PDF-1.4".to_vec()),
    ])
    .await;
    let step = assignment("validate_dataset", &env.dataset_uri);
    let err = ValidateDataset::default()
        .run(&step, &context(&env, &step))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(!err.retryable);
    let m = &err.message;
    assert!(m.starts_with("6 problems in the dataset"), "{m}");
    for expected in [
        "anim.png: unsupported format GIF; use PNG, JPEG or WebP",
        "good.png: duplicate of copy.png (same content)",
        "corrupt.png: not an image",
        "notes.pdf: unsupported file type",
        "tiny.png: 16x16 is too small; each side must be at least 64 px",
        "truncated.png: corrupt or truncated Png image",
    ] {
        assert!(m.contains(expected), "missing {expected:?} in {m}");
    }
}

/// A long problem list travels as an artifact: the step's error quotes the
/// first problems and references the full list by URI and SHA-256, so the
/// failure report stays small however bad the dataset.
#[tokio::test]
async fn a_long_problem_list_is_an_artifact_the_error_references() {
    let mut files = vec![("good.png".to_owned(), png(96, 96, 7))];
    for i in 0..500 {
        files.push((format!("junk/file-{i:04}.bin"), vec![0u8; 4]));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let env = env(&refs).await;
    let step = assignment("validate_dataset", &env.dataset_uri);
    let err = ValidateDataset::default()
        .run(&step, &context(&env, &step))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    let m = &err.message;
    assert!(m.starts_with("500 problems in the dataset"), "{m}");
    assert!(m.contains("; and 480 more (every one is listed in "), "{m}");
    assert!(m.len() < 4096, "{} bytes", m.len());
    let uri = m
        .split("listed in ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap();
    assert!(uri.ends_with("/problems.txt"), "{uri}");
    let sha = m.split("sha256 ").nth(1).unwrap().trim_end_matches(')');
    let list = Artifact {
        kind: ArtifactKind::Report,
        name: "problems.txt".into(),
        uri: uri.to_owned(),
        sha256: Sha256(sha.to_owned()),
        size_bytes: 0,
        epoch: None,
    };
    let text = String::from_utf8(env.store.get_verified(&list).await.unwrap().to_vec()).unwrap();
    assert_eq!(text.lines().count(), 500);
    assert!(
        text.contains("junk/file-0499.bin: unsupported file type"),
        "{text}"
    );
}

#[tokio::test]
async fn labels_come_from_sidecars_then_the_template_with_the_trigger_first() {
    let env = env(&[
        ("a.png", png(64, 64, 1)),
        ("a.txt", b"corgi, hat\n".to_vec()),
        ("b.png", png(64, 64, 2)),
        ("c.png", png(64, 64, 3)),
        ("c.caption", b"sks, corgi, grass".to_vec()),
    ])
    .await;
    let step = assignment("label", &env.dataset_uri);
    let out = Label::default()
        .run(&step, &context(&env, &step))
        .await
        .unwrap();
    assert_eq!(out.outputs["from_sidecar"], 2);
    assert_eq!(out.outputs["from_template"], 1);
    let labels: Labels =
        serde_json::from_slice(&env.store.get_verified(&out.artifacts[0]).await.unwrap()).unwrap();
    assert_eq!(labels.images["a.png"].caption, "sks, corgi, hat");
    assert_eq!(labels.images["b.png"].caption, "sks, a photo of corgi");
    assert_eq!(labels.images["b.png"].source, CaptionSource::Template);
    assert_eq!(labels.images["c.png"].caption, "sks, corgi, grass");
    assert_eq!(labels.tag_frequency["sks"], 3);
    assert_eq!(labels.tag_frequency["corgi"], 2);
}

#[tokio::test]
async fn an_external_labeller_captions_images_without_sidecars() {
    let env = env(&[("dog.png", png(64, 64, 1)), ("dog2.png", png(64, 64, 9))]).await;
    let step = assignment("label", &env.dataset_uri);
    let labeller = Label {
        labeller: Some(LabellerCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo \"labelled, $(basename \"$0\" .png)\"".into(),
            ],
            timeout: std::time::Duration::from_secs(10),
        }),
    };
    let out = labeller.run(&step, &context(&env, &step)).await.unwrap();
    let labels: Labels =
        serde_json::from_slice(&env.store.get_verified(&out.artifacts[0]).await.unwrap()).unwrap();
    assert_eq!(labels.images["dog.png"].caption, "sks, labelled, dog");
    assert_eq!(labels.images["dog2.png"].source, CaptionSource::Command);

    let failing = Label {
        labeller: Some(LabellerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "echo model not loaded >&2; exit 3".into()],
            timeout: std::time::Duration::from_secs(10),
        }),
    };
    let err = failing.run(&step, &context(&env, &step)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Unavailable);
    assert!(err.message.contains("failed on dog.png"), "{}", err.message);
    assert!(err.message.contains("model not loaded"), "{}", err.message);
}

async fn lora_artifact(env: &Env, epoch: u32, bytes: &[u8]) -> Artifact {
    let local = env.work.join(format!("e{epoch}.safetensors"));
    std::fs::create_dir_all(&env.work).unwrap();
    std::fs::write(&local, bytes).unwrap();
    let io = env
        .store
        .for_step(&JobId::new("job-1"), &StepId::new("train"), 1);
    io.put(
        &local,
        &format!("e{epoch}.safetensors"),
        ArtifactKind::Lora,
        Some(epoch),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn publish_copies_the_approved_epoch_and_verifies_it() {
    let env = env(&[("a.png", png(64, 64, 1))]).await;
    let dest_root = env.work.parent().unwrap().join("published");
    let mut step = assignment("publish", &env.dataset_uri);
    step.epochs = vec![
        EpochOutput {
            epoch: 1,
            lora: Some(lora_artifact(&env, 1, b"weights-1").await),
            samples: vec![],
            loss: None,
            ..Default::default()
        },
        EpochOutput {
            epoch: 2,
            lora: Some(lora_artifact(&env, 2, b"weights-2").await),
            samples: vec![],
            loss: None,
            ..Default::default()
        },
    ];
    step.approved_epoch = Some(2);
    let publish = Publish {
        destination: format!("file://{}", dest_root.display()),
    };
    let out = publish.run(&step, &context(&env, &step)).await.unwrap();
    let published = &out.artifacts[0];
    assert_eq!(published.kind, ArtifactKind::Published);
    assert_eq!(published.sha256, Sha256::of(b"weights-2"));
    let on_disk = dest_root.join("corgi/v2/job-1/corgi-v2.safetensors");
    assert_eq!(std::fs::read(on_disk).unwrap(), b"weights-2");

    // A destination relative to the current folder is recorded as the
    // absolute URL it resolved to, so the log says where the LoRA is for good.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!(
        "{up}{}",
        dest_root
            .join("rel")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let out = Publish {
        destination: relative,
    }
    .run(&step, &context(&env, &step))
    .await
    .unwrap();
    let uri = &out.artifacts[0].uri;
    assert!(uri.starts_with("file:///") && !uri.contains(".."), "{uri}");
    assert_eq!(
        url::Url::parse(uri).unwrap().to_file_path().unwrap(),
        dest_root.join("rel/corgi/v2/job-1/corgi-v2.safetensors")
    );

    // A LoRA whose bytes changed after training is refused, never published.
    step.epochs[1].lora.as_mut().unwrap().sha256 = Sha256::of(b"something else");
    let err = publish.run(&step, &context(&env, &step)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(err.message.contains("expected"), "{}", err.message);
}

#[tokio::test]
async fn a_missing_dataset_is_invalid_input_naming_the_uri() {
    let env = env(&[("a.png", png(64, 64, 1))]).await;
    let step = assignment(
        "validate_dataset",
        &format!("{}datasets/none/", env.store.root()),
    );
    let err = ValidateDataset::default()
        .run(&step, &context(&env, &step))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(err.message.contains("datasets/none"), "{}", err.message);
}
