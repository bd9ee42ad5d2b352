//! The sd-scripts output parser against the committed transcript of a run
//! (tests/fixtures/kohya/train_network_output.txt; README.md there says
//! where its lines come from).

use std::path::PathBuf;

use loraflow_executors::kohya::progress::{
    Line, LineSplitter, ProgressTracker, StepLine, parse_line,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kohya")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture as the executor sees it: bytes in odd-sized chunks, split
/// at `\r` and `\n`.
fn lines(name: &str) -> Vec<String> {
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    for chunk in fixture(name).chunks(777) {
        splitter.push(chunk, |l| lines.push(l));
    }
    splitter.finish(|l| lines.push(l));
    lines
}

#[test]
fn every_line_of_a_run_is_understood() {
    let parsed: Vec<Line> = lines("train_network_output.txt")
        .iter()
        .map(|l| parse_line(l))
        .collect();
    let bars = parsed.iter().filter(|l| matches!(l, Line::Step(_))).count();
    // The first draw, two draws per step (count, then loss), the final redraw.
    assert_eq!(bars, 1 + 2 * 180 + 1);
    assert!(parsed.contains(&Line::TotalEpochs(3)));
    assert!(parsed.contains(&Line::TotalSteps(180)));
    let epochs: Vec<_> = parsed
        .iter()
        .filter_map(|l| match l {
            Line::Epoch { epoch, total } => Some((*epoch, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, [(1, 3), (2, 3), (3, 3)]);
    let saved: Vec<_> = parsed
        .iter()
        .filter_map(|l| match l {
            Line::Saved(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        saved,
        [
            "/srv/loraflow/work/output/corgi-000001.safetensors",
            "/srv/loraflow/work/output/corgi-000002.safetensors",
            "/srv/loraflow/work/output/corgi.safetensors",
        ]
    );
    assert!(!parsed.contains(&Line::OutOfMemory));
}

#[test]
fn a_bar_redraw_gives_step_rate_and_average_loss() {
    let line = "steps:  34%|███▍      | 61/180 [00:31<01:01,  1.93it/s, avr_loss=0.121]";
    assert_eq!(
        parse_line(line),
        Line::Step(StepLine {
            step: 61,
            total: 180,
            steps_per_sec: Some(1.93),
            avr_loss: Some(0.121),
        })
    );
    // tqdm pads a shorter redraw with spaces to clear the longer one.
    let padded = "steps:  34%|███▍      | 61/180 [00:31<01:01,  1.93it/s]      ";
    assert!(matches!(
        parse_line(padded),
        Line::Step(StepLine {
            step: 61,
            avr_loss: None,
            ..
        })
    ));
}

#[test]
fn the_tracker_reports_progress_and_each_epochs_loss() {
    let mut tracker = ProgressTracker::new(2);
    let mut reports = Vec::new();
    for line in lines("train_network_output.txt") {
        if let Some(p) = tracker.observe(&parse_line(&line)) {
            reports.push(p);
        }
    }
    // The loss at an epoch's last step is sd-scripts' average over the epoch.
    assert_eq!(tracker.epoch_loss(1), Some(0.122));
    assert_eq!(tracker.epoch_loss(2), Some(0.114));
    assert_eq!(tracker.epoch_loss(3), Some(0.106));
    assert_eq!(tracker.total_epochs(), Some(3));
    assert_eq!(tracker.saved().len(), 3);

    let last = reports.last().unwrap();
    assert_eq!(last.percent, 100.0);
    assert_eq!(
        (last.step, last.total_steps, last.epoch),
        (Some(180), Some(180), Some(3))
    );
    assert_eq!(last.loss, Some(0.106));
    // 2.04 optimiser steps a second, 2 images each.
    assert!((last.samples_per_sec.unwrap() - 4.08).abs() < 1e-9);

    // Progress only moves forward, and every report is one the job accepts.
    let mut previous = 0.0;
    for p in &reports {
        assert!(p.percent >= previous && p.percent <= 100.0, "{p:?}");
        previous = p.percent;
    }
    let mid = reports
        .iter()
        .find(|p| p.step == Some(90) && p.loss.is_some())
        .unwrap();
    assert_eq!(mid.percent, 50.0);
    assert_eq!(mid.epoch, Some(2));
    assert_eq!(mid.message.as_deref(), Some("epoch 2/3"));
}

#[test]
fn out_of_memory_and_the_python_exception_are_found_in_a_traceback() {
    let oom = lines("train_network_oom.txt");
    let hits: Vec<_> = oom
        .iter()
        .filter(|l| parse_line(l) == Line::OutOfMemory)
        .collect();
    assert_eq!(hits.len(), 1);
    assert!(
        hits[0].starts_with(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."
        )
    );

    let import = lines("train_network_no_bitsandbytes.txt");
    assert!(import.iter().all(|l| parse_line(l) != Line::OutOfMemory));
    let exceptions: Vec<_> = import
        .iter()
        .filter(|l| loraflow_executors::kohya::progress::is_exception(l))
        .collect();
    assert_eq!(
        exceptions,
        [
            "ModuleNotFoundError: No module named 'bitsandbytes'",
            "ImportError: No bitsandbytes / bitsandbytesがインストールされていないようです",
        ]
    );
}
