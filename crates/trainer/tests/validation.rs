//! The validation loss on held-out images: the same value for the same weights, lower once the
//! model fits images of the same kind, and independent of how the training set is shuffled.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use image::{Rgb, RgbImage};
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::train::validation::ValidationConfig;
use loraflow_trainer::{NeverCancel, ProgressEvent, SaveReason, TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-val-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ten pictures of one kind: a dark disc on a light ground, in slightly different places.
fn dataset(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..10u32 {
        let (cx, cy) = (12 + (i % 4) as i32 * 3, 12 + (i / 4) as i32 * 3);
        let img = RgbImage::from_fn(32, 32, |x, y| {
            if (x as i32 - cx).pow(2) + (y as i32 - cy).pow(2) < 64 {
                Rgb([30, 40, 160])
            } else {
                Rgb([235, 235, 225])
            }
        });
        img.save(root.join(format!("disc{i:02}.png"))).unwrap();
        std::fs::write(root.join(format!("disc{i:02}.txt")), "a blue disc").unwrap();
    }
}

fn config(data: &Path, out: &Path, seed: u64) -> TrainConfig {
    let images = ImageDatasetConfig::new(data, 32);
    let mut c = TrainConfig::for_images(fixture("pipeline"), images, out, "val");
    c.network.rank = 4;
    c.network.alpha = 4.0;
    c.optimizer.learning_rate = 2e-2;
    c.batch_size = 2;
    c.epochs = 4;
    c.output.save_every_n_epochs = Some(1);
    c.output.save_state = false;
    c.seed = seed;
    let mut v = ValidationConfig::split(0.2);
    v.seed = Some(7);
    c.validation = Some(v);
    c
}

fn run(c: TrainConfig) -> loraflow_trainer::TrainOutput {
    let mut events = Vec::new();
    let out = Trainer::new(c)
        .unwrap()
        .run(&mut |e: ProgressEvent| events.push(e), &NeverCancel)
        .unwrap();
    let reported: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Validated(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(reported, out.validation, "every measurement is reported");
    out
}

#[test]
fn validation_loss_is_deterministic_falls_as_the_model_fits_and_ignores_the_shuffle() {
    let root = tmp("fit");
    let data = root.join("data");
    dataset(&data);

    // Two of ten images held out, by the validation seed; the rest train.
    let trainer = Trainer::new(config(&data, &root.join("a"), 1)).unwrap();
    let held = trainer.validation_images();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(trainer.plan().0, 4, "8 training images in batches of 2");

    let a = run(config(&data, &root.join("a"), 1));
    // The base model first (epoch 0), then one per saved LoRA.
    let epochs: Vec<usize> = a.validation.iter().map(|p| p.epoch).collect();
    assert_eq!(epochs, vec![0, 1, 2, 3, 4]);
    assert!(a.validation.iter().all(|p| p.loss.is_finite()));
    assert_eq!(a.validation_images, held);
    for s in a.saved.iter().filter(|s| s.reason != SaveReason::Requested) {
        let point = a.validation.iter().find(|p| p.step == s.step).unwrap();
        assert_eq!(s.validation_loss, Some(point.loss));
    }

    // Same weights, same value: the same run again measures bit for bit the same.
    let again = run(config(&data, &root.join("again"), 1));
    assert_eq!(again.validation, a.validation);
    assert_eq!(again.losses, a.losses);

    // The model fits images of this kind: the held-out loss falls at every saved epoch and
    // ends clearly below the base model's (the fixture model is tiny and random: a few per
    // cent here; the value is exact from run to run, as checked above).
    assert!(
        a.validation.windows(2).all(|w| w[1].loss < w[0].loss),
        "{:?}",
        a.validation
    );
    let base = a.validation[0].loss;
    let last = a.validation.last().unwrap().loss;
    assert!(
        last < base * 0.97,
        "validation loss {base} before training, {last} after: {:?}",
        a.validation
    );

    // Another training seed shuffles (and noises) the training set differently: the held-out
    // images and the base model's validation loss stay the same, the trained weights do not.
    let b = run(config(&data, &root.join("b"), 2));
    assert_eq!(b.validation_images, held);
    assert_ne!(b.losses, a.losses, "a different shuffle and noise");
    assert_eq!(b.validation[0], a.validation[0]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_validation_folder_inside_the_dataset_is_not_trained_on() {
    let root = tmp("dir");
    let data = root.join("data");
    dataset(&data);
    let held_dir = data.join("validation");
    std::fs::create_dir_all(&held_dir).unwrap();
    for name in ["disc00", "disc01"] {
        for ext in ["png", "txt"] {
            std::fs::rename(
                data.join(format!("{name}.{ext}")),
                held_dir.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    }
    let mut c = config(&data, &root.join("out"), 1);
    let mut v = ValidationConfig::split(0.0);
    v.dir = Some(held_dir.clone());
    c.validation = Some(v);
    let trainer = Trainer::new(c.clone()).unwrap();
    assert_eq!(trainer.images().len(), 8);
    assert!(
        trainer
            .images()
            .iter()
            .all(|e| !e.path.starts_with(&held_dir))
    );
    assert_eq!(
        trainer.validation_images(),
        vec!["disc00.png".to_string(), "disc01.png".to_string()]
    );

    // Holding every image out, or more than there are, is refused by name.
    let mut all = c.clone();
    all.validation.as_mut().unwrap().dir = Some(data.clone());
    let err = Trainer::new(all).unwrap_err().to_string();
    assert!(err.contains("`validation.dir`"), "{err}");
    let mut many = c;
    let mut v = ValidationConfig::split(0.0);
    v.count = Some(10);
    many.validation = Some(v);
    let err = Trainer::new(many).unwrap_err().to_string();
    assert!(err.contains("`validation.count`"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
