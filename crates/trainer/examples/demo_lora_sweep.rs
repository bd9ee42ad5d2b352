//! Trains a LoRA on the demo model with the given settings and scores every saved epoch with
//! the concept probes (experiments for the demo job's settings).
//!
//! ```text
//! demo_lora_sweep dataset=assets/demo-dataset repeats=4 rank=4 alpha=4 lr=6e-3 te_lr=5e-5 \
//!     epochs=8 batch=2 sched=cosine val=0.25 shuffle=1 dropout=0.1 seeds=2 every=1
//! demo_lora_sweep targets=locon conv_rank=4 conv_alpha=4   # attention + convolution adapters
//! demo_lora_sweep vae_rings=1   # ground-truth rings through the VAE alone, read back
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::train::config::TextEncoderTraining;
use loraflow_trainer::train::lr::{LrSchedule, LrScheduleKind};
use loraflow_trainer::train::validation::ValidationConfig;
use loraflow_trainer::world::concept::PROBE_SEEDS;
use loraflow_trainer::world::round_trip::{images_to_tensor, tensor_to_images};
use loraflow_trainer::world::{Background, Colour, ConceptScore, Scene, Shape, TRIGGER, read};
use loraflow_trainer::{Controls, TrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    let args: BTreeMap<String, String> = std::env::args()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_owned());
    let assets = PathBuf::from(get("assets", "assets"));
    let device = parse_device("cpu")?;
    let base = StableDiffusion::load(assets.join("tiny-sd"), None, &device)?;
    if args.contains_key("vae_rings") {
        let mut rng = SeededRng::new(7, Stream::Sample);
        let mut scenes = Vec::new();
        for colour in Colour::ALL {
            for background in Background::ALL {
                for _ in 0..2 {
                    scenes.push(Scene {
                        colour,
                        background,
                        ..Scene::random_with(Shape::Ring, &mut rng)
                    });
                }
            }
        }
        let drawn: Vec<_> = scenes.iter().map(Scene::render).collect();
        let (mean, _) = base.vae.encode(images_to_tensor(&drawn, &device));
        let mut hits = 0;
        for (s, back) in scenes.iter().zip(tensor_to_images(base.vae.decode(mean))) {
            let r = read(&back);
            hits += usize::from(r.shows(s.colour, s.shape));
            println!(
                "{:?} r={:.1} -> {:?} {:?} centre {:.2}",
                s.colour, s.radius, r.colour, r.shape, r.centre_fill
            );
        }
        println!(
            "rings through the VAE read as rings: {hits}/{}",
            scenes.len()
        );
        return Ok(());
    }
    let seeds: Vec<u64> = PROBE_SEEDS[..get("seeds", "2").parse::<usize>()?].to_vec();
    let out = PathBuf::from(get("out", "/tmp/sweep14"));
    let _ = std::fs::remove_dir_all(&out);
    let mut images =
        ImageDatasetConfig::new(PathBuf::from(get("dataset", "assets/demo-dataset")), 64);
    images.num_repeats = get("repeats", "4").parse()?;
    // The demo dataset's captions carry the trigger word; `trigger=1` also puts it first in every caption.
    let trig = get("trigger", "0") == "1";
    images.trigger_word = trig.then(|| TRIGGER.into());
    images.captions.shuffle_tags = get("shuffle", "1") == "1";
    images.captions.keep_tokens = 1;
    images.captions.dropout = get("dropout", "0").parse()?;
    let mut c = TrainConfig::for_images(assets.join("tiny-sd"), images, &out, "demo");
    c.network.rank = get("rank", "4").parse()?;
    c.network.alpha = get("alpha", "4").parse()?;
    match get("targets", "attn").as_str() {
        "attn" => {}
        "locon" => {
            c.network.targets = loraflow_trainer::lora::targets::ATTENTION
                .iter()
                .chain(loraflow_trainer::lora::targets::CONV)
                .map(|s| s.to_string())
                .collect()
        }
        "transformer" => {
            c.network.targets = loraflow_trainer::lora::targets::TRANSFORMER
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        "all" => {
            c.network.targets = loraflow_trainer::lora::targets::TRANSFORMER
                .iter()
                .chain(loraflow_trainer::lora::targets::CONV)
                .map(|s| s.to_string())
                .collect()
        }
        t => anyhow::bail!("targets {t}"),
    }
    if let Some(rank) = args.get("conv_rank") {
        let rank: usize = rank.parse()?;
        c.network.conv_rank = Some(rank);
        c.network.conv_alpha = Some(get("conv_alpha", &rank.to_string()).parse()?);
    }
    c.optimizer.learning_rate = get("lr", "1e-3").parse()?;
    let te: f64 = get("te_lr", "5e-5").parse()?;
    c.text_encoder = (te > 0.0).then(|| TextEncoderTraining::new(te));
    c.lr_schedule = LrSchedule {
        kind: match get("sched", "cosine").as_str() {
            "cosine" => LrScheduleKind::Cosine,
            "constant" => LrScheduleKind::Constant,
            "linear" => LrScheduleKind::Linear,
            s => anyhow::bail!("sched {s}"),
        },
        warmup_steps: get("warmup", "0").parse()?,
    };
    let snr: f64 = get("snr", "5").parse()?;
    c.objective.min_snr_gamma = (snr > 0.0).then_some(snr);
    c.batch_size = get("batch", "2").parse()?;
    c.epochs = get("epochs", "8").parse()?;
    c.seed = get("seed", "42").parse()?;
    c.max_grad_norm = Some(get("clip", "1").parse()?).filter(|n: &f64| *n > 0.0);
    let val: f64 = get("val", "0.25").parse()?;
    c.validation = (val > 0.0).then(|| ValidationConfig::split(val));
    c.output.save_every_n_epochs = Some(get("every", "1").parse()?);
    let started = Instant::now();
    let trained = Trainer::new(c)?.run(&mut |_| {}, &Controls::default())?;
    println!(
        "trained {} steps ({} examples/epoch) in {:.1} s; epoch losses {:?}",
        trained.steps,
        trained.examples_per_epoch,
        started.elapsed().as_secs_f64(),
        trained
            .epoch_losses
            .iter()
            .map(|l| format!("{l:.3}"))
            .collect::<Vec<_>>()
    );
    let strength: f64 = get("strength", "1").parse()?;
    for saved in &trained.saved {
        let t = Instant::now();
        let (adapted, _) = base.with_lora(&saved.path, strength, &device)?;
        let score = ConceptScore::measure_at(&Pipeline::new(&adapted), &seeds, &device)?;
        println!(
            "epoch {:>2} step {:>4} loss {:.3}: {score} ({:.1} s)",
            saved.epoch,
            saved.step,
            saved.loss,
            t.elapsed().as_secs_f64()
        );
        if args.contains_key("verbose") {
            let pipeline = Pipeline::new(&adapted);
            for probe in loraflow_trainer::world::concept::base_probes()
                .iter()
                .chain(&loraflow_trainer::world::concept::concept_probes())
            {
                let image = loraflow_trainer::world::concept::render(
                    &pipeline,
                    &probe.prompt,
                    seeds[0],
                    &device,
                )?;
                let r = read(&image);
                println!(
                    "  {:<45} {} {:?} {:?} on {:?} fill {:.2} centre {:.2} corners {:.2} t/b {:.2}",
                    probe.prompt,
                    if probe.hit(&r) { "HIT " } else { "miss" },
                    r.colour,
                    r.shape,
                    r.background,
                    r.fill,
                    r.centre_fill,
                    r.corner_fill,
                    r.top_bottom
                );
            }
        }
    }
    Ok(())
}
