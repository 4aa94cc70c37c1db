//! The operators' commands (`queues`, `sagas`, `saga`, `keys`, `webhooks`): a client of the admin API. Tables for people by
//! default, the API's JSON with `--json`. The token comes from `ORDERFLOW_ADMIN_TOKEN`, the API from
//! `ORDERFLOW_ADMIN_URL` (default http://127.0.0.1:8080).

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Connection {
    /// The API's base URL.
    #[arg(
        long,
        env = "ORDERFLOW_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An admin token (viewer to read; operator to act).
    #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SagasArgs {
    /// Only sagas not over and without progress for a while (see --older-than).
    #[arg(long)]
    stuck: bool,
    /// With --stuck: without progress for longer than this; otherwise: created longer ago (90s, 5m, 2h, 1d).
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
    /// Order status, e.g. NEEDS_ATTENTION.
    #[arg(long)]
    status: Option<String>,
    /// Current step, e.g. pay.
    #[arg(long)]
    step: Option<String>,
    /// The last error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// At most this many (1–100).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(clap::Args)]
pub struct SagaArgs {
    /// The saga's (order's) id.
    id: String,
    /// Act on it (operator token): retry the current step now, compensate (cancel), or resolve a
    /// NEEDS_ATTENTION saga after repairing it by hand.
    #[arg(value_parser = ["retry", "compensate", "resolve"])]
    action: Option<String>,
    /// Why, recorded with the action.
    #[arg(long)]
    note: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key (operator token); its secret is printed this once.
    Create {
        /// Who or what uses it, e.g. storefront.
        #[arg(long)]
        name: String,
        /// A scope it may use: orders:read, orders:write, catalog:read, catalog:write, events:read, metrics:read (repeat, or
        /// separate with commas).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Requests per second (default: the API's ORDERFLOW_API_KEY_RATE).
        #[arg(long)]
        rate: Option<i32>,
    },
    /// Every key, newest first, revoked ones too (never a secret).
    List,
    /// Revoke a key (operator token): every API process refuses it within ORDERFLOW_API_KEY_CACHE_SECS.
    Revoke {
        /// The key's id (from `keys list`).
        id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum WebhooksCommand {
    /// Make an endpoint (operator token); its signing secret is printed this once.
    Create {
        /// The endpoint: `https://…` (or `http://` to this machine). (Not `url`: that is the admin API's, `--url`.)
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event type it receives, e.g. order.paid (repeat, or separate with commas); none: every type.
        #[arg(long = "event-type", value_delimiter = ',')]
        event_types: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Every endpoint, with its deliveries pending, delivered and dead.
    List,
    /// Enable an endpoint (operator token): its pending deliveries resume.
    Enable { id: String },
    /// Disable an endpoint (operator token): no new events; its pending deliveries wait.
    Disable {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// An endpoint's deliveries, newest first.
    Deliveries {
        id: String,
        /// PENDING, DELIVERED or DEAD.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One delivery and every attempt: status code, latency, the answer or the error.
    Delivery { id: String },
    /// Send a delivery again, with the same webhook-id (operator token); or, with --from and --to, every event
    /// of an endpoint's types in that time range.
    Replay {
        /// A delivery id; with --from and --to, an endpoint id.
        id: String,
        /// RFC 3339, e.g. 2026-12-05T00:00:00Z.
        #[arg(long, requires = "to")]
        from: Option<String>,
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    fn new(connection: &Connection) -> anyhow::Result<Self> {
        let Some(token) = connection.token.clone().filter(|t| !t.trim().is_empty()) else {
            bail!("set ORDERFLOW_ADMIN_TOKEN (or --token) to an admin token from ORDERFLOW_ADMIN_TOKENS");
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            url: connection.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the OrderFlow API at {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = printable(body["detail"].as_str().unwrap_or("no detail"));
            bail!("{detail} ({status})");
        }
        Ok(body)
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.url)).query(query))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(&body))
            .await
    }
}

/// Left-aligned columns, two spaces apart; numbers right-aligned.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            rows.iter().any(|r| r[i].parse::<f64>().is_ok())
                && rows.iter().all(|r| r[i].parse::<f64>().is_ok() || r[i] == "-")
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numeric[i] {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A value as a cell or a line shows it: strings without quotes, control characters escaped.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => printable(s),
        other => other.to_string(),
    }
}

/// `s` with every control character (Unicode Cc) and bidirectional control escaped as `\u{…}`: what customers
/// and providers wrote reaches the operator's terminal as text, never as a sequence that clears the screen,
/// sets the window title or reorders the line.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
        {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn time(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(|| text(value), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn queues(connection: Connection) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    let body = client.get("/admin/v1/queues", &[]).await?;
    if connection.json {
        return print_json(&body);
    }
    let rows: Vec<Vec<String>> = body["queues"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|q| {
            let oldest = q["oldest_pending_seconds"]
                .as_f64()
                .map_or("-".to_owned(), |s| format!("{s:.1}"));
            vec![
                text(&q["queue"]),
                text(&q["pending"]),
                text(&q["scheduled"]),
                text(&q["running"]),
                text(&q["failed"]),
                text(&q["dead"]),
                oldest,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "QUEUE",
                "PENDING",
                "SCHEDULED",
                "RUNNING",
                "FAILED",
                "DEAD",
                "OLDEST_S"
            ],
            &rows
        )
    );
    let admission = &body["admission"];
    match admission["max_backlog_seconds"].as_f64() {
        Some(bound) => println!(
            "admission: {}, saga backlog {} s of {bound:.2} s, {} refused by this API process",
            if admission["refusing"] == true {
                "REFUSING"
            } else {
                "admitting"
            },
            admission["backlog_seconds"]
                .as_f64()
                .map_or("unknown".to_owned(), |s| format!("{s:.2}")),
            text(&admission["refused"]),
        ),
        None => println!("admission: off"),
    }
    Ok(())
}

pub async fn sagas(connection: Connection, args: SagasArgs) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if args.stuck {
        query.push(("stuck", "true".to_owned()));
    }
    match (args.stuck, args.older_than) {
        (true, Some(older)) => query.push(("stuck_after", older)),
        (false, Some(older)) => query.push(("older_than", older)),
        _ => {}
    }
    for (name, value) in [
        ("status", args.status),
        ("step", args.step),
        ("error", args.error),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    let body = client.get("/admin/v1/sagas", &query).await?;
    if connection.json {
        return print_json(&body);
    }
    let sagas = body["sagas"].as_array().map(Vec::as_slice).unwrap_or_default();
    if sagas.is_empty() {
        println!("no sagas match");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["status"]),
                text(&s["current_step"]),
                text(&s["job_status"]),
                time(&s["last_progress_at"]),
                text(&s["last_error"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["SAGA", "STATUS", "STEP", "JOB", "LAST_PROGRESS", "LAST_ERROR"],
            &rows
        )
    );
    Ok(())
}

pub async fn saga(connection: Connection, args: SagaArgs) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    if let Some(action) = &args.action {
        let body = client
            .post(
                &format!("/admin/v1/sagas/{}/{action}", args.id),
                serde_json::json!({"note": args.note}),
            )
            .await?;
        if connection.json {
            return print_json(&body);
        }
        println!(
            "{action} by {}: {} (saga is now {})",
            text(&body["actor"]),
            text(&body["outcome"]),
            text(&body["order"]["status"])
        );
        return Ok(());
    }
    let body = client.get(&format!("/admin/v1/sagas/{}", args.id), &[]).await?;
    if connection.json {
        return print_json(&body);
    }
    let order = &body["order"];
    println!(
        "saga {}  {}{}  step {}  customer {}  total {} {}",
        text(&order["id"]),
        text(&order["status"]),
        if body["stuck"] == true { " (stuck)" } else { "" },
        text(&order["current_step"]),
        text(&order["customer_id"]),
        text(&order["total"]),
        text(&order["currency"]),
    );
    if let Some(error) = body["last_error"].as_str() {
        println!("last error: {}", printable(error));
    }
    if let Some(job) = body["current_job"].as_object() {
        let alive = match job.get("worker_alive") {
            Some(Value::Bool(false)) => " (worker gone)",
            _ => "",
        };
        let worker = job
            .get("worker")
            .and_then(Value::as_str)
            .map(|w| format!(" on {}", printable(w)))
            .unwrap_or_default();
        println!(
            "current job {} {}{worker}{alive}",
            text(&job["id"]),
            text(&job["status"])
        );
    }
    let steps: Vec<Vec<String>> = body["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                text(&s["step"]),
                text(&s["attempt"]),
                text(&s["status"]),
                time(&s["started_at"]),
                s["duration_ms"]
                    .as_f64()
                    .map_or("-".to_owned(), |d| format!("{d:.0}")),
                text(&s["worker"]),
                text(&s["error"]),
            ]
        })
        .collect();
    if steps.is_empty() {
        println!("\nSTEPS\n(none has run yet)\n");
    } else {
        let headers = ["STEP", "ATTEMPT", "STATUS", "STARTED", "MS", "WORKER", "ERROR"];
        println!("\nSTEPS\n{}", table(&headers, &steps));
    }
    let events: Vec<Vec<String>> = body["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                text(&e["sequence"]),
                text(&e["type"]),
                format!("{} -> {}", text(&e["from"]), text(&e["to"])),
                text(&e["reason"]),
                time(&e["at"]),
            ]
        })
        .collect();
    println!(
        "EVENTS\n{}",
        table(&["#", "TYPE", "TRANSITION", "REASON", "AT"], &events)
    );
    let actions = body["actions"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !actions.is_empty() {
        let rows: Vec<Vec<String>> = actions
            .iter()
            .map(|a| {
                vec![
                    text(&a["action"]),
                    text(&a["actor"]),
                    text(&a["outcome"]),
                    time(&a["at"]),
                ]
            })
            .collect();
        println!("ACTIONS\n{}", table(&["ACTION", "BY", "OUTCOME", "AT"], &rows));
    }
    Ok(())
}

pub async fn keys(connection: Connection, command: KeysCommand) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    match command {
        KeysCommand::Create { name, scopes, rate } => {
            let body = client
                .post(
                    "/admin/v1/keys",
                    serde_json::json!({"name": name, "scopes": scopes, "rate_per_second": rate}),
                )
                .await?;
            if connection.json {
                return print_json(&body);
            }
            println!(
                "created key {} ({}) with {} at {}/s\n\n  {}\n\nKeep it now: it is not shown again.",
                text(&body["id"]),
                text(&body["name"]),
                scope_list(&body["scopes"]),
                text(&body["rate_per_second"]),
                text(&body["secret"]),
            );
        }
        KeysCommand::List => {
            let body = client.get("/admin/v1/keys", &[]).await?;
            if connection.json {
                return print_json(&body);
            }
            let keys = body["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
            if keys.is_empty() {
                println!("no keys yet: orderflow keys create --name <who> --scope <scope>");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        text(&k["id"]),
                        text(&k["name"]),
                        text(&k["hint"]),
                        scope_list(&k["scopes"]),
                        text(&k["rate_per_second"]),
                        time(&k["created_at"]),
                        time(&k["last_used_at"]),
                        time(&k["revoked_at"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "KEY",
                        "SCOPES",
                        "RATE",
                        "CREATED",
                        "LAST_USED",
                        "REVOKED"
                    ],
                    &rows
                )
            );
        }
        KeysCommand::Revoke { id } => {
            let body = client
                .post(&format!("/admin/v1/keys/{id}/revoke"), Value::Null)
                .await?;
            if connection.json {
                return print_json(&body);
            }
            println!(
                "key {} ({}, {}) revoked at {}",
                text(&body["id"]),
                text(&body["name"]),
                text(&body["hint"]),
                time(&body["revoked_at"])
            );
        }
    }
    Ok(())
}

fn scope_list(value: &Value) -> String {
    value
        .as_array()
        .map(|scopes| scopes.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| text(value))
}

pub async fn webhooks(connection: Connection, command: WebhooksCommand) -> anyhow::Result<()> {
    let client = Client::new(&connection)?;
    let body = match &command {
        WebhooksCommand::Create {
            endpoint,
            event_types,
            description,
        } => {
            let request =
                serde_json::json!({"url": endpoint, "event_types": event_types, "description": description});
            client.post("/admin/v1/webhook_endpoints", request).await?
        }
        WebhooksCommand::List => client.get("/admin/v1/webhook_endpoints", &[]).await?,
        WebhooksCommand::Enable { id } => {
            client
                .post(
                    &format!("/admin/v1/webhook_endpoints/{id}/enable"),
                    serde_json::json!({}),
                )
                .await?
        }
        WebhooksCommand::Disable { id, reason } => {
            client
                .post(
                    &format!("/admin/v1/webhook_endpoints/{id}/disable"),
                    serde_json::json!({"reason": reason}),
                )
                .await?
        }
        WebhooksCommand::Deliveries { id, status, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.clone().map(|s| ("status", s)));
            client
                .get(&format!("/admin/v1/webhook_endpoints/{id}/deliveries"), &query)
                .await?
        }
        WebhooksCommand::Delivery { id } => {
            client
                .get(&format!("/admin/v1/webhook_deliveries/{id}"), &[])
                .await?
        }
        WebhooksCommand::Replay { id, from, to } => match (from, to) {
            (Some(from), Some(to)) => {
                client
                    .post(
                        &format!("/admin/v1/webhook_endpoints/{id}/replay"),
                        serde_json::json!({"from": from, "to": to}),
                    )
                    .await?
            }
            _ => {
                client
                    .post(&format!("/admin/v1/webhook_deliveries/{id}/replay"), Value::Null)
                    .await?
            }
        },
    };
    if connection.json {
        return print_json(&body);
    }
    let endpoint_row = |e: &Value| {
        vec![
            text(&e["id"]),
            text(&e["url"]),
            if e["enabled"].as_bool() == Some(true) {
                "yes".to_owned()
            } else {
                format!("no: {}", text(&e["disabled_reason"]))
            },
            text(&e["pending"]),
            text(&e["delivered"]),
            text(&e["dead"]),
            time(&e["failing_since"]),
        ]
    };
    const ENDPOINT: [&str; 7] = [
        "ID",
        "URL",
        "ENABLED",
        "PENDING",
        "DELIVERED",
        "DEAD",
        "FAILING_SINCE",
    ];
    let delivery_row = |d: &Value| {
        vec![
            text(&d["id"]),
            text(&d["event_id"]),
            text(&d["order_id"]),
            text(&d["sequence"]),
            text(&d["status"]),
            text(&d["attempts"]),
            text(&d["last_status"]),
            text(&d["last_latency_ms"]),
            time(&d["next_attempt_at"]),
        ]
    };
    const DELIVERY: [&str; 9] = [
        "ID",
        "EVENT",
        "ORDER",
        "SEQ",
        "STATUS",
        "ATTEMPTS",
        "LAST_STATUS",
        "LATENCY_MS",
        "NEXT_ATTEMPT",
    ];
    match command {
        WebhooksCommand::Create { .. } => println!(
            "created webhook endpoint {} for {}\n\n  {}\n\nKeep the secret now: it is not shown again. Verify deliveries with it \
             (Standard Webhooks).",
            text(&body["id"]),
            text(&body["url"]),
            text(&body["secret"]),
        ),
        WebhooksCommand::List => {
            let endpoints = body["endpoints"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if endpoints.is_empty() {
                println!("no webhook endpoints yet: orderflow webhooks create https://…");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = endpoints.iter().map(endpoint_row).collect();
            print!("{}", table(&ENDPOINT, &rows));
        }
        WebhooksCommand::Enable { .. } | WebhooksCommand::Disable { .. } => {
            let mut row = endpoint_row(&body);
            row.truncate(3);
            print!("{}", table(&ENDPOINT[..3], &[row]));
        }
        WebhooksCommand::Deliveries { .. } => {
            let deliveries = body["deliveries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = deliveries.iter().map(delivery_row).collect();
            print!("{}", table(&DELIVERY, &rows));
        }
        WebhooksCommand::Delivery { .. } => {
            print!("{}", table(&DELIVERY, &[delivery_row(&body)]));
            println!();
            let attempts = body["attempts"].as_array().map(Vec::as_slice).unwrap_or_default();
            let rows: Vec<Vec<String>> = attempts
                .iter()
                .map(|a| {
                    vec![
                        text(&a["round"]),
                        text(&a["attempt"]),
                        time(&a["started_at"]),
                        text(&a["status_code"]),
                        text(&a["latency_ms"]),
                        printable(a["error"].as_str().or(a["response"].as_str()).unwrap_or("-"))
                            .chars()
                            .take(80)
                            .collect(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["ROUND", "ATTEMPT", "STARTED", "STATUS", "LATENCY_MS", "ANSWER"],
                    &rows
                )
            );
        }
        WebhooksCommand::Replay { from: Some(_), .. } => {
            println!("{} deliveries on their way", text(&body["deliveries"]));
        }
        WebhooksCommand::Replay { .. } => {
            print!("{}", table(&DELIVERY, &[delivery_row(&body)]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_print_escaped() {
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;pwned\u{7}ann"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}ann"
        );
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(printable("Zoë 客户"), "Zoë 客户");
        assert_eq!(text(&Value::String("a\u{0}b".to_owned())), "a\\u{0}b");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let rows = vec![
            vec!["orderflow.pay".to_owned(), "3".to_owned()],
            vec!["q".to_owned(), "120".to_owned()],
        ];
        assert_eq!(
            table(&["QUEUE", "PENDING"], &rows),
            "QUEUE          PENDING\norderflow.pay        3\nq                  120\n"
        );
    }
}
