//! How a job's sample images are rendered: the job's sampling parameters
//! (catalogue parameters `sample_*`, with its defaults and limits), what one
//! `sample-now` request may override, and the prompts a job without any
//! gets (from its trigger word and its captions).
//!
//! Executors read [`SampleSettings::of`] and map it to their engine (the
//! native sampler, kohya's prompt file, ai-toolkit's `sample` section).

use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, ParamValue, Params};
use crate::job::JobSpec;
use crate::limits::{Limits, TRIGGER_WORD_PARAM};
use crate::validation::Violations;

/// The negative prompt (the unconditional branch of guidance).
pub const NEGATIVE_PROMPT: &str = "sample_negative_prompt";
/// The sampler (`ddim`, `euler`, ...; each engine offers those it runs).
pub const SAMPLER: &str = "sample_sampler";
/// Inference steps.
pub const STEPS: &str = "sample_steps";
/// Classifier-free guidance scale.
pub const GUIDANCE_SCALE: &str = "sample_guidance_scale";
/// Image width in pixels.
pub const WIDTH: &str = "sample_width";
/// Image height in pixels.
pub const HEIGHT: &str = "sample_height";
/// Seed of the first prompt; the next prompts use the following seeds.
pub const SEED: &str = "sample_seed";
/// How strongly the LoRA is applied.
pub const LORA_STRENGTH: &str = "sample_lora_strength";

/// How many prompts a job without prompts gets at most.
pub const DEFAULT_PROMPTS: usize = 4;

/// Everything a sample image is rendered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    /// One image per prompt (per saved LoRA).
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    /// A name from the catalogue's `sample_sampler` choices.
    pub sampler: String,
    pub steps: u32,
    pub guidance_scale: f64,
    pub width: u32,
    pub height: u32,
    /// Seed of the first prompt; prompt `i` uses `seed + i`.
    pub seed: u64,
    pub lora_strength: f64,
}

impl Default for SampleSettings {
    /// The catalogue's defaults for an SD1.5-sized model.
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            negative_prompt: String::new(),
            sampler: "ddim".into(),
            steps: 20,
            guidance_scale: 7.5,
            width: 512,
            height: 512,
            seed: 42,
            lora_strength: 1.0,
        }
    }
}

impl SampleSettings {
    /// A job's settings: its resolved parameters over `fallback` (what a
    /// job created before a parameter existed gets), and its prompts.
    pub fn of(params: &Params, prompts: &[String], fallback: &SampleSettings) -> Self {
        let int = |name: &str| params.get(name).and_then(ParamValue::as_i64);
        let float = |name: &str| params.get(name).and_then(ParamValue::as_f64);
        let text = |name: &str| {
            params
                .get(name)
                .and_then(ParamValue::as_str)
                .map(str::to_owned)
        };
        let f = fallback;
        Self {
            prompts: prompts.to_vec(),
            negative_prompt: text(NEGATIVE_PROMPT).unwrap_or_else(|| f.negative_prompt.clone()),
            sampler: text(SAMPLER).unwrap_or_else(|| f.sampler.clone()),
            steps: int(STEPS).map_or(f.steps, |v| v.clamp(1, u32::MAX.into()) as u32),
            guidance_scale: float(GUIDANCE_SCALE).unwrap_or(f.guidance_scale),
            width: int(WIDTH).map_or(f.width, |v| v.clamp(1, u32::MAX.into()) as u32),
            height: int(HEIGHT).map_or(f.height, |v| v.clamp(1, u32::MAX.into()) as u32),
            seed: int(SEED).map_or(f.seed, |v| v.max(0) as u64),
            lora_strength: float(LORA_STRENGTH).unwrap_or(f.lora_strength),
        }
    }

