//! Idempotency-Key records for order creation, stock adjustments, shipments and refunds (`idempotency_keys`). A
//! caller's keys are one namespace, as Stripe's are per account: a key that made an order and is then sent with an
//! adjustment (or any other pair) is a reuse with another request (422).
//!
//! A key belongs to its caller (the API key that sent it): two callers may use the same key without colliding,
//! and the lock and the record below are the caller's key's. Records are kept for a retention (24 h by default)
//! and then purged by the reconciler ([`purge_expired`]); after that the key may be used again.
//!
//! A request takes a transaction-scoped advisory lock on its key first (named by the caller's length, the caller and
//! the key, so no two callers' keys share a name). If another request with the same key
//! holds it, that one is still in flight (409). Otherwise a stored record means a repeat: the same fingerprint
//! replays the stored response, another one is a misuse of the key (422). The record is written by the same
//! statement as the order ([`crate::order::create::insert`]), so an order and its key commit together or not at
//! all.
//!
//! An adjustment, a shipment or a refund takes the same lock and reads the record with [`claim`] (the same lock
//! name, so an order and an adjustment with one key exclude each other), and writes its record with [`record_made`] in its transaction.
//!
//! Order creation reads the lock and the stored record in one statement ([`crate::order::create::admit`]), so the
//! record is read in a snapshot taken just before the lock is won: a request that committed the same key in
//! between is not seen, and the second insert of the key fails on [`KEY_CONSTRAINT`] once the first has
//! committed. The caller then reads the key again and replays it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The key's primary key: violated only by a request that raced another with the same key (see above).
pub const KEY_CONSTRAINT: &str = "idempotency_keys_pkey";

/// SHA-256 of the request body's canonical JSON (object keys sorted, whitespace dropped), so that formatting
/// differences do not count as a different request.
pub fn fingerprint(body: &Value) -> Vec<u8> {
    // serde_json's map is ordered by key (no preserve_order feature), so to_vec is canonical.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// A key's record as stored: what a repeat of the request gets back.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    /// What the request made: an order, an adjustment, a shipment or a refund (exactly one).
    pub order_id: Option<Uuid>,
    pub adjustment_id: Option<Uuid>,
    pub shipment_id: Option<Uuid>,
    pub refund_id: Option<Uuid>,
    pub return_id: Option<Uuid>,
    pub response_status: i32,
    pub response_body: Value,
}

/// What a request makes, so a key's record tells a repeat from another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Makes {
    Order,
    /// An adjustment or a transfer of stock.
    Adjustment,
    /// A shipment of an order's units.
    Shipment,
    /// A refund of an order's captured money.
    Refund,
    /// A return of an order's units.
    Return,
}

/// What a request made, as its key's record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    Adjustment(Uuid),
    Shipment(Uuid),
    Refund(Uuid),
    Return(Uuid),
}

impl Made {
    fn id(self, makes: Makes) -> Option<Uuid> {
        match (self, makes) {
            (Self::Adjustment(id), Makes::Adjustment)
            | (Self::Shipment(id), Makes::Shipment)
            | (Self::Refund(id), Makes::Refund)
            | (Self::Return(id), Makes::Return) => Some(id),
            _ => None,
        }
    }
}

impl StoredResponse {
    /// The record from its columns as a read returns them (every one nullable: it comes through a left join);
    /// `None` when there is no record.
    pub fn from_columns(
        request_hash: Option<Vec<u8>>,
        made: [Option<Uuid>; 5],
        response_status: Option<i32>,
        response_body: Option<Value>,
    ) -> Option<Self> {
        let [order_id, adjustment_id, shipment_id, refund_id, return_id] = made;
        Some(Self {
            request_hash: request_hash?,
            order_id,
            adjustment_id,
            shipment_id,
            refund_id,
            return_id,
            response_status: response_status?,
            response_body: response_body?,
        })
    }

    /// The record as the answer to a request that makes `makes` with `fingerprint`: a repeat, which replays it,
    /// or else [`KeyError::Reused`], whatever the bodies.
    pub fn replay(self, makes: Makes, fingerprint: &[u8]) -> Result<Self, KeyError> {
        let made = match makes {
            Makes::Order => self.order_id.is_some(),
            Makes::Adjustment => self.adjustment_id.is_some(),
            Makes::Shipment => self.shipment_id.is_some(),
            Makes::Refund => self.refund_id.is_some(),
            Makes::Return => self.return_id.is_some(),
        };
        match made && self.request_hash == fingerprint {
            true => Ok(self),
            false => Err(KeyError::Reused),
        }
    }
}

/// Why a request's Idempotency-Key refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A request with the same key is still being processed (409).
    #[error("a request with this Idempotency-Key is still being processed")]
    InFlight,
    /// The key was used with a different request (422).
    #[error("this Idempotency-Key was used with a different request")]
    Reused,
}

/// Runs `pass`, one transaction under a key, and once more if it found that another request committed the key
/// after its read (`None`, see the module's comment): the second pass replays that request's answer.
pub async fn at_most_twice<T, E, Fut>(mut pass: impl FnMut() -> Fut) -> Result<T, E>
where
    E: From<KeyError>,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    match pass().await? {
        Some(done) => Ok(done),
        None => pass().await?.ok_or(E::from(KeyError::InFlight)),
    }
}

/// A request made under an Idempotency-Key: whose keys they are, the key, and what identifies the request beyond
/// it (its fingerprint).
#[derive(Debug, Clone, Copy)]
pub struct Keyed<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a [u8],
}

