//! One truth for parameters: the schema offers for an engine exactly what that engine's parameter
//! mapping runs. Every choice and every numeric bound of every (base model, engine) pair of the
//! catalogue, with the engines' rules applied as the engine builder applies them, passes the
//! schema and then the engine's mapping (the native trainer's configuration and its resolution
//! buckets; the kohya and ai-toolkit engines' checked parameters). Every value the catalogue offers any engine
//! but this engine cannot run is refused by the schema, naming the parameter, and by the mapping.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use loraflow_core::catalogue::{
    BaseModel, Catalogue, EffectiveParam, Engine, ParamType, ParamValue, Params,
};
use loraflow_core::sampling::SAMPLER;
use loraflow_executors::aitoolkit::params::TrainParams as AiToolkitParams;
use loraflow_executors::kohya::params::TrainParams;
use loraflow_executors::native::params::{RunPaths, train_config};
use loraflow_executors::native::sampling::sampler_kind;
use loraflow_trainer::data::bucket::{BucketOptions, Buckets};
use loraflow_trainer::pipeline::PipelineConfig;

fn catalogue() -> Catalogue {
    Catalogue::builtin()
        .with_engine_rules(loraflow_executors::engine_rules())
        .expect("the built-in catalogue agrees with the engines")
}

fn paths() -> RunPaths {
    RunPaths {
        model: (PathBuf::from("model"), None),
        dataset: PathBuf::from("data"),
        captions: BTreeMap::new(),
        output: PathBuf::from("out"),
        name: "lora".into(),
        cache: None,
    }
}

/// The engines whose mapping is in this repository: the catalogue offers only these (the engine
/// rules say which engines a build has), as `only_offered_engines_have_a_mapping` checks.
fn has_mapping(engine: Engine) -> bool {
    matches!(engine, Engine::Native | Engine::Kohya | Engine::AiToolkit)
}

