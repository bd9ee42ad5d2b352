//! `label`: a caption (sentence) and tags (tokens) for every image, from its
//! sidecar file, from an operator-configured labeller program, or from a
//! trigger-word template; writes `labels.json` with tag frequencies.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use loraflow_core::artifact::ArtifactKind;
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use serde::{Deserialize, Serialize};

use crate::dataset;
use crate::util::{cancelled, from_artifact, internal, invalid_input, unavailable};

/// An external labeller: any program that takes an image path as its last
/// argument and prints a caption on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabellerCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_timeout", with = "humantime_secs")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// Where a caption came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionSource {
    Sidecar,
    Command,
    Template,
}

/// One image's label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLabel {
    pub caption: String,
    pub tags: Vec<String>,
    pub source: CaptionSource,
}

/// What `label` writes: every image's caption and tags, and how often each
/// tag occurs (kohya's `ss_tag_frequency`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub images: BTreeMap<String, ImageLabel>,
    pub tag_frequency: BTreeMap<String, u32>,
}

/// The `label` executor.
#[derive(Debug, Clone, Default)]
pub struct Label {
    /// Used for images without a sidecar, when configured.
    pub labeller: Option<LabellerCommand>,
}

/// Tags are the comma-separated tokens of a caption.
pub fn tags_of(caption: &str) -> Vec<String> {
    caption
        .split(',')
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Put the trigger word first, once.
fn with_trigger(caption: &str, trigger: &str) -> String {
    let caption = caption.trim();
    if trigger.is_empty()
        || tags_of(caption)
            .first()
            .is_some_and(|t| t == &trigger.to_lowercase())
    {
        caption.to_owned()
    } else if caption.is_empty() {
        trigger.to_owned()
    } else {
        format!("{trigger}, {caption}")
    }
}

/// `{trigger}` and `{subject}` filled in.
fn from_template(template: &str, trigger: &str, subject: &str) -> String {
    template
        .replace("{trigger}", trigger)
        .replace("{subject}", subject)
}

impl Label {
    async fn run_labeller(
        &self,
        cmd: &LabellerCommand,
        image: &Path,
        name: &str,
    ) -> Result<String, StepError> {
        let out = tokio::time::timeout(
            cmd.timeout,
            tokio::process::Command::new(&cmd.program)
                .args(&cmd.args)
                .arg(image)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "labeller {} timed out after {:?} on {name}",
                cmd.program, cmd.timeout
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "labeller {} could not be started: {e}",
                cmd.program
            ))
        })?;
        if !out.status.success() {
            return Err(unavailable(format!(
                "labeller {} failed on {name} ({}): {}",
                cmd.program,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let caption = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if caption.is_empty() {
            return Err(unavailable(format!(
                "labeller {} printed no caption for {name}",
                cmd.program
            )));
        }
        Ok(caption)
    }

    /// Label the dataset under `root`.
    pub async fn label(
        &self,
        root: &Path,
        files: &[std::path::PathBuf],
        trigger: &str,
        template: &str,
        subject: &str,
        ctx: Option<&StepContext>,
    ) -> Result<Labels, StepError> {
        let images = dataset::images(files);
        if images.is_empty() {
            return Err(invalid_input("the dataset contains no images to label"));
        }
        let mut labels = Labels {
            images: BTreeMap::new(),
            tag_frequency: BTreeMap::new(),
        };
        for (i, image) in images.iter().enumerate() {
            if ctx.is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled());
            }
            let name = dataset::relative(root, image);
            let (raw, source) = match dataset::sidecar(image) {
                Some(sidecar) => {
                    let text = tokio::fs::read_to_string(&sidecar).await.map_err(|e| {
                        invalid_input(format!(
                            "{}: caption is not readable text: {e}",
                            dataset::relative(root, &sidecar)
                        ))
                    })?;
                    (text, CaptionSource::Sidecar)
                }
                None => match &self.labeller {
                    Some(cmd) => (
                        self.run_labeller(cmd, image, &name).await?,
                        CaptionSource::Command,
                    ),
                    None => (
                        from_template(template, trigger, subject),
                        CaptionSource::Template,
                    ),
                },
            };
            let caption = with_trigger(&raw.replace(['\n', '\r'], " "), trigger);
            let tags = tags_of(&caption);
            for t in &tags {
                *labels.tag_frequency.entry(t.clone()).or_default() += 1;
            }
            labels.images.insert(
                name,
                ImageLabel {
                    caption,
                    tags,
                    source,
                },
            );
            if let Some(ctx) = ctx {
                ctx.report(StepProgress {
                    percent: (i + 1) as f32 * 100.0 / images.len() as f32,
                    step: Some(i as u64 + 1),
                    total_steps: Some(images.len() as u64),
                    message: Some("labelling images".into()),
                    ..Default::default()
                });
            }
        }
        Ok(labels)
    }
}

#[async_trait]
impl Executor for Label {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::LABEL.into()]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let root = ctx.workdir().join("dataset");
        let files = ctx
            .artifacts()
            .fetch_dir(&step.dataset.uri, &root)
            .await
            .map_err(from_artifact)?;
        let trigger = step
            .params
            .get("trigger_word")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let template = step
            .step_params
            .get("template")
            .and_then(|v| v.as_str())
            .unwrap_or(if trigger.is_empty() {
                "a photo of {subject}"
            } else {
                "{trigger}, a photo of {subject}"
            });
        let labels = self
            .label(
                &root,
                &files,
                trigger,
                template,
                &step.naming.subject,
                Some(ctx),
            )
            .await?;

        let path = ctx.workdir().join(dataset::LABELS_FILE);
        let json = serde_json::to_vec_pretty(&labels).map_err(|e| internal(e.to_string()))?;
        tokio::fs::write(&path, json)
            .await
            .map_err(|e| internal(format!("writing labels: {e}")))?;
        let artifact = ctx
            .artifacts()
            .put(&path, dataset::LABELS_FILE, ArtifactKind::Labels, None)
            .await
            .map_err(from_artifact)?;
        let count = |s: CaptionSource| labels.images.values().filter(|l| l.source == s).count();
        Ok(StepOutput {
            outputs: serde_json::json!({
                "labelled": labels.images.len(),
                "from_sidecar": count(CaptionSource::Sidecar),
                "from_command": count(CaptionSource::Command),
                "from_template": count(CaptionSource::Template),
                "distinct_tags": labels.tag_frequency.len(),
            }),
            artifacts: vec![artifact],
            epochs: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_word_is_put_first_once() {
        assert_eq!(with_trigger("a dog, grass", "sks"), "sks, a dog, grass");
        assert_eq!(with_trigger("SKS, a dog", "sks"), "SKS, a dog");
        assert_eq!(with_trigger("  ", "sks"), "sks");
        assert_eq!(with_trigger("a dog", ""), "a dog");
    }

    #[test]
    fn tags_are_trimmed_lowercase_tokens() {
        assert_eq!(
            tags_of(" Corgi ,hat,, sitting "),
            ["corgi", "hat", "sitting"]
        );
    }
}
