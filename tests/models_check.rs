//! `loraflow models check` as a user runs it: the report on stdout (plain or
//! JSON), exit 0 for a complete model, exit 1 with the reason otherwise.

use std::path::Path;
use std::process::Command;

fn check(path: &Path, json: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loraflow"));
    cmd.args(["models", "check"]).arg(path);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn the_demo_model_checks_out_as_trainable() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-sd");
    let out = check(&tiny, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("family:   sd15"), "{stdout}");
    assert!(stdout.contains("missing:  nothing"), "{stdout}");
    assert!(
        stdout.contains("native:   this build can train it"),
        "{stdout}"
    );

    let out = check(&tiny, true);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["family"], "sd15");
    assert_eq!(report["layout"], "diffusers");
    assert_eq!(report["native_trainable"], true);
}

#[test]
fn an_incomplete_model_or_a_non_model_exits_1_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-sd");
    let copy = tmp.path().join("tiny-sd");
    for entry in [
        "model_index.json",
        "unet",
        "text_encoder",
        "tokenizer",
        "scheduler",
    ] {
        let from = tiny.join(entry);
        if from.is_dir() {
            std::fs::create_dir_all(copy.join(entry)).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), copy.join(entry).join(f.file_name())).unwrap();
            }
        } else {
            std::fs::create_dir_all(&copy).unwrap();
            std::fs::copy(&from, copy.join(entry)).unwrap();
        }
    }
    let out = check(&copy, false);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no vae/ folder"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete"));

    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "not a model").unwrap();
    let out = check(&notes, false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a base model"), "{stderr}");
}
