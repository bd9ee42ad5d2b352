//! Limits on every input: how long a subject, a label or a prompt may be,
//! how many of each a job may carry, how deep step parameters may nest, how
//! large a request and a step outcome may be. One [`Limits`] value is
//! checked by the aggregate when a job is created ([`Limits::check_spec`]),
//! so every front-end (the embedded API, gRPC, the coming HTTP API) refuses
//! the same inputs with the same field violations, before anything is
//! written. Operators change the defaults in the `[limits]` section of
//! `loraflow.toml`.
//!
//! Dataset size (images, bytes) is the operator's
//! [`ServiceStatus`](crate::catalogue::ServiceStatus); the number of files
//! of any kind is [`Limits::dataset_files`].

use serde::{Deserialize, Serialize};

use crate::catalogue::ParamValue;
use crate::job::JobSpec;
use crate::validation::Violations;

/// The parameter whose string value is the trigger word (checked against
/// [`Limits::trigger_word_chars`] rather than [`Limits::string_param_chars`]).
pub const TRIGGER_WORD_PARAM: &str = "trigger_word";

/// What the service accepts. Every field is the largest value allowed; the
/// defaults are generous for real use and small enough that no input can
/// make a job unreadable or a file name unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Characters of `naming.subject`.
    pub subject_chars: usize,
    /// Characters of a name: `base_model`, `profile`, `naming.version`, a
    /// workflow step's `kind`, a requirement label.
    pub name_chars: usize,
    /// Labels per job.
    pub labels: usize,
    /// Characters of a label key.
    pub label_key_chars: usize,
    /// Characters of a label value.
    pub label_value_chars: usize,
    /// Characters of a string parameter (other than the trigger word).
    pub string_param_chars: usize,
    /// Characters of the `trigger_word` parameter.
    pub trigger_word_chars: usize,
    /// Sample prompts per job.
    pub sample_prompts: usize,
    /// Characters of one sample prompt.
    pub prompt_chars: usize,
    /// Webhooks per job.
    pub webhooks: usize,
    /// Characters of a webhook URL.
    pub webhook_url_chars: usize,
    /// Characters of the dataset URI.
    pub dataset_uri_chars: usize,
    /// Steps of a workflow given in the spec.
    pub workflow_steps: usize,
    /// Nesting of a step's `params` (objects and lists inside each other;
    /// `{}` is 1).
    pub step_params_depth: usize,
    /// A step's `params`, encoded as JSON, in bytes.
    pub step_params_bytes: usize,
    /// The whole job spec, encoded as JSON, in bytes.
    pub request_bytes: usize,
    /// Characters of a request id (idempotency key).
    pub request_id_chars: usize,
    /// Files in a dataset folder, captions and other files included (the
    /// images and bytes are the service status' `max_images` and
    /// `max_dataset_bytes`).
    pub dataset_files: usize,
    /// A step's outcome (outputs, artifacts, epochs) as it travels to the
    /// server, in bytes. Larger results must be written as artifacts.
    pub step_outcome_bytes: usize,
    /// Characters of a step error's message; longer ones are cut.
    pub step_error_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            subject_chars: 100,
            name_chars: 64,
            labels: 64,
            label_key_chars: 63,
            label_value_chars: 256,
            string_param_chars: 256,
            trigger_word_chars: 64,
            sample_prompts: crate::job::MAX_SAMPLE_PROMPTS,
            prompt_chars: crate::job::MAX_PROMPT_CHARS,
            webhooks: crate::webhook::MAX_WEBHOOKS,
            webhook_url_chars: crate::webhook::MAX_URL_CHARS,
            dataset_uri_chars: 2048,
            workflow_steps: 64,
            step_params_depth: 8,
            step_params_bytes: 16 * 1024,
            request_bytes: 256 * 1024,
            request_id_chars: 36,
            dataset_files: 10_000,
            step_outcome_bytes: 1024 * 1024,
            step_error_chars: 8 * 1024,
        }
    }
}

/// At most this many characters of a refused value are quoted back.
const QUOTED_CHARS: usize = 40;

