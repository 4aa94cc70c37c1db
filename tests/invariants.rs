//! What every crash must leave intact, checked once every order is over: stock accounted for, money matching the
//! orders on the provider's side, each order's audit trail whole, no step attempt left open. The chaos test
//! checks them after its storm; the other crash tests (kills, outages, several workers) after theirs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// An order as it ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub status: String,
    /// What a FULFILLED order is charged: its total, or for a shipment order what its shipments captured (all
    /// of it, unless the rest was cancelled after a shipment).
    pub charged: i64,
    /// What its refunds gave back: the DONE ones, and the parts a FAILED one made before a later part was refused.
    pub refunded: i64,
    pub cancel_reason: Option<String>,
    /// How many authorizations the order asked for (`payments.attempt`: 1, more after lapsed holds; 0 with no
    /// payment): each is one intent at the provider.
    pub authorizations: i32,
}

/// Every order, as it ended. Panics on an order that is not over.
pub async fn ended_orders(pool: &PgPool) -> HashMap<Uuid, Ended> {
    let orders: Vec<(Uuid, String, i64, i64, Option<String>, i32)> = sqlx::query_as(
        "select o.id, o.status, \
                case when o.fulfilment = 'shipment' \
                     then (select coalesce(sum(s.amount), 0) from shipments s \
                           where s.order_id = o.id and s.status = 'DONE')::bigint \
                     else o.total end, \
                ((select coalesce(sum(f.amount), 0) from refunds f \
                  where f.order_id = o.id and f.status = 'DONE') \
                 + (select coalesce(sum(rp.amount), 0) from refunds f join refund_parts rp on rp.refund_id = f.id \
                    where f.order_id = o.id and f.status = 'FAILED' and rp.provider_ref is not null))::bigint, \
                o.cancel_reason, \
                coalesce((select p.attempt from payments p where p.order_id = o.id), 0) \
         from orders o",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    orders
        .into_iter()
        .map(|(id, status, charged, refunded, cancel_reason, authorizations)| {
            assert!(
                status == "FULFILLED" || status == "CANCELLED",
                "order {id} is {status}, not over"
            );
            (
                id,
                Ended {
                    status,
                    charged,
                    refunded,
                    cancel_reason,
                    authorizations,
                },
            )
        })
        .collect()
}

/// Stock: nothing reserved, nothing oversold, every unit that left `on_hand` went to a FULFILLED order (each
/// sku's `initial` stock is what is on hand plus what was sold), and every reservation matches its order's end.
pub async fn stock_is_accounted_for(pool: &PgPool, initial: &[(&str, i64)]) {
    let skus: Vec<(String, i64, i64)> =
        sqlx::query_as("select sku, on_hand, reserved from skus order by sku")
            .fetch_all(pool)
            .await
            .unwrap();
    let committed: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select r.sku, sum(case when o.fulfilment = 'shipment' then r.shipped \
                                when r.status = 'COMMITTED' then r.quantity else 0 end)::bigint \
         from reservations r join orders o on o.id = r.order_id \
         where o.status = 'FULFILLED' group by r.sku",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    // Units that came back to stock with a return.
    let restocked: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select l.sku, sum(rl.quantity)::bigint from return_lines rl join returns r on r.id = rl.return_id \
         join order_lines l on l.order_id = rl.order_id and l.line_no = rl.line_no \
         where r.restock group by l.sku",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (sku, on_hand, reserved) in &skus {
        assert_eq!(*reserved, 0, "{sku}: nothing left reserved");
        assert!(*on_hand >= 0, "{sku}: oversold");
        if let Some((_, initial)) = initial.iter().find(|(s, _)| s == sku) {
            let sold = committed.get(sku).copied().unwrap_or(0) - restocked.get(sku).copied().unwrap_or(0);
            assert_eq!(*initial, on_hand + sold, "{sku}: stock conserved");
        }
    }
    let stray: i64 = sqlx::query_scalar(
        "select count(*) from reservations r join orders o on o.id = r.order_id \
         where (o.status = 'CANCELLED' and r.status <> 'RELEASED') \
            or (o.status = 'FULFILLED' and r.status <> 'COMMITTED' \
                and not (o.fulfilment = 'shipment' and r.status = 'RELEASED' and r.shipped = 0))",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(stray, 0, "reservations match their orders' ends");
}

/// The stock ledger: each sku's movements add up to its counts (no drift), at every location too, where nothing is
/// oversold or left reserved; and each order's movements are its end at each location it held: a FULFILLED order
/// took its units out of `on_hand`, a CANCELLED one nothing, and neither holds any.
pub async fn ledger_adds_up(pool: &PgPool, orders: &HashMap<Uuid, Ended>) {
    let drift: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "select s.sku, s.on_hand, s.reserved, coalesce(sum(m.on_hand_delta), 0)::bigint, \
                coalesce(sum(m.reserved_delta), 0)::bigint \
         from skus s left join stock_movements m on m.sku = s.sku \
         group by s.sku having s.on_hand <> coalesce(sum(m.on_hand_delta), 0) \
                            or s.reserved <> coalesce(sum(m.reserved_delta), 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        drift.is_empty(),
        "(sku, on_hand, reserved, ledger's) that do not add up: {drift:?}"
    );
    let reported = orderflow_shared::inventory::ledger::drift(pool).await.unwrap();
    assert!(
        reported.is_empty(),
        "the reconciler's check reports drift: {reported:?}"
    );
    let per_location: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "select l.sku, l.location, l.on_hand, l.reserved, coalesce(sum(m.on_hand_delta), 0)::bigint, \
                coalesce(sum(m.reserved_delta), 0)::bigint \
         from stock_levels l left join stock_movements m on m.sku = l.sku and m.location = l.location \
         group by l.sku, l.location, l.on_hand, l.reserved \
         having l.on_hand <> coalesce(sum(m.on_hand_delta), 0) or l.reserved <> coalesce(sum(m.reserved_delta), 0) \
             or l.reserved <> 0 or l.on_hand < 0",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        per_location.is_empty(),
        "(sku, location, on_hand, reserved, ledger's) not adding up, oversold or still reserved: {per_location:?}"
    );
    let per_order: Vec<(Uuid, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "select m.order_id, m.sku, m.location, sum(m.on_hand_delta)::bigint, sum(m.reserved_delta)::bigint, \
                coalesce((select case when o.fulfilment = 'shipment' then r.shipped else r.quantity end \
                          from reservations r join orders o on o.id = r.order_id \
                          where r.order_id = m.order_id and r.sku = m.sku and r.location = m.location), 0), \
                coalesce((select sum(rl.quantity) from return_lines rl join returns x on x.id = rl.return_id \
                          join order_lines l on l.order_id = rl.order_id and l.line_no = rl.line_no \
                          where x.restock and rl.order_id = m.order_id and l.sku = m.sku \
                            and rl.location = m.location), 0)::bigint \
         from stock_movements m where m.order_id is not null group by m.order_id, m.sku, m.location",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (id, sku, location, on_hand, reserved, quantity, restocked) in per_order {
        let sold = match orders.get(&id).map(|o| o.status.as_str()) {
            Some("FULFILLED") => quantity,
            _ => 0,
        };
        assert_eq!(
            (on_hand, reserved),
            (restocked - sold, 0),
            "order {id}'s movements of {sku} at {location} (less what came back with returns)"
        );
    }
}

