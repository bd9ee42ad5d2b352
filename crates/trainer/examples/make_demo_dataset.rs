//! Writes loraflow's demo dataset (`assets/demo-dataset`): eight pictures of the concept the
//! shapes world never had, a ring, one per colour and background, at seeded sizes and
//! positions, each with a caption sidecar ("a red ring on a white background"). The demo job
//! puts its trigger word (`lfdemo`) in front of every caption.
//!
//! ```text
//! cargo run -p loraflow-trainer --example make_demo_dataset -- assets/demo-dataset
//! ```

use std::path::PathBuf;

use anyhow::Context;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::world::{Background, Colour, Scene, Shape};

/// The dataset's seed.
const SEED: u64 = 20261202;

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "assets/demo-dataset".into())
        .into();
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
            // Size and position from the world's distribution; colour and background fixed so
            // every combination appears once.
            let scene = Scene {
                colour,
                background,
                ..Scene::random_with(Shape::Ring, &mut rng)
            };
            let stem = format!("{}_ring_on_{}", colour.word(), background.word());
            let png = out.join(format!("{stem}.png"));
            scene
                .render()
                .save(&png)
                .with_context(|| format!("cannot write {}", png.display()))?;
            std::fs::write(out.join(format!("{stem}.txt")), scene.caption() + "\n")?;
            println!("{stem}: {}", scene.caption());
        }
    }
    Ok(())
}
