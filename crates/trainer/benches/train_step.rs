//! Training-step time and peak memory of the LoRA trainer, next to PyTorch's.
//!
//! ```text
//! cargo bench -p loraflow-trainer --bench train_step            # every config, one process each
//! cargo bench -p loraflow-trainer --bench train_step -- tiny    # the configs named tiny*
//! cargo bench -p loraflow-trainer --bench train_step -- sdxl    # sdxl, sdxl-gc, sdxl-bf16
//! cargo bench -p loraflow-trainer --bench train_step -- flux    # flux, flux-f32
//! LORAFLOW_BENCH_DEVICE=vulkan cargo bench -p loraflow-trainer --features vulkan --bench train_step
//! ```
//!
//! Each configuration runs in its own process so that the peak resident memory (`VmHWM`)
//! belongs to it alone. A step is what `Trainer::run` does per optimiser step: forward,
//! backward, global-norm clipping and an AdamW update of the adapters (fp32, min-SNR-5,
//! offset noise, rank-16 attention adapters). When `bench/torch_reference.json` exists (written
//! by `bench/train_step_torch.py` with the same thread count), the ratio burn/torch is printed.
//!
//! The `sdxl` cases are an SDXL-shaped UNet at reduced width (levels 128/256/512 wide instead
//! of 320/640/1280, 64-wide heads, 1/2/4 transformer layers instead of 1/2/10) with SDXL's
//! conditioning as it is: a 2048-wide two-encoder context, the 1280-wide pooled vector and six
//! `time_ids` through the 2816-wide `text_time` embedding. `sdxl-gc` adds burn's gradient
//! checkpointing, `sdxl-bf16` holds the frozen base in bf16 (`model.base_weights = "bf16"`).
//!
//! The `flux` cases are a FLUX.1-shaped transformer at reduced size: FLUX.1's 128-wide heads
//! and rotary axes (16, 56, 56), its 64-feature packed latent tokens, the 4096-wide T5 context
//! and 768-wide pooled CLIP vector and its guidance embedding, with 4 heads (512 wide instead
//! of 3072) and 2 double-stream + 4 single-stream blocks (instead of 19 + 38). A step is the
//! Flux run's: flow matching (sd-scripts' `flux_shift` timesteps, guidance 1.0), rank-16
//! adapters on the default `FLUX_TARGETS`, global-norm clipping, AdamW; batch 1, a 32×32
//! latent (256 px, 256 image tokens), 128 text tokens. `flux` holds the base in bf16 as FLUX.1
//! training does (`model.base_weights = "bf16"`), `flux-f32` in fp32.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::FloatDType;
use loraflow_trainer::device::{Device, parse_device};
use loraflow_trainer::flux::FluxTransformerConfig;
use loraflow_trainer::flux::lora::FLUX_TARGETS;
use loraflow_trainer::lora::{NetworkConfig, adapter_param_count, apply_lora, store_base_weights};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::NoiseSchedule;
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::train::flow::{FlowNoise, FlowObjective};
use loraflow_trainer::train::flow_step::{FlowMicroBatch, FlowStepSettings, flow_optimizer_step};
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::train::step::{MicroBatch, Objective, StepNoise, optimizer_step};
use loraflow_trainer::unet::{AddedConditions, UNetConfig};

/// The model a case trains.
enum Model {
    UNet(UNetConfig),
    Flux(FluxTransformerConfig),
}

struct Case {
    name: &'static str,
    what: &'static str,
    model: Model,
    batch: usize,
    /// Side of the square latent (4 channels for UNets, 16 for Flux).
    latent: usize,
    /// Text tokens of the context.
    tokens: usize,
    steps: usize,
    /// burn's (balanced) gradient checkpointing.
    checkpointing: bool,
    /// The frozen base held in bf16.
    bf16_base: bool,
}

/// SDXL's UNet at reduced width and depth, with its conditioning widths unchanged.
fn sdxl_reduced() -> UNetConfig {
    UNetConfig::from_diffusers(&serde_json::json!({
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [2, 4, 8],
        "block_out_channels": [128, 256, 512],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "layers_per_block": 2,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 4],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": true
    }))
    .expect("valid reduced SDXL config")
}

/// A case on [`sdxl_reduced`]: batch 1, 32x32 latents, 77 tokens, 3 steps.
fn sdxl(name: &'static str, what: &'static str, checkpointing: bool, bf16_base: bool) -> Case {
    Case {
        name,
        what,
        model: Model::UNet(sdxl_reduced()),
        batch: 1,
        latent: 32,
        tokens: 77,
        steps: 3,
        checkpointing,
        bf16_base,
    }
}