/// Money, from the provider's side (the simulator's ledger at `paysim`): a FULFILLED order has one intent per
/// authorization it asked for (one, unless a lapsed hold was authorized again), together captured for what it is
/// charged and refunded what its refunds gave back (captured − refunded per order, as the provider's ledger says);
/// a CANCELLED one holds nothing and is charged nothing net. No hold is left open, and no payment a customer or
/// a bank could still complete (`requires_action`, `processing`).
pub async fn money_matches_orders(orders: &HashMap<Uuid, Ended>, http: &reqwest::Client, paysim: &str) {
    let ledger: Value = http
        .get(format!("{paysim}/v1/sim/ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut intents: HashMap<Uuid, Vec<&Value>> = HashMap::new();
    for intent in ledger["intents"].as_array().unwrap() {
        if let Some(id) = intent["metadata"]["order_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
        {
            intents.entry(id).or_default().push(intent);
        }
    }
    for (id, order) in orders {
        let mine = intents.get(id).cloned().unwrap_or_default();
        let received: i64 = mine.iter().map(|i| i["amount_received"].as_i64().unwrap()).sum();
        let refunded: i64 = mine.iter().map(|i| i["amount_refunded"].as_i64().unwrap()).sum();
        let open = mine
            .iter()
            .filter(|i| {
                matches!(
                    i["status"].as_str(),
                    Some("requires_capture" | "requires_action" | "processing")
                )
            })
            .count();
        assert_eq!(
            open, 0,
            "order {id} ({}) leaves a hold open: {mine:?}",
            order.status
        );
        if order.status == "FULFILLED" {
            assert_eq!(
                mine.len(),
                usize::try_from(order.authorizations).unwrap(),
                "order {id}: one intent per authorization: {mine:?}"
            );
            assert_eq!(
                (received, refunded),
                (order.charged, order.refunded),
                "order {id}: captured once, refunded as its refunds say: {mine:?}"
            );
        } else {
            assert_eq!(
                received - refunded,
                0,
                "order {id}: cancelled but charged: {mine:?}"
            );
        }
    }
}

/// The audit trail: per order, sequences 1..n chaining from → to, each status entered once, ending where the
/// order is.
pub async fn audit_trails_are_whole(pool: &PgPool, orders: &HashMap<Uuid, Ended>) {
    let events: Vec<(Uuid, i32, Option<String>, String)> = sqlx::query_as(
        "select order_id, sequence, from_status, to_status from order_events order by order_id, sequence",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut trail: HashMap<Uuid, Vec<(i32, Option<String>, String)>> = HashMap::new();
    for (id, sequence, from, to) in events {
        trail.entry(id).or_default().push((sequence, from, to));
    }
    for (id, order) in orders {
        let trail = trail
            .get(id)
            .unwrap_or_else(|| panic!("order {id} has no events"));
        let mut previous: Option<String> = None;
        let mut entered = HashSet::new();
        for (n, (sequence, from, to)) in trail.iter().enumerate() {
            assert_eq!(*sequence as usize, n + 1, "order {id}: gap in {trail:?}");
            assert_eq!(from, &previous, "order {id}: broken chain in {trail:?}");
            // A shipment's or a refund's event that leaves the status as it was (a second shipment of a
            // PARTIALLY_FULFILLED order, a refused one of a PAID order, a refund) stays in it; no status is entered
            // twice.
            assert!(
                from.as_ref() == Some(to) || entered.insert(to.clone()),
                "order {id}: {to} entered twice in {trail:?}"
            );
            previous = Some(to.clone());
        }
        assert_eq!(
            previous.as_deref(),
            Some(order.status.as_str()),
            "order {id}: trail ends elsewhere"
        );
    }
}

/// Shipments: the units DONE shipments took are the reservations' `shipped`, per order, sku and location; each
/// DONE shipment's amount is its units at the lines' prices; a shipment order none of whose units was cancelled
/// is charged its total.
pub async fn shipments_match_stock(pool: &PgPool) {
    let units: Vec<(Uuid, String, String, i64, i64)> = sqlx::query_as(
        "select r.order_id, r.sku, r.location, r.shipped, \
                coalesce((select sum(l.quantity) from shipment_lines l join shipments s on s.id = l.shipment_id \
                          where s.status = 'DONE' and l.order_id = r.order_id and l.sku = r.sku \
                            and l.location = r.location), 0)::bigint \
         from reservations r where r.shipped > 0 \
            or exists (select 1 from shipment_lines l join shipments s on s.id = l.shipment_id \
                       where s.status = 'DONE' and l.order_id = r.order_id and l.sku = r.sku \
                         and l.location = r.location)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (order, sku, location, shipped, by_shipments) in units {
        assert_eq!(
            shipped, by_shipments,
            "order {order}: {sku} at {location} shipped as its shipments say"
        );
    }
    let priced: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "select s.id, s.amount, (select sum(l.quantity * ol.unit_price) from shipment_lines l \
                                 join order_lines ol on ol.order_id = l.order_id and ol.line_no = l.line_no \
                                 where l.shipment_id = s.id)::bigint \
         from shipments s",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (shipment, amount, value) in priced {
        assert_eq!(
            amount, value,
            "shipment {shipment}: its amount is its units at the lines' prices"
        );
    }
    let short: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "select o.id, o.total, (select coalesce(sum(s.amount), 0) from shipments s \
                                where s.order_id = o.id and s.status = 'DONE')::bigint \
         from orders o \
         where o.fulfilment = 'shipment' and o.status = 'FULFILLED' \
           and not exists (select 1 from reservations r where r.order_id = o.id and r.cancelled > 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (order, total, captured) in short {
        assert_eq!(captured, total, "order {order}: shipped whole, captured whole");
    }
}

/// Refunds: none left on its way, and per order what they gave back is at most what was captured; a refund by
/// lines is its units at the lines' prices, and no line is refunded by line more units than were delivered.
pub async fn refunds_within_captured(pool: &PgPool, orders: &HashMap<Uuid, Ended>) {
    let open: i64 =
        sqlx::query_scalar("select count(*) from refunds where status in ('PENDING', 'REFUNDING')")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(open, 0, "refunds left on their way");
    for (id, order) in orders {
        assert!(
            order.refunded <= order.charged,
            "order {id}: refunded {} of {} charged",
            order.refunded,
            order.charged
        );
    }
    let priced: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "select f.id, f.amount, (select sum(rl.quantity * l.unit_price) from refund_lines rl \
                                 join order_lines l on l.order_id = rl.order_id and l.line_no = rl.line_no \
                                 where rl.refund_id = f.id)::bigint \
         from refunds f where exists (select 1 from refund_lines rl where rl.refund_id = f.id)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (refund, amount, value) in priced {
        assert_eq!(
            amount, value,
            "refund {refund}: its amount is its units at the lines' prices"
        );
    }
    let over: Vec<(Uuid, i32, i64, i64)> = sqlx::query_as(
        "select l.order_id, l.line_no, \
                case when o.fulfilment = 'shipment' \
                     then (select coalesce(sum(sl.quantity), 0) from shipment_lines sl \
                           join shipments s on s.id = sl.shipment_id \
                           where sl.order_id = l.order_id and sl.line_no = l.line_no and s.status = 'DONE') \
                     when o.status = 'FULFILLED' then l.quantity else 0 end::bigint as delivered, \
                (select coalesce(sum(rl.quantity), 0) from refund_lines rl join refunds f on f.id = rl.refund_id \
                 where rl.order_id = l.order_id and rl.line_no = l.line_no and f.status = 'DONE')::bigint as refunded \
         from order_lines l join orders o on o.id = l.order_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (order, line, delivered, refunded) in over {
        assert!(
            refunded <= delivered,
            "order {order} line {line}: {refunded} refunded by line of {delivered} delivered"
        );
    }
}

/// Returns: no line of an order came back more units than were delivered of it.
pub async fn returns_within_delivered(pool: &PgPool) {
    let over: Vec<(Uuid, i32, i64, i64)> = sqlx::query_as(
        "select l.order_id, l.line_no, \
                case when o.fulfilment = 'shipment' \
                     then (select coalesce(sum(sl.quantity), 0) from shipment_lines sl \
                           join shipments s on s.id = sl.shipment_id \
                           where sl.order_id = l.order_id and sl.line_no = l.line_no and s.status = 'DONE') \
                     when o.status = 'FULFILLED' then l.quantity else 0 end::bigint, \
                (select coalesce(sum(rl.quantity), 0) from return_lines rl \
                 where rl.order_id = l.order_id and rl.line_no = l.line_no)::bigint \
         from order_lines l join orders o on o.id = l.order_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (order, line, delivered, returned) in over {
        assert!(
            returned <= delivered,
            "order {order} line {line}: {returned} returned of {delivered} delivered"
        );
    }
}

/// The step log: no attempt left open (a killed worker's attempt is closed when its job is taken back). An attempt
/// may still be in flight when the last order ends (a job run twice, whose second run is out calling the provider:
/// it ends SKIPPED); each must close within a few seconds.
pub async fn no_attempt_left_open(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let open: Vec<(Uuid, String, i32, Option<String>)> = sqlx::query_as(
            "select order_id, step, attempt, worker from saga_steps where status = 'STARTED' order by id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if open.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "step attempts left STARTED: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every invariant above, for a test whose orders are all over; returns the orders as they ended.
pub async fn all_hold(
    pool: &PgPool,
    http: &reqwest::Client,
    paysim: &str,
    initial_stock: &[(&str, i64)],
) -> HashMap<Uuid, Ended> {
    let orders = ended_orders(pool).await;
    stock_is_accounted_for(pool, initial_stock).await;
    ledger_adds_up(pool, &orders).await;
    shipments_match_stock(pool).await;
    money_matches_orders(&orders, http, paysim).await;
    refunds_within_captured(pool, &orders).await;
    returns_within_delivered(pool).await;
    audit_trails_are_whole(pool, &orders).await;
    no_attempt_left_open(pool).await;
    orders
}
