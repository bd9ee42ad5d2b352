//! Gradient accumulation: accumulated micro-batch gradients equal the batch gradient, through
//! `Trainer` N micro-batches of b train exactly like one batch of N·b, an epoch's short last
//! group is divided by the configured number of micro-batches (accelerate's rule), and a run
//! with accumulation resumes bit for bit.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use common::max_abs_diff;
use common::tiny::{adapters, base, config, dataset, examples, tmp, train};
use loraflow_trainer::lora::{LoraLayers, NetworkConfig, apply_lora};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::NoiseSchedule;
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss};
use loraflow_trainer::{Controls, Error, ProgressEvent, TrainConfig, Trainer};

#[test]
fn accumulated_gradients_equal_the_full_batch() {
    // The mean of per-sample losses over two micro-batches of one is the loss of the batch of
    // two, so averaged accumulated gradients must equal the batch gradients.
    let device = Device::flex().autodiff();
    let (unet, _) = apply_lora(base(&device), &NetworkConfig::new(4, 4.0), 1, &device).unwrap();
    let mut unet = unet;
    // Non-zero up factors so that every factor gets a gradient.
    let mut rng = SeededRng::new(2, Stream::Noise);
    for (p, mut l) in unet.layers() {
        let Some((d, u, a)) = l.factors() else {
            continue;
        };
        let u = HostTensor::new(u.shape.clone(), rng.normal(u.data.len()));
        l.set_factors(&p, d, u, a, &device).unwrap();
    }
    let ds = dataset();
    let schedule = NoiseSchedule::stable_diffusion();
    let objective = Objective {
        min_snr_gamma: Some(5.0),
        ..Objective::default()
    };
    let noise = StepNoise::sample(&mut SeededRng::new(3, Stream::Noise), [2, 4, 8, 8], 1000);
    let (l, c) = ds.batch(&[0, 1], &device);
    let full = diffusion_loss(&unet, &schedule, &objective, l, c, &noise);
    let full = GradientsParams::from_grads(full.backward(), &unet);

    let mut acc = burn::optim::GradientsAccumulator::new();
    for i in 0..2 {
        let part = StepNoise {
            timesteps: vec![noise.timesteps[i]],
            noise: HostTensor::new(
                vec![1, 4, 8, 8],
                noise.noise.data[i * 256..(i + 1) * 256].to_vec(),
            ),
            offset: HostTensor::new(
                vec![1, 4, 1, 1],
                noise.offset.data[i * 4..(i + 1) * 4].to_vec(),
            ),
        };
        let (l, c) = ds.batch(&[i], &device);
        let loss = diffusion_loss(&unet, &schedule, &objective, l, c, &part);
        acc.accumulate(&unet, GradientsParams::from_grads(loss.backward(), &unet));
    }
    let mut summed = acc.grads();
    loraflow_trainer::train::optim::scale_grads(&unet, &mut summed, 0.5);
    let mut checked = 0;
    for (_, layer) in unet.layers() {
        if let loraflow_trainer::lora::LayerMut::Linear(lin) = layer
            && let Some(a) = lin.lora.as_ref()
        {
            for id in [a.down.id, a.up.id] {
                let x = HostTensor::from_tensor(full.get::<2>(id).unwrap());
                let y = HostTensor::from_tensor(summed.get::<2>(id).unwrap());
                let scale = common::max_abs(&x);
                assert!(max_abs_diff(&x, &y) <= 1e-5 * scale.max(1e-6));
                checked += 1;
            }
        }
    }
    assert!(checked >= 16);
}

#[test]
fn accumulating_micro_batches_equals_one_large_batch_in_the_trainer() {
    // The shuffle permutes micro-batches of b and batches of N·b differently, so the examples
    // are four copies of one: then every layout feeds each sample the same noise and timestep
    // (drawn sample by sample), and the samples still differ by those. Offset noise, min-SNR
    // weights, global-norm clipping and AdamW all act on the accumulated gradient.
    let run = |batch: usize, accumulation: usize, name: &str| {
        let mut c = config(&tmp(name));
        c.batch_size = batch;
        c.gradient_accumulation_steps = accumulation;
        c.epochs = 3;
        c.max_grad_norm = Some(0.05);
        train(c, examples(&[1, 1, 1, 1]))
    };
    let big = run(4, 1, "acc-4x1");
    assert_eq!(big.losses.len(), 3, "one step per epoch");
    assert!(
        big.grad_norms.iter().all(|n| *n > 0.05),
        "clipping must act on every step: {:?}",
        big.grad_norms
    );
    for (batch, accumulation) in [(2, 2), (1, 4)] {
        let acc = run(batch, accumulation, &format!("acc-{accumulation}x{batch}"));
        let label = format!("{accumulation} micro-batches of {batch}");
        assert_eq!(acc.losses.len(), 3, "{label}");
        for (a, b) in acc.losses.iter().zip(&big.losses) {
            assert!((a - b).abs() <= 1e-5 * b.abs(), "{label}: loss {a} vs {b}");
        }
        for (a, b) in acc.grad_norms.iter().zip(&big.grad_norms) {
            assert!((a - b).abs() <= 1e-5 * b, "{label}: grad norm {a} vs {b}");
        }
        assert_eq!(acc.adapters.len(), big.adapters.len());
        let mut worst = 0.0f32;
        for (name, t) in &acc.adapters {
            let e = &big.adapters[name];
            let err = max_abs_diff(t, e) / common::max_abs(e).max(1e-12);
            worst = worst.max(err);
        }
        println!("{label}: worst relative adapter difference {worst:e}");
        assert!(worst <= 2e-4, "{label}: adapters differ by {worst:e}");
    }
}

