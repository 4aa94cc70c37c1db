//! What is wrong with a client's input, and where: [`FieldError`] names the field by its path in the request
//! (`lines[0].quantity`), so every rejection of a field reads the same whichever module checks it.

/// Longest free text a field takes (names, tokens, keys).
pub const MAX_TEXT: usize = 255;

/// A field with a value that is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path in the request, such as `lines[0].quantity`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Refuses text with a control character (Unicode category Cc: U+0000–U+001F, U+007F–U+009F) or a
/// bidirectional embedding, override or isolate (U+202A–U+202E, U+2066–U+2069), naming the first one: such text
/// is not a name, a token or a note, PostgreSQL refuses U+0000, and the others rewrite a terminal or what a
/// page shows.
pub fn check_plain(field: &str, text: &str) -> Result<(), FieldError> {
    let bad = text
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'));
    match bad {
        None => Ok(()),
        Some((at, c)) => Err(FieldError::new(
            field,
            format!(
                "must not contain control characters (U+{:04X} at character {at})",
                u32::from(c)
            ),
        )),
    }
}

/// A filter's text as given (not trimmed): plain (`check_plain`) and at most `MAX_TEXT` characters.
pub fn filter_text(field: &str, value: &str) -> Result<String, FieldError> {
    check_plain(field, value)?;
    if value.chars().count() > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// `value` trimmed, if it is not empty, plain (`check_plain`) and at most `MAX_TEXT` characters.
pub fn required_text(field: &str, value: &str) -> Result<String, FieldError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    check_plain(field, trimmed)?;
    if trimmed.chars().count() > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// `value` trimmed, `None` if it is empty; plain (`check_plain`) and at most `max` characters.
pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, FieldError> {
    let text = value.map(str::trim).filter(|v| !v.is_empty());
    if let Some(text) = text {
        check_plain(field, text)?;
    }
    if text.is_some_and(|t| t.chars().count() > max) {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(text.map(str::to_owned))
}

/// The `limit` of a list: `default` when absent, else a whole number from 1 to `max`.
pub fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, FieldError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.parse::<i64>()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| FieldError::new("limit", format!("{raw:?} is not a whole number from 1 to {max}")))
}

/// An id cursor (`after`): the last id of the previous page, when given.
pub fn id_cursor(raw: Option<&str>) -> Result<Option<uuid::Uuid>, FieldError> {
    raw.map(|raw| {
        uuid::Uuid::parse_str(raw).map_err(|_| FieldError::new("after", format!("{raw:?} is not a cursor")))
    })
    .transpose()
}

/// A numeric id cursor (`after`): the last id of the previous page (a positive whole number), when given.
pub fn number_cursor(raw: Option<&str>) -> Result<Option<i64>, FieldError> {
    raw.map(|raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| FieldError::new("after", format!("{raw:?} is not a cursor")))
    })
    .transpose()
}

/// One of an enum's stable names (`parse`), or the field's error listing them all.
pub fn one_of<T: Copy>(
    field: &str,
    raw: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, FieldError> {
    all.iter().copied().find(|v| name(*v) == raw).ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|v| name(*v)).collect();
        FieldError::new(field, format!("{raw:?} is not one of {}", known.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(required_text("f", "  a b "), Ok("a b".to_owned()));
        assert_eq!(
            required_text("f", "  ").map_err(|e| e.to_string()),
            Err("f: must not be empty".to_owned())
        );
        assert!(required_text("f", &"x".repeat(MAX_TEXT + 1)).is_err());
        assert_eq!(optional_text("note", Some("  "), 5), Ok(None));
        assert_eq!(optional_text("note", Some(" hi "), 5), Ok(Some("hi".to_owned())));
        assert!(optional_text("note", Some("toolong"), 5).is_err());
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_refused_by_name() {
        for bad in [
            "a\u{0}b",
            "\u{1b}[2J",
            "tab\there",
            "\u{7f}",
            "next\u{85}line",
            "evil\u{202E}gpj.exe",
            "\u{2066}x",
        ] {
            assert!(
                required_text("customer_id", bad).is_err_and(|e| e.field == "customer_id"),
                "{bad:?}"
            );
            assert!(optional_text("note", Some(bad), 500).is_err(), "{bad:?}");
            assert!(filter_text("error", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            required_text("f", "a\u{0}").map_err(|e| e.message),
            Err("must not contain control characters (U+0000 at character 1)".to_owned())
        );
        for good in ["Zoë O'Brien", "客户-42", "שלום", "emoji 🎉", "a b"] {
            assert_eq!(required_text("f", good).as_deref(), Ok(good));
            assert_eq!(filter_text("f", good).as_deref(), Ok(good));
        }
    }

    #[test]
    fn limits_and_cursors_name_what_is_wrong() {
        assert_eq!(limit(None, 20, 100), Ok(20));
        assert_eq!(limit(Some("100"), 20, 100), Ok(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert_eq!(
                limit(Some(bad), 20, 100).map_err(|e| e.field),
                Err("limit".to_owned()),
                "{bad}"
            );
        }
        assert_eq!(id_cursor(None), Ok(None));
        assert_eq!(number_cursor(Some("12")), Ok(Some(12)));
        for bad in ["0", "-1", "x", "99999999999999999999"] {
            assert_eq!(
                number_cursor(Some(bad)).map_err(|e| e.field),
                Err("after".to_owned()),
                "{bad}"
            );
        }
        assert_eq!(id_cursor(Some("x")).map_err(|e| e.field), Err("after".to_owned()));
        assert_eq!(
            one_of("n", "b", &[1, 2], |v| if v == 1 { "a" } else { "b" }),
            Ok(2)
        );
        assert_eq!(
            one_of("n", "c", &[1, 2], |v| if v == 1 { "a" } else { "b" }).map_err(|e| e.message),
            Err("\"c\" is not one of a, b".to_owned())
        );
    }
}
