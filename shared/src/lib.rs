//! OrderFlow's domain and data access, shared by the API, the worker and the tests.
//!
//! Each module owns one table family and the SQL that touches it. Data functions take `&mut PgConnection`
//! (several statements) or `impl PgExecutor` (one statement); the caller opens the transaction, so one business
//! action commits or rolls back as a whole.

pub mod admin;
pub mod completion;
pub mod db;
pub mod events;
pub mod idempotency;
pub mod inventory;
pub mod jobs;
pub mod money;
pub mod order;
pub mod outbox;
pub mod payment;
pub mod pgcluster;
pub mod recovery;
pub mod saga;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
