//! `PUT /v1/skus/{sku}` and `GET /v1/skus/{sku}`: stock and price of one sku, with the version of its stock as
//! an `ETag`, which a `PUT` may be made conditional on (`If-Match`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_shared::input::{self, FieldError};
use orderflow_shared::inventory::{self, Expected, SkuSet, StockSet, StockVersion, ledger};
use orderflow_shared::money::{self, Currency};
use orderflow_shared::order::Fulfilment;
use serde::Deserialize;

use crate::caller::{Authorized, CatalogRead, CatalogWrite};
use crate::extract::JsonBody;
use crate::views::SkuView;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertSkuRequest {
    /// Units in the warehouse.
    pub on_hand: i64,
    /// Unit price in minor units (cents).
    pub price: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The location whose `on_hand` this is; `default` when absent. The price is the sku's, wherever it is.
    pub location: Option<String>,
    /// `auto` or `shipment`: how orders of the sku are fulfilled. Absent keeps the sku's mode (a new sku's is
    /// `auto`). Orders already placed keep the mode they were created with.
    pub fulfilment: Option<String>,
}

/// Creates a sku (201) or sets its stock at a location (`default` unless named) and its price (200). With `If-Match` (an `ETag` a read returned, or `*` for
/// any existing sku) the set happens only if the sku's stock is still at that version: a stock count that read
/// `on_hand` while an order committed its units would otherwise write the old figure back over the commit.
#[utoipa::path(put, path = "/v1/skus/{sku}", operation_id = "put_sku", security(("api_key" = ["catalog:write"])), request_body = UpsertSkuRequest,
    params(("If-Match" = Option<String>, Header, description = "The sku's ETag as read (\"123\"), several comma-separated, or *: set only if the stock is still at that version")),
    responses(
        (status = 201, description = "Created; `version` is the stock's version to send as If-Match (quoted)", body = SkuView),
        (status = 200, description = "Updated; `version` is the stock's version to send as If-Match (quoted)", body = SkuView),
        (status = 400, description = "If-Match is not a list of entity tags", body = crate::error::Problem),
        (status = 409, description = "on_hand below the units reserved at the location", body = crate::error::Problem),
        (status = 412, description = "If-Match does not match: the stock moved since it was read, or there is no such sku; nothing written", body = crate::error::Problem),
        (status = 422, description = "Invalid field, or a location that is not one", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn upsert(
    State(state): State<AppState>,
    authorized: Authorized<CatalogWrite>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: JsonBody<UpsertSkuRequest>,
) -> Result<Response, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let expected = expected_version(&headers)?;
    let request = body.parsed;
    let on_hand = money::parse_stock(request.on_hand).map_err(|e| FieldError::new("on_hand", e))?;
    let price = money::parse_price(request.price).map_err(|e| FieldError::new("price", e))?;
    let currency = Currency::parse(&request.currency).map_err(|e| FieldError::new("currency", e))?;
    let location = request.location.as_deref().unwrap_or(ledger::DEFAULT_LOCATION);
    inventory::check_location_code("location", location)?;
    let fulfilment = request
        .fulfilment
        .as_deref()
        .map(|mode| input::one_of("fulfilment", mode, &Fulfilment::ALL, Fulfilment::as_str))
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    let actor = authorized.caller.idempotency_scope();
    let set = StockSet {
        sku: &sku,
        location,
        on_hand,
        price,
        currency: currency.as_str(),
        fulfilment,
        expected: &expected,
        actor: &actor,
    };
    let (status, stock) = match inventory::upsert(&mut conn, &set).await? {
        SkuSet::Created(stock) => (StatusCode::CREATED, stock),
        SkuSet::Updated(stock) => (StatusCode::OK, stock),
        SkuSet::VersionMoved(Some(current)) => {
            return Err(ApiError::PreconditionFailed(format!(
                "the stock of {sku} moved since it was read: its version is now {}; nothing was written",
                etag(current)
            )));
        }
        SkuSet::VersionMoved(None) => {
            return Err(ApiError::PreconditionFailed(format!(
                "there is no sku {sku} for If-Match to match; nothing was written"
            )));
        }
        SkuSet::NoSuchLocation => {
            return Err(FieldError::new("location", format!("{location:?} is not a location")).into());
        }
    };
    // No ETag: RFC 9110 §9.3.4 allows one on a PUT's answer only when the body sent is stored as sent, and this
    // answer is another representation. Its `version` is the one to send next.
    Ok((status, Json(SkuView::new(stock))).into_response())
}

#[utoipa::path(get, path = "/v1/skus/{sku}", operation_id = "get_sku", security(("api_key" = ["catalog:read"])),
    params(
        ("If-Match" = Option<String>, Header, description = "Answer only if the stock is at one of these versions, else 412"),
        ("If-None-Match" = Option<String>, Header, description = "304 (no body) if the stock is still at one of these versions (weak comparison), or at any with *"),
    ),
    responses(
    (status = 200, description = "The sku", body = SkuView, headers(("ETag" = String, description = "The version of the sku's stock: send it as If-Match to set the stock only if it has not moved"))),
    (status = 304, description = "Not modified: the stock is at a version If-None-Match names", headers(("ETag" = String, description = "The version of the sku's stock"))),
    (status = 400, description = "If-Match or If-None-Match is not a list of entity tags", body = crate::error::Problem),
    (status = 404, description = "No such sku", body = crate::error::Problem),
    (status = 412, description = "If-Match names another version", body = crate::error::Problem),
    (status = 422, description = "Not a sku code", body = crate::error::Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Authorized<CatalogRead>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let expected = expected_version(&headers)?;
    let unless = versions_not_wanted(&headers)?;
    let stock = inventory::find_stock(&state.pool, &sku)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: "sku",
            id: sku.clone(),
        })?;
    let version = stock.version;
    // RFC 9110 §13.2.2: If-Match first, then If-None-Match.
    if !expected.admits(version) {
        return Err(ApiError::PreconditionFailed(format!(
            "the stock of {sku} is at version {}, not one If-Match names",
            etag(version)
        )));
    }
    if unless.is_some_and(|unless| unless.admits(version)) {
        return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), version));
    }
    Ok(with_etag(Json(SkuView::new(stock)).into_response(), version))
}

