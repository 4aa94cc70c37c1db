//! The queue's fetch as OrderFlow installs it (`migrations/20261204000001_queue_fetch_and_notify.sql`): apalis's
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
        "apalis replaced its fetch: redo migrations/20261204000001_queue_fetch_and_notify.sql against the new body"
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

#[tokio::test]
async fn quiet_queues_are_not_announced() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    // A worker's step connections name the queues whose jobs they leave unannounced.
    let options = app
        .pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("orderflow.quiet_queues", "test.a,test.c")]);
    let mut worker = sqlx::ConnectOptions::connect(&options).await.unwrap();
    let insert = "insert into apalis.jobs (job, id, job_type) values ('\\x7b7d', $1, $2)";
    for (id, queue) in [("quiet", "test.a"), ("announced", "test.b")] {
        sqlx::query(insert)
            .bind(id)
            .bind(queue)
            .execute(&mut worker)
            .await
            .unwrap();
    }
    // Any other connection announces every queue's jobs, as apalis does.
    sqlx::query(insert)
        .bind("elsewhere")
        .bind("test.a")
        .execute(&app.pool)
        .await
        .unwrap();

    let mut announced = Vec::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.recv()).await
    {
        let payload: serde_json::Value = serde_json::from_str(notification.payload()).unwrap();
        announced.push(payload["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(announced, ["announced", "elsewhere"]);
}
