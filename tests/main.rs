//! OrderFlow's integration tests: the real PostgreSQL, the API and the payment simulator on real sockets,
//! the worker in-process (or as real processes where that is the point). Each test gets its own database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod invariants;
mod keys;
mod limits;

mod admin;
mod admission;
mod async_payments;
mod bad_input;
mod batch;
mod cancellation;
mod chaos;
mod cli;
mod concurrency;
mod contract;
mod crash;
mod customer_tokens;
mod dashboard;
mod docs;
mod events;
mod front_door;
mod idempotency;
mod lapsed_hold;
mod metrics;
mod outage;
mod outbound_webhooks;
mod paysim;
mod provider_webhooks;
mod queue;
mod reconciler;
mod recovery;
mod refund;
mod returns;
mod saga;
mod shipment;
mod sqlx_cache;
mod stock;
mod stock_ledger;
mod stock_locations;
mod tracing;