/// A strong entity tag of a stock version: `"123"`.
fn etag(version: StockVersion) -> String {
    format!("\"{}\"", version.0)
}

fn with_etag(mut response: Response, version: StockVersion) -> Response {
    if let Ok(value) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The version `If-Match` asks for (RFC 9110 §13.1.1): absent, any; else as [`listed_versions`] reads it, with
/// strong comparison (a weak tag matches nothing).
fn expected_version(headers: &HeaderMap) -> Result<Expected, ApiError> {
    Ok(listed_versions(headers, "If-Match", Comparison::Strong)?.unwrap_or(Expected::Any))
}

/// The versions `If-None-Match` names (RFC 9110 §13.1.2), with weak comparison (`W/"5"` names 5 too); `None`
/// without the header.
fn versions_not_wanted(headers: &HeaderMap) -> Result<Option<Expected>, ApiError> {
    listed_versions(headers, "If-None-Match", Comparison::Weak)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// The versions a conditional header names: `None` without it; `*` (the whole value) any existing sku; else the
/// versions of the list's entity tags, compared character for character with [`etag`]'s form (a tag this API
/// never made matches nothing). A value outside the grammar is 400.
fn listed_versions(
    headers: &HeaderMap,
    name: &'static str,
    comparison: Comparison,
) -> Result<Option<Expected>, ApiError> {
    let lines: Vec<&[u8]> = headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
    if lines.is_empty() {
        return Ok(None);
    }
    if let [line] = lines.as_slice()
        && line.trim_ascii() == b"*"
    {
        return Ok(Some(Expected::Exists));
    }
    let mut versions = Vec::new();
    for line in lines {
        let tags = entity_tags(line).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be * or a comma-separated list of entity tags such as \"123\""
            ))
        })?;
        for tag in tags {
            let tag = match (comparison, tag.strip_prefix(b"W/")) {
                (Comparison::Strong, Some(_)) => continue,
                (Comparison::Weak, Some(opaque)) => opaque,
                (_, None) => tag,
            };
            versions.extend(version_of(tag));
        }
    }
    Ok(Some(Expected::OneOf(versions)))
}

