use super::*;

fn builtin() -> Catalogue {
    Catalogue::builtin()
}

fn model(c: &Catalogue, id: &str) -> BaseModel {
    c.base_model(&BaseModelId::new(id)).unwrap().clone()
}

#[test]
fn builtin_catalogue_loads_and_is_consistent() {
    let c = builtin();
    assert!(c.base_model(&"sd15".into()).is_some());
    assert!(c.profiles().any(|p| p == "quick_test"));
    assert!(c.profiles().any(|p| p == "high_quality"));
}

#[test]
fn defaults_fill_every_enabled_parameter() {
    let c = builtin();
    let sd15 = model(&c, "sd15");
    let p = c
        .schema
        .resolve(&sd15, Engine::Native, None, &Params::new())
        .unwrap();
    assert_eq!(p["epochs"], ParamValue::Int(10));
    assert_eq!(p["resolution"], ParamValue::Int(512));
    assert_eq!(p["learning_rate"], ParamValue::Float(0.0001));
}

#[test]
fn model_overrides_change_defaults_and_bounds() {
    let c = builtin();
    let sdxl = model(&c, "sdxl");
    let p = c
        .schema
        .resolve(&sdxl, Engine::Kohya, None, &Params::new())
        .unwrap();
    assert_eq!(p["resolution"], ParamValue::Int(1024));
    // The native engine takes the same SDXL defaults and bounds.
    let native = c
        .schema
        .resolve(&sdxl, Engine::Native, None, &Params::new())
        .unwrap();
    assert_eq!(native["resolution"], ParamValue::Int(1024));
    let low = Params::from([("resolution".to_owned(), ParamValue::Int(256))]);
    assert!(c.schema.resolve(&sdxl, Engine::Native, None, &low).is_err());
    let bad = Params::from([("batch_size".to_owned(), ParamValue::Int(12))]);
    let err = c
        .schema
        .resolve(&sdxl, Engine::Kohya, None, &bad)
        .unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err.0[0].field, "params.batch_size");
    assert!(
        err.0[0].description.contains("above the maximum 8"),
        "{err}"
    );
}

#[test]
fn error_quotes_value_bound_model_and_engine() {
    let c = builtin();
    let sd15 = model(&c, "sd15");
    let bad = Params::from([("learning_rate".to_owned(), ParamValue::Float(5.0))]);
    let err = c
        .schema
        .resolve(&sd15, Engine::Native, None, &bad)
        .unwrap_err();
    assert_eq!(
        err.0[0].description,
        "learning_rate 5 is above the maximum 0.01 for base model sd15 (engine native)"
    );
}

#[test]
fn every_invalid_field_is_reported_at_once() {
    let c = builtin();
    let sd15 = model(&c, "sd15");
    let bad = Params::from([
        ("epochs".to_owned(), ParamValue::Int(0)),
        ("learning_rate".to_owned(), ParamValue::Str("fast".into())),
        ("lr_scheduler".to_owned(), ParamValue::Str("exotic".into())),
        ("warp_factor".to_owned(), ParamValue::Int(9)),
    ]);
    let err = c
        .schema
        .resolve(&sd15, Engine::Native, None, &bad)
        .unwrap_err();
    let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "params.epochs",
            "params.learning_rate",
            "params.lr_scheduler",
            "params.warp_factor"
        ]
    );
    assert!(
        err.0[3]
            .description
            .contains("unknown parameter \"warp_factor\"")
    );
}

#[test]
fn parameter_disabled_for_engine_is_rejected_and_absent() {
    let c = builtin();
    let flux = model(&c, "flux-dev");
    let p = c
        .schema
        .resolve(&flux, Engine::AiToolkit, None, &Params::new())
        .unwrap();
    assert!(!p.contains_key("text_encoder_lr"));
    let given = Params::from([("text_encoder_lr".to_owned(), ParamValue::Float(1e-4))]);
    let err = c
        .schema
        .resolve(&flux, Engine::AiToolkit, None, &given)
        .unwrap_err();
    assert!(
        err.0[0]
            .description
            .contains("not available for base model flux-dev (engine ai-toolkit)")
    );
}

/// Rules as an engine declares them (the real ones are the executors';
/// `tests/params_truth.rs` walks those).
fn native_rules() -> EngineRules {
    EngineRules::new(Engine::Native)
        .choices("optimizer", ["adamw"])
        .choices(
            "lr_scheduler",
            ["constant", "cosine", "not_in_the_catalogue"],
        )
        .multiple("resolution", Multiple::ModelPixels)
}

#[test]
fn engine_rules_narrow_choices_to_what_the_engine_runs() {
    let c = builtin().with_engine_rules([native_rules()]).unwrap();
    let sd15 = model(&c, "sd15");
    let given = Params::from([("optimizer".to_owned(), ParamValue::Str("prodigy".into()))]);
    assert!(c.schema.resolve(&sd15, Engine::Kohya, None, &given).is_ok());
    let err = c
        .schema
        .resolve(&sd15, Engine::Native, None, &given)
        .unwrap_err();
    assert_eq!(err.0[0].field, "params.optimizer");
    assert!(err.0[0].description.contains("prodigy"), "{err}");
    // The catalogue's choices narrow the engine's: a value the catalogue
    // does not offer stays out.
    let scheduler = c
        .schema
        .effective("lr_scheduler", &sd15, Engine::Native)
        .unwrap();
    assert_eq!(
        scheduler.choices.unwrap(),
        ["constant", "cosine"].map(String::from)
    );
}

