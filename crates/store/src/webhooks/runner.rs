//! The outbox runner: follows the feed from the outbox checkpoint and queues
//! deliveries, batch by batch, like the projection runner keeps the views.

use tokio_util::sync::CancellationToken;

use super::Webhooks;
use crate::error::Result;
use crate::event::Position;
use crate::feed::Wake;

/// Run until `shutdown` is cancelled. Database errors are logged and retried
/// after the poll interval; an event is never skipped.
pub(crate) async fn run(webhooks: Webhooks, shutdown: CancellationToken) -> Result<()> {
    let mut wake = Wake::new(&webhooks.shared);
    let poll = webhooks.shared.options.poll_interval;
    let mut from: Option<Position> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        wake.mark();
        let result = match from {
            Some(p) => webhooks.step_followed(p).await,
            None => match webhooks.position().await {
                Ok(p) => webhooks.step_followed(p).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((cp, true)) => {
                from = Some(cp);
                wake.reset();
            }
            Ok((cp, false)) => {
                from = Some(cp);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = wake.wait() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox batch failed; retrying");
                // The failed transaction may or may not have committed.
                from = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}
