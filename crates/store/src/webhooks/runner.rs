//! The outbox runner: follows the feed from the outbox checkpoint and queues
//! deliveries, batch by batch, like the projection runner keeps the views.

use tokio_util::sync::CancellationToken;

use super::Webhooks;
use crate::error::Result;
use crate::feed::follow_checkpointed;

/// Run until `shutdown` is cancelled. Database errors are logged and retried
/// after the poll interval; an event is never skipped.
pub(crate) async fn run(webhooks: Webhooks, shutdown: CancellationToken) -> Result<()> {
    follow_checkpointed(
        &webhooks.shared,
        &shutdown,
        "webhook outbox batch",
        webhooks.shared.options.outbox_pace,
        || webhooks.position(),
        |p| webhooks.step_followed(p),
    )
    .await
}
