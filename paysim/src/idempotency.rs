//! Stripe's idempotency semantics: the first request with a key runs and its result is stored; a repeat with
//! the same parameters gets the stored result; other parameters are an error; a repeat while the first is
//! still running gets 409. Requests that never started executing (a 503, a validation error) store nothing,
//! so a retry runs for real.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::Value;

#[derive(Debug, Clone)]
pub(crate) enum Entry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Keys {
    pub(crate) entries: HashMap<String, Entry>,
    /// Requests seen per key (or per parameters without a key), including ones that failed before executing.
    pub(crate) attempts: HashMap<String, u32>,
}

pub(crate) enum Claim {
    /// Run the request; store its result under the key afterwards.
    Run,
    Replay {
        status: StatusCode,
        body: Value,
    },
    InFlight,
    Mismatch,
}

impl Entry {
    fn fingerprint(&self) -> &str {
        match self {
            Self::InFlight { fingerprint } | Self::Done { fingerprint, .. } => fingerprint,
        }
    }
}

impl Keys {
    /// Counts one more request for `counter` (a key, or the parameters of a request without one) and returns
    /// the count: `pm_sim_flaky` and `pm_sim_lost_response` misbehave on given attempts.
    pub(crate) fn count(&mut self, counter: &str) -> u32 {
        let n = self.attempts.entry(counter.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn claim(&mut self, key: &str, fingerprint: &str) -> Claim {
        match self.entries.get(key) {
            None => {
                let entry = Entry::InFlight {
                    fingerprint: fingerprint.to_owned(),
                };
                self.entries.insert(key.to_owned(), entry);
                Claim::Run
            }
            Some(entry) if entry.fingerprint() != fingerprint => Claim::Mismatch,
            Some(Entry::InFlight { .. }) => Claim::InFlight,
            Some(Entry::Done { status, body, .. }) => Claim::Replay {
                status: *status,
                body: body.clone(),
            },
        }
    }

    pub(crate) fn store(&mut self, key: &str, fingerprint: &str, status: StatusCode, body: Value) {
        self.entries.insert(
            key.to_owned(),
            Entry::Done {
                fingerprint: fingerprint.to_owned(),
                status,
                body,
            },
        );
    }

    /// The request did not execute: forget the key so that a retry runs.
    pub(crate) fn release(&mut self, key: &str) {
        if matches!(self.entries.get(key), Some(Entry::InFlight { .. })) {
            self.entries.remove(key);
        }
    }
}
