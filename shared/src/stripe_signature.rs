//! The `Stripe-Signature` header of a payment provider's webhook: the payment simulator signs its deliveries
//! with [`sign`], the API checks what arrives with [`verify`], so both ends speak Stripe's scheme and a real
//! Stripe account's webhooks verify too.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`. Each `v1` is the lowercase hex of HMAC-SHA256 over
//! `"{t}.{raw body}"`, keyed with an endpoint secret's bytes as they are (`whsec_…`, prefix included). While a
//! secret is rolled the sender signs once per secret, so a request is genuine when any `v1` matches any secret
//! the receiver holds. Other schemes (Stripe's `v0` of test events) are ignored, so nothing downgrades the check.
//! Stripe's libraries accept 300 s of age; this check also refuses a timestamp that far in the future.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header's name, as `http` spells header names.
pub const HEADER: &str = "stripe-signature";

/// Why a webhook's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("the signature's timestamp is {0} s from now, beyond the tolerance")]
    OutsideTolerance(i64),
    #[error("no v1 signature matches a webhook secret")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The header value for `payload` sent at `timestamp`: one `v1` per secret, in the order given.
pub fn sign<S: AsRef<[u8]>>(secrets: &[S], timestamp: i64, payload: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let signature = mac(secret.as_ref(), timestamp, payload).finalize().into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex(&signature));
    }
    header
}

/// Checks `header` (absent: `None`) over the raw `payload` against every secret, at `now`, allowing
/// `tolerance_secs` either way. Answers the signed timestamp. Every comparison is constant-time
/// (`Mac::verify_slice`), and every `v1` is tried against every secret, so the time taken does not say which
/// one came close.
pub fn verify<S: AsRef<[u8]>>(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[S],
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (scheme, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an item is not key=value"))?;
        match scheme {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t is not a number of seconds"))?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed("t is given twice"));
                }
            }
            // A signature that is not 32 bytes of hex cannot match; it is skipped, as Stripe's libraries do.
            "v1" => signatures.extend(unhex(value).filter(|bytes| bytes.len() == 32)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("t is missing"))?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance(skew));
    }
    let mut matched = false;
    for secret in secrets {
        let mac = mac(secret.as_ref(), timestamp, payload);
        for signature in &signatures {
            matched |= mac.clone().verify_slice(signature).is_ok();
        }
    }
    if matched {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    /// A known answer, computed apart from this code:
    /// `printf '1700000000.{"id":"evt_1","object":"event"}' | openssl dgst -sha256 -hmac whsec_test_secret`.
    #[test]
    fn signs_as_stripe_does() {
        assert_eq!(
            sign(&[SECRET], 1_700_000_000, BODY),
            "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"
        );
    }

    #[test]
    fn a_signed_payload_verifies_within_the_tolerance_either_way() {
        let header = sign(&[SECRET], 1_000, BODY);
        assert_eq!(verify(Some(&header), BODY, &[SECRET], 1_000, 300), Ok(1_000));
        assert_eq!(verify(Some(&header), BODY, &[SECRET], 1_300, 300), Ok(1_000));
        assert_eq!(verify(Some(&header), BODY, &[SECRET], 700, 300), Ok(1_000));
        assert_eq!(
            verify(Some(&header), BODY, &[SECRET], 1_301, 300),
            Err(SignatureError::OutsideTolerance(301))
        );
        assert_eq!(
            verify(Some(&header), BODY, &[SECRET], 699, 300),
            Err(SignatureError::OutsideTolerance(-301))
        );
    }

    #[test]
    fn a_changed_body_a_changed_time_or_another_secret_does_not_verify() {
        let header = sign(&[SECRET], 1_000, BODY);
        let changed = br#"{"id":"evt_2","object":"event"}"#;
        assert_eq!(
            verify(Some(&header), changed, &[SECRET], 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        let moved = header.replace("t=1000", "t=1001");
        assert_eq!(
            verify(Some(&moved), BODY, &[SECRET], 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), BODY, &["whsec_other"], 1_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn during_a_roll_any_signature_under_any_held_secret_verifies() {
        let both = sign(&["whsec_old", "whsec_new"], 1_000, BODY);
        assert_eq!(verify(Some(&both), BODY, &["whsec_new"], 1_000, 300), Ok(1_000));
        let old_only = sign(&["whsec_old"], 1_000, BODY);
        assert_eq!(
            verify(Some(&old_only), BODY, &["whsec_new", "whsec_old"], 1_000, 300),
            Ok(1_000)
        );
    }

    #[test]
    fn malformed_headers_and_other_schemes_are_refused() {
        let v0 = sign(&[SECRET], 1_000, BODY).replace("v1=", "v0=");
        assert_eq!(
            verify(Some(&v0), BODY, &[SECRET], 1_000, 300),
            Err(SignatureError::NoSignature),
            "a v0 signature is never checked"
        );
        assert_eq!(
            verify(None, BODY, &[SECRET], 1_000, 300),
            Err(SignatureError::Missing)
        );
        for header in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1,t=2,v1=00"] {
            assert!(
                matches!(
                    verify(Some(header), BODY, &[SECRET], 1_000, 300),
                    Err(SignatureError::Malformed(_) | SignatureError::NoSignature)
                ),
                "{header:?}"
            );
        }
        assert_eq!(
            verify(Some("t=1000,v1=zz"), BODY, &[SECRET], 1_000, 300),
            Err(SignatureError::NoSignature)
        );
    }
}
