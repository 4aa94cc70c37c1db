//! The queue's fetch as OrderFlow installs it (`migrations/20261204000001_queue_fetch_plan.sql`): apalis's
//! `get_jobs`, rewritten in PL/pgSQL so that its plan is kept, must claim exactly what apalis's claims.

use sqlx::Row;

use crate::helpers::{Options, spawn_app_with};

#[tokio::test]
async fn the_fetch_keeps_its_plan() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
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
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
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
