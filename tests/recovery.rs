//! Recovery from infrastructure failures while the saga runs.

use std::time::Duration;

use crate::helpers::spawn_app;

#[tokio::test]
async fn workers_keep_running_after_the_database_drops_their_connections() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    let before = app.create_order("blip-before", &[("A", 1)], "pm_card_visa").await;
    assert_eq!(app.wait_terminal(before).await["status"], "FULFILLED");

    // Cut every connection to this test's database, as a PostgreSQL restart or failover would.
    let cut: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        cut >= 6,
        "the worker's listeners and pool were connected ({cut} cut)"
    );

    let after = app.create_order("blip-after", &[("A", 1)], "pm_card_visa").await;
    let order = app
        .wait_for(after, &["FULFILLED", "CANCELLED"], Duration::from_secs(30))
        .await;

    assert_eq!(order["status"], "FULFILLED");
    let sku = app.sku("A").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(3), Some(0))
    );
}