/// The entity tags of one `If-Match` line (`#entity-tag`: empty items are skipped), as written, `W/` included;
/// `None` if the line is not such a list.
fn entity_tags(line: &[u8]) -> Option<Vec<&[u8]>> {
    let mut tags = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_ascii_start();
        while let Some(after) = rest.strip_prefix(b",") {
            rest = after.trim_ascii_start();
        }
        if rest.is_empty() {
            return Some(tags);
        }
        let start = rest;
        if let Some(after) = rest.strip_prefix(b"W/") {
            rest = after;
        }
        let after_quote = rest.strip_prefix(b"\"")?;
        // etagc: %x21 / %x23-7E / obs-text.
        let end = after_quote.iter().position(|&b| b == b'"')?;
        if !after_quote[..end]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80)
        {
            return None;
        }
        let tag_len = start.len() - after_quote.len() + end + 1;
        tags.push(&start[..tag_len]);
        rest = after_quote[end + 1..].trim_ascii_start();
        if !rest.is_empty() {
            rest = rest.strip_prefix(b",")?;
        }
    }
}

/// The stock version a strong entity tag names, if it is one this API makes: exactly [`etag`]'s form.
fn version_of(tag: &[u8]) -> Option<StockVersion> {
    let inner = std::str::from_utf8(tag.strip_prefix(b"\"")?.strip_suffix(b"\"")?).ok()?;
    let number: i64 = inner.parse().ok()?;
    (number.to_string() == inner).then_some(StockVersion(number))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn if_match(lines: &[&str]) -> Result<Expected, ApiError> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(header::IF_MATCH, HeaderValue::from_str(line).unwrap());
        }
        expected_version(&headers)
    }

    fn versions(numbers: &[i64]) -> Expected {
        Expected::OneOf(numbers.iter().map(|&n| StockVersion(n)).collect())
    }

    #[test]
    fn if_match_is_any_star_or_the_strong_tags_it_lists() {
        assert_eq!(if_match(&[]).unwrap(), Expected::Any);
        assert_eq!(if_match(&[" * "]).unwrap(), Expected::Exists);
        assert_eq!(if_match(&["\"5\""]).unwrap(), versions(&[5]));
        assert_eq!(
            if_match(&["\"5\", , \"6\",", "\"7\""]).unwrap(),
            versions(&[5, 6, 7])
        );
        assert_eq!(
            if_match(&["W/\"5\", \"a,b\", \"+5\", \"05\", \"99999999999999999999\""]).unwrap(),
            versions(&[]),
            "weak tags, tags this API never made and numbers not written as it writes them match nothing"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_MATCH,
            HeaderValue::from_bytes(b"\"caf\xc3\xa9\"").unwrap(),
        );
        assert_eq!(
            expected_version(&headers).unwrap(),
            versions(&[]),
            "obs-text is a tag, not an error"
        );
    }

    #[test]
    fn an_if_match_outside_the_grammar_is_a_bad_request() {
        for bad in [
            "5",
            "\"5",
            "\"5\" \"6\"",
            "\"5\", *",
            "*, \"5\"",
            "W/5",
            "\"a b\"",
        ] {
            assert!(
                matches!(if_match(&[bad]), Err(ApiError::BadRequest(_))),
                "{bad:?} was taken"
            );
        }
        assert!(
            matches!(if_match(&["*", "\"5\""]), Err(ApiError::BadRequest(_))),
            "* with more lines"
        );
    }
}
