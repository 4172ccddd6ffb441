//! Kafka's names: what the broker accepts, checked before anything is sent.

/// Kafka's rule for topic names (`Topic.validate`): 1–249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn parse_topic_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("a topic name cannot be empty".into());
    }
    if name == "." || name == ".." {
        return Err("a topic name cannot be '.' or '..'".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "a topic name is at most 249 characters, this one has {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "'{bad}' is not allowed in a topic name (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_topic_name;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert!(parse_topic_name("sales").is_ok());
        assert!(parse_topic_name("sensor-data.v2_x").is_ok());
        assert!(parse_topic_name("").is_err());
        assert!(parse_topic_name("..").is_err());
        assert!(parse_topic_name("has space").is_err());
        assert!(parse_topic_name(&"x".repeat(250)).is_err());
    }
}
