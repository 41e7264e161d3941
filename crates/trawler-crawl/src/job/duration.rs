//! Humane durations for job files and the command line: `60s`, `500ms`,
//! `1m`, `1h30m`.
//!
//! Kept as strings in [`JobConfig`](super::JobConfig) and parsed by `build()`,
//! so that a bad value is reported with its key and file rather than as a
//! bare serde error.

use std::time::Duration;

/// Parses one or more `<integer><unit>` groups, unit one of `ms`, `s`, `m`,
/// `h`, `d`. Returns a short reason on failure.
pub fn parse(text: &str) -> Result<Duration, &'static str> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration");
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err("expected a number followed by a unit (ms, s, m, h, d)");
        }
        let value: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err("missing unit (ms, s, m, h, d)"),
            _ => return Err("unknown unit (expected ms, s, m, h, d)"),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or("duration too large")?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humane_durations() {
        let ms = |s| parse(s).unwrap().as_millis();
        assert_eq!(ms("60s"), 60_000);
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms(" 1h30m "), 5_400_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("0s"), 0);
    }

    #[test]
    fn rejects_typos() {
        for bad in [
            "",
            "6o s",
            "60",
            "s",
            "1.5s",
            "10 s",
            "5sec",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
