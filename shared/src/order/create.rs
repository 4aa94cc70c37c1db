//! Creating an order: [`create`] takes a validated request under its Idempotency-Key and writes the order, its
//! lines, its `order.created` event, its first job and the key's record in one transaction of three statements:
//! [`admit`] (the key's lock, its stored record, the skus and the transaction's timestamp in one read),
//! [`insert`] (everything written, in one statement) and the commit. A repeat of the key replays the stored
//! response; see [`crate::idempotency`] for the one race the single read leaves and how it ends.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db;
use crate::events::EventType;
use crate::flow::Step;
use crate::idempotency::{self, KeyError, Makes, StoredResponse};
use crate::input::FieldError;
use crate::inventory::SkuRow;
use crate::order::request::ValidOrder;
use crate::order::{Fulfilment, OrderLineRow, OrderRow, OrderStatus};
use crate::queue::{self, announce::Announcer};
use crate::telemetry::TraceId;

/// The status a new order's response carries: accepted, the saga runs in the worker.
pub const ACCEPTED: u16 = 202;

/// An order ready to insert, as it will be written.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    /// A shipment order when any of its skus ships ([`Fulfilment::of_order`]).
    pub fulfilment: Fulfilment,
    pub payment_token: String,
    pub trace_id: Option<String>,
    /// (sku, quantity, unit price snapshot), in request order.
    pub lines: Vec<(String, i64, i64)>,
    /// Its first job's id ([`Step::FIRST`]).
    pub job_id: String,
    /// The creating transaction's timestamp ([`Admission::now`]), so the rows below are the rows as written.
    pub created_at: DateTime<Utc>,
}

impl NewOrder {
    /// The order's row as [`insert`] writes it.
    pub fn row(&self) -> OrderRow {
        OrderRow {
            id: self.id,
            customer_id: self.customer_id.clone(),
            currency: self.currency.clone(),
            total: self.total,
            status: OrderStatus::Created,
            fulfilment: self.fulfilment,
            payment_token: self.payment_token.clone(),
            cancel_reason: None,
            cancel_note: None,
            current_step: Some(Step::FIRST),
            last_error: None,
            job_id: Some(self.job_id.clone()),
            reserved_until: None,
            trace_id: self.trace_id.clone(),
            created_at: self.created_at,
            updated_at: self.created_at,
        }
    }

    /// The order's lines as [`insert`] writes them, numbered from 1 in request order.
    pub fn line_rows(&self) -> Vec<OrderLineRow> {
        self.lines
            .iter()
            .zip(1..)
            .map(|((sku, quantity, unit_price), line_no)| OrderLineRow {
                order_id: self.id,
                line_no,
                sku: sku.clone(),
                quantity: *quantity,
                unit_price: *unit_price,
            })
            .collect()
    }
}

/// What order creation reads before it writes, in one round trip (see [`admit`]).
#[derive(Debug, Clone)]
pub struct Admission {
    /// Whether this transaction now holds the request's Idempotency-Key; if not, a request with the same key
    /// is in flight, and nothing else was read.
    pub key_held: bool,
    /// The record of an earlier request with the key; if there is one, the skus were not read.
    pub stored: Option<StoredResponse>,
    /// The skus the order names that exist.
    pub skus: Vec<SkuRow>,
    /// The transaction's timestamp: the order's `created_at`.
    pub now: DateTime<Utc>,
}

/// Takes the lock of `caller`'s Idempotency-Key `key` for the rest of the transaction (a transaction-scoped
/// advisory lock on their hash) and reads, in the same statement, the key's stored record, the skus `skus` and
/// the transaction's timestamp.
#[tracing::instrument(skip_all, err)]
pub async fn admit(
    conn: &mut PgConnection,
    caller: &str,
    key: &str,
    skus: &[&str],
) -> Result<Admission, sqlx::Error> {
    // Every column is nullable here: the key's record and the skus come through left joins.
    let rows = sqlx::query!(
        r#"with l as (select pg_try_advisory_xact_lock(
                          hashtextextended('orderflow.idempotency:' || char_length($1) || ':' || $1 || ':' || $2, 0)) as held)
           select l.held as "held!", now() as "now!",
                  i.request_hash as "request_hash?", i.order_id as "key_order_id?",
                  i.adjustment_id as "key_adjustment_id?",
                  i.response_status as "response_status?", i.response_body as "response_body?",
                  s.sku as "sku?", s.on_hand as "on_hand?", s.reserved as "reserved?", s.price as "price?",
                  s.currency as "currency?", s.fulfilment as "fulfilment?: Fulfilment",
                  s.created_at as "created_at?", s.updated_at as "updated_at?"
           from l
           left join idempotency_keys i on l.held and i.caller = $1 and i.key = $2
           left join skus s on l.held and i.key is null and s.sku = any($3)"#,
        caller,
        key,
        skus as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let first = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let stored = StoredResponse::from_columns(
        first.request_hash.clone(),
        // A key that made a shipment or a refund names neither: for an order it is another request all the same.
        [first.key_order_id, first.key_adjustment_id, None, None, None],
        first.response_status,
        first.response_body.clone(),
    );
    let found = rows
        .iter()
        .filter_map(|row| {
            Some(SkuRow {
                sku: row.sku.clone()?,
                on_hand: row.on_hand?,
                reserved: row.reserved?,
                price: row.price?,
                currency: row.currency.clone()?,
                fulfilment: row.fulfilment?,
                created_at: row.created_at?,
                updated_at: row.updated_at?,
            })
        })
        .collect();
    Ok(Admission {
        key_held: first.held,
        stored,
        skus: found,
        now: first.now,
    })
}

