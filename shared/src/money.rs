//! Value types for amounts, currencies and quantities, each parsed once at the edge.

use std::fmt;

/// Largest quantity one order line may ask for; more is treated as a mistake, not an order.
pub const MAX_LINE_QUANTITY: i64 = 10_000;
/// Largest number of lines in one order.
pub const MAX_ORDER_LINES: usize = 100;
/// Largest stock level accepted: far beyond any real catalogue, far below i64 overflow.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Largest order total (minor units): what the payment provider accepts in one charge (Stripe's limit is eight
/// digits, 999,999.99 in a two-decimal currency). A unit price cannot be more.
pub const MAX_ORDER_TOTAL: i64 = 99_999_999;
pub const MAX_PRICE: i64 = MAX_ORDER_TOTAL;

/// The ISO 4217 codes of the currencies in circulation (157; not the funds codes, precious metals or test codes),
/// sorted.
pub const ISO_4217: [&str; 157] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD",
    "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY",
    "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP",
    "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR",
    "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD",
    "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must be the ISO 4217 code of a currency in circulation, in upper case, such as \"USD\"")]
    Currency,
    #[error("must be a whole number from 1 to {MAX_LINE_QUANTITY}")]
    Quantity,
    #[error("must be a whole number of minor units from 1 to {MAX_PRICE}")]
    Price,
    #[error("must be a whole number from 0 to {MAX_STOCK}")]
    Stock,
    #[error("the order total is over {MAX_ORDER_TOTAL} minor units, the most one payment can be")]
    Total,
}

/// An ISO 4217 currency code, such as `USD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency(String);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, ValueError> {
        if ISO_4217.binary_search(&code).is_ok() {
            Ok(Self(code.to_owned()))
        } else {
            Err(ValueError::Currency)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many units of one sku an order line asks for: 1..=MAX_LINE_QUANTITY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i64);

impl Quantity {
    pub fn parse(value: i64) -> Result<Self, ValueError> {
        if (1..=MAX_LINE_QUANTITY).contains(&value) {
            Ok(Self(value))
        } else {
            Err(ValueError::Quantity)
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A price in minor units (cents): 1..=MAX_PRICE (nothing is sold for nothing).
pub fn parse_price(value: i64) -> Result<i64, ValueError> {
    if (1..=MAX_PRICE).contains(&value) {
        Ok(value)
    } else {
        Err(ValueError::Price)
    }
}

/// A stock level: 0..=MAX_STOCK.
pub fn parse_stock(value: i64) -> Result<i64, ValueError> {
    if (0..=MAX_STOCK).contains(&value) {
        Ok(value)
    } else {
        Err(ValueError::Stock)
    }
}

/// Sums `quantity × unit_price` over lines: at most `MAX_ORDER_TOTAL`.
pub fn order_total(lines: impl IntoIterator<Item = (Quantity, i64)>) -> Result<i64, ValueError> {
    lines.into_iter().try_fold(0i64, |total, (quantity, unit_price)| {
        quantity
            .get()
            .checked_mul(unit_price)
            .and_then(|line| total.checked_add(line))
            .filter(|total| *total <= MAX_ORDER_TOTAL)
            .ok_or(ValueError::Total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_accepts_only_iso_4217_codes_in_circulation() {
        for good in ["USD", "EUR", "JPY", "GBP", "CHF", "XOF"] {
            assert!(Currency::parse(good).is_ok(), "{good}");
        }
        assert!(
            ISO_4217.windows(2).all(|w| w[0] < w[1]),
            "sorted, for the binary search"
        );
        for bad in ["usd", "US", "USDD", "U$D", "", "ABC", "XXX", "XAU", "XTS", "HRK"] {
            assert_eq!(Currency::parse(bad), Err(ValueError::Currency), "{bad:?}");
        }
    }

    #[test]
    fn quantity_is_bounded_on_both_sides() {
        assert_eq!(Quantity::parse(1).map(Quantity::get), Ok(1));
        assert_eq!(
            Quantity::parse(MAX_LINE_QUANTITY).map(Quantity::get),
            Ok(MAX_LINE_QUANTITY)
        );
        for bad in [0, -1, MAX_LINE_QUANTITY + 1, i64::MAX] {
            assert_eq!(Quantity::parse(bad), Err(ValueError::Quantity), "{bad}");
        }
    }

    #[test]
    fn order_total_multiplies_and_sums() -> Result<(), ValueError> {
        let total = order_total([(Quantity::parse(2)?, 1999), (Quantity::parse(1)?, 500)])?;
        assert_eq!(total, 4498);
        Ok(())
    }

    #[test]
    fn order_total_reports_overflow() -> Result<(), ValueError> {
        let big = Quantity::parse(MAX_LINE_QUANTITY)?;
        assert_eq!(order_total([(big, i64::MAX / 2)]), Err(ValueError::Total));
        Ok(())
    }
}
