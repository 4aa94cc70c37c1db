//! Refund (PARTIALLY_FULFILLED or FULFILLED, the status staying): the order's oldest refund on its way
//! (`orderflow_shared::refund`). The first transaction makes it REFUNDING, fixes its parts (which intent gives back
//! how much: one intent, unless a lapsed hold was re-authorized and the order's captures lie on more) and commits
//! the attempt as STARTED; the call asks the provider for each part in turn under the part's key
//! (`refund::part_key`: the refund's own key for the first); the second transaction records the parts and the
//! refund DONE with the provider's refund id (`order.refunded`, naming it). A crash anywhere asks every part again
//! under the same keys, which the provider answers as before, never refunding twice. After it: what the order
//! has pending (`pending::Pending::next_step`: a shipment asked for meanwhile, the next refund), or nothing.
//!
//! A refusal for good (more than is refundable at the provider, a payment it cannot refund) is an answer: the
//! record fails the refund (`order.refund_failed`) and the order stays as it was; parts made before the refused
//! one are recorded and count as refunded (`refund::money_of`), the refused one and those after it gave nothing. An unknown
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
use orderflow_shared::pending;
use orderflow_shared::refund::{self, RefundPart, RefundRow};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::ProviderError;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct Refund;

/// One refund as asked of the provider: its parts, in order.
#[derive(Debug)]
pub(crate) struct Ask {
    refund: RefundRow,
    parts: Vec<RefundPart>,
}

/// What the provider answered `refund`: the parts it made (`(part, the provider's refund id)`), and the refusal
/// for good, in its words, that stopped the rest.
#[derive(Debug)]
pub(crate) struct Answered {
    refund: RefundRow,
    made: Vec<(i32, String)>,
    refused: Option<String>,
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
        let mut asking = Vec::new();
        let mut failed = HashMap::new();
        for order in orders {
            if let Err(error) = failpoints::crash("worker.refund.start", &order.customer_id) {
                failed.insert(order.id, error);
            } else if let Some(refund) = current.get(&order.id) {
                asking.push(refund);
            }
        }
        let mut parts = refund::begin(&mut *conn, &asking).await?;
        Ok(orders
            .iter()
            .map(|order| {
                if let Some(error) = failed.remove(&order.id) {
                    return Decision::Fail(error);
                }
                match current.get(&order.id) {
                    // A repeat of a run that recorded the last one on its way: nothing to do.
                    None => Decision::Skip,
                    Some(refund) => match parts.remove(&refund.id) {
                        Some(parts) => Decision::Call(Ask {
                            refund: refund.clone(),
                            parts,
                        }),
                        None => Decision::Fail(StepError::Transient(anyhow!(
                            "the order has no captured payment to refund from"
                        ))),
                    },
                }
            })
            .collect())
    }

    async fn call(runner: &Runner, order: &OrderRow, ask: &Ask) -> Result<Answered, StepError> {
        failpoints::abort("worker.refund.before_call", Some(&order.customer_id));
        let refund = &ask.refund;
        let (mut made, mut refused) = (Vec::new(), None);
        for part in &ask.parts {
            let answer = runner
                .provider
                .refund_part(
                    &part.payment_intent,
                    &refund::part_key(refund.id, part.part),
                    part.amount,
                    refund.reason.as_str(),
                )
                .await;
            match answer {
                Ok(refund_id) => made.push((part.part, refund_id)),
                // The provider's answer, not a failure: the refund fails and the order stays as it was.
                Err(refusal @ ProviderError::Rejected { .. }) => {
                    refused = Some(refusal.to_string());
                    break;
                }
                Err(unknown @ ProviderError::Transient(_)) => return Err(StepError::from_provider(unknown)),
            }
        }
        failpoints::abort("worker.refund.after_call", Some(&order.customer_id));
        Ok(Answered {
            refund: refund.clone(),
            made,
            refused,
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
        let (mut done, mut refused, mut parts) = (Vec::new(), Vec::new(), Vec::new());
        for (_, answer) in answered {
            let id = answer.refund.id;
            parts.extend(answer.made.iter().map(|(part, made)| (id, *part, made.as_str())));
            match (&answer.refused, answer.made.first()) {
                (None, Some((_, first))) => done.push((id, first.as_str())),
                (Some(why), _) => refused.push((id, why.as_str())),
                (None, None) => refused.push((id, "the refund has no part to ask for")),
            }
        }
        // Parts first: a refund failed by a later part keeps what its earlier ones gave back on record.
        refund::record_parts(&mut *conn, &parts).await?;
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
                match &answer.refused {
                    None if recorded.contains(&id) => Ending::succeeded(Self::STEP).then(next).for_refund(id),
                    Some(why) if failed.contains(&id) => {
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
