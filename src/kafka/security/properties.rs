//! Kafka settings as `key = value` text: a Java/librdkafka-style properties file
//! (`--command-config`), `-X key=value`, and the text `bench` hands its children. Pure: the
//! one read is [`Properties::read_file`]'s; what the settings mean is [`super::settings`]'.
//!
//! Every value is kept in a [`Secret`], which no `Debug` or `Display` shows: any of them may be
//! a password.

use std::fmt;
use std::path::Path;

use super::BadSetting;

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Every key streamlab reads; anything else is an error that names it.
const KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.jaas.config",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// Settings as `key = value` pairs, in the order given (a later one wins), with where each came
/// from for error messages.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    entries: Vec<(String, Secret, String)>,
}

impl Properties {
    /// Add `key=value` from `origin` (say, `-X` or the file's path and line).
    pub fn set(&mut self, key: &str, value: &str, origin: impl Into<String>) {
        self.entries.push((
            key.trim().to_string(),
            Secret::new(value.trim()),
            origin.into(),
        ));
    }

    /// Read a Java-style properties file (see [`Properties::parse_text`]). Errors name the file,
    /// never a value.
    pub fn read_file(&mut self, path: &Path) -> Result<(), BadSetting> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BadSetting(format!(
                "cannot read --command-config {}: {e}",
                path.display()
            ))
        })?;
        self.parse_text(&text, &path.display().to_string())
    }

    /// Read properties-file text as `java.util.Properties.load` does: `#` and `!` comment lines;
    /// a line ending in an odd number of `\` goes on on the next (whose leading whitespace is
    /// skipped); the key ends at the first unescaped `=`, `:` or whitespace, and one `=` or `:`
    /// may follow whitespace; the value's leading whitespace is skipped, its trailing kept;
    /// `\t`, `\n`, `\r`, `\f`, `\uXXXX` and `\` before any other character (`\=`, `\:`,
    /// `\ `, `\\`) are unescaped in keys and values. `name` says where the text came from in
    /// error messages, which never show a value.
    pub fn parse_text(&mut self, text: &str, name: &str) -> Result<(), BadSetting> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let lines: Vec<&str> = text.split('\n').collect();
        let mut next = 0;
        while next < lines.len() {
            let first_line = next + 1;
            let line = lines[next].trim_start_matches(is_blank);
            next += 1;
            if line.is_empty() || line.starts_with(['#', '!']) {
                continue;
            }
            let mut logical = line.to_string();
            while ends_in_escape(&logical) {
                logical.pop();
                let Some(more) = lines.get(next) else { break };
                logical.push_str(more.trim_start_matches(is_blank));
                next += 1;
            }
            let at = |what: &str| BadSetting(format!("{name}:{first_line}: {what}"));
            let (key, value) = split_entry(&logical).ok_or_else(|| at("expected key=value"))?;
            let key = unescape(key).ok_or_else(|| at("malformed \\uXXXX escape in the key"))?;
            let value =
                unescape(value).ok_or_else(|| at("malformed \\uXXXX escape in the value"))?;
            self.entries
                .push((key, Secret::new(value), format!("{name}:{first_line}")));
        }
        Ok(())
    }

    /// As properties-file text, each key once (the value that wins), for a child process.
    pub fn to_text(&self) -> Secret {
        let mut text = String::new();
        for key in KEYS {
            if let Some(value) = self.get(key) {
                text.push_str(&format!("{key}={}\n", escape(value)));
            }
        }
        Secret::new(text)
    }

    /// The value of `key` that wins, without surrounding whitespace (as Kafka's ConfigDef
    /// reads every value it is given).
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.expose().trim())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every key is one streamlab reads; else an error naming the first that is not.
    pub(super) fn check_keys(&self) -> Result<(), BadSetting> {
        for (key, _, origin) in &self.entries {
            if !KEYS.contains(&key.as_str()) {
                let hint = if key.contains("truststore") || key.contains("keystore") {
                    " (Java key stores are not read: give PEM files with ssl.ca.location, ssl.certificate.location and ssl.key.location)"
                } else {
                    ""
                };
                return Err(BadSetting(format!(
                    "unknown Kafka setting '{key}' ({origin}); streamlab reads {}{hint}",
                    KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Whitespace as a properties file means it: space, tab, form feed.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Whether `line` ends in an odd number of backslashes: a line that goes on on the next.
fn ends_in_escape(line: &str) -> bool {
    (line.len() - line.trim_end_matches('\\').len()) % 2 == 1
}

/// A logical line's key and value, both still escaped: the key ends at the first unescaped `=`,
/// `:` or whitespace; whitespace, then one `=` or `:`, then whitespace separate it from the
/// value. `None` for a line that is only a key.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let mut chars = line.char_indices();
    let mut end = None;
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '=' | ':' => {
                end = Some(at);
                break;
            }
            c if is_blank(c) => {
                end = Some(at);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let rest = line[end..].trim_start_matches(is_blank);
    let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
    Some((&line[..end], rest.trim_start_matches(is_blank)))
}

/// `text` with its escapes replaced by what they stand for; `None` for a malformed `\uXXXX`.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = (hex.len() == 4)
                    .then(|| u16::from_str_radix(&hex, 16).ok())
                    .flatten()?;
                out.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Some(out)
}

/// `value` written so that [`Properties::parse_text`] reads it back as it is.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (at, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            ' ' if at == 0 => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries a text reads as, values exact (before `get`'s trimming).
    fn entries(text: &str) -> Vec<(String, String)> {
        let mut p = Properties::default();
        p.parse_text(text, "f").unwrap();
        p.entries
            .iter()
            .map(|(k, v, _)| (k.clone(), v.expose().to_string()))
            .collect()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn separators_whitespace_and_comments_follow_java_util_properties() {
        assert_eq!(
            entries("a=1\nb:2\nc 3\nd\t = 4\ne :  5\n  f=6  \n\tg\x0c=7\nh = = 8\n"),
            [
                pair("a", "1"),
                pair("b", "2"),
                pair("c", "3"),
                pair("d", "4"),
                pair("e", "5"),
                pair("f", "6  "),
                pair("g", "7"),
                pair("h", "= 8"),
            ]
        );
        assert_eq!(
            entries("# a=1\n  ! b=2\n\n   \nc=#3\r\nd=!4\re=5"),
            [pair("c", "#3"), pair("d", "!4"), pair("e", "5")]
        );
        // A comment line does not go on, even when it ends in a backslash.
        assert_eq!(entries("# x \\\na=1\n"), [pair("a", "1")]);
        assert_eq!(entries("k=\n"), [pair("k", "")]);
    }

    #[test]
    fn escapes_follow_java_util_properties() {
        assert_eq!(
            entries(
                "a\\=b\\:c\\ d=x\\=y\\:z\nt=1\\t2\\n3\\r4\\f5\nu=\\u0041\\u00e9\\u20AC\n\
                 s=\\ lead\ncase=\\q\\#\\!\\\\\n"
            ),
            [
                pair("a=b:c d", "x=y:z"),
                pair("t", "1\t2\n3\r4\x0c5"),
                pair("u", "Aé€"),
                pair("s", " lead"),
                pair("case", "q#!\\"),
            ]
        );
        let mut p = Properties::default();
        let err = p.parse_text("a=\\u00G1\n", "f").unwrap_err().to_string();
        assert_eq!(err, "f:1: malformed \\uXXXX escape in the value");
        let err = p.parse_text("a=\\u00\n", "f").unwrap_err().to_string();
        assert!(err.starts_with("f:1: malformed"), "{err}");
    }

    #[test]
    fn a_trailing_backslash_joins_the_next_line_without_its_leading_whitespace() {
        assert_eq!(
            entries("a=one \\\n     two\\\n\tthree\nb=x\\\\\nc=y\\\n"),
            [pair("a", "one twothree"), pair("b", "x\\"), pair("c", "y")]
        );
        // A continuation line that starts with '#' is part of the value.
        assert_eq!(entries("a=1\\\n  #2\n"), [pair("a", "1#2")]);
    }

    #[test]
    fn to_text_reads_back_as_it_was() {
        let mut p = Properties::default();
        p.entries.push((
            "sasl.password".into(),
            Secret::new("p\\w\td=:#!\n\u{e9} x"),
            "-X".into(),
        ));
        let text = p.to_text();
        let mut back = Properties::default();
        back.parse_text(text.expose(), "env").unwrap();
        assert_eq!(
            back.entries[0].1.expose(),
            "p\\w\td=:#!\n\u{e9} x",
            "{}",
            text.expose()
        );
    }
}
