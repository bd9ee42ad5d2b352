//! The context a running step gets: progress reporting, cancellation, the
//! `save_now`/`sample_now` signals, artifact I/O, a scratch directory and a
//! tracing span. The runtime keeps the other end ([`StepHandle`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::artifacts::ArtifactIo;
use crate::artifact::EpochOutput;
use crate::job::StepProgress;
use crate::sampling::SampleOverrides;

#[derive(Debug, Default)]
struct Signals {
    save_now: AtomicBool,
    sample_now: AtomicBool,
    /// The settings of the last `sample_now` request, if it changed any.
    sample_request: Mutex<Option<SampleOverrides>>,
    /// Outputs reported since the runtime last took them.
    outputs: Mutex<Vec<EpochOutput>>,
}

/// What a step's code holds while it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    progress: Arc<watch::Sender<Option<StepProgress>>>,
    cancel: CancellationToken,
    signals: Arc<Signals>,
    artifacts: Arc<dyn ArtifactIo>,
    workdir: PathBuf,
    span: tracing::Span,
}

/// The runtime's end: reads progress, cancels, and forwards signals.
#[derive(Debug, Clone)]
pub struct StepHandle {
    progress: watch::Receiver<Option<StepProgress>>,
    cancel: CancellationToken,
    signals: Arc<Signals>,
}

impl StepContext {
    /// A context writing artifacts through `artifacts` with scratch space in
    /// `workdir`, and the handle the runtime keeps.
    pub fn new(
        artifacts: Arc<dyn ArtifactIo>,
        workdir: PathBuf,
        span: tracing::Span,
    ) -> (Self, StepHandle) {
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let signals = Arc::new(Signals::default());
        let ctx = Self {
            progress: Arc::new(tx),
            cancel: cancel.clone(),
            signals: signals.clone(),
            artifacts,
            workdir,
            span,
        };
        let handle = StepHandle {
            progress: rx,
            cancel,
            signals,
        };
        (ctx, handle)
    }

    /// Report progress. Cheap: only the latest report is kept, and the
    /// runtime forwards it at its heartbeat pace.
    pub fn report(&self, progress: StepProgress) {
        self.progress.send_replace(Some(progress));
    }

    /// True once the step should stop (job cancelled, lease lost, shutdown).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the step should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once per `save_now` request.
    pub fn take_save_now(&self) -> bool {
        self.signals.save_now.swap(false, Ordering::AcqRel)
    }

    /// True once per `sample_now` request (its settings are dropped; see
    /// [`take_sample_request`](Self::take_sample_request)).
    pub fn take_sample_now(&self) -> bool {
        self.take_sample_request().is_some()
    }

    /// Once per `sample_now` request: what it changes of the job's sample
    /// settings (empty when it changes nothing).
    pub fn take_sample_request(&self) -> Option<SampleOverrides> {
        if !self.signals.sample_now.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(
            self.signals
                .sample_request
                .lock()
                .expect("signals lock poisoned")
                .take()
                .unwrap_or_default(),
        )
    }

    /// Report an output made while the step runs (a LoRA saved or samples
    /// rendered on request), so the job lists it before the step completes.
    /// The runtime sends it with the next heartbeat; the completion should
    /// report it again (it counts once), since a heartbeat may be lost.
    pub fn report_output(&self, output: EpochOutput) {
        self.signals
            .outputs
            .lock()
            .expect("signals lock poisoned")
            .push(output);
    }

    pub fn artifacts(&self) -> &dyn ArtifactIo {
        self.artifacts.as_ref()
    }

    /// Scratch space for this attempt, removed by the runtime afterwards.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}

impl StepHandle {
    /// The latest progress reported, if any.
    pub fn latest(&self) -> Option<StepProgress> {
        self.progress.borrow().clone()
    }

    /// Resolves when new progress was reported since the last `latest`/`changed`.
    pub async fn changed(&mut self) -> bool {
        self.progress.changed().await.is_ok()
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn request_save(&self) {
        self.signals.save_now.store(true, Ordering::Release);
    }

    pub fn request_sample(&self) {
        self.request_sample_with(SampleOverrides::default());
    }

    /// Ask for samples with settings other than the job's.
    pub fn request_sample_with(&self, overrides: SampleOverrides) {
        *self
            .signals
            .sample_request
            .lock()
            .expect("signals lock poisoned") = (!overrides.is_empty()).then_some(overrides);
        self.signals.sample_now.store(true, Ordering::Release);
    }

    /// The outputs the step reported since the last call, oldest first.
    pub fn take_outputs(&self) -> Vec<EpochOutput> {
        std::mem::take(&mut *self.signals.outputs.lock().expect("signals lock poisoned"))
    }
}
