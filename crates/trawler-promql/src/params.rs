//! The Prometheus HTTP API's parameters: times and durations as
//! Prometheus 2.42 parses them, with its error messages.

use crate::QueryError;

/// The earliest time the API accepts or defaults to (Prometheus'
/// `minTime`), in unix ms. Halved from `i64::MIN` so that adding a range
/// cannot overflow.
pub const MIN_TIME_MS: i64 = i64::MIN / 4;
/// The latest time (Prometheus' `maxTime`), in unix ms.
pub const MAX_TIME_MS: i64 = i64::MAX / 4;

/// Prometheus' formatted `minTime` and `maxTime`, which clients such as
/// Grafana send for "unbounded".
const MIN_TIME_TEXT: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_TEXT: &str = "292277025-08-17T07:12:55.807Z";

/// A time parameter: unix seconds with a fraction (`1435781451.781`) or
/// RFC 3339 (`2015-07-01T20:10:51.781Z`), to the millisecond.
pub fn parse_time(name: &str, text: &str) -> Result<i64, QueryError> {
    let bad = || {
        QueryError::BadData(format!(
            "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid timestamp"
        ))
    };
    if let Ok(secs) = text.parse::<f64>() {
        if !secs.is_finite() {
            return Err(bad());
        }
        let ms = (secs * 1000.0).round();
        if ms < MIN_TIME_MS as f64 || ms > MAX_TIME_MS as f64 {
            return Err(bad());
        }
        return Ok(ms as i64);
    }
    match text {
        MIN_TIME_TEXT => return Ok(MIN_TIME_MS),
        MAX_TIME_TEXT => return Ok(MAX_TIME_MS),
        _ => {}
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad())
}

/// A duration parameter (`step`, `timeout`): seconds with a fraction
/// (`15`, `0.5`) or a Prometheus duration (`1m30s`, `2h`), in ms.
pub fn parse_duration(name: &str, text: &str) -> Result<i64, QueryError> {
    let bad = |why: &str| {
        QueryError::BadData(format!(
            "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid duration{why}"
        ))
    };
    if let Ok(secs) = text.parse::<f64>() {
        let ms = secs * 1000.0;
        if !ms.is_finite() || ms.abs() > (i64::MAX / 1_000_000) as f64 {
            return Err(bad(". It overflows int64"));
        }
        return Ok(ms as i64);
    }
    prometheus_duration(text).ok_or_else(|| bad(""))
}

/// Prometheus' `model.ParseDuration`: units `y w d h m s ms` in that
/// order, each at most once, integers only.
fn prometheus_duration(text: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if text.is_empty() || text == "0" {
        return (text == "0").then_some(0);
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let i = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
        next_unit = i + 1;
        total = total.checked_add(n.checked_mul(UNITS[i].1)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(
            parse_time("time", "1435781451.781").unwrap(),
            1_435_781_451_781
        );
        assert_eq!(parse_time("time", "1435781451").unwrap(), 1_435_781_451_000);
        assert_eq!(
            parse_time("time", "2015-07-01T20:10:51.781Z").unwrap(),
            1_435_781_451_781
        );
        assert_eq!(
            parse_time("time", "2015-07-01T22:10:51.781+02:00").unwrap(),
            1_435_781_451_781
        );
        assert_eq!(parse_time("start", MIN_TIME_TEXT).unwrap(), MIN_TIME_MS);
        let e = parse_time("start", "yesterday").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid parameter \"start\": cannot parse \"yesterday\" to a valid timestamp"
        );
        assert_eq!(e.status(), 400);
        assert!(parse_time("t", "NaN").is_err());
        assert!(parse_time("t", "1e300").is_err());
    }

    #[test]
    fn durations_are_seconds_or_prometheus_durations() {
        assert_eq!(parse_duration("step", "15").unwrap(), 15_000);
        assert_eq!(parse_duration("step", "0.5").unwrap(), 500);
        assert_eq!(parse_duration("step", "1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration("step", "1h").unwrap(), 3_600_000);
        assert_eq!(parse_duration("step", "100ms").unwrap(), 100);
        assert_eq!(parse_duration("step", "1d2h").unwrap(), 93_600_000);
        assert!(parse_duration("step", "30s1m").is_err());
        assert!(parse_duration("step", "1.5m").is_err());
        assert!(parse_duration("step", "").is_err());
        assert!(parse_duration("step", "m").is_err());
        assert!(parse_duration("step", "1e30")
            .unwrap_err()
            .to_string()
            .contains("overflows"));
    }
}