/// A refused value as an error message quotes it: whole when short, else
/// its start and its length, so that an oversized input never makes an
/// oversized answer.
pub fn quote(value: &str) -> String {
    let count = value.chars().count();
    if count <= QUOTED_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(QUOTED_CHARS).collect();
        format!("{head:?}… ({count} characters)")
    }
}

/// `text` cut to at most `max` characters, saying how much was cut.
pub fn truncate(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let note = format!(" … ({} more characters cut)", count - max);
    let keep = max.saturating_sub(note.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&note);
    out
}

/// How deeply objects and lists nest in `value`: `{}` and `[1]` are 1,
/// `{"a": {}}` is 2, a scalar is 0. Iterative, so a hostile depth cannot
/// overflow the stack.
pub fn json_depth(value: &serde_json::Value) -> usize {
    fn children(v: &serde_json::Value) -> Box<dyn Iterator<Item = &serde_json::Value> + '_> {
        match v {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => Box::new(std::iter::empty()),
        }
    }
    let is_container = |v: &serde_json::Value| v.is_array() || v.is_object();
    if !is_container(value) {
        return 0;
    }
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(v).filter(|c| is_container(c)).map(|c| (c, d + 1)));
    }
    deepest
}

impl Limits {
    fn chars(
        &self,
        v: &mut Violations,
        field: String,
        what: &str,
        value: &str,
        max: usize,
        key: &str,
    ) {
        let count = value.chars().count();
        if count > max {
            v.push(
                field,
                format!(
                    "{what} {} has {count} characters; at most {max} are allowed (limits.{key})",
                    quote(value)
                ),
            );
        }
    }

    fn count(&self, v: &mut Violations, field: &str, what: &str, n: usize, max: usize, key: &str) {
        if n > max {
            v.push(
                field,
                format!("{n} {what} given; at most {max} are allowed (limits.{key})"),
            );
        }
    }

