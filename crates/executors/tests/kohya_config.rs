//! The sd-scripts configs generated from a job's parameters: the exact keys
//! and values, per model family, and that they are TOML that reads back.

use std::path::PathBuf;

use loraflow_core::catalogue::{Catalogue, Engine, ModelFamily, ParamValue, Params};
use loraflow_core::ids::BaseModelId;
use loraflow_executors::kohya::config::{self, RunPaths};
use loraflow_executors::kohya::params::TrainParams;
use loraflow_executors::kohya::{Error, KohyaModel, KohyaOptions};

/// A job's parameters as the catalogue resolves them for `model` on kohya.
fn resolved(model: &str, given: &[(&str, ParamValue)]) -> Params {
    let catalogue = Catalogue::builtin();
    let model = catalogue.base_model(&BaseModelId::new(model)).unwrap();
    let given = given
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    catalogue
        .schema
        .resolve(model, Engine::Kohya, None, &given)
        .unwrap()
}

fn paths() -> RunPaths {
    RunPaths {
        checkpoint: "/models/sd15.safetensors".into(),
        image_dir: "/work/train/10_corgi".into(),
        dataset_config: "/work/dataset_config.toml".into(),
        output_dir: "/work/output".into(),
        output_name: "corgi".into(),
        sample_prompts: Some("/work/sample_prompts.txt".into()),
    }
}

fn options() -> (KohyaOptions, KohyaModel) {
    let options =
        KohyaOptions::new("/opt/sd-scripts").with_model("sd15", "/models/sd15.safetensors");
    let model = options.models["sd15"].clone();
    (options, model)
}

