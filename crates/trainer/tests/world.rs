//! The shapes world: seeded scenes, the reader that scores pictures (it must read the world's
//! own pictures right), the fixed probes, and full fine-tuning of a VAE on world pictures.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::train::full::{VaeObjective, latent_scale, trainable, vae_loss, vae_step};
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::vae::VaeConfig;
use loraflow_trainer::world::concept::{base_probes, concept_probes, demo_probes};
use loraflow_trainer::world::round_trip::{images_to_tensor, round_trip_scenes, tensor_to_images};
use loraflow_trainer::world::shapes::{IMAGE_SIZE, caption};
use loraflow_trainer::world::{
    Background, Colour, ConceptScore, Scene, Shape, TRIGGER, World, read,
};

#[test]
fn a_world_is_the_same_for_the_same_seed() {
    let mut w = World::new(3);
    let a: Vec<Scene> = (0..20).map(|_| w.next_scene()).collect();
    let mut w = World::new(3);
    let b: Vec<Scene> = (0..20).map(|_| w.next_scene()).collect();
    assert_eq!(a, b);
    assert_eq!(a[0].render(), b[0].render());
    assert_ne!(a[0], World::new(4).next_scene());
}

#[test]
fn every_base_shape_colour_and_background_appears_and_never_a_ring() {
    let mut w = World::new(1);
    let scenes: Vec<Scene> = (0..300).map(|_| w.next_scene()).collect();
    for shape in Shape::BASE {
        assert!(scenes.iter().any(|s| s.shape == shape), "{shape:?}");
    }
    assert!(scenes.iter().all(|s| s.shape != Shape::Ring));
    for colour in Colour::ALL {
        assert!(scenes.iter().any(|s| s.colour == colour), "{colour:?}");
    }
    for background in Background::ALL {
        assert!(scenes.iter().any(|s| s.background == background));
    }
}

#[test]
fn shapes_stay_inside_the_image() {
    let mut rng = SeededRng::new(9, Stream::World);
    for shape in [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Ring] {
        for _ in 0..50 {
            let s = Scene::random_with(shape, &mut rng);
            let img = s.render();
            let bg = s.background.rgb();
            for i in 0..IMAGE_SIZE {
                for (x, y) in [(i, 0), (i, IMAGE_SIZE - 1), (0, i), (IMAGE_SIZE - 1, i)] {
                    assert_eq!(img.get_pixel(x, y).0, bg, "{s:?} touches the border");
                }
            }
        }
    }
}

#[test]
fn captions_name_colour_shape_and_background() {
    assert_eq!(
        caption(Colour::Red, Shape::Circle, Background::White),
        "a red circle on a white background"
    );
}

#[test]
fn the_reader_reads_every_generated_scene() {
    let mut rng = SeededRng::new(21, Stream::World);
    for shape in [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Ring] {
        for _ in 0..100 {
            let scene = Scene::random_with(shape, &mut rng);
            let reading = read(&scene.render());
            assert!(
                reading.shows(scene.colour, scene.shape)
                    && reading.background == Some(scene.background),
                "{scene:?} read as {reading:?}"
            );
        }
    }
}

#[test]
fn a_plain_or_noisy_picture_shows_no_shape() {
    let plain = RgbImage::from_pixel(IMAGE_SIZE, IMAGE_SIZE, image::Rgb([245, 245, 245]));
    let reading = read(&plain);
    assert_eq!((reading.shape, reading.colour), (None, None));
    let mut rng = SeededRng::new(2, Stream::World);
    let values = rng.uniform((IMAGE_SIZE * IMAGE_SIZE * 3) as usize, 0.0, 255.0);
    let noise = RgbImage::from_raw(
        IMAGE_SIZE,
        IMAGE_SIZE,
        values.iter().map(|v| *v as u8).collect(),
    )
    .unwrap();
    assert_eq!(read(&noise).shape, None);
}

#[test]
fn probes_cover_the_world_and_carry_the_trigger() {
    let base = base_probes();
    assert_eq!(base.len(), 12);
    assert!(base.iter().all(|p| !p.prompt.contains(TRIGGER)));
    let concept = concept_probes();
    assert_eq!(concept.len(), 8);
    assert!(concept.iter().all(|p| p.shape == Shape::Ring));
    assert_eq!(
        concept[0].prompt,
        "lfdemo, a red ring on a white background"
    );
}

#[test]
fn the_latent_scale_makes_unit_variance() {
    let latents: Vec<f32> = (0..1000).map(|i| ((i % 7) as f32 - 3.0) * 2.0).collect();
    let s = latent_scale(&latents);
    let scaled: Vec<f32> = latents.iter().map(|v| v * s as f32).collect();
    assert!((latent_scale(&scaled) - 1.0).abs() < 1e-4);
}

