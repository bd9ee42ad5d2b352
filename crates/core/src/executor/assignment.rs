//! What an executor is given to run, and what it returns.

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, EpochOutput};
use crate::catalogue::{Engine, ModelFamily, Params};
use crate::ids::{BaseModelId, JobId, LeaseId, StepId};
use crate::job::{DatasetRef, Naming};
use crate::workflow::StepKind;

/// One leased attempt of one step, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAssignment {
    pub job_id: JobId,
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub lease_id: LeaseId,
    /// The job's resolved parameters with this step's retry adjustments.
    pub params: Params,
    /// The step's own settings from the workflow.
    #[serde(default)]
    pub step_params: serde_json::Value,
    pub base_model: BaseModelId,
    pub engine: Engine,
    pub model_family: Option<ModelFamily>,
    /// Where the base model is when it is one a tenant registered (a
    /// diffusers folder or a `.safetensors` file): the executor fetches it
    /// like the dataset. `None`: a catalogue model, installed on the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_uri: Option<String>,
    pub dataset: DatasetRef,
    pub sample_prompts: Vec<String>,
    pub naming: Naming,
    /// Artifacts of the steps this one depends on (directly or not).
    pub inputs: Vec<Artifact>,
    /// Epochs produced so far (for sampling and publishing).
    pub epochs: Vec<EpochOutput>,
    pub approved_epoch: Option<u32>,
    /// Set when the reviewer chose the LoRA saved at this step (a
    /// `save-now` LoRA within `approved_epoch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_step: Option<u64>,
}

impl StepAssignment {
    /// The first input of a given kind, if any.
    pub fn input(&self, kind: crate::artifact::ArtifactKind) -> Option<&Artifact> {
        self.inputs.iter().find(|a| a.kind == kind)
    }

    /// The approved LoRA among `epochs` (what a publish step copies): the
    /// one saved at `approved_step` when the reviewer chose by step, else
    /// the end-of-epoch LoRA of `approved_epoch`.
    pub fn approved_lora(&self) -> Option<&Artifact> {
        let with_lora = || self.epochs.iter().filter(|e| e.lora.is_some());
        let chosen = match (self.approved_step, self.approved_epoch) {
            (Some(step), _) => with_lora()
                .filter(|e| e.step == Some(step))
                .max_by_key(|e| e.requested),
            (None, Some(epoch)) => with_lora().find(|e| e.epoch == epoch && !e.requested),
            (None, None) => None,
        };
        chosen.and_then(|e| e.lora.as_ref())
    }
}

/// What a successful step returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    #[serde(default)]
    pub outputs: serde_json::Value,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub epochs: Vec<EpochOutput>,
}
