//! `loraflow demo`: the whole workflow on this machine, with nothing to set
//! up. It opens a SQLite store in a folder, starts the engine with every
//! built-in executor in-process (the native trainer on the CPU), submits a
//! LoRA job for the demo model on the demo dataset that ship with loraflow,
//! shows its progress, approves the epoch the job suggests (the lowest
//! validation loss, else the lowest training loss) and says why, waits for the
//! publication, and prints where the results are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use loraflow::config::SchedulerConfig;
use loraflow::core::artifact::{Artifact, ArtifactKind, Suggestion};
use loraflow::core::catalogue::{Engine as EngineKind, ParamValue, Params};
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::{DatasetRef, JobSpec, JobState, Naming};
use loraflow::core::views::JobStatus;
use loraflow::executors::{Label, Publish, ValidateDataset};
use loraflow::{Engine, NewJob};
use loraflow_trainer::world::concept::{PROBE_GUIDANCE, PROBE_STEPS, demo_probes};
use loraflow_trainer::world::demo as world_demo;
use loraflow_trainer::world::{ConceptScore, TRIGGER, read_file};

use super::client::Exit;
use super::exit;
use super::output::out;
use super::watch::{Outcome, Renderer};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the store, the artifacts and the published LoRA (created;
    /// a second run adds a job to the same store).
    #[arg(long, default_value = "loraflow-demo")]
    pub dir: PathBuf,
    /// Base models and the demo dataset (default: the checkout's `assets/`).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Training epochs (one LoRA and one set of samples per epoch).
    #[arg(long, default_value_t = world_demo::EPOCHS as u32, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub epochs: u32,
    /// The burn device: cpu, wgpu, vulkan or cuda:N (GPU ones need a build
    /// with that feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the finished job's status as JSON on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
}

const TENANT: &str = "demo";

