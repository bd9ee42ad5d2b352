//! Trains loraflow's demo model (`assets/tiny-sd`) on the procedural shapes world, from
//! scratch, on the CPU.
//!
//! ```text
//! cargo build --workspace --example train_shapes_world
//! target/debug/examples/train_shapes_world --template assets/tiny-sd --out /tmp/tiny-sd \
//!     --work /tmp/shapes-world --vae-config vae.json --vae-steps 600 --vae-crop 64 \
//!     --kl-weight 1e-6 --foreground-weight 4 --unet-steps 3000
//! ```
//!
//! 1. The VAE (the template's architecture, or `--vae-config`'s, freshly initialised) is
//!    trained on world pictures with the `AutoencoderKL` objective: reconstruction, a KL term
//!    (`--kl-weight`, per latent element), and optionally more weight on the pixels that differ
//!    from the background (`--foreground-weight`), which carry the shapes' colours. At every
//!    checkpoint the VAE's round trip is measured (ground-truth pictures encoded, decoded and
//!    read back by the scorer; `round_trip.png` in `--work` shows them): no UNet on this VAE
//!    can draw better than that. `--until vae` stops here.
//! 2. Its `scaling_factor` is measured on a fixed set of encoded pictures (1 / std of the
//!    latents), and those latents are cached with their captions' text-encoder states.
//! 3. The UNet (freshly initialised) is trained on the cached latents with the ε objective,
//!    min-SNR-γ weighting and the template's noise schedule; 10% of captions are dropped to the
//!    empty prompt so that classifier-free guidance works.
//! 4. The diffusers folder is written: the new `unet/` and `vae/` weights (float16) and configs,
//!    the template's text encoder (kept frozen, as it was), tokenizer and scheduler, and
//!    `parameters.json` with the seed, settings, versions, losses and the measured score.
//!
//! Everything is seeded. Checkpoints (`--work`) are written every `--checkpoint-every` steps;
//! rerunning with the same arguments resumes from the last one, and with more steps extends
//! the run (the optimiser's moments restart, which the loss shows for a few steps).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use loraflow_trainer::clip::{ClipTextConfig, ClipTokenizer, ids_tensor};
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::PipelineConfig;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::schedule::Prediction;
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::train::full::{VaeObjective, latent_scale, trainable, vae_step};
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::train::step::{MicroBatch, Objective, StepNoise, optimizer_step};
use loraflow_trainer::unet::UNet2DConditionModel;
use loraflow_trainer::vae::{AutoencoderKL, VaeConfig};
use loraflow_trainer::weights::torch_tensors;
use loraflow_trainer::world::concept::{base_probes, render};
use loraflow_trainer::world::round_trip::images_to_tensor;
use loraflow_trainer::world::{ConceptScore, RoundTrip, Tally, World, read};
use serde_json::{Value, json};

/// The run's settings (all recorded in `parameters.json`).
#[derive(Debug, Clone)]
struct Settings {
    template: PathBuf,
    out: PathBuf,
    work: PathBuf,
    seed: u64,
    vae_steps: usize,
    vae_batch: usize,
    vae_lr: f64,
    vae_crop: usize,
    kl_weight: f64,
    foreground_weight: f64,
    vae_config: Option<PathBuf>,
    until: String,
    latents: usize,
    unet_steps: usize,
    unet_batch: usize,
    unet_lr: f64,
    caption_dropout: f64,
    min_snr_gamma: Option<f64>,
    checkpoint_every: usize,
}

