//! Parsing of path segments and query parameters into typed values, with
//! errors that say which parameter was wrong and what it accepts.

use std::time::Duration;

use crate::ApiError;

/// Parses an instant given as unix milliseconds or RFC 3339
/// (`2026-11-22T07:00:00Z`), returning unix milliseconds.
pub fn instant(name: &'static str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_time",
                format!(
                    "{name} must be unix milliseconds or RFC 3339 (e.g. 2026-11-22T07:00:00Z), got {value:?}"
                ),
            )
        })
}

/// Parses a step such as `5m`, `1h`, `60s` or a number of milliseconds.
pub fn step(value: &str) -> Result<Duration, ApiError> {
    let parsed = match value.parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => humantime::parse_duration(value),
    };
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(ApiError::bad_request(
            "bad_step",
            format!(
                "step must be a positive duration (e.g. 5m, 1h, or milliseconds), got {value:?}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_accept_both_forms() {
        assert_eq!(instant("from", "1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            instant("from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(instant("from", "yesterday").is_err());
        assert!(instant("from", "").is_err());
    }

    #[test]
    fn steps_must_be_positive() {
        assert_eq!(step("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(step("1500").unwrap(), Duration::from_millis(1_500));
        assert!(step("0").is_err());
        assert!(step("fast").is_err());
    }
}