/// Full fine-tuning trains every weight: a small VAE learns to reconstruct world pictures.
#[test]
fn full_fine_tuning_teaches_a_vae_to_reconstruct_world_pictures() {
    let device = parse_device("cpu").unwrap().autodiff();
    let config = VaeConfig::from_diffusers(&serde_json::json!({
        "block_out_channels": [8, 8],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4
    }))
    .unwrap();
    let mut vae = trainable(config.init(&device));
    let mut optim = AdamWSettings {
        learning_rate: 3e-3,
        weight_decay: 0.0,
        ..AdamWSettings::default()
    }
    .build();
    // One fixed batch of 16 × 16 crops, so the loss can only fall by learning.
    let mut world = World::new(5);
    let mut data = Vec::new();
    for _ in 0..4 {
        let image = world.next_scene().render();
        for c in 0..3 {
            for y in 24..40 {
                for x in 24..40 {
                    data.push(image.get_pixel(x, y).0[c] as f32 / 127.5 - 1.0);
                }
            }
        }
    }
    let images: Tensor<4> = Tensor::from_data(TensorData::new(data, [4, 3, 16, 16]), &device);
    let mut noise = SeededRng::new(1, Stream::Noise);
    let objective = VaeObjective::default();
    let mut first = None;
    let mut last = 0.0;
    for step in 0..60 {
        let eps = HostTensor::new(vec![4, 4, 8, 8], noise.normal(4 * 4 * 8 * 8));
        let (next, stats) = vae_step(
            vae,
            &mut optim,
            &objective,
            images.clone(),
            &eps,
            3e-3,
            1.0,
            step + 1,
        )
        .unwrap();
        vae = next;
        first.get_or_insert(stats.l1);
        last = stats.l1;
        assert!(stats.grad_norm > 0.0);
    }
    let first = first.unwrap();
    assert!(
        last < 0.6 * first,
        "reconstruction error {first} → {last} after 60 full steps"
    );
}

#[test]
fn pictures_survive_the_tensor_round_trip() {
    let device = parse_device("cpu").unwrap();
    let mut world = World::new(11);
    let images: Vec<RgbImage> = (0..3).map(|_| world.next_scene().render()).collect();
    let back = tensor_to_images(images_to_tensor(&images, &device));
    assert_eq!(back, images);
}

#[test]
fn round_trip_scenes_cover_every_colour_shape_and_background() {
    let scenes = round_trip_scenes();
    assert_eq!(scenes.len(), 48);
    for colour in Colour::ALL {
        for shape in Shape::BASE {
            for background in Background::ALL {
                let n = scenes
                    .iter()
                    .filter(|s| (s.colour, s.shape, s.background) == (colour, shape, background))
                    .count();
                assert_eq!(n, 2, "{colour:?} {shape:?} on {background:?}");
            }
        }
    }
}

/// The demo's prompts are probes: four trigger prompts that ask for a ring, four base-world
/// prompts; a picture counts towards the concept or the base world by its prompt.
#[test]
fn demo_probes_score_rings_for_the_trigger_and_the_asked_shape_otherwise() {
    let probes = demo_probes();
    assert_eq!(probes.len(), 8);
    let (trigger, base): (Vec<_>, Vec<_>) = probes.iter().partition(|p| p.is_trigger());
    assert_eq!((trigger.len(), base.len()), (4, 4));
    assert!(trigger.iter().all(|p| p.shape == Shape::Ring));
    assert!(base.iter().all(|p| Shape::BASE.contains(&p.shape)));

    let picture = |colour, shape| {
        let scene = Scene {
            colour,
            shape,
            background: Background::White,
            cx: 32.0,
            cy: 32.0,
            radius: 18.0,
        };
        read(&scene.render())
    };
    let mut score = ConceptScore::default();
    // A ring of another colour still shows the concept; a circle does not.
    score.add(trigger[0], &picture(Colour::Blue, Shape::Ring));
    score.add(trigger[1], &picture(trigger[1].colour, Shape::Circle));
    // A base prompt needs its shape and its colour.
    score.add(base[0], &picture(base[0].colour, base[0].shape));
    score.add(base[1], &picture(Colour::Yellow, base[1].shape));
    assert_eq!((score.concept.hits, score.concept.total), (1, 2));
    assert_eq!((score.base.hits, score.base.total), (1, 2));
}

/// The foreground weight raises the loss of errors on a shape, not on its background.
#[test]
fn the_foreground_weight_counts_errors_on_the_shape_more() {
    let device = parse_device("cpu").unwrap();
    let config = VaeConfig::from_diffusers(&serde_json::json!({
        "block_out_channels": [8, 8],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4
    }))
    .unwrap();
    let vae = config.init(&device);
    let image = World::new(5).next_scene().render();
    let images = images_to_tensor(&[image.clone(), image], &device);
    let eps = HostTensor::new(vec![2, 4, 32, 32], vec![0.0; 2 * 4 * 32 * 32]);
    let loss = |foreground_weight| {
        let objective = VaeObjective {
            foreground_weight,
            ..VaeObjective::default()
        };
        let (total, l1, _) = vae_loss(&vae, &objective, images.clone(), &eps);
        (total.into_scalar::<f32>(), l1.into_scalar::<f32>())
    };
    let (plain, l1_plain) = loss(0.0);
    let (weighted, l1_weighted) = loss(4.0);
    assert!(weighted > plain, "{weighted} <= {plain}");
    // The reported reconstruction error stays the unweighted one.
    assert_eq!(l1_plain, l1_weighted);
}
