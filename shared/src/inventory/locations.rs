//! Stock locations (`locations`): the warehouses and stores stock is held at, and the allocation order among them
//! (`priority`, lower first). The migrations make one, `default`; clients add more. A location is never deleted:
//! its movements name it for good.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use crate::input::{self, FieldError};

/// A location as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Location {
    pub code: String,
    pub name: String,
    /// Allocation order among locations that can each serve a line: lower first, then by code.
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /v1/locations/{code}` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationRequest {
    /// 1–255 characters: "Berlin warehouse".
    pub name: String,
    /// Allocation order, 0–1,000,000 (lower first); 100 when absent.
    pub priority: Option<i32>,
}

/// The most a priority may be.
pub const MAX_PRIORITY: i32 = 1_000_000;

/// A location request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLocation {
    pub name: String,
    pub priority: i32,
}

impl LocationRequest {
    pub fn validate(&self) -> Result<ValidLocation, FieldError> {
        let priority = self.priority.unwrap_or(100);
        if !(0..=MAX_PRIORITY).contains(&priority) {
            return Err(FieldError::new(
                "priority",
                format!("must be a whole number from 0 to {MAX_PRIORITY}"),
            ));
        }
        Ok(ValidLocation {
            name: input::required_text("name", &self.name)?,
            priority,
        })
    }
}

/// Every location, in allocation order.
pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<Location>, sqlx::Error> {
    sqlx::query_as!(
        Location,
        "select code, name, priority, created_at, updated_at from locations order by priority, code"
    )
    .fetch_all(executor)
    .await
}

/// Creates the location or sets its name and priority; whether it was created, and the location as stored.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    code: &str,
    location: &ValidLocation,
) -> Result<(bool, Location), sqlx::Error> {
    let row = sqlx::query!(
        r#"insert into locations (code, name, priority) values ($1, $2, $3)
           on conflict (code) do update set name = excluded.name, priority = excluded.priority, updated_at = now()
           returning code, name, priority, created_at, updated_at, (xmax = 0) as "created!""#,
        code,
        location.name,
        location.priority
    )
    .fetch_one(executor)
    .await?;
    Ok((
        row.created,
        Location {
            code: row.code,
            name: row.name,
            priority: row.priority,
            created_at: row.created_at,
            updated_at: row.updated_at,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_needs_a_name_and_a_priority_in_range() {
        let request = |name: &str, priority| LocationRequest {
            name: name.to_owned(),
            priority,
        };
        assert_eq!(
            request(" Berlin ", None).validate(),
            Ok(ValidLocation {
                name: "Berlin".to_owned(),
                priority: 100
            })
        );
        let field = |r: LocationRequest| r.validate().map_err(|e| e.field);
        assert_eq!(field(request("", Some(1))), Err("name".to_owned()));
        assert_eq!(field(request("x", Some(-1))), Err("priority".to_owned()));
        assert_eq!(
            field(request("x", Some(MAX_PRIORITY + 1))),
            Err("priority".to_owned())
        );
    }
}
