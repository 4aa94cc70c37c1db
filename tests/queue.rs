//! The queue's fetch and notifications as OrderFlow installs them: apalis's `get_jobs`, rewritten in PL/pgSQL so
//! that its plan is kept (`migrations/20261204000001_queue_fetch_plan.sql`), must claim exactly what apalis's
//! claims, and its claims commit without waiting for the disk (`migrations/20261204000003_claims_without_flush.sql`);
//! jobs queued by a quiet transaction are announced after its commit, not by apalis's insert trigger
//! (`migrations/20261204000002_announce_after_commit.sql`, `queue::announce`).

use std::time::Duration;

use orderflow_shared::flow::Step;
use orderflow_shared::queue::{StepJob, announce};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgListener;

use crate::helpers::{TestApp, spawn_app_without_worker};

/// A listener on the channel apalis's workers listen on.
async fn listen(app: &TestApp) -> PgListener {
    let mut listener = PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    listener
}

/// The next notification's payload (at most 30 s away: a test that hangs tells nothing).
async fn next_announcement(listener: &mut PgListener) -> Value {
    let notification = tokio::time::timeout(Duration::from_secs(30), listener.recv())
        .await
        .expect("no notification within 30 s")
        .unwrap();
    serde_json::from_str(notification.payload()).unwrap()
}

async fn insert_job(conn: &mut sqlx::PgConnection, id: &str, queue: &str) {
    sqlx::query(
        "insert into apalis.jobs (job, id, job_type, status, run_at) \
         values ('\\x7b7d', $1, $2, 'Pending', now())",
    )
    .bind(id)
    .bind(queue)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_quiet_transaction_leaves_its_jobs_to_be_announced() {
    let app = spawn_app_without_worker().await;
    let mut listener = listen(&app).await;

    // One connection throughout: after the quiet transaction it announces again (the setting was the
    // transaction's, not the session's).
    let mut conn = app.pool.acquire().await.unwrap();
    let mut quiet = sqlx::Connection::begin_with(&mut *conn, announce::BEGIN_QUIET)
        .await
        .unwrap();
    insert_job(&mut quiet, "quiet", "test.quiet").await;
    quiet.commit().await.unwrap();
    let left: Option<String> =
        sqlx::query_scalar("select nullif(current_setting('orderflow.announce', true), '')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(left, None, "the quiet setting outlived its transaction");
    insert_job(&mut conn, "loud", "test.loud").await;

    // Notifications arrive in commit order: the quiet job's would have come first.
    let first = next_announcement(&mut listener).await;
    assert_eq!(
        (first["job_type"].as_str(), first["id"].as_str()),
        (Some("test.loud"), Some("loud")),
        "a quiet transaction's job was announced by the trigger, or an ordinary one's was not: apalis may have \
         replaced its trigger (redo migrations/20261204000002_announce_after_commit.sql)"
    );
}

#[tokio::test]
async fn a_new_order_and_each_step_it_takes_are_announced_after_their_commits() {
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 10, 1000).await;
    let mut listener = listen(&app).await;

    let id = app.create_order("announced", &[("A", 1)], "pm_card_visa").await;
    let first = next_announcement(&mut listener).await;
    assert_eq!(
        (first["job_type"].as_str(), first["id"].as_str()),
        (Some(Step::FIRST.queue()), Some("announced")),
        "the announcer's notification, and not the trigger's before it"
    );

    // The steps, run by hand (no worker, no reconciler waking queues): each batch announces the job it queued,
    // after its commit, and its transaction did not.
    let runner = app.runner("announce-test");
    let job = StepJob {
        order_id: id,
        attempt: 1,
        trace: None,
    };
    let mut step = Step::FIRST;
    for _ in 0..3 {
        let results = runner.run_batch(step, vec![job]).await;
        assert!(results.iter().all(Result::is_ok), "{step} failed: {results:?}");
        let next = next_announcement(&mut listener).await;
        assert_eq!(
            next["id"], "announced",
            "the job {step} queued was announced inside its transaction"
        );
        step = Step::ALL
            .into_iter()
            .find(|s| s.queue() == next["job_type"])
            .expect("a step's queue");
    }
    assert_eq!(step, Step::Fulfil);
    runner.run_batch(step, vec![job]).await;
    assert_eq!(app.order(id).await["status"], "FULFILLED");
}

#[tokio::test]
async fn apalis_s_own_listener_takes_the_announcement_for_its_queue() {
    use futures::StreamExt;
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 50, 1000).await;
    // What a queue worker listens with (`poll::Paced`); it connects on its first poll, so orders are made until
    // it has heard one (each a fresh announcement).
    let mut notices = apalis_postgres::Pubsub::new(app.pool.clone(), Step::FIRST.queue().to_owned());
    let mut heard = None;
    for _ in 0..20 {
        app.create_order("pubsub", &[("A", 1)], "pm_card_visa").await;
        if let Ok(notice) = tokio::time::timeout(Duration::from_millis(250), notices.next()).await {
            heard = Some(notice);
            break;
        }
    }
    let notice = heard.expect("apalis's listener heard no announcement for the first step's queue");
    let id = notice
        .expect("the stream ended")
        .expect("the payload apalis's listener could not read");
    assert_eq!(id.to_string(), "announced");
}

