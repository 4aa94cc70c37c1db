//! Refund (PARTIALLY_FULFILLED or FULFILLED, the status staying): the order's oldest refund on its way
//! (`orderflow_shared::refund`). The first transaction makes it REFUNDING and commits the attempt as STARTED; the
//! call asks the provider to refund its amount from the order's payment under the refund's own key; the second
//! transaction records it DONE with the provider's refund id (`order.refunded`, naming it). A crash anywhere asks
//! again under the same key, which the provider answers as before, never refunding twice. After it: what the order
//! has pending (`pending::Pending::next_step`: a shipment asked for meanwhile, the next refund), or nothing.
//!
//! A refusal for good (more than is refundable at the provider, a payment it cannot refund) is an answer: the
//! record fails the refund (`order.refund_failed`; nothing was refunded) and the order stays as it was. An unknown
//! outcome is a failure, retried under the same key for as long as it takes (`Step::never_gives_up`), within the
//! provider's key retention (Stripe keeps keys 24 h). A repeat of a run that recorded its refund finds the next
//! refund on its way, if any, and asks for it beside the run that owns it: harmless, as both ask under that
//! refund's key and only one records it; with none it writes nothing.
//!
//! Failpoints: `worker.refund.start` (a transient failure before anything is written), `worker.refund.before_call`
//! (aborts the process after the attempt and the refund's REFUNDING committed, before the call),
//! `worker.refund.after_call` (aborts the process after the provider refunded, before anything is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{OrderRow, Transition};
use orderflow_shared::payment;
use orderflow_shared::pending;
use orderflow_shared::refund::{self, RefundRow};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::ProviderError;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct Refund;

/// One refund as asked of the provider.
#[derive(Debug)]
pub(crate) struct Ask {
    refund: RefundRow,
    /// The payment's provider reference.
    intent: String,
}

/// What the provider answered `refund`: its refund id, or its refusal for good in its words.
#[derive(Debug)]
pub(crate) struct Answered {
    refund: RefundRow,
    outcome: Result<String, String>,
}

impl SagaStep for Refund {
    const STEP: Step = Step::Refund;
    type Call = Ask;
    type Answer = Answered;

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<Ask>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let current: HashMap<Uuid, RefundRow> = refund::current_of(&mut *conn, &ids)
            .await?
            .into_iter()
            .map(|r| (r.order_id, r))
            .collect();
        let intents: HashMap<Uuid, Option<String>> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .map(|p| (p.order_id, p.provider_ref))
            .collect();
        let mut decisions = Vec::with_capacity(orders.len());
        for order in orders {
            let intent = intents.get(&order.id).cloned().flatten();
            let decided = if let Err(error) = failpoints::crash("worker.refund.start", &order.customer_id) {
                Decision::Fail(error)
            } else {
                match (current.get(&order.id), intent) {
                    // A repeat of a run that recorded the last one on its way: nothing to do.
                    (None, _) => Decision::Skip,
                    (Some(_), None) => Decision::Fail(StepError::Transient(anyhow!(
                        "the order has no payment to refund from"
                    ))),
                    (Some(refund), Some(intent)) => Decision::Call(Ask {
                        refund: refund.clone(),
                        intent,
                    }),
                }
            };
            decisions.push(decided);
        }
        let asking: Vec<Uuid> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Call(ask) => Some(ask.refund.id),
                _ => None,
            })
            .collect();
        refund::begin(&mut *conn, &asking).await?;
        Ok(decisions)
    }

    async fn call(runner: &Runner, order: &OrderRow, ask: &Ask) -> Result<Answered, StepError> {
        failpoints::abort("worker.refund.before_call", Some(&order.customer_id));
        let refund = &ask.refund;
        let answer = runner
            .provider
            .refund_part(
                &ask.intent,
                &refund::provider_key(refund.id),
                refund.amount,
                refund.reason.as_str(),
            )
            .await;
        failpoints::abort("worker.refund.after_call", Some(&order.customer_id));
        let outcome = match answer {
            Ok(refund_id) => Ok(refund_id),
            // The provider's answer, not a failure: the refund fails and the order stays as it was.
            Err(refusal @ ProviderError::Rejected { .. }) => Err(refusal.to_string()),
            Err(unknown @ ProviderError::Transient(_)) => return Err(StepError::from_provider(unknown)),
        };
        Ok(Answered {
            refund: refund.clone(),
            outcome,
        })
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Answered)],
    ) -> Result<Vec<Ending>, StepError> {
        let ids: Vec<Uuid> = answered.iter().map(|(order, _)| order.id).collect();
        // Each answer is recorded on its own refund, and only while that one is REFUNDING: a run that lost the race
        // to record it (a job run twice) writes nothing.
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        for (_, answer) in answered {
            match &answer.outcome {
                Ok(provider_ref) => done.push((answer.refund.id, provider_ref.as_str())),
                Err(why) => refused.push((answer.refund.id, why.as_str())),
            }
        }
        let recorded = refund::complete(&mut *conn, &done).await?;
        let failed = refund::fail(&mut *conn, &refused).await?;
        let pending = pending::of_orders(&mut *conn, &ids).await?;
        Ok(answered
            .iter()
            .map(|(order, answer)| {
                let id = answer.refund.id;
                // Nothing moves a refunding order out of PARTIALLY_FULFILLED or FULFILLED (a cancel of the rest waits
                // for refunds); should it have moved, the refund is on record all the same.
                if !Self::STEP.runs_in(order.status) {
                    return Ending::overtaken(format!(
                        "order left refunding during the call (now {})",
                        order.status
                    ));
                }
                let next = pending.get(&order.id).and_then(|p| p.next_step(order.status));
                match &answer.outcome {
                    Ok(_) if recorded.contains(&id) => {
                        Ending::succeeded(Self::STEP).then(next).for_refund(id)
                    }
                    Err(why) if failed.contains(&id) => {
                        Ending::failed(why.clone(), Some(Transition::FailRefund))
                            .then(next)
                            .for_refund(id)
                    }
                    // A repeat of a run that recorded it: its event is written and its next step queued.
                    _ => Ending::overtaken(format!("refund {id} was recorded already")),
                }
            })
            .collect())
    }
}