fn cases() -> Vec<Case> {
    let tiny = UNetConfig::from_diffusers(&serde_json::json!({
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "cross_attention_dim": 32,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "sample_size": 32
    }))
    .expect("valid tiny config");
    vec![
        Case {
            name: "tiny",
            what: "diffusers test UNet (32, 64), batch 2, 32x32 latents",
            model: Model::UNet(tiny),
            batch: 2,
            latent: 32,
            tokens: 77,
            steps: 10,
            checkpointing: false,
            bf16_base: false,
        },
        Case {
            name: "sd15",
            what: "SD1.5 UNet (860M), batch 1, 32x32 latents (256 px)",
            model: Model::UNet(UNetConfig::sd15()),
            batch: 1,
            latent: 32,
            tokens: 77,
            steps: 3,
            checkpointing: false,
            bf16_base: false,
        },
        sdxl(
            "sdxl",
            "SDXL-shaped UNet (128/256/512 wide, 1/2/4 layers), batch 1, 32x32 latents",
            false,
            false,
        ),
        sdxl("sdxl-gc", "sdxl with gradient checkpointing", true, false),
        sdxl(
            "sdxl-bf16",
            "sdxl with the frozen base in bf16",
            false,
            true,
        ),
        flux(
            "flux",
            "FLUX.1-shaped transformer (512 wide, 2+4 blocks), bf16 base, 256 px",
            true,
        ),
        flux("flux-f32", "flux with the frozen base in fp32", false),
    ]
}

/// FLUX.1's transformer at reduced width and depth, with its head width, rotary axes, token
/// widths and guidance embedding unchanged (the same config as `bench/train_step_torch.py`).
fn flux_reduced() -> FluxTransformerConfig {
    FluxTransformerConfig::from_diffusers(&serde_json::json!({
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": true,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 4,
        "num_layers": 2,
        "num_single_layers": 4,
        "patch_size": 1,
        "pooled_projection_dim": 768
    }))
    .expect("valid reduced FLUX.1 config")
}

