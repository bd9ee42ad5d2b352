//! Training-step time and peak memory of the LoRA trainer, next to PyTorch's.
//!
//! ```text
//! cargo bench -p loraflow-trainer --bench train_step            # every config, one process each
//! cargo bench -p loraflow-trainer --bench train_step -- tiny    # one config
//! LORAFLOW_BENCH_DEVICE=vulkan cargo bench -p loraflow-trainer --features vulkan --bench train_step
//! ```
//!
//! Each configuration runs in its own process so that the peak resident memory (`VmHWM`)
//! belongs to it alone. A step is what `Trainer::run` does per optimiser step: forward,
//! backward, global-norm clipping and an AdamW update of the adapters (fp32, min-SNR-5,
//! offset noise, rank-16 attention adapters). When `bench/torch_reference.json` exists (written
//! by `bench/train_step_torch.py` with the same thread count), the ratio burn/torch is printed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::lora::{NetworkConfig, adapter_param_count, apply_lora};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::NoiseSchedule;
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::train::step::{MicroBatch, Objective, StepNoise, optimizer_step};
use loraflow_trainer::unet::UNetConfig;

struct Case {
    name: &'static str,
    what: &'static str,
    config: UNetConfig,
    batch: usize,
    latent: usize,
    tokens: usize,
    steps: usize,
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
            config: tiny,
            batch: 2,
            latent: 32,
            tokens: 77,
            steps: 10,
        },
        Case {
            name: "sd15",
            what: "SD1.5 UNet (860M), batch 1, 32x32 latents (256 px)",
            config: UNetConfig::sd15(),
            batch: 1,
            latent: 32,
            tokens: 77,
            steps: 3,
        },
    ]
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

/// Runs one case in this process and prints one JSON line.
fn run_case(case: &Case) -> anyhow::Result<()> {
    let device = parse_device(&device_spec())?.autodiff();
    let unet = case.config.init(&device).no_grad();
    let network = NetworkConfig::new(16, 16.0);
    let (mut unet, adapted) = apply_lora(unet, &network, 0, &device)?;
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
    let cross = case.config.cross_attention_dim[0];
    let latents = HostTensor::new(vec![b, 4, s, s], rng.normal(b * 4 * s * s));
    let context = HostTensor::new(
        vec![b, case.tokens, cross],
        rng.normal(b * case.tokens * cross),
    );

    let mut times = Vec::new();
    let mut cpu_start = None;
    // One warm-up step (allocations, autotuning on GPUs), then the timed steps.
    for step in 0..=case.steps {
        if step == 1 {
            cpu_start = cpu_ms();
        }
        let noise = StepNoise::sample(&mut rng, [b, 4, s, s], 1000);
        let mb = MicroBatch {
            latents: latents.to_tensor::<4>(&device),
            context: context.to_tensor::<3>(&device),
            added: None,
            noise,
        };
        let start = Instant::now();
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
        // Wait for queued work (the update on GPU backends) so the time covers the whole step.
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        anyhow::ensure!(stats.loss.is_finite(), "loss diverged");
        if step > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let cpu_per_step = cpu_start
        .zip(cpu_ms())
        .map(|(a, b)| (b - a) / case.steps as f64);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
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
            "adapted_modules": adapted.len(),
            "steps": case.steps,
        })
    );
    Ok(())
}

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
    if let Some(name) = args.first() {
        let case = all
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("unknown case `{name}`; expected tiny or sd15"))?;
        return run_case(case);
    }

    let torch = torch_reference();
    println!(
        "burn 0.22.1 on `{}`, {} CPU threads, fp32",
        device_spec(),
        threads()
    );
    if let Some(t) = &torch {
        println!(
            "torch reference: {} ({} threads) from bench/torch_reference.json",
            t["torch"].as_str().unwrap_or("?"),
            t["threads"]
        );
        if t["threads"].as_u64() != Some(threads() as u64) {
            println!(
                "warning: thread counts differ; set RAYON_NUM_THREADS={} for comparable ratios",
                t["threads"]
            );
        }
    }
    println!(
        "{:<6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>9}  what",
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
        let out = Command::new(&exe).arg(case.name).output()?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let burn: serde_json::Value = serde_json::from_str(line.trim())?;
        let t = torch.as_ref().map(|t| &t["results"][case.name]);
        let burn_ms = burn["step_ms_mean"].as_f64();
        let torch_ms = t.and_then(|t| t["step_ms_mean"].as_f64());
        let burn_cpu = burn["cpu_ms_per_step"].as_f64();
        let torch_cpu = t.and_then(|t| t["cpu_ms_per_step"].as_f64());
        let fmt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let ratio = |a: Option<f64>, b: Option<f64>| fmt(a.zip(b).map(|(a, b)| a / b), 2);
        println!(
            "{:<6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>9}  {}",
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