/// A key's record to write with the order it created: what a repeat of the request gets back.
#[derive(Debug, Clone, Copy)]
pub struct KeyRecord<'a> {
    /// Whose key it is ([`Creation::caller`]).
    pub caller: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub response_status: u16,
    pub response_body: &'a Value,
}

/// Inserts the order in CREATED (its row is [`NewOrder::row`]), its lines, its `order.created` event, its first
/// job ([`Step::FIRST`], written by the queue's job inserts) and the request's idempotency record, in one
/// statement. A key written meanwhile by another request fails it on [`idempotency::KEY_CONSTRAINT`].
#[tracing::instrument(skip_all, fields(order_id = %order.id), err)]
pub async fn insert(
    conn: &mut PgConnection,
    order: &NewOrder,
    record: &KeyRecord<'_>,
) -> Result<(), sqlx::Error> {
    let skus: Vec<&str> = order.lines.iter().map(|(sku, _, _)| sku.as_str()).collect();
    let quantities: Vec<i64> = order.lines.iter().map(|(_, q, _)| *q).collect();
    let prices: Vec<i64> = order.lines.iter().map(|(_, _, p)| *p).collect();
    // One statement, one round trip: the order already names its first job, so nothing updates it again.
    // Composed with the queue's job inserts (the one piece of SQL that writes a job row), so not a `query!`.
    const STATEMENT: &str = concat!(
        r#"with o as (
               insert into orders (id, customer_id, currency, total, status, payment_token, current_step, trace_id,
                                   job_id, created_at, updated_at, fulfilment)
               values ($1, $2, $3, $4, 'CREATED', $5, $6, $7, $8, $9, $9, $21)
               returning id, trace_id
           ),
           lines as (
               insert into order_lines (order_id, line_no, sku, quantity, unit_price)
               select o.id, ordinality::integer, sku, quantity, unit_price
               from o, unnest($10::text[], $11::bigint[], $12::bigint[]) with ordinality as l(sku, quantity, unit_price)
           ),
           created as (
               insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status)
               select $13, o.id, 1, $14, null, 'CREATED' from o
           ),
           key_record as (
               insert into idempotency_keys (caller, key, request_hash, order_id, response_status, response_body)
               select $20, $15, $16, o.id, $17, $18 from o
           ),
           new_jobs as (
               select o.id as order_id, $8 as job_id, $6 as step, $19 as queue, 1 as attempt,
                      0::double precision as delay_secs,
                      case when o.trace_id ~ '^[0-9a-f]{32}$' then o.trace_id end as trace
               from o
           ),
           "#,
        crate::step_job_inserts!(),
        r#"
           select 1"#
    );
    sqlx::query(STATEMENT)
        .bind(order.id)
        .bind(&order.customer_id)
        .bind(&order.currency)
        .bind(order.total)
        .bind(&order.payment_token)
        .bind(Step::FIRST)
        .bind(&order.trace_id)
        .bind(&order.job_id)
        .bind(order.created_at)
        .bind(&skus)
        .bind(&quantities)
        .bind(&prices)
        .bind(Uuid::now_v7())
        .bind(EventType::Created.as_str())
        .bind(record.key)
        .bind(record.request_hash)
        .bind(i32::from(record.response_status))
        .bind(record.response_body)
        .bind(Step::FIRST.queue())
        .bind(record.caller)
        .bind(order.fulfilment)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The answer to a create request: a new order's, or the stored one of a repeat.