fn table(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

#[test]
fn a_typical_sd15_job_gives_these_training_keys() {
    let params = TrainParams::from_params(&resolved(
        "sd15",
        &[
            ("epochs", ParamValue::Int(3)),
            ("optimizer", ParamValue::Str("adamw8bit".into())),
            ("trigger_word", ParamValue::Str("sks".into())),
        ],
    ))
    .unwrap();
    let (options, model) = options();
    let generated = config::training_config(&params, ModelFamily::Sd15, &paths(), &options, &model);
    let expected = table(
        r#"
        pretrained_model_name_or_path = "/models/sd15.safetensors"
        clip_skip = 1
        network_module = "networks.lora"
        network_dim = 32
        network_alpha = 16.0
        optimizer_type = "AdamW8bit"
        learning_rate = 0.0001
        unet_lr = 0.0001
        text_encoder_lr = 0.00005
        lr_scheduler = "cosine"
        lr_warmup_steps = 0
        max_grad_norm = 1.0
        min_snr_gamma = 5.0
        dataset_config = "/work/dataset_config.toml"
        max_train_epochs = 3
        train_batch_size = 2
        gradient_accumulation_steps = 1
        seed = 42
        mixed_precision = "bf16"
        cache_latents = true
        console_log_simple = true
        output_dir = "/work/output"
        output_name = "corgi"
        save_model_as = "safetensors"
        save_every_n_epochs = 1
        sample_prompts = "/work/sample_prompts.txt"
        sample_every_n_epochs = 1
        sample_sampler = "euler_a"
        "#,
    );
    assert_eq!(generated, expected);
    // noise_offset 0 and epsilon prediction are sd-scripts' defaults: left out.
    assert!(!generated.contains_key("noise_offset"));
    assert!(!generated.contains_key("v_parameterization"));

    let text = config::to_toml(&generated).unwrap();
    assert_eq!(table(&text), generated, "{text}");
    // Flat, as sd-scripts' own --output_config writes it.
    assert!(!text.contains('['), "{text}");
}

#[test]
fn a_typical_job_gives_this_dataset_config() {
    let params = TrainParams::from_params(&resolved("sd15", &[])).unwrap();
    let generated = config::dataset_config(&params, &PathBuf::from("/work/train/10_corgi"), "sks");
    let expected = table(
        r#"
        [general]
        enable_bucket = true
        bucket_no_upscale = true
        bucket_reso_steps = 64
        min_bucket_reso = 256
        max_bucket_reso = 1024

        [[datasets]]
        resolution = 512
        batch_size = 2

          [[datasets.subsets]]
          image_dir = "/work/train/10_corgi"
          num_repeats = 10
          caption_extension = ".txt"
          class_tokens = "sks"
          shuffle_caption = true
          keep_tokens = 1
        "#,
    );
    assert_eq!(generated, expected);
    let text = config::to_toml(&generated).unwrap();
    assert_eq!(table(&text), generated, "{text}");
    assert!(text.contains("[[datasets.subsets]]"), "{text}");

    let with_dropout = TrainParams::from_params(&resolved(
        "sd15",
        &[("caption_dropout", ParamValue::Float(0.1))],
    ))
    .unwrap();
    let generated = config::dataset_config(&with_dropout, &PathBuf::from("/x"), "sks");
    assert_eq!(
        generated["datasets"][0]["subsets"][0]["caption_dropout_rate"].as_float(),
        Some(0.1)
    );
}

#[test]
fn each_family_gets_only_the_options_that_apply_to_it() {
    let (options, model) = options();

    // SD2: v2 checkpoints, v-prediction when the job says auto (the default), no clip_skip.
    let sd2 = TrainParams::from_params(&resolved("sd21", &[])).unwrap();
    let t = config::training_config(&sd2, ModelFamily::Sd2, &paths(), &options, &model);
    assert_eq!(t["v2"].as_bool(), Some(true));
    assert_eq!(t["v_parameterization"].as_bool(), Some(true));
    assert!(!t.contains_key("clip_skip"));
    // An SD2 base (epsilon) model says so explicitly.
    let sd2_base = TrainParams::from_params(&resolved(
        "sd21",
        &[("prediction_type", ParamValue::Str("epsilon".into()))],
    ))
    .unwrap();
    let t = config::training_config(&sd2_base, ModelFamily::Sd2, &paths(), &options, &model);
    assert_eq!(t["v2"].as_bool(), Some(true));
    assert!(!t.contains_key("v_parameterization"));

    // SDXL: 1024 px buckets, no clip_skip.
    let sdxl = TrainParams::from_params(&resolved("sdxl", &[])).unwrap();
    let t = config::training_config(&sdxl, ModelFamily::Sdxl, &paths(), &options, &model);
    assert!(!t.contains_key("clip_skip") && !t.contains_key("v2"));
    assert_eq!(t["network_module"].as_str(), Some("networks.lora"));
    let d = config::dataset_config(&sdxl, &PathBuf::from("/x"), "sks");
    assert_eq!(d["datasets"][0]["resolution"].as_integer(), Some(1024));
    assert_eq!(d["general"]["max_bucket_reso"].as_integer(), Some(2048));

    // A text-encoder rate of 0 trains the UNet only.
    let unet_only = TrainParams::from_params(&resolved(
        "sd15",
        &[("text_encoder_lr", ParamValue::Float(0.0))],
    ))
    .unwrap();
    let t = config::training_config(&unet_only, ModelFamily::Sd15, &paths(), &options, &model);
    assert_eq!(t["network_train_unet_only"].as_bool(), Some(true));
    assert!(!t.contains_key("text_encoder_lr"));
}

#[test]
fn flux_uses_its_network_module_and_the_models_extra_files() {
    let params = TrainParams::from_params(
        &[
            ("epochs", ParamValue::Int(2)),
            ("num_repeats", ParamValue::Int(1)),
            ("min_snr_gamma", ParamValue::Float(5.0)),
            ("noise_offset", ParamValue::Float(0.05)),
            ("prediction_type", ParamValue::Str("v_prediction".into())),
            ("network_dim", ParamValue::Int(16)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
    .unwrap();
    let mut options = KohyaOptions::new("/opt/sd-scripts");
    options.extra_config = table("sdpa = true\nmixed_precision = \"fp16\"");
    let model = KohyaModel {
        checkpoint: "/models/flux1-dev.safetensors".into(),
        family: Some(ModelFamily::Flux),
        extra_config: table(r#"ae = "/models/ae.safetensors""#),
    };
    let t = config::training_config(&params, ModelFamily::Flux, &paths(), &options, &model);
    assert_eq!(t["network_module"].as_str(), Some("networks.lora_flux"));
    assert_eq!(t["network_train_unet_only"].as_bool(), Some(true));
    for absent in [
        "min_snr_gamma",
        "noise_offset",
        "v_parameterization",
        "clip_skip",
    ] {
        assert!(!t.contains_key(absent), "{absent} does not apply to flux");
    }
    assert_eq!(t["ae"].as_str(), Some("/models/ae.safetensors"));
    // Flow matching as sd-scripts' FLUX.1 guide trains it.
    assert_eq!(t["timestep_sampling"].as_str(), Some("flux_shift"));
    assert_eq!(t["model_prediction_type"].as_str(), Some("raw"));
    assert_eq!(t["guidance_scale"].as_float(), Some(1.0));
    // The operator's settings win over generated values.
    assert_eq!(t["mixed_precision"].as_str(), Some("fp16"));
    assert_eq!(t["sdpa"].as_bool(), Some(true));
}

#[test]
fn settings_may_not_override_what_loraflow_reads_back() {
    let mut options = KohyaOptions::new("/opt/sd-scripts");
    options.extra_config = table(r#"output_dir = "/elsewhere""#);
    let err = options.validate().unwrap_err();
    assert!(matches!(err, Error::InvalidSettings(_)));
    assert!(
        err.to_string().contains("extra_config sets output_dir"),
        "{err}"
    );
}

#[test]
fn settings_read_from_toml() {
    let options: KohyaOptions = toml::from_str(
        r#"
        sd_scripts_dir = "/opt/sd-scripts"
        launcher = ["accelerate", "launch", "--num_cpu_threads_per_process", "1"]
        timeout = "6h"
        extra_args = ["--sdpa"]

        [scripts]
        sdxl = "sdxl_train_network.py"

        [models.sd15]
        checkpoint = "/models/v1-5-pruned-emaonly.safetensors"

        [models.flux-dev]
        checkpoint = "/models/flux1-dev.safetensors"
        family = "flux"
        extra_config = { ae = "/models/ae.safetensors" }
        "#,
    )
    .unwrap();
    options.validate().unwrap();
    assert_eq!(options.timeout, std::time::Duration::from_secs(6 * 3600));
    assert_eq!(options.scripts.sd15, PathBuf::from("train_network.py"));
    assert_eq!(options.models["flux-dev"].family, Some(ModelFamily::Flux));
    assert!(options.cache_latents);
}

#[test]
fn conv_dim_becomes_locon_network_args() {
    let (options, model) = options();
    let plain =
        TrainParams::from_params(&resolved("sd15", &[("epochs", ParamValue::Int(1))])).unwrap();
    let t = config::training_config(&plain, ModelFamily::Sd15, &paths(), &options, &model);
    assert!(!t.contains_key("network_args"), "conv_dim 0: no LoCon");

    let locon = TrainParams::from_params(&resolved(
        "sd15",
        &[
            ("epochs", ParamValue::Int(1)),
            ("conv_dim", ParamValue::Int(8)),
        ],
    ))
    .unwrap();
    let t = config::training_config(&locon, ModelFamily::Sd15, &paths(), &options, &model);
    let args: Vec<&str> = t["network_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // A conv_alpha of 0 is the rank, written out: sd-scripts' own default would be 1.
    assert_eq!(args, ["conv_dim=8", "conv_alpha=8"]);
    assert_eq!(t["network_module"].as_str(), Some("networks.lora"));
}