#[test]
fn a_model_pixel_rule_refuses_sizes_between_multiples_naming_the_nearest() {
    let c = builtin().with_engine_rules([native_rules()]).unwrap();
    let tiny = model(&c, "tiny-sd");
    assert_eq!(tiny.pixel_multiple(), 16);
    assert_eq!(model(&c, "sd15").pixel_multiple(), 64);
    let at = |v: i64| Params::from([("resolution".to_owned(), ParamValue::Int(v))]);
    assert!(
        c.schema
            .resolve(&tiny, Engine::Native, None, &at(48))
            .is_ok()
    );
    let err = c
        .schema
        .resolve(&tiny, Engine::Native, None, &at(63))
        .unwrap_err();
    assert_eq!(err.0[0].field, "params.resolution");
    assert_eq!(
        err.0[0].description,
        "resolution 63 is not a multiple of 16 for base model tiny-sd (engine native), which the engine needs; use 48 or 64"
    );
    let p = c
        .schema
        .effective("resolution", &tiny, Engine::Native)
        .unwrap();
    assert_eq!(p.multiple_of, Some(16));
    // Another engine without the rule takes it.
    let sd15 = model(&c, "sd15");
    assert!(
        c.schema
            .resolve(&sd15, Engine::Kohya, None, &at(520))
            .is_ok()
    );
}

#[test]
fn engine_rules_that_contradict_the_catalogue_are_refused() {
    // The default (cosine) is not one the engine runs.
    let rules = EngineRules::new(Engine::Native).choices("lr_scheduler", ["linear"]);
    let err = builtin().with_engine_rules([rules]).unwrap_err();
    assert!(err.to_string().contains("params.lr_scheduler"), "{err}");
    // A bound the engine cannot run (sd15's minimum 64 is not a multiple of 48).
    let rules = EngineRules::new(Engine::Native).multiple("resolution", Multiple::Of(48));
    let err = builtin().with_engine_rules([rules]).unwrap_err();
    assert!(err.to_string().contains("bound for sd15"), "{err}");
}

#[test]
fn profiles_set_defaults_and_user_values_win() {
    let c = builtin();
    let sd15 = model(&c, "sd15");
    let p = c
        .schema
        .resolve(&sd15, Engine::Native, Some("high_quality"), &Params::new())
        .unwrap();
    assert_eq!(p["epochs"], ParamValue::Int(20));
    let given = Params::from([("epochs".to_owned(), ParamValue::Int(3))]);
    let p = c
        .schema
        .resolve(&sd15, Engine::Native, Some("high_quality"), &given)
        .unwrap();
    assert_eq!(p["epochs"], ParamValue::Int(3));
    let err = c
        .schema
        .resolve(&sd15, Engine::Native, Some("turbo"), &given)
        .unwrap_err();
    assert!(err.0[0].description.contains("unknown profile \"turbo\""));
}

#[test]
fn int_is_accepted_for_float() {
    let c = builtin();
    let sd15 = model(&c, "sd15");
    let given = Params::from([("network_alpha".to_owned(), ParamValue::Int(8))]);
    let p = c
        .schema
        .resolve(&sd15, Engine::Native, None, &given)
        .unwrap();
    assert_eq!(p["network_alpha"], ParamValue::Float(8.0));
}

#[test]
fn inconsistent_catalogue_is_refused() {
    let text = r#"
        [[base_models]]
        id = "m"
        label = "M"
        family = "sd15"
        engines = ["native"]
        [params.epochs]
        type = "int"
        default = 500
        max = 100
    "#;
    match Catalogue::from_toml_str(text) {
        Err(CatalogueError::Invalid(v)) => assert_eq!(v.0[0].field, "params.epochs"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(
        Catalogue::from_toml_str("base_models = 3"),
        Err(CatalogueError::Parse(_))
    ));
}

#[test]
fn engine_names_parse() {
    assert_eq!("ai-toolkit".parse::<Engine>().unwrap(), Engine::AiToolkit);
    assert!("comfy".parse::<Engine>().is_err());
}

#[test]
fn a_build_offers_only_the_engines_it_has_rules_for() {
    use crate::job::{DatasetRef, JobSpec, Naming};
    let c = builtin()
        .with_engine_rules([EngineRules::new(Engine::Native)])
        .unwrap();
    // SDXL and FLUX.1 are offered on the native engine alone.
    assert_eq!(model(&c, "sdxl").engines, [Engine::Native]);
    assert_eq!(model(&c, "flux-dev").engines, [Engine::Native]);
    assert_eq!(
        c.withheld[&BaseModelId::new("flux-dev")],
        [Engine::Kohya, Engine::AiToolkit]
    );
    assert_eq!(model(&c, "sd15").engines, [Engine::Native]);
    assert_eq!(
        c.withheld[&BaseModelId::new("sdxl")],
        [Engine::Kohya, Engine::AiToolkit]
    );
    let spec = |model: &str, engine: Engine| JobSpec {
        tenant: "acme".into(),
        base_model: model.into(),
        engine,
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
    };
    for (m, e) in [("sdxl", Engine::Kohya), ("sd15", Engine::Kohya)] {
        let v = spec(m, e).validate(&c, None).unwrap_err();
        let f: Vec<_> = v.iter().collect();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].field, "engine");
        assert!(
            f[0].description.contains(&format!(
                "base model {m} with engine kohya is not offered: this build has no executor for kohya"
            )),
            "{}",
            f[0].description
        );
        assert!(
            f[0].description.contains("sd15 (native)"),
            "{}",
            f[0].description
        );
    }
    assert!(spec("sd15", Engine::Native).validate(&c, None).is_ok());
}
