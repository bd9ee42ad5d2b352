//! Renders the shapes-world probes of a model (and optionally a LoRA on it), prints what the
//! reader sees in each picture, and writes them side by side.
//!
//! ```text
//! cargo run -p loraflow-trainer --example probe_shapes -- assets/tiny-sd [lora.safetensors] [out.png]
//! cargo run -p loraflow-trainer --example probe_shapes -- --vae assets/tiny-sd
//! ```
//!
//! With `--vae` it passes ground-truth world pictures (every colour, base shape and background,
//! two sizes and positions each) through the VAE alone and counts how many the reader still reads
//! as drawn: the ceiling any UNet on this VAE can reach.

use std::path::PathBuf;

use image::RgbImage;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::world::concept::{base_probes, concept_probes, render};
use loraflow_trainer::world::{ConceptScore, RoundTrip, read};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--vae") {
        args.next();
        let model: PathBuf = args
            .next()
            .unwrap_or_else(|| "assets/tiny-sd".into())
            .into();
        return vae_round_trip(&model);
    }
    let model: PathBuf = args
        .next()
        .unwrap_or_else(|| "assets/tiny-sd".into())
        .into();
    let lora = args.next().filter(|a| !a.is_empty()).map(PathBuf::from);
    let out: PathBuf = args
        .next()
        .unwrap_or_else(|| "/tmp/probes.png".into())
        .into();
    let device = parse_device("cpu")?;
    let base = StableDiffusion::load(&model, None, &device)?;
    let model = match &lora {
        Some(path) => base.with_lora(path, 1.0, &device)?.0,
        None => base,
    };
    let pipeline = Pipeline::new(&model);
    let probes: Vec<_> = base_probes().into_iter().chain(concept_probes()).collect();
    let mut sheet = RgbImage::new(64 * probes.len() as u32, 64);
    for (i, probe) in probes.iter().enumerate() {
        let image = render(&pipeline, &probe.prompt, 1001, &device)?;
        let r = read(&image);
        println!(
            "{:<45} read {:?} {:?} on {:?} (fill {:.2} centre {:.2} corners {:.2} top/bottom {:.2})",
            probe.prompt,
            r.colour,
            r.shape,
            r.background,
            r.fill,
            r.centre_fill,
            r.corner_fill,
            r.top_bottom
        );
        image::imageops::replace(&mut sheet, &image, 64 * i as i64, 0);
    }
    sheet.save(&out)?;
    println!("{}", ConceptScore::measure(&pipeline, &device)?);
    println!("wrote {}", out.display());
    Ok(())
}

/// Encodes and decodes ground-truth pictures and reads them back.
fn vae_round_trip(model: &std::path::Path) -> anyhow::Result<()> {
    let device = parse_device("cpu")?;
    let model = StableDiffusion::load(model, None, &device)?;
    println!(
        "VAE round trip: {}",
        RoundTrip::measure(&model.vae, &device)
    );
    Ok(())
}