impl Settings {
    fn parse() -> anyhow::Result<Self> {
        let mut s = Self {
            template: "assets/tiny-sd".into(),
            out: "assets/tiny-sd".into(),
            work: std::env::temp_dir().join("loraflow-shapes-world"),
            seed: 20261202,
            vae_steps: 600,
            vae_batch: 8,
            vae_lr: 1e-3,
            vae_crop: 32,
            kl_weight: 1e-6,
            foreground_weight: 0.0,
            vae_config: None,
            until: "unet".into(),
            latents: 3000,
            unet_steps: 3000,
            unet_batch: 32,
            unet_lr: 1e-3,
            caption_dropout: 0.1,
            min_snr_gamma: Some(5.0),
            checkpoint_every: 100,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let n = || {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag} {value}"))
            };
            let f = || {
                value
                    .parse::<f64>()
                    .with_context(|| format!("{flag} {value}"))
            };
            match flag.as_str() {
                "--template" => s.template = value.clone().into(),
                "--out" => s.out = value.clone().into(),
                "--work" => s.work = value.clone().into(),
                "--seed" => s.seed = value.parse()?,
                "--vae-steps" => s.vae_steps = n()?,
                "--vae-batch" => s.vae_batch = n()?,
                "--vae-lr" => s.vae_lr = f()?,
                "--vae-crop" => s.vae_crop = n()?,
                "--kl-weight" => s.kl_weight = f()?,
                "--foreground-weight" => s.foreground_weight = f()?,
                "--vae-config" => s.vae_config = Some(value.clone().into()),
                "--until" => match value.as_str() {
                    "vae" | "unet" => s.until = value.clone(),
                    other => bail!("--until {other}: expected vae or unet"),
                },
                "--latents" => s.latents = n()?,
                "--unet-steps" => s.unet_steps = n()?,
                "--unet-batch" => s.unet_batch = n()?,
                "--unet-lr" => s.unet_lr = f()?,
                "--caption-dropout" => s.caption_dropout = f()?,
                "--min-snr-gamma" => s.min_snr_gamma = Some(f()?).filter(|g| *g > 0.0),
                "--checkpoint-every" => s.checkpoint_every = n()?.max(1),
                other => bail!("unknown option {other}"),
            }
        }
        Ok(s)
    }

    fn json(&self) -> Value {
        json!({
            "seed": self.seed,
            "vae_steps": self.vae_steps,
            "vae_batch": self.vae_batch,
            "vae_learning_rate": self.vae_lr,
            "vae_crop": self.vae_crop,
            "vae_kl_weight": self.kl_weight,
            "vae_foreground_weight": self.foreground_weight,
            "cached_latents": self.latents,
            "unet_steps": self.unet_steps,
            "unet_batch": self.unet_batch,
            "unet_learning_rate": self.unet_lr,
            "caption_dropout": self.caption_dropout,
            "min_snr_gamma": self.min_snr_gamma,
        })
    }
}

