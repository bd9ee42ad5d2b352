//! What a client asks for: `JobSpec`, `DatasetRef`, `Naming`.
//!
//! The wire `JobSpec` has no tenant (it comes from the caller's token), so
//! the wire → domain direction is [`pb::JobSpec::into_domain`], which takes
//! the tenant, rather than `TryFrom`.

use loraflow_core::catalogue::Engine;
use loraflow_core::ids::TenantId;
use loraflow_core::job::{DatasetRef, JobSpec, Naming};
use loraflow_core::validation::Violations;
use loraflow_core::workflow::WorkflowSpec;

use super::artifact::optional_sha256;
use super::params::{params_from_wire, params_to_wire};
use super::{Fields, invalid, required};
use crate::pb::v1 as pb;

/// The version a `Naming` gets when the client leaves it empty; the same
/// default as the domain's serde form.
pub const DEFAULT_NAMING_VERSION: &str = "v1";

impl From<DatasetRef> for pb::DatasetRef {
    fn from(d: DatasetRef) -> Self {
        Self {
            uri: d.uri,
            sha256: d.sha256.map(|s| s.0).unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::DatasetRef> for DatasetRef {
    type Error = Violations;

    fn try_from(d: pb::DatasetRef) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let sha256 = f.take("sha256", optional_sha256(&d.sha256));
        let Some(sha256) = sha256 else {
            return Err(f.into_violations());
        };
        // An empty uri is the aggregate's to refuse (`dataset.uri`), along
        // with everything else it checks about the spec.
        f.finish(Self { uri: d.uri, sha256 })
    }
}

impl From<Naming> for pb::Naming {
    fn from(n: Naming) -> Self {
        Self {
            subject: n.subject,
            version: n.version,
        }
    }
}

impl From<pb::Naming> for Naming {
    fn from(n: pb::Naming) -> Self {
        Self {
            subject: n.subject,
            version: if n.version.is_empty() {
                DEFAULT_NAMING_VERSION.to_owned()
            } else {
                n.version
            },
        }
    }
}

/// An engine name from the wire (`native`, `kohya`, `ai-toolkit`).
pub fn engine(name: &str) -> Result<Engine, Violations> {
    if name.is_empty() {
        return Err(invalid("required; one of native, kohya, ai-toolkit"));
    }
    name.parse()
        .map_err(|e: loraflow_core::catalogue::UnknownEngine| invalid(e.to_string()))
}

/// The spec as the wire carries it; the tenant is left out.
impl From<JobSpec> for pb::JobSpec {
    fn from(s: JobSpec) -> Self {
        Self {
            base_model: s.base_model.0,
            engine: s.engine.as_str().to_owned(),
            profile: s.profile.unwrap_or_default(),
            params: params_to_wire(s.params),
            dataset: Some(s.dataset.into()),
            sample_prompts: s.sample_prompts,
            workflow: s.workflow.map(Into::into),
            priority: s.priority,
            naming: Some(s.naming.into()),
            labels: s.labels,
            webhooks: s.webhooks.into_iter().map(Into::into).collect(),
        }
    }
}

impl pb::JobSpec {
    /// The domain spec, owned by `tenant`. Field paths are relative to the
    /// spec (`params.epochs`, `workflow.steps[1].kind`); nest them under the
    /// request field with [`nest`](super::nest).
    pub fn into_domain(self, tenant: TenantId) -> Result<JobSpec, Violations> {
        let mut f = Fields::default();
        let engine = f.take("engine", engine(&self.engine));
        let params = f.take("params", params_from_wire(self.params));
        let dataset = f.take(
            "dataset",
            required(self.dataset).and_then(DatasetRef::try_from),
        );
        let naming = f.take("naming", required(self.naming).map(Naming::from));
        let workflow = match self.workflow {
            Some(w) => f.take("workflow", WorkflowSpec::try_from(w)).map(Some),
            None => Some(None),
        };
        let (Some(engine), Some(params), Some(dataset), Some(naming), Some(workflow)) =
            (engine, params, dataset, naming, workflow)
        else {
            return Err(f.into_violations());
        };
        f.finish(JobSpec {
            tenant,
            base_model: self.base_model.into(),
            engine,
            profile: (!self.profile.is_empty()).then_some(self.profile),
            params,
            dataset,
            sample_prompts: self.sample_prompts,
            priority: self.priority,
            naming,
            labels: self.labels,
            workflow,
            webhooks: self.webhooks.into_iter().map(Into::into).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::artifact::Sha256;
    use loraflow_core::catalogue::ParamValue;
    use loraflow_core::job::canned::sample_spec;
    use loraflow_core::workflow::{StepSpec, standard_lora};

    /// The canned spec with every optional part filled in.
    fn full_spec() -> JobSpec {
        let catalogue = loraflow_core::catalogue::Catalogue::builtin();
        let model = catalogue.base_model(&"sd15".into()).unwrap();
        let mut s = sample_spec();
        s.engine = Engine::Kohya;
        s.profile = Some("quick_test".into());
        s.params.insert("epochs".into(), ParamValue::Int(4));
        s.params
            .insert("learning_rate".into(), ParamValue::Float(2e-4));
        s.dataset.sha256 = Some(Sha256::of(b"dataset"));
        s.sample_prompts.push("a corgi on a skateboard".into());
        s.priority = -5;
        s.naming.version = "v7".into();
        s.labels.insert("team".into(), "vision".into());
        s.webhooks = vec![loraflow_core::webhook::WebhookSpec::new(
            "https://hooks.example/loraflow",
            ["workflow:*", "step:completed"],
        )];
        let mut wf = standard_lora(model, Engine::Kohya);
        wf.steps[0].params = serde_json::json!({"min_side": 512});
        s.workflow = Some(wf);
        s
    }

    #[test]
    fn canned_spec_round_trips() {
        let spec = sample_spec();
        let wire = pb::JobSpec::from(spec.clone());
        assert_eq!(wire.into_domain(spec.tenant.clone()), Ok(spec));
    }

    #[test]
    fn full_spec_round_trips() {
        let spec = full_spec();
        let wire = pb::JobSpec::from(spec.clone());
        assert_eq!(wire.into_domain(spec.tenant.clone()), Ok(spec));
    }

    #[test]
    fn every_engine_round_trips() {
        for e in Engine::ALL {
            assert_eq!(engine(e.as_str()), Ok(e));
        }
    }

    #[test]
    fn empty_version_defaults() {
        let n = Naming::from(pb::Naming {
            subject: "corgi".into(),
            version: String::new(),
        });
        assert_eq!(n.version, "v1");
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let mut wire = pb::JobSpec::from(sample_spec());
        wire.engine = "diffusers".into();
        wire.dataset = None;
        wire.naming = None;
        wire.params
            .insert("epochs".into(), pb::ParamValue { kind: None });
        let mut step = pb::StepSpec::from(StepSpec::new("train", "train"));
        step.timeouts.as_mut().unwrap().heartbeat = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        wire.workflow = Some(pb::WorkflowSpec {
            steps: vec![
                pb::StepSpec::from(StepSpec::new("a", "label")),
                pb::StepSpec::from(StepSpec::new("b", "label")),
                step,
            ],
        });
        let err = wire.into_domain("acme".into()).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "engine",
                "params.epochs",
                "dataset",
                "naming",
                "workflow.steps[2].timeouts.heartbeat",
            ]
        );
        assert!(err.0[0].description.contains("diffusers"), "{err}");
        assert!(err.0[4].description.contains("positive"), "{err}");
    }

    #[test]
    fn bad_dataset_digest_is_reported() {
        let mut wire = pb::JobSpec::from(sample_spec());
        wire.dataset.as_mut().unwrap().sha256 = "short".into();
        let err = wire.into_domain("acme".into()).unwrap_err();
        assert_eq!(err.0[0].field, "dataset.sha256");
    }
}
