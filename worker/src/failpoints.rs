//! Failpoints for tests (the `fail` crate, compiled in with the `failpoints` feature only). A step's failpoint is
//! configured as `return(<customer id>)` and fires for that customer's orders only, so one test's order fails
//! while others in the same process run normally; a failpoint outside a saga (the relay's) fires on any `return`.

use anyhow::anyhow;

use crate::error::StepError;

/// True when failpoint `name` is configured and, if `customer_id` is given, configured for that customer. It is
/// evaluated (which counts against a counted failpoint such as `1*return(c)`) only for the customer it is set for:
/// the other orders of a batch must not use it up.
pub fn hit(name: &str, customer_id: Option<&str>) -> bool {
    #[cfg(feature = "failpoints")]
    {
        if let Some(customer_id) = customer_id
            && !armed(name, customer_id)
        {
            return false;
        }
        match fail::eval(name, |arg| arg) {
            None => false,
            Some(arg) => customer_id.is_none_or(|c| arg.as_deref() == Some(c)),
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, customer_id);
        false
    }
}

/// Whether failpoint `name` is set for `customer_id` (`return(<customer id>)`, counted or not), without
/// evaluating it.
#[cfg(feature = "failpoints")]
fn armed(name: &str, customer_id: &str) -> bool {
    let argument = format!("({customer_id})");
    fail::list()
        .iter()
        .any(|(point, actions)| point == name && actions.contains(&argument))
}

/// Kills the whole process here, as `kill -9` would: nothing after it runs, no destructor, no shutdown. For
/// tests that run the worker as a process.
pub fn abort(name: &str, customer_id: Option<&str>) {
    if hit(name, customer_id) {
        tracing::error!(failpoint = name, "failpoint: aborting the process");
        std::process::abort();
    }
}

/// Simulates the step dying here: a transient failure of this attempt.
pub fn crash(name: &str, customer_id: &str) -> Result<(), StepError> {
    if hit(name, Some(customer_id)) {
        return Err(StepError::Transient(anyhow!("failpoint {name}")));
    }
    Ok(())
}
