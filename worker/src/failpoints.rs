//! Failpoints for tests (the `fail` crate, compiled in with the `failpoints` feature only). A step's failpoint is
//! configured as `return(<customer id>)` and fires for that customer's orders only, so one test's order fails
//! while others in the same process run normally; a failpoint outside a saga (the relay's) fires on any `return`.

use anyhow::anyhow;

use crate::error::StepError;

/// True when failpoint `name` is configured and, if `customer_id` is given, configured for that customer.
pub fn hit(name: &str, customer_id: Option<&str>) -> bool {
    #[cfg(feature = "failpoints")]
    {
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
