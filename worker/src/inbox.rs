//! Every worker process applies the payment provider's webhook events as they arrive
//! (`orderflow_shared::provider_event`): a few times a second it takes the unapplied ones, `skip locked`, so
//! several processes share them and none waits on an order a step holds. An event applied twice is impossible
//! (its row is locked and marked in one transaction); one whose worker dies before the commit stays unapplied for
//! the next round.

use std::time::Duration;

use orderflow_shared::provider_event;
use sqlx::PgPool;
use tokio::sync::watch;

/// Events applied per transaction.
const BATCH: i64 = 100;

/// Applies events every `interval` until `stopped`; a full batch is followed by the next at once.
pub async fn run(pool: PgPool, interval: Duration, mut stopped: watch::Receiver<bool>) {
    loop {
        let full = match provider_event::apply_pending(&pool, BATCH).await {
            Ok(applied) => {
                for (event, effect) in &applied {
                    tracing::debug!(%event, effect = effect.as_str(), "provider event applied");
                    metrics::counter!("orderflow_provider_events_applied_total", "effect" => effect.as_str())
                        .increment(1);
                }
                applied.len() as i64 == BATCH
            }
            Err(error) => {
                tracing::warn!(%error, "failed to apply the provider's events; retrying");
                false
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
