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
    /// Requests seen per key, including ones that failed before executing (for `pm_sim_flaky`).
    pub(crate) attempts: HashMap<String, u32>,
}

pub(crate) enum Claim {
    /// Run the request; store its result under the key afterwards.
    Run {
        attempt: u32,
    },
    Replay {
        status: StatusCode,
        body: Value,
    },
    InFlight,
    Mismatch,
}

impl Keys {
    pub(crate) fn claim(&mut self, key: &str, fingerprint: &str) -> Claim {
        let attempt = {
            let n = self.attempts.entry(key.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        match self.entries.get(key) {
            Some(Entry::Done {
                fingerprint: f,
                status,
                body,
            }) if f == fingerprint => Claim::Replay {
                status: *status,
                body: body.clone(),
            },
            Some(Entry::Done { .. }) | Some(Entry::InFlight { .. }) if !self.same(key, fingerprint) => {
                Claim::Mismatch
            }
            Some(Entry::InFlight { .. }) => Claim::InFlight,
            _ => {
                self.entries.insert(
                    key.to_owned(),
                    Entry::InFlight {
                        fingerprint: fingerprint.to_owned(),
                    },
                );
                Claim::Run { attempt }
            }
        }
    }

    fn same(&self, key: &str, fingerprint: &str) -> bool {
        match self.entries.get(key) {
            Some(Entry::InFlight { fingerprint: f }) | Some(Entry::Done { fingerprint: f, .. }) => {
                f == fingerprint
            }
            None => true,
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
