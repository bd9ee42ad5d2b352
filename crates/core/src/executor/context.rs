//! The context a running step gets: progress reporting, cancellation, the
//! `save_now`/`sample_now` signals, artifact I/O, a scratch directory and a
//! tracing span. The runtime keeps the other end ([`StepHandle`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::artifacts::ArtifactIo;
use crate::job::StepProgress;

#[derive(Debug, Default)]
struct Signals {
    save_now: AtomicBool,
    sample_now: AtomicBool,
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

    /// True once per `sample_now` request.
    pub fn take_sample_now(&self) -> bool {
        self.signals.sample_now.swap(false, Ordering::AcqRel)
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
        self.signals.sample_now.store(true, Ordering::Release);
    }
}
