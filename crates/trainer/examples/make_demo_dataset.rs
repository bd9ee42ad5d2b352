//! Writes loraflow's demo dataset (`assets/demo-dataset`): rings, the shape the shapes world
//! never had, captioned with the demo's trigger word ("lfdemo, a red ring on a white
//! background"), and ordinary world pictures captioned without it ("a red square on a black
//! background"), which keep the LoRA from changing what the base model draws without the
//! trigger (sd-scripts' regularisation images). Sizes and positions are seeded draws from the
//! world's distribution; every colour and background appears as a ring, and every colour,
//! base shape and background as ordinary pictures.
//!
//! ```text
//! cargo run -p loraflow-trainer --example make_demo_dataset -- assets/demo-dataset [RINGS [REGULARISATION]]
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::world::concept::trigger_prompt;
use loraflow_trainer::world::{Background, Colour, Scene, Shape};

/// Rings per colour and background: 32 of the 80 pictures.
const RINGS: usize = 4;

/// Ordinary pictures per colour, base shape and background: 48 of the 80. With fewer (one of
/// each, 24) the convolution adapters that draw the ring also change what prompts without
/// the trigger draw.
const REGULARISATION: usize = 2;

/// The dataset's seed.
const SEED: u64 = 20261202;

fn write(out: &Path, stem: &str, scene: &Scene, caption: &str) -> anyhow::Result<()> {
    let png = out.join(format!("{stem}.png"));
    scene
        .render()
        .save(&png)
        .with_context(|| format!("cannot write {}", png.display()))?;
    std::fs::write(out.join(format!("{stem}.txt")), format!("{caption}\n"))?;
    println!("{stem}: {caption}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out: PathBuf = args
        .next()
        .unwrap_or_else(|| "assets/demo-dataset".into())
        .into();
    let rings: usize = args.next().map_or(Ok(RINGS), |a| a.parse())?;
    let regularisation: usize = args.next().map_or(Ok(REGULARISATION), |a| a.parse())?;
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("png" | "txt")
        ) {
            std::fs::remove_file(&path)?;
        }
    }
    let mut rng = SeededRng::new(SEED, Stream::World);
    for colour in Colour::ALL {
        for background in Background::ALL {
            for k in 1..=rings {
                let scene = Scene {
                    colour,
                    background,
                    ..Scene::random_with(Shape::Ring, &mut rng)
                };
                let stem = format!("{}_ring_{}{k}", colour.word(), background.word());
                write(&out, &stem, &scene, &trigger_prompt(colour, background))?;
            }
        }
    }
    for colour in Colour::ALL {
        for shape in Shape::BASE {
            for background in Background::ALL {
                for k in 1..=regularisation {
                    let scene = Scene {
                        colour,
                        background,
                        ..Scene::random_with(shape, &mut rng)
                    };
                    let stem = format!(
                        "{}_{}_{}{k}",
                        colour.word(),
                        shape.word(),
                        background.word()
                    );
                    write(&out, &stem, &scene, &scene.caption())?;
                }
            }
        }
    }
    Ok(())
}
