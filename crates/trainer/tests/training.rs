//! End-to-end training on the tiny fixture UNet: the loss really goes down, only adapters
//! move, runs are reproducible from the seed, cancellation stops between steps, the
//! prediction type follows the model, and gradient checkpointing saves memory and nothing
//! else. Gradient accumulation has its own file (`accumulation.rs`).
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor};
use common::tiny::{base, config, dataset, tmp, train};
use common::{fixture, max_abs_diff};
use loraflow_trainer::lora::load_kohya;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::{NoiseSchedule, Prediction};
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::train::dataset::LatentDataset;
use loraflow_trainer::train::lr::{LrSchedule, LrScheduleKind};
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss};
use loraflow_trainer::unet::UNet2DConditionModel;
use loraflow_trainer::{Error, NeverCancel, ProgressEvent, TrainConfig, Trainer};

/// Mean loss over fixed draws, so that models can be compared on the same noise.
fn eval_loss(unet: &UNet2DConditionModel, ds: &LatentDataset, device: &Device) -> f32 {
    let schedule = NoiseSchedule::stable_diffusion();
    let mut rng = SeededRng::new(1234, Stream::Noise);
    let mut total = 0.0;
    for _ in 0..8 {
        let (latents, context) = ds.batch(&[0, 1, 2, 3], device);
        let noise = StepNoise::sample(&mut rng, latents.dims(), 1000);
        let loss = diffusion_loss(
            unet,
            &schedule,
            &Objective::default(),
            latents,
            context,
            &noise,
        );
        total += loss.into_scalar::<f32>();
    }
    total / 8.0
}