/// A case on [`flux_reduced`]: batch 1, a 16×32×32 latent, 128 text tokens, 3 steps.
fn flux(name: &'static str, what: &'static str, bf16_base: bool) -> Case {
    Case {
        name,
        what,
        model: Model::Flux(flux_reduced()),
        batch: 1,
        latent: 32,
        tokens: 128,
        steps: 3,
        checkpointing: false,
        bf16_base,
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// User + system CPU time of this process in milliseconds (`/proc/self/stat`, 100 Hz ticks).
fn cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// The device to bench: `LORAFLOW_BENCH_DEVICE` (`cpu`, `wgpu`, `vulkan`, `cuda:0`), `cpu` by
/// default. Non-CPU devices need the matching crate feature.
fn device_spec() -> String {
    std::env::var("LORAFLOW_BENCH_DEVICE").unwrap_or_else(|_| "cpu".to_string())
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Step times and CPU time of one case: a warm-up step, then the timed ones.
struct Timing {
    times: Vec<f64>,
    cpu_start: Option<f64>,
}

impl Timing {
    fn new() -> Self {
        Self {
            times: Vec::new(),
            cpu_start: None,
        }
    }

    /// Call before step `step` (0 is the warm-up, allocations and GPU autotuning).
    fn start(&mut self, step: usize) -> Instant {
        if step == 1 {
            self.cpu_start = cpu_ms();
        }
        Instant::now()
    }

    /// Call after step `step`, once the device has finished it.
    fn end(&mut self, step: usize, started: Instant, loss: f32) -> anyhow::Result<()> {
        anyhow::ensure!(loss.is_finite(), "loss diverged");
        if step > 0 {
            self.times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }

    /// Prints the case's JSON line.
    fn report(&self, case: &Case, trainable: usize, frozen: usize, adapted: usize) {
        let cpu_per_step = self
            .cpu_start
            .zip(cpu_ms())
            .map(|(a, b)| (b - a) / case.steps as f64);
        let mean = self.times.iter().sum::<f64>() / self.times.len() as f64;
        let min = self.times.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{}",
            serde_json::json!({
                "name": case.name,
                "step_ms_mean": mean,
                "step_ms_min": min,
                "cpu_ms_per_step": cpu_per_step,
                "peak_rss_mib": peak_rss_mib(),
                "trainable_params": trainable,
                "frozen_params": frozen,
                "adapted_modules": adapted,
                "steps": case.steps,
            })
        );
    }
}

/// Waits for queued work (the update on GPU backends) so the time covers the whole step.
fn sync(device: &Device) -> anyhow::Result<()> {
    device
        .sync()
        .map_err(|e| anyhow::anyhow!("device sync: {e:?}"))
}

/// Runs one case in this process and prints one JSON line.
fn run_case(case: &Case) -> anyhow::Result<()> {
    let mut device = parse_device(&device_spec())?.autodiff();
    if case.checkpointing {
        device = device.gradient_checkpointing();
    }
    match &case.model {
        Model::UNet(config) => run_unet(case, config, &device),
        Model::Flux(config) => run_flux(case, config, &device),
    }
}

fn run_unet(case: &Case, config: &UNetConfig, device: &Device) -> anyhow::Result<()> {
    let mut unet = config.init(device).no_grad();
    if case.bf16_base {
        store_base_weights(&mut unet, FloatDType::BF16);
    }
    let network = NetworkConfig::new(16, 16.0);
    let (mut unet, adapted) = apply_lora(unet, &network, 0, device)?;
    let trainable = adapter_param_count(&mut unet);
    let frozen = unet.num_params() - trainable;
    let settings = AdamWSettings {
        learning_rate: 1e-4,
        ..AdamWSettings::default()
    };
    let mut optim = settings.build();
    let schedule = NoiseSchedule::stable_diffusion();
    let objective = Objective {
        noise_offset: 0.05,
        min_snr_gamma: Some(5.0),
        ..Objective::default()
    };
    let mut rng = SeededRng::new(0, Stream::Noise);
    let (b, s) = (case.batch, case.latent);
    let cross = config.cross_attention_dim[0];
    let latents = HostTensor::new(vec![b, 4, s, s], rng.normal(b * 4 * s * s));
    let context = HostTensor::new(
        vec![b, case.tokens, cross],
        rng.normal(b * case.tokens * cross),
    );
    // SDXL: the pooled vector and the micro-conditioning of a 256 px square image.
    let added = config.addition.as_ref().map(|a| {
        let pooled = a.text_embeds_dim(6).expect("the SDXL widths add up");
        (
            HostTensor::new(vec![b, pooled], rng.normal(b * pooled)),
            HostTensor::new(vec![b, 6], [256.0, 256.0, 0.0, 0.0, 256.0, 256.0].repeat(b)),
        )
    });

    let mut timing = Timing::new();
    for step in 0..=case.steps {
        let noise = StepNoise::sample(&mut rng, [b, 4, s, s], 1000);
        let mb = MicroBatch {
            latents: latents.to_tensor::<4>(device),
            context: context.to_tensor::<3>(device),
            added: added.as_ref().map(|(pooled, time_ids)| AddedConditions {
                text_embeds: pooled.to_tensor::<2>(device),
                time_ids: time_ids.to_tensor::<2>(device),
            }),
            noise,
        };
        let start = timing.start(step);
        let (next, stats) = optimizer_step(
            unet,
            &mut optim,
            &schedule,
            &objective,
            vec![mb],
            1e-4,
            Some(1.0),
            step + 1,
        )?;
        unet = next;
        sync(device)?;
        timing.end(step, start, stats.loss)?;
    }
    timing.report(case, trainable, frozen, adapted.len());
    Ok(())
}

fn run_flux(case: &Case, config: &FluxTransformerConfig, device: &Device) -> anyhow::Result<()> {
    let mut model = config.init(device).no_grad();
    if case.bf16_base {
        store_base_weights(&mut model, FloatDType::BF16);
    }
    let network = NetworkConfig::new(16, 16.0).with_targets(FLUX_TARGETS);
    let (mut model, adapted) = apply_lora(model, &network, 0, device)?;
    let trainable = adapter_param_count(&mut model);
    let frozen = model.num_params() - trainable;
    let settings = AdamWSettings {
        learning_rate: 1e-4,
        ..AdamWSettings::default()
    };
    let mut optim = settings.build();
    let objective = FlowObjective::default();
    let mut rng = SeededRng::new(0, Stream::Noise);
    let (b, s, t) = (case.batch, case.latent, case.tokens);
    let channels = config.in_channels / 4;
    let (joint, pooled_dim) = (config.joint_attention_dim, config.pooled_projection_dim);
    let latents = HostTensor::new(vec![b, channels, s, s], rng.normal(b * channels * s * s));
    let text = HostTensor::new(vec![b, t, joint], rng.normal(b * t * joint));
    let pooled = HostTensor::new(vec![b, pooled_dim], rng.normal(b * pooled_dim));

    let mut timing = Timing::new();
    for step in 0..=case.steps {
        let noise = FlowNoise::sample(&mut rng, [b, channels, s, s], &objective.timestep_sampling);
        let mb = FlowMicroBatch {
            latents: latents.to_tensor::<4>(device),
            encoder_hidden_states: text.to_tensor::<3>(device),
            pooled_projections: pooled.to_tensor::<2>(device),
            noise,
        };
        let start = timing.start(step);
        let (next, stats) = flow_optimizer_step(
            model,
            &mut optim,
            &objective,
            vec![mb],
            FlowStepSettings {
                learning_rate: 1e-4,
                max_grad_norm: Some(1.0),
                accumulation: 1,
                step: step + 1,
            },
        )?;
        model = next;
        sync(device)?;
        timing.end(step, start, stats.loss)?;
    }
    timing.report(case, trainable, frozen, adapted.len());
    Ok(())
}

/// Set in the per-case child processes.
const CHILD: &str = "LORAFLOW_BENCH_CHILD";

fn torch_reference() -> Option<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = cases();
    if std::env::var_os(CHILD).is_some() {
        let name = args.first().context("the case to run")?;
        let case = all
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("unknown case `{name}`"))?;
        return run_case(case);
    }
    // `-- NAME` runs the cases whose names start with NAME.
    let all: Vec<Case> = match args.first() {
        None => all,
        Some(name) => {
            let picked: Vec<Case> = all
                .into_iter()
                .filter(|c| c.name.starts_with(name.as_str()))
                .collect();
            if picked.is_empty() {
                bail!(
                    "no case starts with `{name}`; expected tiny, sd15, sdxl (sdxl-gc, sdxl-bf16) or flux (flux-f32)"
                );
            }
            picked
        }
    };

    let torch = torch_reference();
    println!(
        "burn 0.22.1 on `{}`, {} CPU threads, fp32 adapters",
        device_spec(),
        threads()
    );
    if let Some(t) = &torch {
        println!(
            "torch reference: {} ({} threads) from bench/torch_reference.json",
            t["torch"].as_str().unwrap_or("?"),
            t["threads"]
        );
        // Cases added by `--update` carry their own thread count (checked per case below).
        let file_threads_apply = all
            .iter()
            .any(|c| t["results"][c.name]["threads"].is_null());
        if file_threads_apply && t["threads"].as_u64() != Some(threads() as u64) {
            println!(
                "warning: thread counts differ; set RAYON_NUM_THREADS={} for comparable ratios",
                t["threads"]
            );
        }
    }
    println!(
        "{:<9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>9}  what",
        "case",
        "burn ms",
        "torch ms",
        "ratio",
        "burn cpu",
        "torch cpu",
        "ratio",
        "burn MiB",
        "torch MiB",
    );
    let exe = std::env::current_exe()?;
    for case in &all {
        let out = Command::new(&exe).arg(case.name).env(CHILD, "1").output()?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let burn: serde_json::Value = serde_json::from_str(line.trim())?;
        let t = torch
            .as_ref()
            .map(|t| &t["results"][case.name])
            .filter(|t| !t.is_null());
        // Results added later by `--update` record their own thread count.
        if let Some(n) = t.and_then(|t| t["threads"].as_u64())
            && n != threads() as u64
        {
            println!("warning: torch's {} ran on {n} threads", case.name);
        }
        let burn_ms = burn["step_ms_mean"].as_f64();
        let torch_ms = t.and_then(|t| t["step_ms_mean"].as_f64());
        let burn_cpu = burn["cpu_ms_per_step"].as_f64();
        let torch_cpu = t.and_then(|t| t["cpu_ms_per_step"].as_f64());
        let fmt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let ratio = |a: Option<f64>, b: Option<f64>| fmt(a.zip(b).map(|(a, b)| a / b), 2);
        println!(
            "{:<9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>9}  {}",
            case.name,
            fmt(burn_ms, 0),
            fmt(torch_ms, 0),
            ratio(burn_ms, torch_ms),
            fmt(burn_cpu, 0),
            fmt(torch_cpu, 0),
            ratio(burn_cpu, torch_cpu),
            fmt(burn["peak_rss_mib"].as_f64(), 0),
            fmt(t.and_then(|t| t["peak_rss_mib"].as_f64()), 0),
            case.what,
        );
    }
    Ok(())
}
