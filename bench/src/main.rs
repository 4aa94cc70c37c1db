//! `orderflow-bench`: open-loop load at a fixed rate against OrderFlow's HTTP API. Each request is due at
//! `start + i / rate` and its latency counts from that moment, not from when it was sent, so a slow server
//! cannot hide its queueing (no coordinated omission). Modes:
//!
//! - `create`: order creation only (latency = the API's answer).
//! - `saga`: submit to FULFILLED or CANCELLED, read from the database's events.
//! - `hotsku`: every order for one sku with stock for half of them; checks that nothing was oversold. With
//!   `--backlog-ready <file>` the orders are made first (run the API without a worker reserving), then the
//!   file is written and the bench waits for a worker started then to decide every reservation: the rate of
//!   the reservations alone on a backlog, as the pgbench hot-sku ceiling measures them.
//!
//! An answer 503 or 429 counts as refused (shed by the API's admission control or a key's rate), apart from
//! errors; latencies are those of accepted orders.
//!
//! Writes `<out>/<label>.json`, `<out>/<label>.md` and `<out>/<label>.svg` (latency over time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use orderflow_shared::api_key::{self, Scope};
use orderflow_shared::settings::Role;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Create,
    Saga,
    Hotsku,
}

#[derive(Parser, Debug)]
#[command(name = "orderflow-bench", about = "Open-loop load against OrderFlow's API")]
struct Args {
    #[arg(long, value_enum, default_value = "create")]
    mode: Mode,
    /// Orders per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of load, after the warm-up.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load at the start that are not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    #[arg(long, env = "ORDERFLOW_BENCH_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The database the API uses (for saga latencies, stock checks and commit counts).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderflow?sslmode=disable"
    )]
    database_url: String,
    /// Skus spread over (create and saga modes).
    #[arg(long, default_value_t = 50)]
    skus: usize,
    /// Requests allowed in flight; beyond it a due request counts as an error (the load stays open).
    #[arg(long, default_value_t = 2_000)]
    max_in_flight: usize,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out: String,
    /// File name of the results; default `<mode>-<rate>`.
    #[arg(long)]
    label: Option<String>,
    /// How long to wait for sagas to end after the load (saga and hotsku modes).
    #[arg(long, default_value_t = 180)]
    drain: u64,
    /// Hot sku on a backlog: once every order is made, write this file and wait for the reserve steps to
    /// decide them all (start the reserving worker when it appears); sagas are not waited for.
    #[arg(long)]
    backlog_ready: Option<std::path::PathBuf>,
}

/// What the API answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// Refused by admission control (503) or the key's rate (429): the API shed it on purpose.
    Refused,
    /// Anything else: an error, no answer, or not sent (past `--max-in-flight`).
    Failed,
}