/// The answer to a keyed request that makes one thing (a shipment, a refund, a return): a new one's, or the
/// stored answer of a repeat.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// Ends the transaction of a keyed request that makes one thing (a shipment, a refund, a return; started quiet,
/// [`crate::queue::announce::begin_quiet`]): `outcome` is the request's work in it, begun with
/// [`Keyed::claim_or_replay`] and ended with [`Keyed::record`]. It commits only a new answer, and announces
/// `queue` after the commit when the work queued a job of it. `None`: the key was written meanwhile; run the
/// request once more ([`at_most_twice`]), which replays it.
pub async fn end_keyed<E: From<sqlx::Error>>(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    outcome: Result<Option<(Answer, bool)>, E>,
    announcer: &crate::queue::announce::Announcer,
    queue: &'static str,
) -> Result<Option<Answer>, E> {
    let new = matches!(&outcome, Ok(Some((answer, _))) if !answer.replayed);
    let made = crate::db::finish(tx, outcome, new).await?;
    Ok(made.map(|(answer, queued)| {
        if new && queued {
            announcer.announce(queue);
        }
        answer
    }))
}

impl Keyed<'_> {
    /// Takes the key (a request with it in flight: [`KeyError::InFlight`]) and, for a repeat of a request that
    /// made `makes` with this fingerprint, its stored answer (another request: [`KeyError::Reused`]); `None` when
    /// the request is new. `status` is the answer's when a stored one has none that fits.
    pub async fn claim_or_replay<E>(
        &self,
        conn: &mut sqlx::PgConnection,
        makes: Makes,
        status: u16,
    ) -> Result<Option<(Answer, bool)>, E>
    where
        E: From<KeyError> + From<sqlx::Error>,
    {
        let claim = claim(conn, self.caller, self.key).await?;
        if !claim.held {
            return Err(KeyError::InFlight.into());
        }
        let Some(stored) = claim.stored else {
            return Ok(None);
        };
        let stored = stored.replay(makes, self.fingerprint)?;
        let answer = Answer {
            status: u16::try_from(stored.response_status).unwrap_or(status),
            body: stored.response_body,
            replayed: true,
        };
        Ok(Some((answer, false)))
    }

    /// Writes the key's record of what the request made with its answer, in its transaction: the answer, with
    /// whether it queued a job; `None` when another request wrote the key meanwhile ([`KEY_CONSTRAINT`]).
    pub async fn record<E: From<sqlx::Error>>(
        &self,
        conn: &mut sqlx::PgConnection,
        made: Made,
        status: u16,
        body: Value,
        queued: bool,
    ) -> Result<Option<(Answer, bool)>, E> {
        match record_made(conn, self.caller, self.key, self.fingerprint, made, status, &body).await {
            Ok(()) => {
                let answer = Answer {
                    status,
                    body,
                    replayed: false,
                };
                Ok(Some((answer, queued)))
            }
            Err(error) if is_key_taken(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// Whether a request holds its key, and the key's record if an earlier request left one.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Whether this transaction now holds the key; if not, a request with it is in flight.
    pub held: bool,
    pub stored: Option<StoredResponse>,
}

/// Takes the lock of `caller`'s key `key` for the rest of the transaction, if no other request holds it, and
/// reads its record. Order creation does the same in its one read (`order::create::admit`), with the same lock.
pub async fn claim(conn: &mut sqlx::PgConnection, caller: &str, key: &str) -> Result<Claim, sqlx::Error> {
    let row = sqlx::query!(
        r#"with l as (select pg_try_advisory_xact_lock(
                          hashtextextended('orderflow.idempotency:' || char_length($1) || ':' || $1 || ':' || $2, 0)) as held)
           select l.held as "held!", i.request_hash as "request_hash?", i.order_id, i.adjustment_id, i.shipment_id,
                  i.refund_id, i.return_id, i.response_status as "response_status?", i.response_body as "response_body?"
           from l left join idempotency_keys i on l.held and i.caller = $1 and i.key = $2"#,
        caller,
        key
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Claim {
        held: row.held,
        stored: StoredResponse::from_columns(
            row.request_hash,
            [
                row.order_id,
                row.adjustment_id,
                row.shipment_id,
                row.refund_id,
                row.return_id,
            ],
            row.response_status,
            row.response_body,
        ),
    })
}

/// Writes the record of `caller`'s key `key` for what the request made (an adjustment, a shipment, a refund), in
/// its transaction. A key written meanwhile by another request fails it on [`KEY_CONSTRAINT`].
pub async fn record_made(
    executor: impl PgExecutor<'_>,
    caller: &str,
    key: &str,
    request_hash: &[u8],
    made: Made,
    response_status: u16,
    response_body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"insert into idempotency_keys (caller, key, request_hash, adjustment_id, shipment_id, refund_id,
                                         return_id, response_status, response_body)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        caller,
        key,
        request_hash,
        made.id(Makes::Adjustment),
        made.id(Makes::Shipment),
        made.id(Makes::Refund),
        made.id(Makes::Return),
        i32::from(response_status),
        response_body
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes up to `limit` records made more than `older_than` ago; returns how many. Their orders stay.
pub async fn purge_expired(
    executor: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"delete from idempotency_keys where (caller, key) in (
               select caller, key from idempotency_keys
               where created_at < now() - make_interval(secs => $1)
               limit $2 for update skip locked)"#,
        older_than.as_secs_f64(),
        limit
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(deleted)
}

/// Whether `error` is the second insert of a key (see the module's comment).
pub fn is_key_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.constraint() == Some(KEY_CONSTRAINT))
}