    /// Every limit a job spec breaks, one violation per field, with field
    /// paths relative to the spec (`naming.subject`, `labels.team`,
    /// `params.trigger_word`, `workflow.steps[2].params`).
    pub fn check_spec(&self, spec: &JobSpec) -> Violations {
        let mut v = Violations::default();
        let size = serde_json::to_vec(spec)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > self.request_bytes {
            v.push(
                "",
                format!(
                    "the job spec is {size} bytes; at most {} are allowed (limits.request_bytes)",
                    self.request_bytes
                ),
            );
        }
        self.chars(
            &mut v,
            "naming.subject".into(),
            "subject",
            &spec.naming.subject,
            self.subject_chars,
            "subject_chars",
        );
        self.chars(
            &mut v,
            "naming.version".into(),
            "version",
            &spec.naming.version,
            self.name_chars,
            "name_chars",
        );
        self.chars(
            &mut v,
            "base_model".into(),
            "base model",
            spec.base_model.as_str(),
            self.name_chars,
            "name_chars",
        );
        if let Some(p) = &spec.profile {
            self.chars(
                &mut v,
                "profile".into(),
                "profile",
                p,
                self.name_chars,
                "name_chars",
            );
        }
        self.chars(
            &mut v,
            "dataset.uri".into(),
            "dataset uri",
            &spec.dataset.uri,
            self.dataset_uri_chars,
            "dataset_uri_chars",
        );
        self.count(
            &mut v,
            "labels",
            "labels",
            spec.labels.len(),
            self.labels,
            "labels",
        );
        for (key, value) in &spec.labels {
            let field = format!(
                "labels.{}",
                key.chars().take(QUOTED_CHARS).collect::<String>()
            );
            self.chars(
                &mut v,
                field.clone(),
                "label key",
                key,
                self.label_key_chars,
                "label_key_chars",
            );
            self.chars(
                &mut v,
                field,
                "label value",
                value,
                self.label_value_chars,
                "label_value_chars",
            );
        }
        for (name, value) in &spec.params {
            let ParamValue::Str(s) = value else { continue };
            let field = format!(
                "params.{}",
                name.chars().take(QUOTED_CHARS).collect::<String>()
            );
            if name == TRIGGER_WORD_PARAM {
                self.chars(
                    &mut v,
                    field,
                    "trigger word",
                    s,
                    self.trigger_word_chars,
                    "trigger_word_chars",
                );
            } else {
                self.chars(
                    &mut v,
                    field,
                    "parameter value",
                    s,
                    self.string_param_chars,
                    "string_param_chars",
                );
            }
        }
        self.count(
            &mut v,
            "sample_prompts",
            "sample prompts",
            spec.sample_prompts.len(),
            self.sample_prompts,
            "sample_prompts",
        );
        for (i, p) in spec.sample_prompts.iter().enumerate() {
            self.chars(
                &mut v,
                format!("sample_prompts[{i}]"),
                "sample prompt",
                p,
                self.prompt_chars,
                "prompt_chars",
            );
        }
        self.count(
            &mut v,
            "webhooks",
            "webhooks",
            spec.webhooks.len(),
            self.webhooks,
            "webhooks",
        );
        for (i, w) in spec.webhooks.iter().enumerate() {
            self.chars(
                &mut v,
                format!("webhooks[{i}].url"),
                "url",
                &w.url,
                self.webhook_url_chars,
                "webhook_url_chars",
            );
        }
        if let Some(wf) = &spec.workflow {
            self.count(
                &mut v,
                "workflow.steps",
                "workflow steps",
                wf.steps.len(),
                self.workflow_steps,
                "workflow_steps",
            );
            for (i, step) in wf.steps.iter().enumerate() {
                let at = format!("workflow.steps[{i}]");
                self.chars(
                    &mut v,
                    format!("{at}.kind"),
                    "step kind",
                    step.kind.as_str(),
                    self.name_chars,
                    "name_chars",
                );
                for label in &step.requires.labels {
                    self.chars(
                        &mut v,
                        format!("{at}.requires.labels"),
                        "requirement label",
                        label,
                        self.name_chars,
                        "name_chars",
                    );
                }
                let depth = json_depth(&step.params);
                if depth > self.step_params_depth {
                    v.push(
                        format!("{at}.params"),
                        format!(
                            "step params nest {depth} levels deep; at most {} are allowed (limits.step_params_depth)",
                            self.step_params_depth
                        ),
                    );
                } else {
                    let bytes = serde_json::to_vec(&step.params)
                        .map(|b| b.len())
                        .unwrap_or(usize::MAX);
                    if bytes > self.step_params_bytes {
                        v.push(
                            format!("{at}.params"),
                            format!(
                                "step params are {bytes} bytes as JSON; at most {} are allowed (limits.step_params_bytes)",
                                self.step_params_bytes
                            ),
                        );
                    }
                }
            }
        }
        v
    }