/// The demo job: the `tiny-sd` model, the catalogue's defaults for it, and
/// enough epochs and repeats for a loss curve worth looking at.
fn job_spec(dataset_uri: String, epochs: u32) -> JobSpec {
    // The demo's training settings (`loraflow_trainer::world::demo`; every other parameter is
    // the catalogue's default for tiny-sd). No trigger word parameter: the concept pictures'
    // captions carry it, and the regularisation pictures must stay without it.
    let params: Params = [
        ("epochs", ParamValue::Int(epochs.into())),
        (
            "num_repeats",
            ParamValue::Int(world_demo::NUM_REPEATS as i64),
        ),
        ("batch_size", ParamValue::Int(world_demo::BATCH_SIZE as i64)),
        ("conv_dim", ParamValue::Int(world_demo::CONV_DIM as i64)),
        ("unet_lr", ParamValue::Float(world_demo::UNET_LR)),
        (
            "caption_dropout",
            ParamValue::Float(world_demo::CAPTION_DROPOUT),
        ),
        ("seed", ParamValue::Int(world_demo::SEED as i64)),
        // The probes' sampler settings, so that the samples are what the scorer expects.
        ("sample_sampler", ParamValue::Str("ddim".into())),
        ("sample_steps", ParamValue::Int(PROBE_STEPS as i64)),
        ("sample_guidance_scale", ParamValue::Float(PROBE_GUIDANCE)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    JobSpec {
        tenant: TenantId::new(TENANT),
        base_model: "tiny-sd".into(),
        engine: EngineKind::Native,
        profile: None,
        params,
        dataset: DatasetRef {
            uri: dataset_uri,
            sha256: None,
        },
        sample_prompts: demo_probes().into_iter().map(|p| p.prompt).collect(),
        priority: 0,
        naming: Naming {
            subject: "demo-shapes".into(),
            version: "v1".into(),
        },
        labels: [("source".to_owned(), "loraflow demo".to_owned())].into(),
        workflow: None,
        webhooks: Vec::new(),
    }
}

/// The epoch the job suggests to its reviewer: the lowest validation loss,
/// else the lowest training loss.
pub fn suggested_epoch(status: &JobStatus) -> Option<Suggestion> {
    status.suggestion()
}

/// A local path for a `file://` artifact URI (other URIs print as they are).
fn local(uri: &str) -> String {
    url::Url::parse(uri)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        .map_or_else(|| uri.to_owned(), |p| p.display().to_string())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the demo folder {}", path.display()))?;
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

async fn engine(dir: &Path, assets: &Path, device: &str) -> anyhow::Result<(Engine, String)> {
    let store = format!("sqlite://{}", dir.join("loraflow.db").display());
    let native = super::native::options(Some(assets), device, Some(dir.join("native-work")))?;
    let builder = Engine::builder()
        .store(store.clone())
        .artifacts(dir.join("artifacts").display().to_string())
        .workdir(dir.join("work"))
        // Progress is recorded often enough for the bars to move on a run
        // that takes seconds (a service keeps the default interval).
        .scheduler(SchedulerConfig {
            heartbeat_interval: Duration::from_millis(500),
            progress_interval: Duration::from_millis(200),
            ..SchedulerConfig::default()
        })
        .executor(ValidateDataset::default())
        .executor(Label::default())
        .executor(Publish {
            destination: url::Url::from_directory_path(dir.join("published"))
                .map_err(|()| anyhow::anyhow!("{} is not an absolute path", dir.display()))?
                .to_string(),
        });
    let engine = super::native::with_native(builder, &native)?
        .build()
        .await
        .with_context(|| format!("cannot open the demo store {store}"))?;
    Ok((engine, store))
}

/// Follow the job; approve the best epoch when it reaches review. Returns
/// the final status.
async fn follow(engine: &Engine, tenant: &TenantId, job: &JobId) -> anyhow::Result<JobStatus> {
    let mut renderer = Renderer::new();
    let mut events = std::pin::pin!(engine.watch(tenant, job, 0).await?);
    while let Some(event) = events.next().await {
        let event = event?;
        match renderer.event(&event.payload) {
            Some(Outcome::InReview) => {
                engine.store().wait_for(event.position).await?;
                let status = engine.get_job(tenant, job).await?.status;
                let suggested =
                    suggested_epoch(&status).context("the job reached review with no epoch")?;
                eprintln!("approving the suggested {}", suggested.reason());
                engine
                    .approve(tenant, job, suggested.epoch, "demo (suggested)", None)
                    .await?;
            }
            Some(Outcome::Published | Outcome::Failed) => {
                engine.store().wait_for(event.position).await?;
                return Ok(engine.get_job(tenant, job).await?.status);
            }
            None => {}
        }
    }
    bail!("the engine stopped before the job ended")
}

/// The prompt index of a sample file (`epoch003-05.png`, `base-05.png`).
fn sample_index(name: &str) -> Option<usize> {
    name.strip_suffix(".png")?.rsplit('-').next()?.parse().ok()
}

/// Reads samples of the demo's prompts ([`demo_probes`]) and scores them: rings drawn for the
/// trigger prompts, and the asked shape and colour for the others.
fn concept_score<'a>(samples: impl IntoIterator<Item = &'a Artifact>) -> Option<ConceptScore> {
    let probes = demo_probes();
    let mut score = ConceptScore::default();
    for sample in samples {
        let Some(probe) = sample_index(&sample.name).and_then(|i| probes.get(i)) else {
            continue;
        };
        let reading = read_file(Path::new(&local(&sample.uri))).ok()?;
        score.add(probe, &reading);
    }
    (score.base.total + score.concept.total > 0).then_some(score)
}

fn print_summary(status: &JobStatus, store: &str, took: Duration) -> anyhow::Result<()> {
    let find = |kind: ArtifactKind, suffix: &str| -> Option<&Artifact> {
        status
            .artifacts
            .iter()
            .find(|a| a.kind == kind && a.name.ends_with(suffix))
    };
    out!(
        "job {} {} in {:.1} s",
        status.job_id,
        status.state,
        took.as_secs_f64()
    )?;
    if let Some(p) = &status.published {
        out!(
            "  published LoRA   {}  ({} bytes, sha256 {})",
            local(&p.uri),
            p.size_bytes,
            p.sha256
        )?;
    }
    let base_samples = status
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Sample && a.name.starts_with("base-"));
    if let Some(score) = concept_score(base_samples) {
        out!(
            "  base model  rings for \"{TRIGGER}, ...\" {}, other prompts drawn as asked {}",
            score.concept,
            score.base
        )?;
    }
    for e in status.epochs.values() {
        let mut loss = e.loss.map(|l| format!("loss {l:.4}")).unwrap_or_default();
        if let Some(v) = e.validation_loss {
            loss.push_str(&format!("  validation {v:.4}"));
        }
        if let Some(score) = concept_score(&e.samples) {
            loss.push_str(&format!(
                "  rings {}  others as asked {}",
                score.concept, score.base
            ));
        }
        let mark = if status.approved_epoch == Some(e.epoch) {
            "  <- approved"
        } else {
            ""
        };
        out!("  epoch {:>3}  {loss}{mark}", e.epoch)?;
        if let Some(l) = &e.lora {
            out!("      LoRA     {}", local(&l.uri))?;
        }
        if let Some(first) = e.samples.first() {
            // One line per epoch: its samples sit side by side in one folder.
            let path = PathBuf::from(local(&first.uri));
            let folder = path.parent().unwrap_or(&path);
            out!(
                "      samples  {} in {} (epoch{:03}-*.png)",
                e.samples.len(),
                folder.display(),
                e.epoch
            )?;
        }
    }
    if let Some(s) = status.suggestion() {
        out!("  suggested        {}", s.reason())?;
    }
    use loraflow::core::artifact::{CONTACT_SHEET, LOSS_PLOT, report_uri};
    if let Some(uri) = report_uri(&status.artifacts, LOSS_PLOT) {
        out!("  loss plot        {}", local(uri))?;
    }
    if let Some(uri) = report_uri(&status.artifacts, CONTACT_SHEET) {
        out!("  contact sheet    {}", local(uri))?;
    }
    if let Some(events) = find(ArtifactKind::Report, ".train") {
        // Files are stored as jobs/<job>/<step>/<attempt>/<name>: the job's folder holds the
        // event files of training (scalars) and sampling (the contact sheet).
        let file = PathBuf::from(local(&events.uri));
        let job_dir = file.ancestors().nth(3).unwrap_or(&file).to_path_buf();
        out!(
            "  tensorboard      tensorboard --logdir {}",
            job_dir.display()
        )?;
    }
    if let Some(history) = find(ArtifactKind::Report, ".json") {
        out!("  loss history     {}", local(&history.uri))?;
    }
    out!("  event store      {store}")?;
    out!(
        "  audit it with    loraflow replay {} --store {store}",
        status.job_id
    )?;
    Ok(())
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = absolute(&args.dir)?;
    let assets = args
        .assets
        .clone()
        .unwrap_or_else(super::native::default_models_root);
    let dataset = assets.join("demo-dataset");
    if !dataset.is_dir() || !assets.join("tiny-sd").is_dir() {
        bail!(
            "{} does not hold the demo model and dataset (tiny-sd/, demo-dataset/); \
             run the demo from a loraflow checkout or pass --assets",
            assets.display()
        );
    }
    let (engine, store) = engine(&dir, &assets, &args.device).await?;
    let result = run(&engine, &store, &dataset, &args, started).await;
    engine.shutdown().await;
    result
}

async fn run(
    engine: &Engine,
    store: &str,
    dataset: &Path,
    args: &DemoArgs,
    started: Instant,
) -> anyhow::Result<()> {
    let tenant = TenantId::new(TENANT);
    // The demo tenant's own namespace, named by content (the rule every
    // tenant's dataset follows; see loraflow::tenancy).
    let local = loraflow::executors::LocalDataset::read(dataset)?;
    let files = local.files.len();
    let dataset_uri = engine.artifacts().upload_dataset(TENANT, &local).await?.uri;
    eprintln!(
        "demo: {files} files from {} uploaded; store {store}",
        dataset.display()
    );
    let view = engine
        .create_job(
            &tenant,
            NewJob {
                spec: job_spec(dataset_uri, args.epochs),
                request_id: None,
            },
        )
        .await?;
    let job = view.status.job_id.clone();
    let status = follow(engine, &tenant, &job).await?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        print_summary(&status, store, started.elapsed())?;
    }
    if status.state != JobState::Published {
        let why = status
            .failure
            .as_ref()
            .map(|f| format!("{}: {}", f.reason, f.message))
            .unwrap_or_else(|| status.state.to_string());
        return Err(Exit(
            exit::FAILED,
            format!("the demo job did not publish ({why})"),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use loraflow::core::catalogue::Catalogue;
    use loraflow::executors::native::params::{RunPaths, train_config};

    use super::*;

    /// The concept test (`crates/trainer/tests/concept.rs`) trains with
    /// `world::demo::train_config`: the demo job's parameters, resolved by the catalogue and
    /// mapped by the native engine, must give exactly that configuration.
    #[test]
    fn the_demo_job_trains_with_the_settings_the_concept_test_measures() {
        let catalogue = Catalogue::builtin();
        let model = catalogue.base_model(&"tiny-sd".into()).unwrap();
        let spec = job_spec("file:///demo/dataset".into(), world_demo::EPOCHS as u32);
        let params = catalogue
            .schema
            .resolve(model, EngineKind::Native, None, &spec.params)
            .unwrap();
        let dir = Path::new("/nonexistent/demo");
        let paths = RunPaths {
            model: (dir.join("tiny-sd"), None),
            dataset: dir.join("dataset"),
            captions: Default::default(),
            output: dir.join("out"),
            name: "demo".into(),
            cache: None,
        };
        assert_eq!(
            train_config(&params, Some(model.family), paths, "cpu").unwrap(),
            world_demo::train_config(
                dir.join("tiny-sd"),
                dir.join("dataset"),
                &dir.join("out"),
                "demo"
            )
        );
    }
}
