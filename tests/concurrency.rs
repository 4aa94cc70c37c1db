//! Contention: no oversell, no deadlock, several worker processes.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Killed, Options, order_body, spawn_app, spawn_app_with, spawn_worker_process};
use crate::invariants;

#[tokio::test]
async fn hundred_concurrent_orders_for_one_unit_sell_it_exactly_once() {
    let app = spawn_app().await;
    app.put_sku("LAST", 1, 1000).await;

    let bodies: Vec<Value> = (0..100)
        .map(|i| order_body(&format!("c{i}"), &[("LAST", 1)], "pm_card_visa"))
        .collect();
    let ids = app.create_orders(&bodies).await;
    let mut fulfilled = 0;
    let mut out_of_stock = 0;
    for id in ids {
        let order = app.wait_terminal(id).await;
        match (order["status"].as_str(), order["cancel_reason"].as_str()) {
            (Some("FULFILLED"), _) => fulfilled += 1,
            (Some("CANCELLED"), Some("out_of_stock")) => out_of_stock += 1,
            other => panic!("unexpected end state {other:?}"),
        }
    }

    assert_eq!((fulfilled, out_of_stock), (1, 99));
    let sku = app.sku("LAST").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn multi_line_orders_in_opposite_sku_order_do_not_deadlock_and_conserve_stock() {
    let app = spawn_app().await;
    app.put_sku("X", 1_000, 100).await;
    app.put_sku("Y", 1_000, 100).await;

    let bodies: Vec<Value> = (0..60)
        .map(|i| {
            let lines: &[(&str, i64)] = if i % 2 == 0 {
                &[("X", 2), ("Y", 1)]
            } else {
                &[("Y", 3), ("X", 1)]
            };
            order_body(&format!("m{i}"), lines, "pm_card_visa")
        })
        .collect();
    let ids = app.create_orders(&bodies).await;
    for id in &ids {
        assert_eq!(app.wait_terminal(*id).await["status"], "FULFILLED");
    }

    // 30 orders took X2+Y1, 30 took Y3+X1.
    let x = app.sku("X").await;
    let y = app.sku("Y").await;
    assert_eq!(
        (x["on_hand"].as_i64(), x["reserved"].as_i64()),
        (Some(1_000 - 30 * 2 - 30), Some(0))
    );
    assert_eq!(
        (y["on_hand"].as_i64(), y["reserved"].as_i64()),
        (Some(1_000 - 30 - 30 * 3), Some(0))
    );
}

#[tokio::test]
async fn two_worker_processes_share_the_work_without_double_effects() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("S", 40, 1000).await;
    let workers: Vec<Killed> = (0..2)
        .map(|_| spawn_worker_process(&app.database_url, &[("ORDERFLOW_PAYMENTS_URL", &app.paysim)]))
        .collect();

    let tokens = [
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "pm_sim_flaky",
        "pm_sim_lost_response",
    ];
    let bodies: Vec<Value> = (0..50)
        .map(|i| order_body(&format!("p{i}"), &[("S", 1)], tokens[i % tokens.len()]))
        .collect();
    let ids = app.create_orders(&bodies).await;

    let mut fulfilled = 0i64;
    for id in &ids {
        let order = app
            .wait_for(*id, &["FULFILLED", "CANCELLED"], Duration::from_secs(90))
            .await;
        let intents = app.intents_of(*id).await;
        let captured: i64 = intents
            .iter()
            .map(|i| i["amount_received"].as_i64().unwrap())
            .sum();
        let held: i64 = intents
            .iter()
            .map(|i| i["amount_capturable"].as_i64().unwrap())
            .sum();
        assert!(intents.len() <= 1, "at most one intent per order: {intents:?}");
        assert_eq!(held, 0, "no hold left open");
        if order["status"] == "FULFILLED" {
            fulfilled += 1;
            assert_eq!(captured, 1000, "one capture of the order's total");
        } else {
            assert_eq!(captured, 0, "a cancelled order is not charged");
        }
    }
    let sku = app.sku("S").await;
    assert_eq!(sku["on_hand"].as_i64(), Some(40 - fulfilled), "stock conserved");
    assert_eq!(sku["reserved"].as_i64(), Some(0));
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("S", 40)]).await;
    // Instance names are host-pid-id: each process must have run some steps.
    let names: Vec<String> = sqlx::query_scalar("select distinct worker from saga_steps")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for worker in &workers {
        let pid = format!("-{}-", worker.0.id());
        assert!(
            names.iter().any(|n| n.contains(&pid)),
            "process {pid} ran no step: {names:?}"
        );
    }
}

#[tokio::test]
async fn several_workers_starting_at_once_on_a_new_database_all_migrate_and_run() {
    let name = format!("orderflow_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", crate::helpers::server_url());
    let mut workers: Vec<Killed> = (0..3).map(|_| spawn_worker_process(&url, &[])).collect();

    // Every process registers its six queue workers once it has migrated and started.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pool = loop {
        if let Ok(pool) = sqlx::PgPool::connect(&url).await {
            let registered: Result<i64, _> = sqlx::query_scalar("select count(*) from apalis.workers")
                .fetch_one(&pool)
                .await;
            if registered.is_ok_and(|n| n >= 18) {
                break pool;
            }
            pool.close().await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers did not all start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for worker in &mut workers {
        assert!(
            worker.0.try_wait().unwrap().is_none(),
            "a worker exited during concurrent start-up"
        );
    }
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        orderflow_shared::db::MIGRATOR.iter().count() as i64,
        "each migration applied once"
    );
}
