//! The operators' dashboard at `/admin`: server-rendered HTML, no front-end build. Sign in with an admin token
//! (kept in an HttpOnly, SameSite=Strict cookie scoped to `/admin`); the overview shows the queues and the stuck
//! sagas, a saga's page its timeline (steps, jobs, events, actions) and, for operators, the actions as buttons.
//! Forms carry a CSRF token derived from the session, on top of the SameSite cookie.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use orderflow_shared::admin::{self, SagaFilter};
use orderflow_shared::operator::{self, Action};
use orderflow_shared::queue::views as queue_views;
use orderflow_shared::settings::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{self, Admin};
use crate::views::{self, SagaDetail};
use crate::{ApiError, AppState};

pub const SESSION_COOKIE: &str = "orderflow_admin";

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, who: Option<&Admin>, refresh: bool, body: &str) -> Html<String> {
    let user = who.map_or(String::new(), |a| {
        format!(
            r#"<span class="who">{} ({})</span><form method="post" action="/admin/logout" class="inline"><button>Sign out</button></form>"#,
            esc(&a.name),
            a.role.as_str()
        )
    });
    let refresh = if refresh {
        r#"<meta http-equiv="refresh" content="5">"#
    } else {
        ""
    };
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · OrderFlow</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}}
header{{background:#1d2329;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}}
header a{{color:#fff;text-decoration:none;font-weight:600}} header .who{{margin-left:auto;opacity:.8}}
main{{padding:1rem 1.2rem;max-width:1200px}} h1{{font-size:1.3rem}} h2{{font-size:1.05rem;margin-top:1.6rem}}
table{{border-collapse:collapse;width:100%;background:#fff}} th,td{{padding:.35rem .55rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}}
th{{background:#eef0f3;font-weight:600}} td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.badge{{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:12px;background:#e3e6ea}}
.FULFILLED,.SUCCEEDED,.Done{{background:#d3f0dc}} .CANCELLED,.SKIPPED{{background:#e3e6ea}}
.NEEDS_ATTENTION,.FAILED,.Killed{{background:#fbd5d5}} .CANCELLING,.Running,.Queued{{background:#fdecc8}}
.error{{color:#a61b1b;font-family:ui-monospace,monospace;font-size:12px}} .muted{{color:#6b7480}}
form.inline{{display:inline}} button{{font:inherit;padding:.3rem .8rem;border-radius:.3rem;border:1px solid #8a939d;background:#fff;cursor:pointer}}
button.primary{{background:#1f6feb;color:#fff;border-color:#1f6feb}} button.danger{{border-color:#a61b1b;color:#a61b1b}}
.flash{{background:#d3f0dc;padding:.5rem .8rem;border-radius:.3rem}} .warn{{background:#fbd5d5;padding:.5rem .8rem;border-radius:.3rem}}
input{{font:inherit;padding:.3rem;width:22rem}}
</style></head><body><header><a href="/admin">OrderFlow operations</a>{user}</header><main>{body}</main></body></html>"#,
        title = esc(title),
    ))
}

fn badge(status: &str) -> String {
    format!(r#"<span class="badge {0}">{0}</span>"#, esc(status))
}

fn csrf_token(session: &str) -> String {
    let digest = Sha256::digest(format!("orderflow-csrf:{session}").as_bytes());
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The signed-in admin and their session token, from the cookie.
fn session(state: &AppState, headers: &HeaderMap) -> Option<(Admin, String)> {
    let token = auth::cookie(headers, SESSION_COOKIE)?;
    auth::authenticate(state, &token).map(|admin| (admin, token))
}

fn sign_in_page(message: Option<&str>) -> Html<String> {
    let message = message.map_or(String::new(), |m| format!(r#"<p class="warn">{}</p>"#, esc(m)));
    page(
        "Sign in",
        None,
        false,
        &format!(
            r#"<h1>Sign in</h1>{message}<form method="post" action="/admin/login">
<p><label>Admin token<br><input type="password" name="token" id="token" autocomplete="current-password" autofocus></label></p>
<p><button class="primary" id="sign-in">Sign in</button></p></form>
<p class="muted">Tokens come from <code>ORDERFLOW_ADMIN_TOKENS</code> (<code>name:role:token</code>).</p>"#
        ),
    )
}

/// `GET /admin`: the overview, or the sign-in form.
pub async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some((who, _)) = session(&state, &headers) else {
        return Ok(sign_in_page(None).into_response());
    };
    let queues = queue_views::queue_stats(&state.pool).await?;
    let stuck = admin::sagas(
        &mut *state.pool.acquire().await?,
        &SagaFilter {
            stuck_after: Some(state.admin.stuck_after),
            limit: 100,
            ..SagaFilter::default()
        },
    )
    .await?;
    let mut body = String::from(
        "<h1>Queues</h1><table><tr><th>Queue</th><th>Pending</th><th>Scheduled</th><th>Running</th><th>Failed</th><th>Dead</th><th>Oldest pending</th></tr>",
    );
    for q in &queues {
        let oldest = q
            .oldest_pending_seconds
            .map_or("—".to_owned(), |s| format!("{s:.1} s"));
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&q.queue),
            q.pending,
            q.scheduled,
            q.running,
            q.failed,
            q.dead,
            oldest
        );
    }
    body.push_str("</table>");
    let _ = write!(
        body,
        r#"<h1>Stuck sagas <span class="muted">(no progress for over {} s)</span></h1>"#,
        state.admin.stuck_after.as_secs()
    );
    if stuck.is_empty() {
        body.push_str(r#"<p class="muted" id="no-stuck">None.</p>"#);
    } else {
        body.push_str(r#"<table id="stuck"><tr><th>Saga</th><th>Status</th><th>Step</th><th>Job</th><th>Customer</th><th>Last progress</th><th>Last error</th></tr>"#);
        for s in &stuck {
            let _ = write!(
                body,
                r#"<tr><td><a href="/admin/sagas/{id}">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="error">{}</td></tr>"#,
                badge(s.status.as_str()),
                esc(s.current_step.map_or("—", |step| step.name())),
                s.job_status.map_or("gone".to_owned(), |j| badge(j.as_str())),
                esc(&s.customer_id),
                s.last_progress_at.format("%Y-%m-%d %H:%M:%S UTC"),
                esc(s.last_error.as_deref().unwrap_or("")),
                id = s.id,
            );
        }
        body.push_str("</table>");
    }
    Ok(page("Overview", Some(&who), true, &body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /admin/login`: checks the token and sets the session cookie.
pub async fn login(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let token = form.token.trim();
    if auth::authenticate(&state, token).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_page(Some("That token is not valid.")),
        )
            .into_response();
    }
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=43200");
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /admin/logout`.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/admin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("orderflow_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

fn timeline(detail: &SagaDetail) -> String {
    let o = &detail.order;
    let mut body = format!(
        r#"<h1>Saga <code>{}</code> {}</h1><p>Customer {} · {} {} · created {} · last progress {}{}</p>"#,
        o.id,
        badge(o.status.as_str()),
        esc(&o.customer_id),
        o.total,
        esc(&o.currency),
        o.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        detail.last_progress_at.format("%H:%M:%S"),
        if detail.stuck {
            r#" · <span class="badge NEEDS_ATTENTION" id="stuck-badge">stuck</span>"#
        } else {
            ""
        }
    );
    if let Some(error) = &o.last_error {
        let _ = write!(
            body,
            r#"<p>Last error: <span class="error">{}</span></p>"#,
            esc(error)
        );
    }
    if let Some(job) = &detail.current_job {
        let _ = write!(
            body,
            "<p>Current job <code>{}</code> {} {}</p>",
            esc(&job.id),
            job.status.map_or("(gone)".to_owned(), |j| badge(j.as_str())),
            match (&job.worker, job.worker_alive) {
                (Some(w), Some(true)) => format!("on {}", esc(w)),
                (Some(w), _) => format!(r#"on {} <span class="badge FAILED">worker gone</span>"#, esc(w)),
                _ => String::new(),
            }
        );
    }
    body.push_str("<h2>Steps</h2><table><tr><th>Step</th><th>Attempt</th><th>Status</th><th>Worker</th><th>Started</th><th>Took</th><th>Error</th></tr>");
    for s in &detail.steps {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td class="muted">{}</td><td>{}</td><td class="num">{}</td><td class="error">{}</td></tr>"#,
            esc(s.step.name()),
            s.attempt,
            badge(s.status.as_str()),
            esc(s.worker.as_deref().unwrap_or("")),
            s.started_at.format("%H:%M:%S%.3f"),
            s.duration_ms.map_or("—".to_owned(), |d| format!("{d:.0} ms")),
            esc(s.error.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table><h2>Jobs</h2><table><tr><th>Job</th><th>Step</th><th>Attempt</th><th>Status</th><th>Run at</th><th>Worker</th></tr>");
    for j in &detail.jobs {
        let _ = write!(
            body,
            r#"<tr><td><code>{}</code></td><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td class="muted">{}</td></tr>"#,
            esc(&j.id),
            esc(j.step.name()),
            j.attempt,
            j.status.map_or("(cleaned up)".to_owned(), |j| badge(j.as_str())),
            j.run_at
                .map_or("—".to_owned(), |t| t.format("%H:%M:%S").to_string()),
            esc(j.worker.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table><h2>Events</h2><table><tr><th>#</th><th>Type</th><th>From → to</th><th>Reason</th><th>At</th></tr>");
    for e in &detail.events {
        let _ = write!(
            body,
            r#"<tr><td class="num">{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td></tr>"#,
            e.sequence,
            esc(&e.event_type),
            esc(e.from.as_deref().unwrap_or("—")),
            esc(&e.to),
            esc(e.reason.as_deref().unwrap_or("")),
            e.at.format("%H:%M:%S%.3f")
        );
    }
    body.push_str("</table>");
    if !detail.actions.is_empty() {
        body.push_str("<h2>Operator actions</h2><table><tr><th>Action</th><th>Who</th><th>Outcome</th><th>Note</th><th>At</th></tr>");
        for a in &detail.actions {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.action),
                esc(&a.actor),
                esc(&a.role),
                esc(&a.outcome),
                esc(a.detail.as_deref().unwrap_or("")),
                a.at.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        body.push_str("</table>");
    }
    body
}

/// `GET /admin/sagas/{id}`: one saga's timeline, with the actions for operators.
pub async fn saga(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some((who, token)) = session(&state, &headers) else {
        return Ok(Redirect::to("/admin").into_response());
    };
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("saga id {id:?} is not a UUID")))?;
    let detail = views::saga(&state.pool, id, state.admin.stuck_after).await?;
    let mut body = String::new();
    if let Some(done) = &flash.done {
        let _ = write!(body, r#"<p class="flash" id="flash">{}</p>"#, esc(done));
    }
    if who.role == Role::Operator {
        let csrf = csrf_token(&token);
        body.push_str(r#"<p id="actions">"#);
        for (action, class, label) in [
            ("retry", "primary", "Retry now"),
            ("compensate", "danger", "Compensate (cancel)"),
            ("resolve", "", "Resolve (repaired by hand)"),
        ] {
            let _ = write!(
                body,
                r#"<form method="post" action="/admin/sagas/{id}/{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button class="{class}" id="{action}">{label}</button></form> "#
            );
        }
        body.push_str("</p>");
    }
    body.push_str(&timeline(&detail));
    Ok(page(&format!("Saga {id}"), Some(&who), false, &body).into_response())
}

/// The outcome of the last action, shown once after the redirect.
#[derive(Debug, Deserialize)]
pub struct Flash {
    done: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// `POST /admin/sagas/{id}/{action}`: an operator's button.
pub async fn saga_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let Some((who, token)) = session(&state, &headers) else {
        return Err(ApiError::Unauthorized("sign in first".to_owned()));
    };
    if form.csrf != csrf_token(&token) {
        return Err(ApiError::Forbidden(
            "the form is stale or forged; reload the page".to_owned(),
        ));
    }
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("saga id {id:?} is not a UUID")))?;
    let action = Action::parse(&action).ok_or(ApiError::NotFound {
        what: "action",
        id: action.clone(),
    })?;
    let message = match operator::act(
        &state.pool,
        id,
        action,
        &who.operator(),
        Some("from the dashboard"),
    )
    .await
    {
        Ok(outcome) => format!("{}: {outcome}", action.as_str()),
        Err(error) => match ApiError::from(error) {
            ApiError::Conflict { detail, .. } => format!("{} refused: {detail}", action.as_str()),
            other => return Err(other),
        },
    };
    let query: String = form_urlencoded(&message);
    Ok(Redirect::to(&format!("/admin/sagas/{id}?done={query}")).into_response())
}

/// Percent-encodes a query value (spaces as `+`).
fn form_urlencoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