#[test]
fn training_lowers_the_loss_and_writes_reproducible_files() {
    let out = tmp("e2e");
    let mut events = Vec::new();
    let trainer = Trainer::with_dataset(config(&out), dataset()).unwrap();
    assert_eq!(trainer.plan(), (2, 20));
    let result = trainer
        .run(&mut |e: ProgressEvent| events.push(e), &NeverCancel)
        .unwrap();
    assert_eq!(result.steps, 20);
    assert_eq!(result.losses.len(), 20);
    assert!(result.losses.iter().all(|l| l.is_finite()));
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Step(p) => Some(p.step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());
    assert!(result.config_file.exists());
    let saved: TrainConfig = TrainConfig::from_json_file(&result.config_file).unwrap();
    assert_eq!(saved.seed, 7);

    // The trained adapters lower the loss of the frozen base on the same draws.
    let device = Device::flex();
    let ds = dataset();
    let before = eval_loss(&base(&device), &ds, &device);
    let mut trained = base(&device);
    let loaded = load_kohya(&mut trained, &result.lora, &device).unwrap();
    assert_eq!(loaded.modules, result.adapted_modules);
    let after = eval_loss(&trained, &ds, &device);
    println!("eval loss {before} -> {after}");
    assert!(
        after < before * 0.95,
        "loss did not go down: {before} -> {after}"
    );
    let meta = TensorFile::open(&result.lora).unwrap().metadata();
    assert_eq!(meta["ss_steps"], "20");
    assert_eq!(meta["ss_seed"], "7");

    // Same seed, same file contents.
    let out2 = tmp("e2e-again");
    let again = Trainer::with_dataset(config(&out2), dataset())
        .unwrap()
        .run(&mut |_| {}, &NeverCancel)
        .unwrap();
    assert_eq!(again.losses, result.losses);
    let (a, b) = (
        TensorFile::open(&result.lora).unwrap(),
        TensorFile::open(&again.lora).unwrap(),
    );
    for name in a.names() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

#[test]
fn only_adapters_change_and_epochs_are_saved() {
    let out = tmp("frozen");
    let mut c = config(&out);
    c.epochs = 2;
    c.output.save_every_n_epochs = Some(1);
    c.output.peft = true;
    c.lr_schedule = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 1,
    };
    let mut lrs = Vec::new();
    let result = Trainer::with_dataset(c, dataset())
        .unwrap()
        .run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e {
                    lrs.push(p.learning_rate)
                }
            },
            &NeverCancel,
        )
        .unwrap();
    assert_eq!(lrs.len(), 4);
    assert_eq!(lrs[0], 0.0, "warm-up starts at zero");
    assert!(
        lrs[1] > lrs[2] && lrs[2] > lrs[3] && lrs[3] > 0.0,
        "{lrs:?}"
    );
    let names: Vec<_> = result
        .saved
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["tiny-000001.safetensors", "tiny.safetensors"]);
    assert!(result.peft.as_ref().unwrap().exists());
    assert_eq!(result.saved[0].sha256.len(), 64);

    // Merging the trained LoRA into the base changes exactly the adapted weights.
    let device = Device::flex();
    let mut merged = base(&device);
    load_kohya(&mut merged, &result.lora, &device).unwrap();
    loraflow_trainer::lora::merge_lora(&mut merged);
    let original =
        TensorFile::open(fixture("lora_step/diffusion_pytorch_model.safetensors")).unwrap();
    let dir = tmp("frozen-merged");
    let changed: Vec<String> = merged
        .diffusers_keys()
        .into_iter()
        .zip(merged_weights(&merged, &dir))
        .filter(|(k, t)| max_abs_diff(&original.read(k).unwrap(), t) > 0.0)
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<String> = result
        .adapted_modules
        .iter()
        .map(|m| format!("{m}.weight"))
        .collect();
    assert_eq!(changed, expected);
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// The model's weights in diffusers layout, in `diffusers_keys` order.
fn merged_weights(unet: &UNet2DConditionModel, _dir: &Path) -> Vec<HostTensor> {
    struct Collect(Vec<HostTensor>, Vec<(String, String)>);
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, n: &str, c: &str) {
            self.1.push((n.into(), c.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let t = HostTensor::from_tensor(p.val());
            let linear =
                matches!(self.1.last(), Some((n, c)) if n == "weight" && c == "Struct:LoraLinear");
            self.0.push(if linear { t.transposed() } else { t });
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    unet.visit(&mut c);
    c.0
}

#[test]
fn cancellation_stops_between_steps() {
    let out = tmp("cancel");
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let err = Trainer::with_dataset(config(&out), dataset())
        .unwrap()
        .run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e
                    && p.step == 3
                {
                    flag.store(true, Ordering::Relaxed);
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 3 }),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn dataset_files_and_shape_checks() {
    let out = tmp("dsfile");
    let ds = dataset();
    let path = out.join("data.safetensors");
    let (l, c) = ds.batch(&[0, 1, 2, 3], &Device::flex());
    tensor_file::write(
        &path,
        &[
            ("latents".into(), HostTensor::from_tensor(l)),
            (
                "encoder_hidden_states".into(),
                HostTensor::from_tensor(c.clone()),
            ),
        ],
        Default::default(),
        SaveDtype::F32,
    )
    .unwrap();
    assert_eq!(LatentDataset::open(&path).unwrap(), ds);

    // States of the wrong width for the UNet are refused before training starts.
    let wide = LatentDataset::new(
        HostTensor::new(vec![1, 4, 8, 8], vec![0.0; 256]),
        HostTensor::new(vec![1, 5, 16], vec![0.0; 80]),
    )
    .unwrap();
    let err = Trainer::with_dataset(config(&out), wide)
        .unwrap()
        .run(&mut |_| {}, &NeverCancel)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("width 16") && err.contains("width 12"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// Checkpointing must change how the backward pass gets its activations and nothing else:
/// the flag reaches burn (the run's device, and so every tensor of the run, carries the
/// balanced strategy, or none without the flag) and the steps are the same. That it really
/// recomputes instead of keeping activations is seen in its effect on memory
/// ([`gradient_checkpointing_lowers_peak_memory`]); burn 0.22.1 exposes no count of
/// recomputed operations.
#[test]
fn gradient_checkpointing_gives_the_same_steps() {
    let run = |checkpointing: bool, name: &str| {
        let out = tmp(name);
        let mut c = config(&out);
        c.max_train_steps = Some(3);
        c.gradient_checkpointing = checkpointing;
        let trainer = Trainer::with_dataset(c, dataset()).unwrap();
        let strategy = trainer
            .training_device()
            .unwrap()
            .gradient_checkpointing_strategy();
        let want = if checkpointing {
            GradientCheckpointingStrategy::Balanced
        } else {
            GradientCheckpointingStrategy::Disabled
        };
        assert_eq!(strategy, Some(want));
        let r = trainer.run(&mut |_| {}, &NeverCancel).unwrap();
        std::fs::remove_dir_all(&out).ok();
        r.losses
    };
    let plain = run(false, "ckpt-off");
    let checkpointed = run(true, "ckpt-on");
    for (a, b) in plain.iter().zip(&checkpointed) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "{plain:?} vs {checkpointed:?}"
        );
    }
}

/// A model folder whose scheduler config says v-prediction, with the fixture UNet's config.
fn v_model(root: &Path) -> PathBuf {
    let unet = root.join("model/unet");
    std::fs::create_dir_all(&unet).unwrap();
    std::fs::copy(fixture("lora_step/config.json"), unet.join("config.json")).unwrap();
    let scheduler = root.join("model/scheduler");
    std::fs::create_dir_all(&scheduler).unwrap();
    std::fs::write(
        scheduler.join("scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
            "prediction_type": "v_prediction"}"#,
    )
    .unwrap();
    unet.join("config.json")
}

#[test]
fn the_prediction_type_comes_from_the_model_scheduler_config() {
    let root = tmp("prediction");
    let unet_config = v_model(&root);
    let cfg = |name: &str, prediction: Option<Prediction>, override_model: bool| {
        let mut c = config(&root.join(name));
        c.model.unet_config = Some(unet_config.clone());
        c.objective.prediction = prediction;
        c.objective.override_model_prediction = override_model;
        c.max_train_steps = Some(2);
        c
    };

    // Unset: the model's v-prediction, which the run trains and records.
    let c = cfg("default", None, false);
    let trainer = Trainer::with_dataset(c.clone(), dataset()).unwrap();
    assert_eq!(trainer.objective().prediction, Prediction::VPrediction);
    let out = trainer.run(&mut |_| {}, &NeverCancel).unwrap();
    let meta = TensorFile::open(&out.lora).unwrap().metadata();
    assert_eq!(meta["ss_v_parameterization"], "True");
    // The same steps as an explicit v target on a UNet whose model says nothing.
    let mut explicit = config(&root.join("explicit"));
    explicit.objective.prediction = Some(Prediction::VPrediction);
    explicit.max_train_steps = Some(2);
    let v = train(explicit, dataset());
    assert_eq!(out.losses, v.losses);
    let mut eps = config(&root.join("eps"));
    eps.max_train_steps = Some(2);
    assert_ne!(train(eps, dataset()).losses, v.losses, "the target matters");

    // Agreeing is fine; contradicting is refused before anything is written...
    Trainer::with_dataset(
        cfg("agree", Some(Prediction::VPrediction), false),
        dataset(),
    )
    .unwrap();
    let err = Trainer::with_dataset(cfg("contra", Some(Prediction::Epsilon), false), dataset())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "objective.prediction"),
        "{text}"
    );
    assert!(
        text.contains("v_prediction") && text.contains("override_model_prediction"),
        "{text}"
    );
    assert!(!root.join("contra").exists());
    // ...unless overridden on purpose.
    let over =
        Trainer::with_dataset(cfg("over", Some(Prediction::Epsilon), true), dataset()).unwrap();
    assert_eq!(over.objective().prediction, Prediction::Epsilon);
    // An override with nothing to override with is a configuration error.
    let err = Trainer::with_dataset(cfg("empty", None, true), dataset()).unwrap_err();
    assert!(
        err.to_string()
            .contains("objective.override_model_prediction"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Peak resident memory (`VmHWM`, kiB) of a child process of this test binary running only
/// [`checkpointing_memory_probe`], so that no other test shares the figure.
#[cfg(target_os = "linux")]
fn probe_peak_rss_kib(checkpointing: bool) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "checkpointing_memory_probe",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "LORAFLOW_PROBE_CHECKPOINTING",
            if checkpointing { "1" } else { "0" },
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line.
    let figure = stdout
        .split_once("peak_rss_kib=")
        .unwrap_or_else(|| panic!("no figure in the probe's output: {stdout}"))
        .1;
    let digits: String = figure.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// One optimiser step at 32×32 latents (batch 2) through `Trainer`, with and without
/// checkpointing, each in a fresh process: keeping every activation for the backward pass
/// peaks at about 210 MiB, recomputing the memory-bound ones at about 147 MiB (measured on
/// x86-64 Linux). The bound leaves a wide margin; a flag that did nothing would give equal
/// peaks.
#[cfg(target_os = "linux")]
#[test]
fn gradient_checkpointing_lowers_peak_memory() {
    let plain = probe_peak_rss_kib(false);
    let checkpointed = probe_peak_rss_kib(true);
    println!("peak RSS: {plain} kiB plain, {checkpointed} kiB checkpointed");
    assert!(
        checkpointed * 100 < plain * 85,
        "checkpointing saved too little: {checkpointed} kiB vs {plain} kiB"
    );
}

/// The measured process of [`gradient_checkpointing_lowers_peak_memory`].
#[cfg(target_os = "linux")]
#[test]
#[ignore = "run in a child process by gradient_checkpointing_lowers_peak_memory"]
fn checkpointing_memory_probe() {
    let checkpointing = std::env::var("LORAFLOW_PROBE_CHECKPOINTING").as_deref() == Ok("1");
    let out = tmp(&format!("ckpt-probe-{checkpointing}"));
    let mut c = config(&out);
    c.gradient_checkpointing = checkpointing;
    c.max_train_steps = Some(1);
    c.output.save_state = false;
    let mut rng = SeededRng::new(5, Stream::Noise);
    let data = LatentDataset::new(
        HostTensor::new(vec![2, 4, 32, 32], rng.normal(2 * 4 * 32 * 32)),
        HostTensor::new(vec![2, 5, 12], rng.normal(120)),
    )
    .unwrap();
    let r = Trainer::with_dataset(c, data)
        .unwrap()
        .run(&mut |_| {}, &NeverCancel)
        .unwrap();
    assert_eq!(r.steps, 1);
    std::fs::remove_dir_all(&out).ok();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM in /proc/self/status")
        .trim()
        .trim_end_matches("kB")
        .trim();
    println!("peak_rss_kib={hwm}");
}