/// A cosine decay from `peak` to a tenth of it after a linear warm-up of 5% of the steps.
fn lr_at(peak: f64, step: usize, total: usize) -> f64 {
    let warmup = (total / 20).max(1);
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// World pictures as a `[n, 3, 64, 64]` tensor in [-1, 1], with their captions.
fn pictures(world: &mut World, n: usize, device: &Device) -> (Tensor<4>, Vec<String>) {
    let scenes: Vec<_> = (0..n).map(|_| world.next_scene()).collect();
    let images: Vec<_> = scenes.iter().map(|s| s.render()).collect();
    (
        images_to_tensor(&images, device),
        scenes.iter().map(|s| s.caption()).collect(),
    )
}

/// Writes `module`'s weights under the template file's keys and shapes.
fn save_weights<M: Module>(
    module: &M,
    template: Option<&TensorFile>,
    path: &Path,
    dtype: SaveDtype,
) -> anyhow::Result<()> {
    let Some(template) = template else {
        // A new architecture: PyTorch's layout is what `torch_tensors` gives.
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        tensor_file::write(path, &torch_tensors(module, ""), HashMap::new(), dtype)?;
        return Ok(());
    };
    let mut tensors = Vec::new();
    let mut names: Vec<String> = template.names();
    names.sort();
    let mut ours: Vec<String> = Vec::new();
    for (key, t) in torch_tensors(module, "") {
        let shape = template
            .shape(&key)
            .with_context(|| format!("{key} is not in {}", template.path().display()))?
            .to_vec();
        ours.push(key.clone());
        tensors.push((key, t.reshaped(shape)));
    }
    ours.sort();
    ensure!(
        ours == names,
        "{} has keys the model lacks: {:?}",
        template.path().display(),
        names
            .iter()
            .filter(|n| !ours.contains(n))
            .collect::<Vec<_>>()
    );
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    tensor_file::write(path, &tensors, HashMap::new(), dtype)?;
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

struct Templates {
    config: PipelineConfig,
    unet: TensorFile,
    /// `None` when `--vae-config` replaces the template's VAE.
    vae: Option<TensorFile>,
    /// The VAE's `config.json` as written (its `scaling_factor` is measured).
    vae_json: Value,
}

fn phase_vae(
    s: &Settings,
    t: &Templates,
    device: &Device,
    plain: &Device,
) -> anyhow::Result<(AutoencoderKL, Vec<Value>)> {
    let ckpt = s.work.join("vae.safetensors");
    let progress_path = s.work.join("vae.json");
    let mut vae = trainable(t.config.vae.init(device));
    let mut start = 0;
    let mut log: Vec<Value> = Vec::new();
    if ckpt.is_file() && progress_path.is_file() {
        let progress = read_json(&progress_path)?;
        start = progress["step"].as_u64().unwrap_or(0) as usize;
        log = progress["log"].as_array().cloned().unwrap_or_default();
        vae = trainable(vae.load_weights(&TensorFile::open(&ckpt)?)?);
        eprintln!("vae: resuming at step {start}");
    }
    if start >= s.vae_steps {
        return Ok((vae, log));
    }
    let mut optim = AdamWSettings {
        learning_rate: s.vae_lr,
        weight_decay: 0.0,
        ..AdamWSettings::default()
    }
    .build();
    let objective = VaeObjective {
        kl_weight: s.kl_weight,
        foreground_weight: s.foreground_weight,
        ..VaeObjective::default()
    };
    let mut world = World::new(s.seed);
    let mut noise = SeededRng::new(s.seed, Stream::Noise);
    let f = t.config.vae.downscale_factor();
    let crop = s.vae_crop;
    ensure!(
        crop.is_multiple_of(f) && crop <= 64,
        "--vae-crop {crop} must be a multiple of {f} up to 64"
    );
    let latent = crop / f;
    // The VAE is convolutional: training on random crops costs a fraction of whole pictures.
    let mut crops = SeededRng::new(s.seed, Stream::Shuffle);
    let eps_len = s.vae_batch * t.config.vae.latent_channels * latent * latent;
    // Replay the streams up to the resumed step (scene parameters only, no rendering).
    for _ in 0..start {
        for _ in 0..s.vae_batch {
            world.next_scene();
        }
        noise.normal(eps_len);
        crops.below(0, 64 - crop + 1);
        crops.below(0, 64 - crop + 1);
    }
    let started = Instant::now();
    let (mut l1_sum, mut kl_sum, mut count) = (0f64, 0f64, 0usize);
    for step in start..s.vae_steps {
        let (images, _) = pictures(&mut world, s.vae_batch, device);
        let (x0, y0) = (crops.below(0, 64 - crop + 1), crops.below(0, 64 - crop + 1));
        let images = images.slice([0..s.vae_batch, 0..3, y0..y0 + crop, x0..x0 + crop]);
        let eps = HostTensor::new(
            vec![s.vae_batch, t.config.vae.latent_channels, latent, latent],
            noise.normal(eps_len),
        );
        let lr = lr_at(s.vae_lr, step, s.vae_steps);
        let (next, stats) = vae_step(vae, &mut optim, &objective, images, &eps, lr, 1.0, step + 1)?;
        vae = next;
        l1_sum += stats.l1 as f64;
        kl_sum += stats.kl as f64;
        count += 1;
        let done = step + 1;
        if done % 20 == 0 || done == s.vae_steps {
            let per = started.elapsed().as_secs_f64() / (done - start) as f64;
            eprintln!(
                "vae {done}/{} l1 {:.4} kl {:.3} lr {lr:.2e} ({per:.2} s/step)",
                s.vae_steps,
                l1_sum / count as f64,
                kl_sum / count as f64
            );
            log.push(
                json!({"step": done, "l1": l1_sum / count as f64, "kl": kl_sum / count as f64}),
            );
            (l1_sum, kl_sum, count) = (0.0, 0.0, 0);
        }
        if done % s.checkpoint_every == 0 || done == s.vae_steps {
            save_weights(&vae, t.vae.as_ref(), &ckpt, SaveDtype::F32)?;
            let (round_trip, images) =
                RoundTrip::measure_with_images(&vae.valid().fork(plain), plain);
            let mut sheet = image::RgbImage::new(64 * 16, 64 * images.len().div_ceil(16) as u32);
            for (i, image) in images.iter().enumerate() {
                let (x, y) = (64 * (i % 16) as i64, 64 * (i / 16) as i64);
                image::imageops::replace(&mut sheet, image, x, y);
            }
            sheet.save(s.work.join("round_trip.png"))?;
            eprintln!("vae {done}: round trip {round_trip}");
            log.push(json!({"step": done, "round_trip_drawn": round_trip.drawn.rate()}));
            write_json(&progress_path, &json!({"step": done, "log": log}))?;
        }
    }
    Ok((vae, log))
}

/// Encoded world pictures (scaled) and the text-encoder state of each one's caption.
struct Cache {
    latents: Vec<f32>,
    latent_shape: [usize; 3],
    captions: Vec<String>,
    states: BTreeMap<String, Vec<f32>>,
    state_shape: [usize; 2],
    scale: f64,
}

fn encode_cache(
    s: &Settings,
    vae: &AutoencoderKL,
    text: &loraflow_trainer::clip::ClipTextModel,
    tokenizer: &ClipTokenizer,
    device: &Device,
) -> anyhow::Result<Cache> {
    let mut world = World::new(s.seed.wrapping_add(1));
    let mut raw = Vec::new();
    let mut captions = Vec::new();
    let mut shape = [0; 3];
    let mut left = s.latents;
    while left > 0 {
        let n = left.min(50);
        let (images, caps) = pictures(&mut world, n, device);
        let (mean, _) = vae.encode(images);
        let [_, c, h, w] = mean.dims();
        shape = [c, h, w];
        raw.extend(HostTensor::from_tensor(mean).data);
        captions.extend(caps);
        left -= n;
    }
    let scale = latent_scale(&raw);
    let latents = raw.iter().map(|v| v * scale as f32).collect();
    let mut states = BTreeMap::new();
    let mut state_shape = [0; 2];
    let mut unique: Vec<String> = captions.clone();
    unique.push(String::new());
    unique.sort();
    unique.dedup();
    for caption in unique {
        let ids = vec![tokenizer.encode_padded(&caption)];
        let h = text.forward(ids_tensor(&ids, device), 1)?;
        let [_, n, d] = h.dims();
        state_shape = [n, d];
        states.insert(caption, HostTensor::from_tensor(h).data);
    }
    eprintln!(
        "cached {} latents {:?}, {} captions, scaling_factor {scale:.5}",
        s.latents,
        shape,
        states.len()
    );
    Ok(Cache {
        latents,
        latent_shape: shape,
        captions,
        states,
        state_shape,
        scale,
    })
}

/// The fraction of base probes (first seed only) the model draws as asked.
fn quick_score(
    unet: &UNet2DConditionModel,
    vae: &AutoencoderKL,
    text: &loraflow_trainer::clip::ClipTextModel,
    tokenizer: &ClipTokenizer,
    t: &Templates,
    device: &Device,
) -> anyhow::Result<Tally> {
    let pipeline = Pipeline {
        unet,
        text_encoder: text,
        vae,
        tokenizer,
        scheduler: &t.config.scheduler,
    };
    let mut tally = Tally::default();
    for probe in base_probes() {
        let reading = read(&render(&pipeline, &probe.prompt, 1001, device)?);
        tally.add(reading.shows(probe.colour, probe.shape));
    }
    Ok(tally)
}

#[allow(clippy::too_many_arguments)]
fn phase_unet(
    s: &Settings,
    t: &Templates,
    cache: &Cache,
    vae: &AutoencoderKL,
    text: &loraflow_trainer::clip::ClipTextModel,
    tokenizer: &ClipTokenizer,
    device: &Device,
    plain: &Device,
) -> anyhow::Result<(UNet2DConditionModel, Vec<Value>)> {
    let ckpt = s.work.join("unet.safetensors");
    let progress_path = s.work.join("unet.json");
    let mut unet = trainable(t.config.unet.init(device));
    let mut start = 0;
    let mut log: Vec<Value> = Vec::new();
    if ckpt.is_file() && progress_path.is_file() {
        let progress = read_json(&progress_path)?;
        start = progress["step"].as_u64().unwrap_or(0) as usize;
        log = progress["log"].as_array().cloned().unwrap_or_default();
        unet = trainable(unet.load_weights(&TensorFile::open(&ckpt)?)?);
        eprintln!("unet: resuming at step {start}");
    }
    let schedule = t.config.scheduler.noise_schedule()?;
    let objective = Objective {
        prediction: Prediction::Epsilon,
        noise_offset: 0.0,
        min_snr_gamma: s.min_snr_gamma,
    };
    let mut optim = AdamWSettings {
        learning_rate: s.unet_lr,
        weight_decay: 0.0,
        ..AdamWSettings::default()
    }
    .build();
    let mut pick = SeededRng::new(s.seed, Stream::Shuffle);
    let mut drop = SeededRng::new(s.seed, Stream::Caption);
    let mut noise = SeededRng::new(s.seed, Stream::Noise);
    let [c, h, w] = cache.latent_shape;
    let latent_len = c * h * w;
    let [tokens, width] = cache.state_shape;
    let b = s.unet_batch;
    let draw = |pick: &mut SeededRng, drop: &mut SeededRng, noise: &mut SeededRng| {
        let mut lat = Vec::with_capacity(b * latent_len);
        let mut ctx = Vec::with_capacity(b * tokens * width);
        for _ in 0..b {
            let i = pick.below(0, s.latents);
            lat.extend_from_slice(&cache.latents[i * latent_len..(i + 1) * latent_len]);
            let dropped = drop.uniform(1, 0.0, 1.0)[0] < s.caption_dropout as f32;
            let caption = if dropped {
                ""
            } else {
                cache.captions[i].as_str()
            };
            ctx.extend_from_slice(&cache.states[caption]);
        }
        let step_noise = StepNoise::sample(noise, [b, c, h, w], schedule.num_train_timesteps());
        (lat, ctx, step_noise)
    };
    for _ in 0..start {
        draw(&mut pick, &mut drop, &mut noise);
    }
    let started = Instant::now();
    let (mut loss_sum, mut count) = (0f64, 0usize);
    for step in start..s.unet_steps {
        let (lat, ctx, step_noise) = draw(&mut pick, &mut drop, &mut noise);
        let batch = MicroBatch {
            latents: Tensor::from_data(TensorData::new(lat, [b, c, h, w]), device),
            context: Tensor::from_data(TensorData::new(ctx, [b, tokens, width]), device),
            noise: step_noise,
            added: None,
        };
        let lr = lr_at(s.unet_lr, step, s.unet_steps);
        let (next, stats) = optimizer_step(
            unet,
            &mut optim,
            &schedule,
            &objective,
            vec![batch],
            lr,
            Some(1.0),
            step + 1,
        )?;
        unet = next;
        loss_sum += stats.loss as f64;
        count += 1;
        let done = step + 1;
        if done % 50 == 0 || done == s.unet_steps {
            let per = started.elapsed().as_secs_f64() / (done - start) as f64;
            eprintln!(
                "unet {done}/{} loss {:.4} lr {lr:.2e} ({per:.2} s/step)",
                s.unet_steps,
                loss_sum / count as f64
            );
            log.push(json!({"step": done, "loss": loss_sum / count as f64}));
            (loss_sum, count) = (0.0, 0);
        }
        if done % s.checkpoint_every == 0 || done == s.unet_steps {
            save_weights(&unet, Some(&t.unet), &ckpt, SaveDtype::F32)?;
            write_json(&progress_path, &json!({"step": done, "log": log}))?;
            // A usable folder at every checkpoint, so the model can be tried during training.
            write_folder(
                s,
                t,
                &unet,
                vae,
                cache.scale,
                &json!({"partial_at_unet_step": done}),
            )?;
        }
        if done % (s.checkpoint_every * 5) == 0 {
            let plain_unet = unet.valid().fork(plain);
            let tally = quick_score(&plain_unet, vae, text, tokenizer, t, plain)?;
            eprintln!("unet {done}: base probes drawn as asked {tally}");
        }
    }
    Ok((unet, log))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Writes the diffusers folder `s.out`.
fn write_folder(
    s: &Settings,
    t: &Templates,
    unet: &UNet2DConditionModel,
    vae: &AutoencoderKL,
    scale: f64,
    extra: &Value,
) -> anyhow::Result<()> {
    let out = &s.out;
    std::fs::create_dir_all(out)?;
    let same = out.canonicalize().ok() == s.template.canonicalize().ok();
    if !same {
        for sub in ["text_encoder", "tokenizer", "scheduler"] {
            copy_dir(&s.template.join(sub), &out.join(sub))?;
        }
        std::fs::copy(
            s.template.join("model_index.json"),
            out.join("model_index.json"),
        )?;
        std::fs::create_dir_all(out.join("unet"))?;
        std::fs::copy(
            s.template.join("unet/config.json"),
            out.join("unet/config.json"),
        )?;
    }
    save_weights(
        unet,
        Some(&t.unet),
        &out.join("unet/diffusion_pytorch_model.safetensors"),
        SaveDtype::F16,
    )?;
    save_weights(
        vae,
        t.vae.as_ref(),
        &out.join("vae/diffusion_pytorch_model.safetensors"),
        SaveDtype::F16,
    )?;
    let mut vae_config = t.vae_json.clone();
    vae_config["scaling_factor"] = json!((scale * 1e5).round() / 1e5);
    write_json(&out.join("vae/config.json"), &vae_config)?;
    let mut params = read_json(&s.template.join("parameters.json")).unwrap_or(json!({}));
    params["training"] = s.json();
    params["progress"] = extra.clone();
    write_json(&out.join("parameters.json"), &params)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let s = Settings::parse()?;
    let plain = parse_device("cpu")?;
    let device = plain.clone().autodiff();
    std::fs::create_dir_all(&s.work)?;
    // The template's files are read once: a run that writes over the template (the default)
    // still saves under the same keys and copies the same configs.
    let snapshot = s.work.join("template");
    if !snapshot.join("model_index.json").is_file() {
        copy_dir(&s.template, &snapshot)?;
        for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
            copy_dir(&s.template.join(sub), &snapshot.join(sub))?;
        }
    }
    let s = Settings {
        template: snapshot,
        ..s
    };
    let mut config = PipelineConfig::from_dir(&s.template)?;
    let (vae_template, vae_json) = match &s.vae_config {
        Some(path) => {
            let json = read_json(path)?;
            config.vae = VaeConfig::from_diffusers(&json)?;
            (None, json)
        }
        None => (
            Some(TensorFile::open(
                s.template.join("vae/diffusion_pytorch_model.safetensors"),
            )?),
            read_json(&s.template.join("vae/config.json"))?,
        ),
    };
    let t = Templates {
        config,
        unet: TensorFile::open(s.template.join("unet/diffusion_pytorch_model.safetensors"))?,
        vae: vae_template,
        vae_json,
    };
    let text = ClipTextConfig::from_file(s.template.join("text_encoder/config.json"))?
        .init(&plain)
        .load_weights(&TensorFile::open(
            s.template.join("text_encoder/model.safetensors"),
        )?)?;
    let tokenizer = ClipTokenizer::from_dir(s.template.join("tokenizer"))?;
    let started = Instant::now();

    let (vae, vae_log) = phase_vae(&s, &t, &device, &plain)?;
    let vae_secs = started.elapsed().as_secs_f64();
    let vae = vae.valid().fork(&plain);
    if s.until == "vae" {
        eprintln!("vae: round trip {}", RoundTrip::measure(&vae, &plain));
        return Ok(());
    }
    let cache = encode_cache(&s, &vae, &text, &tokenizer, &plain)?;
    let (unet, unet_log) = phase_unet(&s, &t, &cache, &vae, &text, &tokenizer, &device, &plain)?;
    let unet = unet.valid().fork(&plain);
    let total_secs = started.elapsed().as_secs_f64();

    let model = Pipeline {
        unet: &unet,
        text_encoder: &text,
        vae: &vae,
        tokenizer: &tokenizer,
        scheduler: &t.config.scheduler,
    };
    let score = ConceptScore::measure(&model, &plain)?;
    eprintln!("base model: {score}");
    write_folder(
        &s,
        &t,
        &unet,
        &vae,
        cache.scale,
        &json!({
            "finished": true,
            "seconds_this_run": {"vae": vae_secs, "total": total_secs},
            "vae_log": vae_log,
            "unet_log": unet_log,
            "base_probes_drawn_as_asked": score.base.rate(),
            "trigger_probes_drawn_as_rings": score.concept.rate(),
            "versions": {
                "loraflow-trainer": env!("CARGO_PKG_VERSION"),
                "burn": "0.22.1",
                "backend": "flex (CPU)",
            },
        }),
    )?;
    eprintln!("wrote {}", s.out.display());
    Ok(())
}
