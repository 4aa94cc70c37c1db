//! Admin authentication: a bearer token from `ORDERFLOW_ADMIN_TOKENS` names who is calling and with which
//! role. Viewers read; operators also act. No or an unknown token → 401; a viewer acting → 403.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use orderflow_shared::operator::Operator;
use orderflow_shared::settings::Role;

use crate::{ApiError, AppState};

/// The caller of an admin endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
    pub role: Role,
}

impl Admin {
    /// Refuses (403) a viewer trying to `act`.
    pub fn must_operate(&self, act: &str) -> Result<(), ApiError> {
        if self.role == Role::Operator {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} is a viewer and cannot {act}",
                self.name
            )))
        }
    }

    /// The caller as the operator actions know them.
    pub fn operator(&self) -> Operator {
        Operator {
            name: self.name.clone(),
            role: self.role,
        }
    }
}

/// The bearer token of a request (`Authorization: Bearer <token>`), for the admin API and `/v1` alike. The JSON
/// admin API takes only this; the dashboard its session cookie, so a cookie can never act on the JSON API.
pub(crate) fn bearer(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
}

/// The value of cookie `name`.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The admin a token belongs to.
pub fn authenticate(state: &AppState, token: &str) -> Option<Admin> {
    state.admin.authenticate(token).map(|known| Admin {
        name: known.name.clone(),
        role: known.role,
    })
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::Unauthorized("an admin bearer token is required".to_owned()))?;
        authenticate(state, &token)
            .ok_or_else(|| ApiError::Unauthorized("the admin token is not valid".to_owned()))
    }
}
