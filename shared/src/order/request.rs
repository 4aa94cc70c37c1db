//! A create-order request as clients send it, and the checks it passes before anything is written: field
//! formats and bounds ([`CreateOrderRequest::validate`], no database needed), then the catalogue
//! ([`ValidOrder::price`]: every sku exists and is priced in the order's currency). Every rejection names the
//! field by its path (`lines[0].quantity`).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::input::{FieldError, required_text};
use crate::inventory::{self, SkuRow};
use crate::money::{self, Currency, Quantity};

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    pub customer_id: String,
    pub currency: String,
    pub lines: Vec<LineRequest>,
    /// The payment method the provider charges, e.g. `pm_card_visa`.
    pub payment_token: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: String,
    pub quantity: i64,
}

/// A request whose fields are all valid; its prices come from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub customer_id: String,
    pub payment_token: String,
    pub currency: Currency,
    /// (sku, quantity) in request order, each sku once.
    pub lines: Vec<(String, Quantity)>,
}

/// A line with its unit price taken from the catalogue when the order is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub sku: String,
    pub quantity: Quantity,
    pub unit_price: i64,
}

impl CreateOrderRequest {
    /// Checks everything that needs no database: text fields, the currency, the lines (at least one, at most
    /// `money::MAX_ORDER_LINES`, each sku a valid code and named once, each quantity in bounds).
    pub fn validate(&self) -> Result<ValidOrder, FieldError> {
        let customer_id = required_text("customer_id", &self.customer_id)?;
        let payment_token = required_text("payment_token", &self.payment_token)?;
        let currency = Currency::parse(&self.currency).map_err(|e| FieldError::new("currency", e))?;
        if self.lines.is_empty() {
            return Err(FieldError::new("lines", "an order needs at least one line"));
        }
        if self.lines.len() > money::MAX_ORDER_LINES {
            return Err(FieldError::new(
                "lines",
                format!("at most {} lines", money::MAX_ORDER_LINES),
            ));
        }
        let mut seen = HashSet::new();
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            inventory::check_sku_code(&format!("lines[{i}].sku"), &line.sku)?;
            if !seen.insert(line.sku.as_str()) {
                return Err(FieldError::new(
                    format!("lines[{i}].sku"),
                    format!(
                        "sku {:?} appears on more than one line; put the whole quantity on one",
                        line.sku
                    ),
                ));
            }
            let quantity = Quantity::parse(line.quantity)
                .map_err(|e| FieldError::new(format!("lines[{i}].quantity"), e))?;
            lines.push((line.sku.clone(), quantity));
        }
        Ok(ValidOrder {
            customer_id,
            payment_token,
            currency,
            lines,
        })
    }
}

impl ValidOrder {
    /// The skus the order names, in request order.
    pub fn skus(&self) -> Vec<&str> {
        self.lines.iter().map(|(sku, _)| sku.as_str()).collect()
    }

    /// Prices every line from `catalogue` (the skus found) and totals the order: an unknown sku, or one priced in
    /// another currency, is the line's error; a total that overflows is the lines'.
    pub fn price(&self, catalogue: &[SkuRow]) -> Result<(Vec<PricedLine>, i64), FieldError> {
        let catalogue: HashMap<&str, &SkuRow> = catalogue.iter().map(|s| (s.sku.as_str(), s)).collect();
        let mut priced = Vec::with_capacity(self.lines.len());
        for (i, (sku, quantity)) in self.lines.iter().enumerate() {
            let row = catalogue
                .get(sku.as_str())
                .ok_or_else(|| FieldError::new(format!("lines[{i}].sku"), format!("unknown sku {sku:?}")))?;
            if row.currency != self.currency.as_str() {
                return Err(FieldError::new(
                    format!("lines[{i}].sku"),
                    format!(
                        "sku {sku:?} is priced in {}, the order is in {}",
                        row.currency, self.currency
                    ),
                ));
            }
            priced.push(PricedLine {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price: row.price,
            });
        }
        let total = money::order_total(priced.iter().map(|l| (l.quantity, l.unit_price)))
            .map_err(|e| FieldError::new("lines", e))?;
        Ok((priced, total))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::Utc;

    use super::*;

    fn request(lines: &[(&str, i64)]) -> CreateOrderRequest {
        CreateOrderRequest {
            customer_id: " c1 ".to_owned(),
            currency: "USD".to_owned(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| LineRequest {
                    sku: (*sku).to_owned(),
                    quantity: *quantity,
                })
                .collect(),
            payment_token: "pm_card_visa".to_owned(),
        }
    }

    fn sku(code: &str, price: i64, currency: &str) -> SkuRow {
        SkuRow {
            sku: code.to_owned(),
            on_hand: 10,
            reserved: 0,
            price,
            currency: currency.to_owned(),
            fulfilment: crate::order::Fulfilment::Auto,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn field_of(result: Result<ValidOrder, FieldError>) -> String {
        result.err().map(|e| e.field).unwrap_or_default()
    }

    #[test]
    fn a_valid_request_is_trimmed_and_keeps_its_lines_in_order() {
        let valid = request(&[("b", 2), ("a", 1)]).validate().unwrap();
        assert_eq!(valid.customer_id, "c1");
        assert_eq!(valid.skus(), ["b", "a"]);
    }

    #[test]
    fn each_rejection_names_the_field_by_its_path() {
        assert_eq!(field_of(request(&[]).validate()), "lines");
        assert_eq!(
            field_of(request(&[("a", 1), ("b", 0)]).validate()),
            "lines[1].quantity"
        );
        assert_eq!(
            field_of(request(&[("a", 1), ("a", 2)]).validate()),
            "lines[1].sku"
        );
        assert_eq!(field_of(request(&[("no spaces", 1)]).validate()), "lines[0].sku");
        let mut bad = request(&[("a", 1)]);
        bad.currency = "usd".to_owned();
        assert_eq!(field_of(bad.validate()), "currency");
        let mut bad = request(&[("a", 1)]);
        bad.payment_token = "  ".to_owned();
        assert_eq!(field_of(bad.validate()), "payment_token");
        let many: Vec<(String, i64)> = (0..=money::MAX_ORDER_LINES)
            .map(|i| (format!("s{i}"), 1))
            .collect();
        let many: Vec<(&str, i64)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert_eq!(field_of(request(&many).validate()), "lines");
    }

    #[test]
    fn pricing_takes_the_catalogue_price_and_names_an_unknown_or_foreign_sku() {
        let valid = request(&[("a", 2), ("b", 1)]).validate().unwrap();
        let (lines, total) = valid
            .price(&[sku("a", 1999, "USD"), sku("b", 500, "USD")])
            .unwrap();
        assert_eq!(total, 4498);
        assert_eq!(lines[0].unit_price, 1999);
        let unknown = valid.price(&[sku("a", 1999, "USD")]).unwrap_err();
        assert_eq!(unknown.field, "lines[1].sku");
        let foreign = valid
            .price(&[sku("a", 1999, "EUR"), sku("b", 500, "USD")])
            .unwrap_err();
        assert_eq!(foreign.field, "lines[0].sku");
    }
}
