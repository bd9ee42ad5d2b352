//! `loraflow models check <path>`: what a base model on disk is (family,
//! layout), which components it lacks, and whether this build's native
//! engine can train it. Reads configs and safetensors headers only.

use std::path::PathBuf;

use clap::Args;
use loraflow::executors::model_check::{Layout, ModelReport, check_model};

use super::client::Exit;
use super::exit;
use super::output::out;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The model folder or checkpoint file.
    pub path: PathBuf,
}

/// `json`: the global `--json` flag.
pub fn check(args: CheckArgs, json: bool) -> anyhow::Result<()> {
    let report = check_model(&args.path)
        .map_err(|e| anyhow::Error::from(Exit(exit::FAILED, e.to_string())))?;
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["native_trainable"] = report.native_trainable().into();
        out!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        print(&report)?;
    }
    if report.missing.is_empty() {
        Ok(())
    } else {
        Err(Exit(
            exit::FAILED,
            format!(
                "{} is incomplete: {} missing",
                report.path.display(),
                report.missing.len()
            ),
        )
        .into())
    }
}

fn print(r: &ModelReport) -> anyhow::Result<()> {
    let layout = match r.layout {
        Layout::Diffusers => "diffusers folder",
        Layout::SingleFile => "single-file checkpoint",
    };
    out!("path:     {}", r.path.display())?;
    out!("layout:   {layout}")?;
    out!("family:   {} ({})", r.family, r.evidence)?;
    if r.missing.is_empty() {
        out!("missing:  nothing")?;
    } else {
        out!("missing:")?;
        for m in &r.missing {
            out!("  - {m}")?;
        }
    }
    match (&r.native_unsupported, r.missing.is_empty()) {
        (None, true) => out!("native:   this build can train it")?,
        (None, false) => {
            out!("native:   this build can train it once the missing parts are added")?
        }
        (Some(why), _) => out!("native:   not trainable by this build: {why}")?,
    }
    for note in &r.notes {
        out!("note:     {note}")?;
    }
    if r.native_trainable() && r.layout == Layout::Diffusers {
        out!(
            "install:  copy or link the folder to <models>/<base model id>/ on the worker \
             (`loraflow worker --models <models>`); the worker lists it when it starts"
        )?;
    }
    Ok(())
}