    /// A request id (idempotency key) longer than allowed.
    pub fn check_request_id(&self, id: &str) -> Violations {
        let mut v = Violations::default();
        self.chars(
            &mut v,
            "request_id".into(),
            "request id",
            id,
            self.request_id_chars,
            "request_id_chars",
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{DatasetRef, Naming};
    use crate::webhook::WebhookSpec;
    use crate::workflow::{StepSpec, WorkflowSpec};

    fn spec() -> JobSpec {
        JobSpec {
            tenant: "acme".into(),
            base_model: "tiny-sd".into(),
            engine: crate::catalogue::Engine::Native,
            profile: None,
            params: Default::default(),
            dataset: DatasetRef {
                uri: "file:///a/".into(),
                sha256: None,
            },
            sample_prompts: vec!["a corgi".into()],
            priority: 0,
            naming: Naming {
                subject: "corgi".into(),
                version: "v1".into(),
            },
            labels: Default::default(),
            workflow: None,
            webhooks: vec![],
        }
    }

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn a_plain_spec_is_within_every_limit() {
        assert!(Limits::default().check_spec(&spec()).is_empty());
    }

    #[test]
    fn each_oversized_field_is_named_with_its_limit() {
        let l = Limits::default();
        let mut s = spec();
        s.naming.subject = "s".repeat(10_000);
        s.labels.insert("team".into(), "v".repeat(257));
        s.labels.insert("k".repeat(64), "x".into());
        s.params
            .insert("trigger_word".into(), ParamValue::Str("t".repeat(65)));
        s.params
            .insert("optimizer".into(), ParamValue::Str("o".repeat(257)));
        s.sample_prompts = vec!["p".repeat(1001)];
        s.webhooks = vec![WebhookSpec::new(
            format!("https://x/{}", "a".repeat(2048)),
            ["*"],
        )];
        let v = l.check_spec(&s);
        let f = fields(&v);
        for want in [
            "naming.subject",
            "labels.team",
            "params.trigger_word",
            "params.optimizer",
            "sample_prompts[0]",
            "webhooks[0].url",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }
        assert!(f.iter().any(|x| x.starts_with("labels.kkk")), "{f:?}");
        let subject = v.iter().find(|x| x.field == "naming.subject").unwrap();
        assert!(
            subject.description.contains("10000 characters"),
            "{subject}"
        );
        assert!(subject.description.contains("at most 100"), "{subject}");
        assert!(
            subject.description.contains("limits.subject_chars"),
            "{subject}"
        );
        // The refused value is quoted, not echoed whole.
        assert!(subject.description.len() < 300, "{subject}");
    }

    #[test]
    fn counts_request_size_and_nesting_are_limited() {
        let l = Limits::default();
        let mut s = spec();
        for i in 0..=l.labels {
            s.labels.insert(format!("k{i}"), "v".into());
        }
        s.sample_prompts = vec!["p".into(); l.sample_prompts + 1];
        let mut deep = serde_json::json!(1);
        for _ in 0..45 {
            deep = serde_json::json!({ "a": deep });
        }
        let mut step = StepSpec::new("validate", "validate_dataset");
        step.params = deep;
        s.workflow = Some(WorkflowSpec { steps: vec![step] });
        let v = l.check_spec(&s);
        let f = fields(&v);
        assert!(f.contains(&"labels"), "{f:?}");
        assert!(f.contains(&"sample_prompts"), "{f:?}");
        assert!(f.contains(&"workflow.steps[0].params"), "{f:?}");
        let depth = v
            .iter()
            .find(|x| x.field == "workflow.steps[0].params")
            .unwrap();
        assert!(depth.description.contains("45 levels"), "{depth}");

        let mut big = spec();
        big.naming.subject = "s".repeat(3 * 1024 * 1024);
        let v = l.check_spec(&big);
        assert!(
            v.iter()
                .any(|x| x.description.contains("limits.request_bytes")),
            "{v}"
        );
    }

    #[test]
    fn limits_are_the_operator_s_to_change() {
        let l = Limits {
            subject_chars: 5,
            ..Limits::default()
        };
        assert_eq!(fields(&l.check_spec(&spec())), Vec::<&str>::new());
        let mut s = spec();
        s.naming.subject = "corgis".into();
        assert_eq!(fields(&l.check_spec(&s)), vec!["naming.subject"]);
        let parsed: Limits = serde_json::from_str(r#"{"subject_chars": 7}"#).unwrap();
        assert_eq!(parsed.subject_chars, 7);
        assert_eq!(parsed.labels, Limits::default().labels);
    }

    #[test]
    fn depth_quote_and_truncate() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({})), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": {}})), 2);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 3);
        assert_eq!(quote("abc"), "\"abc\"");
        assert!(quote(&"x".repeat(1000)).ends_with("(1000 characters)"));
        let t = truncate(&"y".repeat(500), 100);
        assert!(t.chars().count() <= 100, "{t}");
        assert!(t.contains("more characters cut"));
        assert_eq!(truncate("short", 100), "short");
    }

    #[test]
    fn request_ids_are_limited() {
        let l = Limits::default();
        assert!(
            l.check_request_id("0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11")
                .is_empty()
        );
        assert_eq!(
            fields(&l.check_request_id(&"r".repeat(37))),
            vec!["request_id"]
        );
    }
}
