//! Durations as people type them: `1d`, `36h`, `90m`, `500ms`, `10s`, or a bare number of
//! milliseconds (the unit Kafka's `retention.ms` uses).

use std::time::Duration;

/// Parse a duration for the command line. A bare number is milliseconds.
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration '{input}': {e} (examples: 1d, 36h, 90m, 10s, 500ms, or milliseconds)"
        )
    })
}

/// Render milliseconds the way they were probably typed: `86400000` → `1d`.
pub fn human_ms(ms: i64) -> String {
    if ms < 0 {
        return "forever".into();
    }
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("36h").unwrap(), Duration::from_secs(36 * 3600));
        assert_eq!(parse("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("86400000").unwrap(), Duration::from_secs(86_400));
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn renders_in_the_largest_whole_unit() {
        assert_eq!(human_ms(86_400_000), "1d");
        assert_eq!(human_ms(129_600_000), "36h");
        assert_eq!(human_ms(5_400_000), "90m");
        assert_eq!(human_ms(1500), "1500ms");
        assert_eq!(human_ms(-1), "forever");
    }
}