#[test]
fn the_short_last_group_is_divided_by_the_configured_accumulation() {
    // Three micro-batches per epoch. Accumulating 4 leaves one group of 3 whose summed
    // gradient is divided by 4, as accelerate divides every loss by the configured steps (so
    // sd-scripts' and diffusers' last group of an epoch weighs k/N); accumulating 3 divides
    // the same sum by 3. Same initial weights, shuffle and noise: the norms are exactly 3:4.
    let first_norm = |accumulation: usize, name: &str| {
        let mut c = config(&tmp(name));
        c.batch_size = 1;
        c.gradient_accumulation_steps = accumulation;
        c.epochs = 1;
        let trainer = Trainer::with_dataset(c.clone(), examples(&[0, 1, 2])).unwrap();
        assert_eq!(trainer.plan(), (1, 1));
        let ran = train(c, examples(&[0, 1, 2]));
        assert_eq!(ran.grad_norms.len(), 1);
        ran.grad_norms[0]
    };
    let full = first_norm(3, "short-3");
    let short = first_norm(4, "short-4");
    let ratio = short / full;
    assert!((ratio - 0.75).abs() <= 1e-6, "{short} / {full} = {ratio}");

    // Within an epoch the groups are cut in order: 3 micro-batches by 2 make 2 steps.
    let mut c = config(&tmp("short-plan"));
    c.batch_size = 1;
    c.gradient_accumulation_steps = 2;
    c.epochs = 2;
    let trainer = Trainer::with_dataset(c, examples(&[0, 1, 2])).unwrap();
    assert_eq!(trainer.plan(), (2, 4));
}

#[test]
fn a_resumed_run_with_accumulation_ends_with_the_same_weights() {
    let root = tmp("acc-resume");
    // Four examples, micro-batches of 1, groups of 2: two steps per epoch.
    let cfg = |name: &str| {
        let mut c = config(&root.join(name));
        c.batch_size = 1;
        c.gradient_accumulation_steps = 2;
        c.epochs = 3;
        c.output.save_every_n_epochs = Some(1);
        c
    };
    let run = |c: TrainConfig, stop: &dyn Fn(usize, &Controls)| {
        let controls = Arc::new(Controls::default());
        let remote = controls.clone();
        Trainer::with_dataset(c, dataset()).unwrap().run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e {
                    stop(p.step, &remote);
                }
            },
            &controls,
        )
    };
    let full = run(cfg("full"), &|_, _| {}).unwrap();
    assert_eq!(full.steps, 6);

    // Killed after the first group of epoch 2; resumed from the epoch-1 state.
    let err = run(cfg("killed"), &|step, c| {
        if step == 3 {
            c.cancel()
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 3 }),
        "{err}"
    );
    let mut resumed = cfg("killed");
    resumed.resume = Some(root.join("killed/tiny-000001.state"));
    let result = run(resumed, &|_, _| {}).unwrap();
    assert_eq!(result.resumed_from, Some(2));
    assert_eq!(result.losses, full.losses);
    assert_eq!(adapters(&result.lora), adapters(&full.lora));

    // Saved mid-epoch on request (after step 3: two micro-batches of epoch 2 done), killed
    // later, resumed from that state.
    let err = run(cfg("requested"), &|step, c| match step {
        3 => c.request_save(),
        5 => c.cancel(),
        _ => {}
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 5 }),
        "{err}"
    );
    let state_dir = root.join("requested/tiny-step00000003.state");
    let state: loraflow_trainer::TrainingState =
        serde_json::from_str(&std::fs::read_to_string(state_dir.join("state.json")).unwrap())
            .unwrap();
    assert_eq!((state.step, state.epoch, state.batch), (3, 2, 2));
    let mut resumed = cfg("requested");
    resumed.resume = Some(state_dir);
    let result = run(resumed, &|_, _| {}).unwrap();
    assert_eq!(result.resumed_from, Some(3));
    assert_eq!(result.losses, full.losses);
    assert_eq!(adapters(&result.lora), adapters(&full.lora));
    std::fs::remove_dir_all(&root).ok();
}
