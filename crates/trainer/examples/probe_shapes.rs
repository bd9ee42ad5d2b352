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

use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::world::concept::{base_probes, concept_probes, render};
use loraflow_trainer::world::{Background, Colour, ConceptScore, Scene, Shape, Tally, read};

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
    let mut rng = SeededRng::new(7, Stream::Sample);
    let (mut asked, mut background) = (Tally::default(), Tally::default());
    for colour in Colour::ALL {
        for shape in Shape::BASE {
            for bg in Background::ALL {
                for _ in 0..2 {
                    let mut scene = Scene::random_with(shape, &mut rng);
                    scene.colour = colour;
                    scene.background = bg;
                    let image = scene.render();
                    let (w, h) = image.dimensions();
                    let mut data = Vec::with_capacity(3 * (w * h) as usize);
                    for c in 0..3 {
                        data.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
                    }
                    let x: Tensor<4> = Tensor::from_data(
                        TensorData::new(data, [1, 3, h as usize, w as usize]),
                        &device,
                    );
                    let (mean, _) = model.vae.encode(x);
                    let y = model.vae.decode(mean).div_scalar(2.0).add_scalar(0.5);
                    let host = HostTensor::from_tensor(y.clamp(0.0, 1.0));
                    let back = RgbImage::from_fn(w, h, |x, y| {
                        let i = (y * w + x) as usize;
                        let plane = (w * h) as usize;
                        image::Rgb(std::array::from_fn(|c| {
                            (host.data[c * plane + i] * 255.0).round() as u8
                        }))
                    });
                    let r = read(&back);
                    asked.add(r.shows(colour, shape));
                    background.add(r.background == Some(bg));
                    println!(
                        "{:<40} read {:?} {:?} on {:?}",
                        scene.caption(),
                        r.colour,
                        r.shape,
                        r.background
                    );
                }
            }
        }
    }
    println!(
        "VAE round trip: shape and colour as drawn {:.0}%, background {:.0}%",
        100.0 * asked.rate(),
        100.0 * background.rate()
    );
    Ok(())
}