#[derive(Debug, Clone)]
pub struct Created {
    pub status: u16,
    pub body: Value,
    pub order_id: Uuid,
    /// A repeat of an earlier request with the same key and body.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The response body could not be rendered (a bug).
    #[error("failed to render the response: {0}")]
    Render(#[from] serde_json::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A create request, validated, with what identifies it.
#[derive(Debug, Clone)]
pub struct Creation<'a> {
    pub order: &'a ValidOrder,
    /// Who is asking, as their Idempotency-Keys are scoped: two callers may use the same key.
    pub caller: &'a str,
    /// The Idempotency-Key.
    pub key: &'a str,
    /// The request body's fingerprint ([`idempotency::fingerprint`]).
    pub fingerprint: &'a [u8],
    pub trace: TraceId,
}

/// Creates the order (or replays the stored response of an earlier request with the key). `respond` renders the
/// response body from the new order (its rows as they will be written): it is stored with the key, in the same
/// statement as the order, so a repeat gets exactly the first answer.
#[tracing::instrument(skip_all, fields(order_id, trace_id = %request.trace))]
pub async fn create(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Creation<'_>,
    respond: impl Fn(&NewOrder) -> Result<Value, serde_json::Error>,
) -> Result<Created, CreateError> {
    // A request that committed the same key just as this one took the key's lock is not seen by the first
    // read (see `idempotency`); this one's insert then fails on the key, and the second pass replays it.
    idempotency::at_most_twice(|| create_once(pool, announcer, request, &respond)).await
}

/// One pass of [`create`] in one transaction; `None` when another request committed the key after this one's
/// read (its insert failed on the key).
async fn create_once(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Creation<'_>,
    respond: &impl Fn(&NewOrder) -> Result<Value, serde_json::Error>,
) -> Result<Option<Created>, CreateError> {
    // Quiet: the first job is announced after the commit, so that commits of new orders share WAL flushes.
    let mut tx = queue::announce::begin_quiet(pool).await?;
    let outcome = create_in(&mut tx, request, respond).await;
    // A new order commits; a replay, a refusal or a lost race lets go of the key before the answer goes.
    let new = matches!(&outcome, Ok(Some(created)) if !created.replayed);
    let created = db::finish(tx, outcome, new).await?;
    if let Some(created) = created.as_ref().filter(|_| new) {
        announcer.announce(Step::FIRST.queue());
        tracing::info!(order_id = %created.order_id, "order accepted");
    }
    Ok(created)
}

/// [`create_once`]'s work inside its transaction, which it leaves to its caller to end.
async fn create_in(
    tx: &mut PgConnection,
    request: &Creation<'_>,
    respond: &impl Fn(&NewOrder) -> Result<Value, serde_json::Error>,
) -> Result<Option<Created>, CreateError> {
    let admission = admit(tx, request.caller, request.key, &request.order.skus()).await?;
    if !admission.key_held {
        return Err(KeyError::InFlight.into());
    }
    #[cfg(feature = "failpoints")]
    hold_key_failpoint(request.key).await;
    if let Some(stored) = admission.stored {
        let stored = stored.replay(Makes::Order, request.fingerprint)?;
        return Ok(Some(Created {
            status: u16::try_from(stored.response_status).unwrap_or(ACCEPTED),
            body: stored.response_body,
            order_id: stored.order_id.ok_or(KeyError::Reused)?,
            replayed: true,
        }));
    }
    let (lines, total) = request.order.price(&admission.skus)?;
    let order = NewOrder {
        id: Uuid::now_v7(),
        customer_id: request.order.customer_id.clone(),
        currency: request.order.currency.to_string(),
        total,
        fulfilment: Fulfilment::of_order(admission.skus.iter().map(|sku| sku.fulfilment)),
        payment_token: request.order.payment_token.clone(),
        trace_id: Some(request.trace.to_string()),
        lines: lines
            .into_iter()
            .map(|l| (l.sku, l.quantity.get(), l.unit_price))
            .collect(),
        job_id: queue::new_job_id(),
        created_at: admission.now,
    };
    tracing::Span::current().record("order_id", tracing::field::display(order.id));
    let body = respond(&order)?;
    let record = KeyRecord {
        caller: request.caller,
        key: request.key,
        request_hash: request.fingerprint,
        response_status: ACCEPTED,
        response_body: &body,
    };
    match insert(&mut *tx, &order, &record).await {
        Err(error) if idempotency::is_key_taken(&error) => return Ok(None),
        other => other?,
    }
    Ok(Some(Created {
        status: ACCEPTED,
        body,
        order_id: order.id,
        replayed: false,
    }))
}

/// Failpoint `api.create_order.after_lock`: configured as `return(<key>)`, a create with that Idempotency-Key
/// holds the key's lock for a second, so a test can send the same key while the first is in flight.
#[cfg(feature = "failpoints")]
async fn hold_key_failpoint(key: &str) {
    if fail::eval("api.create_order.after_lock", |arg| arg)
        .flatten()
        .as_deref()
        == Some(key)
    {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