/// Run resolved parameters through `engine`'s mapping, as a worker does before training.
fn map(model: &BaseModel, engine: Engine, params: &Params) -> Result<(), String> {
    match engine {
        Engine::Native => {
            train_config(params, Some(model.family), paths(), "cpu").map_err(|e| e.to_string())?;
            // The sampler of the job's samples.
            if let Some(s) = params.get(SAMPLER).and_then(ParamValue::as_str) {
                sampler_kind(s).map_err(|e| e.to_string())?;
            }
            // The trainer's own resolution rule, at the model's pixel multiple.
            let resolution = params["resolution"].as_i64().unwrap() as usize;
            Buckets::new(
                resolution,
                &BucketOptions::default(),
                model.pixel_multiple() as usize,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        }
        Engine::Kohya => TrainParams::from_params(params)
            .map(drop)
            .map_err(|e| e.to_string()),
        Engine::AiToolkit => AiToolkitParams::from_params(params)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// Every value a user may give `p`: its choices, its numeric bounds (and the default), both
/// booleans.
fn values(p: &EffectiveParam) -> Vec<ParamValue> {
    let mut out = vec![p.default.clone()];
    match p.ty {
        ParamType::String => {
            out.extend(p.choices.iter().flatten().cloned().map(ParamValue::Str));
        }
        ParamType::Int => out.extend(
            [p.min, p.max]
                .into_iter()
                .flatten()
                .map(|b| ParamValue::Int(b as i64)),
        ),
        ParamType::Float => out.extend([p.min, p.max].into_iter().flatten().map(ParamValue::Float)),
        ParamType::Bool => out.extend([ParamValue::Bool(true), ParamValue::Bool(false)]),
    }
    out
}

#[test]
fn only_offered_engines_have_a_mapping() {
    let c = catalogue();
    for model in &c.base_models {
        for &engine in &model.engines {
            assert!(
                has_mapping(engine),
                "{} is offered with {engine}, which has no mapping",
                model.id
            );
        }
    }
    // What the catalogue lists for an engine this build lacks is withheld, not offered.
    assert!(c.base_model(&"flux-dev".into()).is_none() || has_mapping(Engine::AiToolkit));
}

#[test]
fn every_choice_and_bound_of_every_model_and_engine_runs_in_that_engine() {
    let c = catalogue();
    let mut walked = 0;
    let mut pairs = BTreeSet::new();
    for model in &c.base_models {
        for &engine in model.engines.iter().filter(|e| has_mapping(**e)) {
            pairs.insert((model.id.to_string(), engine));
            for p in c.schema.effective_for(model, engine) {
                for value in values(&p) {
                    let given = Params::from([(p.name.clone(), value.clone())]);
                    let resolved = c
                        .schema
                        .resolve(model, engine, None, &given)
                        .unwrap_or_else(|e| {
                            panic!("{} {engine}: {} = {value}: {e}", model.id, p.name)
                        });
                    map(model, engine, &resolved).unwrap_or_else(|e| {
                        panic!(
                            "{} {engine}: the schema offers {} = {value}, the engine refuses it: {e}",
                            model.id, p.name
                        )
                    });
                    walked += 1;
                }
            }
        }
    }
    // tiny-sd, sd15, sd21, sdxl and flux-dev on native; sd15, sd21, sdxl and flux-dev on
    // kohya; sdxl and flux-dev on ai-toolkit.
    assert_eq!(pairs.len(), 11, "{pairs:?}");
    assert!(pairs.contains(&("sdxl".to_owned(), Engine::Native)));
    assert!(pairs.contains(&("flux-dev".to_owned(), Engine::Native)));
    assert!(pairs.contains(&("flux-dev".to_owned(), Engine::Kohya)));
    assert!(pairs.contains(&("flux-dev".to_owned(), Engine::AiToolkit)));
    assert!(walked > 200, "walked only {walked} values");
}

#[test]
fn what_an_engine_cannot_run_is_refused_by_the_schema_and_by_the_mapping() {
    let c = catalogue();
    // Every string value the catalogue offers any engine of any model.
    let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for model in &c.base_models {
        for &engine in &model.engines {
            for p in c.schema.effective_for(model, engine) {
                offered
                    .entry(p.name.clone())
                    .or_default()
                    .extend(p.choices.into_iter().flatten());
            }
        }
    }
    let mut refused = 0;
    for model in &c.base_models {
        for &engine in model.engines.iter().filter(|e| has_mapping(**e)) {
            for p in c.schema.effective_for(model, engine) {
                let Some(runs) = &p.choices else { continue };
                for value in offered[&p.name].iter().filter(|v| !runs.contains(v)) {
                    let given = Params::from([(p.name.clone(), ParamValue::Str(value.clone()))]);
                    let err = c
                        .schema
                        .resolve(model, engine, None, &given)
                        .expect_err(value);
                    assert_eq!(err.0[0].field, format!("params.{}", p.name));
                    assert!(err.0[0].description.contains(value.as_str()), "{err}");
                    // The mapping agrees: handed the value anyway, it refuses it too.
                    let mut params = c
                        .schema
                        .resolve(model, engine, None, &Params::new())
                        .unwrap();
                    params.insert(p.name.clone(), ParamValue::Str(value.clone()));
                    let mapped = map(model, engine, &params).expect_err(value);
                    assert!(mapped.contains(&p.name), "{mapped}");
                    refused += 1;
                }
            }
        }
    }
    // native: adamw8bit, prodigy, cosine_with_restarts, polynomial, on three models.
    assert!(refused >= 12, "refused only {refused}");

    // Sizes between the native engine's multiples: refused by the schema and by the trainer.
    for model in c.base_models.iter().filter(|m| m.supports(Engine::Native)) {
        let p = c
            .schema
            .effective("resolution", model, Engine::Native)
            .unwrap();
        let step = p.multiple_of.expect("native resolution has a step");
        assert_eq!(step, model.pixel_multiple());
        let between = p.min.unwrap() as i64 + 1;
        let given = Params::from([("resolution".to_owned(), ParamValue::Int(between))]);
        let err = c
            .schema
            .resolve(model, Engine::Native, None, &given)
            .unwrap_err();
        assert_eq!(err.0[0].field, "params.resolution");
        assert!(
            Buckets::new(between as usize, &BucketOptions::default(), step as usize).is_err(),
            "{}: the trainer takes {between}",
            model.id
        );
    }
}

/// The native engine's resolution rule comes from the model's shape: the catalogue's pixel
/// multiple for the demo model is what the trainer computes from its config files.
#[test]
fn the_demo_models_pixel_multiple_is_the_trainers() {
    let c = catalogue();
    let tiny = c.base_model(&"tiny-sd".into()).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-sd");
    let pipeline = PipelineConfig::from_dir(&dir).unwrap();
    assert_eq!(tiny.pixel_multiple() as usize, pipeline.pixel_multiple());
}

/// The schema's lists are the mappings' tables, in full.
#[test]
fn the_schema_offers_each_engine_its_own_tables() {
    use loraflow_executors::{aitoolkit, kohya, native};
    let c = catalogue();
    let choices = |model: &str, engine: Engine, name: &str| -> BTreeSet<String> {
        let m = c.base_model(&model.into()).unwrap();
        c.schema
            .effective(name, m, engine)
            .unwrap()
            .choices
            .unwrap()
            .into_iter()
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for model in ["tiny-sd", "sd15", "sd21", "sdxl"] {
        assert_eq!(
            choices(model, Engine::Native, "lr_scheduler"),
            set(&native::params::LR_SCHEDULERS.map(|(n, _)| n))
        );
        assert_eq!(
            choices(model, Engine::Native, "optimizer"),
            set(&native::params::OPTIMIZERS)
        );
    }
    for model in ["sdxl", "flux-dev"] {
        assert_eq!(
            choices(model, Engine::AiToolkit, "lr_scheduler"),
            set(&aitoolkit::params::LR_SCHEDULERS)
        );
        assert_eq!(
            choices(model, Engine::AiToolkit, "optimizer"),
            set(&aitoolkit::params::OPTIMIZERS.map(|(n, _)| n))
        );
    }
    for model in ["sd15", "sd21", "sdxl", "flux-dev"] {
        assert_eq!(
            choices(model, Engine::Kohya, "lr_scheduler"),
            set(&kohya::params::LR_SCHEDULERS)
        );
        assert_eq!(
            choices(model, Engine::Kohya, "optimizer"),
            set(&kohya::params::OPTIMIZERS.map(|(n, _)| n))
        );
    }
}
