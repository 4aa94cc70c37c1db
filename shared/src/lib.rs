//! OrderFlow's domain and data access, shared by the API, the worker, the CLI and the tests.
//!
//! Each module owns one table family and the SQL that touches it. Data functions take `&mut PgConnection`
//! (several statements) or `impl PgExecutor` (one statement); the caller opens the transaction, so one business
//! action commits or rolls back as a whole.
//!
//! # Layout
//! - [`flow`]: the saga written down once: the steps in order and every rule about each (queue, state, what
//!   follows, what undoes it, failure and budget, where a saga resumes), how an attempt ends, starting a
//!   cancellation.
//! - [`order`]: the order's states and transition table, its rows and reads; [`order::request`] parses a create
//!   request, [`order::create`] creates an order with its first job, [`order::advance`] is the one statement that
//!   moves orders on (status, event, step attempt, next job).
//! - [`step_log`]: the saga's step attempts (`saga_steps`), written before every side effect.
//! - [`inventory`]: stock and reservations, the stock ledger ([`inventory::ledger`]) and adjustments; [`payment`]: the order's payment row and the provider's keys.
//! - [`queue`]: every statement on apalis's tables: the job payload and the SQL that writes jobs, completions,
//!   the reconciler's repairs, the operators' queue views.
//! - [`operator`]: what operators do to a saga (retry, compensate, resolve), with its audit; [`admin`]: what they
//!   read.
//! - [`events`] and [`outbox`]: the audit trail and its readers (NATS relay, feed); [`idempotency`]: keys.
//! - [`admission`]: whether the API takes a new order now (the saga backlog against its bound).
//! - [`stripe_signature`]: the `Stripe-Signature` scheme of the provider's webhooks (the simulator signs, the API
//!   checks); [`provider_event`]: those webhooks' events, recorded once and applied under the order's lock.
//! - [`webhooks`]: merchants' webhook endpoints and the signed, ordered deliveries of every order event to them.
//! - [`money`]: value types; [`settings`]: configuration from the environment; [`db`], [`telemetry`],
//!   [`shutdown`], [`pgcluster`]: plumbing every binary shares.

/// Implements sqlx's `Type`, `Encode` and `Decode` (PostgreSQL `text`) for an enum with `as_str` and `parse`:
/// stored as its stable name, and a value the enum does not know fails to decode, naming it, instead of turning
/// into some default.
macro_rules! stored_as_text {
    ($type:ty) => {
        stored_as_text!($type, as_str);
    };
    ($type:ty, $name:ident) => {
        impl sqlx::Type<sqlx::Postgres> for $type {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $type {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Self::parse(text)
                    .ok_or_else(|| format!("{text:?} is not a known {}", stringify!($type)).into())
            }
        }

        impl sqlx::postgres::PgHasArrayType for $type {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $type {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.$name(), buf)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::Serialize;

    /// The API shows a stored enum through serde and stores it through `as_str`/`name`: both spell it alike, so a
    /// client reads the value the database holds.
    fn same<T: Serialize + Copy>(all: &[T], name: impl Fn(T) -> &'static str) {
        for value in all {
            assert_eq!(
                serde_json::to_value(value).unwrap(),
                serde_json::json!(name(*value))
            );
        }
    }

    #[test]
    fn every_stored_enum_is_spelled_alike_in_json_and_in_the_database() {
        same(&crate::order::OrderStatus::ALL, crate::order::OrderStatus::as_str);
        same(
            &crate::order::CancelReason::ALL,
            crate::order::CancelReason::as_str,
        );
        same(&crate::flow::Step::ALL, crate::flow::Step::name);
        same(
            &crate::shipment::ShipmentStatus::ALL,
            crate::shipment::ShipmentStatus::as_str,
        );
        same(&crate::order::Fulfilment::ALL, crate::order::Fulfilment::as_str);
        same(
            &crate::step_log::AttemptStatus::ALL,
            crate::step_log::AttemptStatus::as_str,
        );
        same(
            &crate::payment::PaymentStatus::ALL,
            crate::payment::PaymentStatus::as_str,
        );
        same(&crate::queue::JobStatus::ALL, crate::queue::JobStatus::as_str);
        same(
            &crate::inventory::ReservationStatus::ALL,
            crate::inventory::ReservationStatus::as_str,
        );
        same(
            &crate::inventory::ledger::MovementReason::ALL,
            crate::inventory::ledger::MovementReason::as_str,
        );
    }
}

pub mod admin;
pub mod admin_session;
pub mod admission;
pub mod api_key;
pub mod customer_token;
pub mod db;
pub mod events;
pub mod flow;
pub mod idempotency;
pub mod input;
pub mod inventory;
pub mod money;
pub mod operator;
pub mod order;
pub mod outbox;
pub mod payment;
pub mod pending;
pub mod pgcluster;
pub mod provider_event;
pub mod queue;
pub mod refund;
pub mod returns;
pub mod server_secret;
pub mod settings;
pub mod shipment;
pub mod shutdown;
pub mod step_log;
pub mod stripe_signature;
pub mod telemetry;
pub mod webhooks;