    /// These settings with a request's overrides applied.
    pub fn with(mut self, o: &SampleOverrides) -> Self {
        if !o.prompts.is_empty() {
            self.prompts = o.prompts.clone();
        }
        if let Some(v) = &o.negative_prompt {
            self.negative_prompt = v.clone();
        }
        if let Some(v) = &o.sampler {
            self.sampler = v.clone();
        }
        self.steps = o.steps.unwrap_or(self.steps);
        self.guidance_scale = o.guidance_scale.unwrap_or(self.guidance_scale);
        self.width = o.width.unwrap_or(self.width);
        self.height = o.height.unwrap_or(self.height);
        self.seed = o.seed.unwrap_or(self.seed);
        self.lora_strength = o.lora_strength.unwrap_or(self.lora_strength);
        self
    }

    /// When there are no prompts: the defaults from `trigger_word` and
    /// `captions` ([`default_prompts`]).
    pub fn or_default_prompts<'a>(
        mut self,
        trigger_word: &str,
        captions: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        if self.prompts.is_empty() {
            self.prompts = default_prompts(trigger_word, captions);
        }
        self
    }
}

/// What one `sample-now` request changes of the job's settings; every
/// field is optional, and an empty request renders with the job's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleOverrides {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_strength: Option<f64>,
}

impl SampleOverrides {
    /// True when the request changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The overrides as job parameters (`sample_steps`, ...), the form the
    /// catalogue checks.
    pub fn as_params(&self) -> Params {
        let mut p = Params::new();
        let mut put = |name: &str, v: Option<ParamValue>| {
            if let Some(v) = v {
                p.insert(name.to_owned(), v);
            }
        };
        put(
            NEGATIVE_PROMPT,
            self.negative_prompt.clone().map(ParamValue::Str),
        );
        put(SAMPLER, self.sampler.clone().map(ParamValue::Str));
        put(STEPS, self.steps.map(|v| ParamValue::Int(v.into())));
        put(GUIDANCE_SCALE, self.guidance_scale.map(ParamValue::Float));
        put(WIDTH, self.width.map(|v| ParamValue::Int(v.into())));
        put(HEIGHT, self.height.map(|v| ParamValue::Int(v.into())));
        put(
            SEED,
            self.seed
                .map(|v| ParamValue::Int(i64::try_from(v).unwrap_or(i64::MAX))),
        );
        put(LORA_STRENGTH, self.lora_strength.map(ParamValue::Float));
        p
    }

    /// Checks the overrides for `spec`'s base model and engine with the
    /// catalogue's bounds and the prompt limits, reporting every bad field
    /// at once (under the request's field names: `steps`, `prompts[1]`).
    pub fn check(
        &self,
        spec: &JobSpec,
        catalogue: &Catalogue,
        limits: &Limits,
    ) -> Result<(), Violations> {
        let mut v = Violations::default();
        if self.prompts.len() > limits.sample_prompts {
            v.push(
                "prompts",
                format!(
                    "{} prompts given; at most {} are allowed (limits.sample_prompts)",
                    self.prompts.len(),
                    limits.sample_prompts
                ),
            );
        }
        for (i, p) in self.prompts.iter().enumerate() {
            let chars = p.chars().count();
            if p.trim().is_empty() {
                v.push(format!("prompts[{i}]"), "sample prompt is empty");
            } else if chars > limits.prompt_chars {
                v.push(
                    format!("prompts[{i}]"),
                    format!(
                        "sample prompt is {chars} characters; at most {} are allowed (limits.prompt_chars)",
                        limits.prompt_chars
                    ),
                );
            }
        }
        if let Some(n) = &self.negative_prompt {
            let chars = n.chars().count();
            if chars > limits.string_param_chars {
                v.push(
                    "negative_prompt",
                    format!(
                        "negative prompt is {chars} characters; at most {} are allowed (limits.string_param_chars)",
                        limits.string_param_chars
                    ),
                );
            }
        }
        let Some(model) = catalogue.base_model(&spec.base_model) else {
            v.push(
                "job",
                format!(
                    "base model {} is no longer in the catalogue",
                    spec.base_model
                ),
            );
            return v.into_result(());
        };
        let context = format!("for base model {} (engine {})", model.id, spec.engine);
        for (name, value) in self.as_params() {
            let field = name.trim_start_matches("sample_").to_owned();
            match catalogue.schema.effective(&name, model, spec.engine) {
                Some(p) => {
                    if let Err(msg) = p.check(&value, &context) {
                        v.push(field, msg);
                    }
                }
                None => v.push(
                    field,
                    format!("{name} is not available {context}; leave it unset"),
                ),
            }
        }
        v.into_result(())
    }
}