/// One request's fate.
struct Sample {
    /// Seconds from the start of the load to when the request was due.
    due_s: f64,
    latency: Duration,
    outcome: Outcome,
    measured: bool,
    order: Option<(Uuid, DateTime<Utc>)>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            count: h.len(),
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if args.backlog_ready.is_some() && args.mode != Mode::Hotsku {
        bail!("--backlog-ready goes with --mode hotsku");
    }
    let backlog = args.backlog_ready.is_some();
    let mode_name = match args.mode {
        Mode::Create => "create",
        Mode::Saga => "saga",
        Mode::Hotsku => "hotsku",
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{mode_name}-{}", args.rate));
    let pool = PgPool::connect(&args.database_url)
        .await
        .with_context(|| format!("cannot reach {}", args.database_url))?;
    // A key of its own, every scope, at the highest rate a key may have: the bench measures the service, not
    // its rate limit.
    let key = api_key::create(
        &mut *pool.acquire().await?,
        &api_key::NewKeyRequest {
            name: format!("orderflow-bench {label}"),
            scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
            rate_per_second: Some(api_key::MAX_RATE),
        },
        api_key::MAX_RATE,
        "orderflow-bench",
        Role::Operator,
    )
    .await
    .context("cannot create the bench's API key")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.secret))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let total = ((args.warmup + args.duration) as f64 * args.rate).round() as u64;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();

    // Stock: plenty on many skus, or on the hot sku enough for half of the measured orders.
    let skus: Vec<String> = match args.mode {
        Mode::Hotsku => vec![format!("bench-hot-{run}")],
        _ => (0..args.skus).map(|i| format!("bench-{run}-{i}")).collect(),
    };
    let hot_stock = (total / 2).max(1) as i64;
    for sku in &skus {
        let on_hand = if args.mode == Mode::Hotsku {
            hot_stock
        } else {
            1_000_000
        };
        let response = http
            .put(format!("{}/v1/skus/{sku}", args.api))
            .json(&json!({"on_hand": on_hand, "price": 100, "currency": "USD"}))
            .send()
            .await
            .context("cannot reach the API")?;
        if !response.status().is_success() {
            bail!("PUT sku {sku}: {}", response.status());
        }
    }
    let commits_before: i64 =
        sqlx::query_scalar("select xact_commit from pg_stat_database where datname = current_database()")
            .fetch_one(&pool)
            .await?;

    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let started = Instant::now();
    let wall_start = Utc::now();
    let api = Arc::new(args.api.clone());
    let skus = Arc::new(skus);
    let scheduler = {
        let (tx, http, api, skus, in_flight) = (
            tx.clone(),
            http.clone(),
            api.clone(),
            skus.clone(),
            in_flight.clone(),
        );
        let (rate, warmup, mode, run) = (args.rate, args.warmup as f64, args.mode, run.clone());
        tokio::spawn(async move {
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let due_s = i as f64 / rate;
                let measured = due_s >= warmup;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    let _ = tx.send(Sample {
                        due_s,
                        latency: due.elapsed(),
                        outcome: Outcome::Failed,
                        measured,
                        order: None,
                    });
                    continue;
                };
                let (tx, http, api, skus, run) =
                    (tx.clone(), http.clone(), api.clone(), skus.clone(), run.clone());
                tokio::spawn(async move {
                    let sku = &skus[(i as usize) % skus.len()];
                    let quantity = if mode == Mode::Hotsku { 1 } else { 1 + (i % 3) };
                    let body = json!({
                        "customer_id": format!("bench-{i}"),
                        "currency": "USD",
                        "lines": [{"sku": sku, "quantity": quantity}],
                        "payment_token": "pm_card_visa",
                    });
                    let due_wall = Utc::now() - chrono::Duration::from_std(due.elapsed()).unwrap_or_default();
                    let response = http
                        .post(format!("{api}/v1/orders"))
                        .header("Idempotency-Key", format!("bench-{run}-{i}"))
                        .json(&body)
                        .send()
                        .await;
                    let latency = due.elapsed();
                    let (order, outcome) = match response {
                        Ok(r) if r.status().is_success() => {
                            let order = r
                                .json::<serde_json::Value>()
                                .await
                                .ok()
                                .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()));
                            let outcome = if order.is_some() {
                                Outcome::Accepted
                            } else {
                                Outcome::Failed
                            };
                            (order, outcome)
                        }
                        Ok(r) if r.status() == 503 || r.status() == 429 => (None, Outcome::Refused),
                        _ => (None, Outcome::Failed),
                    };
                    drop(permit);
                    let _ = tx.send(Sample {
                        due_s,
                        latency,
                        outcome,
                        measured,
                        order: order.map(|id| (id, due_wall)),
                    });
                });
            }
        })
    };
    drop(tx);

    let mut samples = Vec::with_capacity(total as usize);
    while let Some(sample) = rx.recv().await {
        progress.inc(1);
        samples.push(sample);
    }
    scheduler.await?;
    let load_time = started.elapsed();
    progress.finish_with_message("load done");

    let mut create = histogram()?;
    let (mut errors, mut refused) = (0u64, 0u64);
    let mut per_second: std::collections::BTreeMap<u64, Histogram<u64>> = Default::default();
    for s in samples.iter().filter(|s| s.measured) {
        match s.outcome {
            Outcome::Accepted => {}
            Outcome::Refused => {
                refused += 1;
                continue;
            }
            Outcome::Failed => {
                errors += 1;
                continue;
            }
        }
        let us = s.latency.as_micros().max(1) as u64;
        create.record(us)?;
        if args.mode == Mode::Create {
            per_second
                .entry(s.due_s as u64)
                .or_insert(histogram()?)
                .record(us)?;
        }
    }
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.measured).collect();
    let mut report = json!({
        "mode": args.mode,
        "rate": args.rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sent": measured.len(),
        "errors": errors,
        "refused": refused,
        "create_latency": Percentiles::of(&create),
        "create_achieved_per_s": (measured.len() as u64 - errors - refused) as f64 / args.duration as f64,
        "load_seconds": load_time.as_secs_f64(),
        "started_at": wall_start,
    });

    if matches!(args.mode, Mode::Saga | Mode::Hotsku) {
        let orders: Vec<(Uuid, DateTime<Utc>)> = measured.iter().filter_map(|s| s.order).collect();
        let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
        if let Some(ready) = &args.backlog_ready {
            std::fs::write(ready, format!("{}\n", ids.len()))
                .with_context(|| format!("cannot write {}", ready.display()))?;
            eprintln!(
                "backlog of {} orders made; waiting for their reservations",
                ids.len()
            );
        }
        // On a backlog only the reservations are waited for (the worker that drains it may run nothing else).
        let open_query = if backlog {
            "select count(*) from orders o where id = any($1) and not exists (select 1 from saga_steps s \
             where s.order_id = o.id and s.step = 'reserve' and s.status in ('SUCCEEDED', 'FAILED'))"
        } else {
            "select count(*) from orders where id = any($1) and status not in ('FULFILLED', 'CANCELLED')"
        };
        let deadline = Instant::now() + Duration::from_secs(args.drain);
        loop {
            let open: i64 = sqlx::query_scalar(open_query).bind(&ids).fetch_one(&pool).await?;
            if open == 0 || Instant::now() > deadline {
                let key = if backlog {
                    "reservations_undecided"
                } else {
                    "sagas_unfinished"
                };
                report[key] = json!(open);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // On a backlog the sagas were not run to their end: there are none to read.
        let ends: Vec<(Uuid, String, DateTime<Utc>)> = if backlog {
            Vec::new()
        } else {
            sqlx::query_as(
                "select order_id, to_status, created_at from order_events \
                 where order_id = any($1) and to_status in ('FULFILLED', 'CANCELLED')",
            )
            .bind(&ids)
            .fetch_all(&pool)
            .await?
        };
        let due: std::collections::HashMap<Uuid, DateTime<Utc>> = orders.into_iter().collect();
        let mut saga = histogram()?;
        let (mut fulfilled, mut cancelled) = (0u64, 0u64);
        let mut last_end: Option<DateTime<Utc>> = None;
        for (id, status, at) in &ends {
            if status == "FULFILLED" {
                fulfilled += 1;
            } else {
                cancelled += 1;
            }
            let Some(due_at) = due.get(id) else { continue };
            let us = (*at - *due_at).num_microseconds().unwrap_or(0).max(1) as u64;
            saga.record(us)?;
            let second = (*due_at - wall_start).num_seconds().max(0) as u64;
            per_second.entry(second).or_insert(histogram()?).record(us)?;
            last_end = Some(last_end.map_or(*at, |l: DateTime<Utc>| l.max(*at)));
        }
        let first_due = due.values().min().copied();
        let span = match (first_due, last_end) {
            (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        };
        if !backlog {
            report["saga_latency"] = json!(Percentiles::of(&saga));
            report["sagas_fulfilled"] = json!(fulfilled);
            report["sagas_cancelled"] = json!(cancelled);
            report["sagas_per_s"] = json!(if span > 0.0 {
                (fulfilled + cancelled) as f64 / span
            } else {
                0.0
            });
        }
        if args.mode == Mode::Hotsku {
            let (on_hand, reserved): (i64, i64) =
                sqlx::query_as("select on_hand, reserved from skus where sku = $1")
                    .bind(&skus[0])
                    .fetch_one(&pool)
                    .await?;
            // Sold: committed after payment; held: reserved and not yet committed or released.
            let (sold, held): (i64, i64) = sqlx::query_as(
                "select coalesce(sum(quantity) filter (where status = 'COMMITTED'), 0)::bigint, \
                        coalesce(sum(quantity) filter (where status = 'RESERVED'), 0)::bigint \
                 from reservations where sku = $1",
            )
            .bind(&skus[0])
            .fetch_one(&pool)
            .await?;
            let oversold = sold + held > hot_stock
                || on_hand < 0
                || on_hand + sold != hot_stock
                || reserved != held
                || reserved > on_hand;
            // What the hot-sku ceiling measures is the reservation itself: orders whose reserve step decided
            // (held the stock or found it gone), per second from the first order's due time (on a backlog: the
            // first reserve step's start) to the last decision.
            let (decided, first_start, last_decision): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
                sqlx::query_as(
                    "select count(distinct order_id), min(started_at), max(finished_at) from saga_steps \
                     where order_id = any($1) and step = 'reserve' and status in ('SUCCEEDED', 'FAILED')",
                )
                .bind(&ids)
                .fetch_one(&pool)
                .await?;
            let from = if backlog { first_start } else { first_due };
            let reservations_per_s = match (from, last_decision) {
                (Some(a), Some(b)) if b > a => decided as f64 / ((b - a).num_milliseconds() as f64 / 1000.0),
                _ => 0.0,
            };
            report["hot_sku"] = json!({"stock": hot_stock, "sold": sold, "held": held, "on_hand": on_hand,
                "reserved": reserved, "oversold": oversold, "backlog": backlog,
                "reservations_decided": decided, "reservations_per_s": reservations_per_s});
            if oversold {
                eprintln!(
                    "OVERSOLD: stock {hot_stock}, sold {sold}, held {held}, on_hand {on_hand}, reserved {reserved}"
                );
            }
        }
    }
    let commits_after: i64 =
        sqlx::query_scalar("select xact_commit from pg_stat_database where datname = current_database()")
            .fetch_one(&pool)
            .await?;
    let orders_made = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Accepted)
        .count()
        .max(1) as f64;
    report["commits_per_order"] = json!((commits_after - commits_before) as f64 / orders_made);
    report["per_second"] = json!(
        per_second
            .iter()
            .map(|(t, h)| json!({"t": t, "count": h.len(), "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0}))
            .collect::<Vec<_>>()
    );

    std::fs::create_dir_all(&args.out)?;
    let base = std::path::Path::new(&args.out).join(&label);
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = markdown(&report);
    std::fs::write(base.with_extension("md"), &markdown)?;
    std::fs::write(base.with_extension("svg"), svg(&report, &label))?;
    println!("{markdown}");
    println!("results: {}.{{json,md,svg}}", base.display());
    Ok(())
}

fn markdown(r: &serde_json::Value) -> String {
    let p = |v: &serde_json::Value| {
        format!(
            "{:.1} | {:.1} | {:.1} | {:.1} | {:.1}",
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p90_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["p999_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0)
        )
    };
    let mut out = format!(
        "| mode | rate/s | sent | refused | errors | achieved/s | commits/order | latency | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {:.1} | {:.2} | create | {} |\n",
        r["mode"].as_str().unwrap_or("?"),
        r["rate"],
        r["sent"],
        r["refused"],
        r["errors"],
        r["create_achieved_per_s"].as_f64().unwrap_or(0.0),
        r["commits_per_order"].as_f64().unwrap_or(0.0),
        p(&r["create_latency"]),
    );
    if r.get("saga_latency").is_some() {
        out.push_str(&format!(
            "| | | | | | {:.1} sagas/s | | submit→end | {} |\n",
            r["sagas_per_s"].as_f64().unwrap_or(0.0),
            p(&r["saga_latency"])
        ));
    }
    out
}

/// Latency over time: p50 and p99 per second of due time, as an SVG line chart.
fn svg(r: &serde_json::Value, label: &str) -> String {
    let points = r["per_second"].as_array().cloned().unwrap_or_default();
    let (w, h, pad) = (800.0, 360.0, 50.0);
    let max_t = points.iter().filter_map(|p| p["t"].as_f64()).fold(1.0, f64::max);
    let max_ms = points
        .iter()
        .filter_map(|p| p["p99_ms"].as_f64())
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: f64| pad + (w - 2.0 * pad) * t / max_t;
    let y = |ms: f64| h - pad - (h - 2.0 * pad) * ms / max_ms;
    let line = |key: &str| {
        points
            .iter()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(p["t"].as_f64()?), y(p[key].as_f64()?))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">{label}: latency per second of the run (ms)</text>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<text x="{r}" y="{lb}" text-anchor="end">{max_t:.0} s</text><text x="5" y="{pad}">{max_ms:.1}</text><text x="5" y="{b}">0</text>
<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{p50}"/>
<polyline fill="none" stroke="#d73a49" stroke-width="1.5" points="{p99}"/>
<text x="{r}" y="40" text-anchor="end" fill="#1f6feb">p50</text><text x="{r}" y="55" text-anchor="end" fill="#d73a49">p99</text>
</svg>
"##,
        b = h - pad,
        r = w - pad,
        lb = h - pad + 15.0,
        p50 = line("p50_ms"),
        p99 = line("p99_ms"),
    )
}