#[tokio::test]
async fn the_fetch_keeps_its_plan() {
    let app = spawn_app_without_worker().await;
    let language: String = sqlx::query_scalar(
        "select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang
         where p.oid = 'apalis.get_jobs(text, text, integer)'::regprocedure",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        language, "plpgsql",
        "apalis replaced its fetch: redo migrations/20261204000001_queue_fetch_plan.sql against the new body"
    );
}

#[tokio::test]
async fn a_fetch_claims_the_due_jobs_of_its_queue_by_priority_then_age() {
    let app = spawn_app_without_worker().await;
    // The worker that claims: a claim names a registered worker.
    sqlx::query(
        "insert into apalis.workers (id, worker_type, storage_name) values ('w1', 'test.a', 'PgStorage')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // (id, queue, status, attempts, due in seconds from now, priority)
    let jobs = [
        ("old", "test.a", "Pending", 0, -30, 0),
        ("older", "test.a", "Pending", 0, -60, 0),
        ("urgent", "test.a", "Pending", 0, -1, 5),
        ("later", "test.a", "Pending", 0, 60, 9),
        ("failed", "test.a", "Failed", 1, -10, 0),
        ("spent", "test.a", "Failed", 25, -90, 0),
        ("running", "test.a", "Running", 1, -120, 0),
        ("other", "test.b", "Pending", 0, -120, 9),
    ];
    for (id, queue, status, attempts, due, priority) in jobs {
        sqlx::query(
            "insert into apalis.jobs (job, id, job_type, status, attempts, run_at, priority)
             values ('\\x7b7d', $1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
        )
        .bind(id)
        .bind(queue)
        .bind(status)
        .bind(attempts)
        .bind(f64::from(due))
        .bind(priority)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let claim = |count: i32| {
        let pool = app.pool.clone();
        async move {
            sqlx::query("select id, status, lock_by from apalis.get_jobs('w1', 'test.a', $1)")
                .bind(count)
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|row| {
                    assert_eq!(row.get::<String, _>("status"), "Queued");
                    assert_eq!(row.get::<String, _>("lock_by"), "w1");
                    row.get::<String, _>("id")
                })
                .collect::<Vec<_>>()
        }
    };
    let mut first = claim(2).await;
    first.sort();
    assert_eq!(
        first,
        ["older", "urgent"],
        "the highest priority, then the oldest due"
    );
    let mut rest = claim(10).await;
    rest.sort();
    assert_eq!(
        rest,
        ["failed", "old"],
        "what is left that is due: a failed job with attempts to spare, not one out of attempts, not a running \
         one, not one due later, not another queue's"
    );
    assert!(claim(10).await.is_empty(), "a claimed job is not claimed twice");
}

#[tokio::test]
async fn a_claim_does_not_wait_for_the_disk() {
    let app = spawn_app_without_worker().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    sqlx::query("select * from apalis.get_jobs('w1', 'test.none', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let setting: String = sqlx::query_scalar("select current_setting('synchronous_commit')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        setting, "off",
        "a claim's transaction commits without a flush (migrations/20261204000003_claims_without_flush.sql)"
    );
    let after: String = sqlx::query_scalar("select current_setting('synchronous_commit')")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(after, "on", "only for the claim's transaction");
}

/// `ORDERFLOW_WORKER_FETCH_GAP_MS`: after a fetch that found jobs coming slowly, a queue's next fetch waits out
/// the gap, so orders created one after another within it are reserved by one batch (one transaction: one
/// `now()` in their step rows), while the first order of an idle queue is fetched at once.
#[tokio::test]
async fn jobs_announced_within_the_fetch_gap_run_as_one_batch() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings.fetch_gap = orderflow_shared::settings::MAX_FETCH_GAP;
            // No idle ticks: a fetch just before the first order would make it look like a fast queue's.
            settings.poll_interval = Duration::from_secs(60);
        },
        ..Default::default()
    })
    .await;
    app.put_sku("G", 100, 500).await;
    // The queues' first fetches (at start) lie far enough behind: one job since then is a slow queue's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reserved_at = || async {
        sqlx::query_as::<_, (uuid::Uuid, chrono::DateTime<chrono::Utc>)>(
            "select order_id, started_at from saga_steps where step = 'reserve'",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    let first = app.create_order("gap", &[("G", 1)], "pm_card_visa").await;
    crate::helpers::eventually("the first order reserved", Duration::from_secs(10), || async {
        (reserved_at().await.len() == 1).then_some(())
    })
    .await;
    // Its reserve fetch found one job, so the queue now waits out its gap before fetching again.
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(app.create_order("gap", &[("G", 1)], "pm_card_visa").await);
    }
    let reserved =
        crate::helpers::eventually("the later orders reserved", Duration::from_secs(20), || async {
            let rows = reserved_at().await;
            (rows.len() == 4).then_some(rows)
        })
        .await;
    let at = |id: uuid::Uuid| reserved.iter().find(|(o, _)| *o == id).unwrap().1;
    assert!(
        later.iter().all(|id| at(*id) == at(later[0])),
        "the three orders created within the gap reserved in one transaction: {reserved:?}"
    );
    // The first order's fetch found one job, so the next waited out the gap (a second here) after it: the later
    // batch's transaction began no sooner (half of it, for the time from that fetch to the first order's
    // transaction). A slow machine only makes it later; without the gap it follows at the next notification.
    let waited = (at(later[0]) - at(first)).to_std().unwrap();
    assert!(
        waited >= orderflow_shared::settings::MAX_FETCH_GAP / 2,
        "the later orders were fetched only after the gap that followed the first order's fetch: {waited:?}"
    );
}