/// Prompts for a job that gave none: its distinct captions (the first
/// [`DEFAULT_PROMPTS`], each led by the trigger word when it does not
/// already hold it), else the trigger word alone, else a plain subject.
pub fn default_prompts<'a>(
    trigger_word: &str,
    captions: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let trigger = trigger_word.trim();
    let mut prompts: Vec<String> = Vec::new();
    for caption in captions {
        let caption = caption.trim();
        if caption.is_empty() {
            continue;
        }
        let prompt = if trigger.is_empty() || caption.contains(trigger) {
            caption.to_owned()
        } else {
            format!("{trigger}, {caption}")
        };
        if !prompts.contains(&prompt) {
            prompts.push(prompt);
        }
        if prompts.len() == DEFAULT_PROMPTS {
            break;
        }
    }
    if prompts.is_empty() {
        prompts.push(if trigger.is_empty() {
            "a picture".to_owned()
        } else {
            trigger.to_owned()
        });
    }
    prompts
}

/// What a client should be told about a job as created: today, that a job
/// without sample prompts gets default ones.
pub fn warnings(spec: &JobSpec, params: &Params) -> Vec<String> {
    let mut w = Vec::new();
    if spec.sample_prompts.is_empty() {
        let trigger = params
            .get(TRIGGER_WORD_PARAM)
            .and_then(ParamValue::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty());
        w.push(match trigger {
            Some(t) => format!(
                "no sample prompts given: samples use up to {DEFAULT_PROMPTS} default prompts made from the trigger word {t:?} and the dataset's captions"
            ),
            None => format!(
                "no sample prompts given: samples use up to {DEFAULT_PROMPTS} default prompts made from the dataset's captions (the job has no trigger word)"
            ),
        });
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prompts_lead_captions_with_the_trigger_word() {
        let captions = [
            "a red circle",
            "sks a blue square",
            "a red circle",
            "",
            "a green star",
            "a big dot",
            "a small dot",
        ];
        assert_eq!(
            default_prompts("sks", captions),
            [
                "sks, a red circle",
                "sks a blue square",
                "sks, a green star",
                "sks, a big dot"
            ]
        );
        assert_eq!(default_prompts("sks", Vec::<&str>::new()), ["sks"]);
        assert_eq!(default_prompts(" ", ["a cat"]), ["a cat"]);
        assert_eq!(default_prompts("", Vec::<&str>::new()), ["a picture"]);
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let params = Params::from([
            (STEPS.to_owned(), ParamValue::Int(12)),
            (WIDTH.to_owned(), ParamValue::Int(64)),
            (HEIGHT.to_owned(), ParamValue::Int(32)),
            (SAMPLER.to_owned(), ParamValue::Str("euler".into())),
        ]);
        let job = SampleSettings::of(&params, &["a".into()], &SampleSettings::default());
        assert_eq!((job.steps, job.width, job.height), (12, 64, 32));
        assert_eq!(job.sampler, "euler");
        assert_eq!(job.seed, 42);
        let asked = job.clone().with(&SampleOverrides {
            prompts: vec!["b".into()],
            seed: Some(7),
            ..Default::default()
        });
        assert_eq!(asked.prompts, ["b"]);
        assert_eq!((asked.seed, asked.steps, asked.width), (7, 12, 64));
        assert_eq!(job.clone().with(&SampleOverrides::default()), job);
    }
}
