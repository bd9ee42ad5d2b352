//! The `loraflow` command. See `loraflow --help`.

mod cli;

/// mimalloc rather than glibc's malloc: see `mimalloc` in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use cli::output::StdoutClosed;
use cli::{Cli, Command, client::Exit, exit};
use loraflow::config::TelemetryConfig;
use loraflow::telemetry::{Export, TelemetryError};

/// Where `serve` and `worker` export their spans (`loraflow::telemetry`);
/// `None` for the other commands. A configuration file that does not load
/// exports nothing: `serve` reports the file's error itself.
fn trace_export(cli: &Cli) -> Result<Option<Export>, TelemetryError> {
    match &cli.command {
        Command::Serve(a) => {
            let config = a.config.load().map(|c| c.telemetry).unwrap_or_default();
            Export::resolve(&config, "loraflow")
        }
        Command::Worker(_) => Export::resolve(&TelemetryConfig::default(), "loraflow-worker"),
        _ => Ok(None),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => cli::demo::demo(a).await,
        Command::Serve(a) => cli::serve::serve(a).await,
        Command::Worker(a) => cli::worker::worker(a).await,
        Command::Submit(a) => cli::client::submit(a).await,
        Command::Status(a) => cli::client::status(a).await,
        Command::List(a) => cli::client::list(a).await,
        Command::Watch(a) => cli::watch::watch(a).await,
        Command::Approve(a) => cli::review::approve(a).await,
        Command::Reject(a) => cli::client::reject(a).await,
        Command::Cancel(a) => cli::client::cancel(a).await,
        Command::SaveNow(a) => cli::client::save_now(a).await,
        Command::SampleNow(a) => cli::review::sample_now(a).await,
        Command::History(a) => cli::client::history(a).await,
        Command::Replay(a) => cli::replay::replay(a).await,
        Command::Audit(a) => cli::audit::audit(a).await,
        Command::Models(a) => cli::models::models(a).await,
        Command::Params(a) => cli::params::params(a).await,
        Command::ServiceStatus(a) => cli::service_status::service_status(a).await,
        Command::Retry(a) => cli::retry_job::retry_job(a).await,
        Command::Webhooks(a) => cli::webhooks::webhooks(a).await,
        Command::Executors(a) => cli::executors::executors(a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    loraflow::tls::use_ring();
    // The demo draws progress bars on stderr; routine logs would break them.
    let log_filter = match cli.command {
        Command::Demo(_) => "warn,sqlx=warn",
        _ => "info,sqlx=warn",
    };
    let export = trace_export(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(async {
        // The exporter's batches run on this runtime.
        let tracing = match export {
            Ok(export) => loraflow::telemetry::init(log_filter, export.as_ref()),
            Err(e) => loraflow::telemetry::init(log_filter, None).and(Err(e)),
        };
        let tracing = match tracing {
            Ok(t) => t,
            Err(e) => return Err(anyhow::Error::new(e).context("cannot export traces")),
        };
        let result = run(cli).await;
        if let Some(t) = tracing {
            t.shutdown().await;
        }
        result
    });
    // The command is over (`serve` has stopped its engine, or given up on it
    // when its shutdown grace ended): dropping the runtime would wait for
    // blocking work still running (a training step on CPU), past that grace.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        // The reader of our output went away (`| head -1`): stop quietly.
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => ExitCode::from(exit::OK),
        Err(e) => {
            let code = e
                .downcast_ref::<Exit>()
                .map(|x| x.0)
                .unwrap_or(exit::FAILED);
            eprintln!("error: {}", report(&e));
            ExitCode::from(code)
        }
    }
}

/// An error and its causes, each said once. `{:#}` prints every source after
/// its error, but an error that already quotes its source in its own message
/// (`cannot open the store: <source>`) would then say the source twice; a
/// cause whose text is already there is left out.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if said.is_empty() || text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the gRPC server failed: {0}")]
    struct Quotes(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Quotes(std::io::Error::other("address in use")))
            .context("cannot serve");
        assert_eq!(
            report(&e),
            "cannot serve: the gRPC server failed: address in use"
        );
        let plain = anyhow::anyhow!("disk full").context("cannot write the export");
        assert_eq!(report(&plain), "cannot write the export: disk full");
    }
}
