//! Environment interpolation in the configuration text, the way Vector and the OpenTelemetry
//! Collector offer it: `${VAR}` and `${VAR:-default}` inside any string value (double-quoted,
//! single-quoted, and their multi-line forms), before the TOML is parsed. `$${` writes a
//! literal `${`. A variable that is unset, with no default, is an error naming it and the line;
//! `${VAR:-default}` takes the default when `VAR` is unset or empty (as in POSIX shells).
//!
//! Pure: the environment comes in as a function, and nothing is logged (a value may be
//! sensitive; messages name variables, never values). Comments and keys are left alone. A
//! substituted value is escaped for the string it lands in, so it can never end the string
//! or add a line: line numbers in later errors stay those of the file.

/// Why the text could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolateError {
    /// 1-based line of the reference.
    pub line: usize,
    /// The key on that line, when there is one (`url` in `url = "${X}"`).
    pub key: Option<String>,
    pub message: String,
}

/// Where the scanner is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Comment,
    Basic,
    MultiBasic,
    Literal,
    MultiLiteral,
}

/// Interpolates `text` with variables from `env`.
pub fn interpolate(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut state = State::Normal;
    let mut line = 1usize;
    let mut line_start = 0usize;
    let mut i = 0usize;
    let starts = |i: usize, s: &str| bytes[i..].starts_with(s.as_bytes());
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
            line_start = i + 1;
        }
        match state {
            State::Normal => {
                let (next, len) = if starts(i, "\"\"\"") {
                    (State::MultiBasic, 3)
                } else if starts(i, "'''") {
                    (State::MultiLiteral, 3)
                } else {
                    match c {
                        b'"' => (State::Basic, 1),
                        b'\'' => (State::Literal, 1),
                        b'#' => (State::Comment, 1),
                        _ => (State::Normal, 1),
                    }
                };
                out.push_str(&text[i..i + len]);
                i += len;
                state = next;
                continue;
            }
            State::Comment => {
                if c == b'\n' {
                    state = State::Normal;
                }
            }
            State::Basic | State::MultiBasic => {
                if c == b'\\' && i + 1 < bytes.len() {
                    // An escape: copy it whole (it may be `\"`), keeping the line count right.
                    let next = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if bytes[i + 1] == b'\n' {
                        line += 1;
                        line_start = i + 2;
                    }
                    out.push_str(&text[i..i + 1 + next]);
                    i += 1 + next;
                    continue;
                }
                let closes = if state == State::Basic {
                    (c == b'"').then_some(1)
                } else {
                    starts(i, "\"\"\"").then_some(3)
                };
                if let Some(len) = closes {
                    out.push_str(&text[i..i + len]);
                    i += len;
                    state = State::Normal;
                    continue;
                }
            }
            State::Literal => {
                if c == b'\'' {
                    state = State::Normal;
                }
            }
            State::MultiLiteral => {
                if starts(i, "'''") {
                    out.push_str("'''");
                    i += 3;
                    state = State::Normal;
                    continue;
                }
            }
        }
        let in_string = !matches!(state, State::Normal | State::Comment);
        if in_string && starts(i, "$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if in_string && starts(i, "${") {
            let fail = |message: String| InterpolateError {
                line,
                key: key_of(&text[line_start..]),
                message,
            };
            let Some(end) = text[i + 2..].find('}') else {
                return Err(fail(
                    "`${` without its closing `}` (write `$${` for a literal `${`)".into(),
                ));
            };
            let reference = &text[i + 2..i + 2 + end];
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if !is_name(name) {
                return Err(fail(format!(
                    "${{{reference}}} is not a variable reference: use ${{NAME}} or ${{NAME:-default}} (NAME: letters, digits, _)"
                )));
            }
            let value = match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(fail(format!(
                        "environment variable {name} is not set and ${{{name}}} has no default (write ${{{name}:-default}} for one)"
                    )))
                }
            };
            push_escaped(&mut out, &value, state).map_err(|why| fail(format!("{name}: {why}")))?;
            i += 2 + end + 1;
            continue;
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The key a line assigns, for messages.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// Appends `value` as it must be written inside a string of kind `state`.
fn push_escaped(out: &mut String, value: &str, state: State) -> Result<(), &'static str> {
    match state {
        State::Basic | State::MultiBasic => {
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            Ok(())
        }
        // Literal strings have no escapes: a value that would end or break them is refused.
        State::Literal if value.contains(['\'', '\n', '\r']) => {
            Err("its value has a quote or a line break, which a '...' string cannot hold; use a \"...\" string")
        }
        State::MultiLiteral if value.contains("'''") || value.contains(['\n', '\r']) => {
            Err("its value has ''' or a line break, which this string cannot hold; use a \"...\" string")
        }
        _ => {
            out.push_str(value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("partner.example".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b\\c\nd".into()),
            "APOS" => Some("it's".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults_are_substituted_in_strings_only() {
        let text = "# ${NOT_TOUCHED} in a comment\nurl = \"https://${HOST}/x\"\n\
                    port = \"${PORT:-9700}\"\nempty = \"${EMPTY:-fallback}\"\n\
                    lit = '${HOST}'\nkeep = \"$${HOST}\"\n";
        let out = interpolate(text, env).unwrap();
        assert_eq!(
            out,
            "# ${NOT_TOUCHED} in a comment\nurl = \"https://partner.example/x\"\n\
             port = \"9700\"\nempty = \"fallback\"\nlit = 'partner.example'\nkeep = \"${HOST}\"\n"
        );
        // The result is still TOML, and says what the environment said.
        let v: toml::Table = out.parse().unwrap();
        assert_eq!(v["url"].as_str(), Some("https://partner.example/x"));
    }

    #[test]
    fn values_are_escaped_so_they_cannot_end_the_string_or_add_lines() {
        let out = interpolate("a = \"<${QUOTE}>\"\nb = 1\n", env).unwrap();
        assert_eq!(out.lines().count(), 2);
        let v: toml::Table = out.parse().unwrap();
        assert_eq!(v["a"].as_str(), Some("<a\"b\\c\nd>"));
        let e = interpolate("x = 1\nname = '${APOS}'\n", env).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (2, Some("name")));
        assert!(e.message.starts_with("APOS: "), "{}", e.message);
    }

    #[test]
    fn an_unset_variable_without_default_names_itself_and_its_line() {
        let e = interpolate("[intake]\nlisten = \"${LISTEN}\"\n", env).unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.key.as_deref(), Some("listen"));
        assert!(
            e.message.contains("LISTEN is not set") && e.message.contains("${LISTEN:-"),
            "{}",
            e.message
        );
        let e = interpolate("a = \"${1X}\"", env).unwrap_err();
        assert!(
            e.message.contains("not a variable reference"),
            "{}",
            e.message
        );
        let e = interpolate("a = \"${HOST\"", env).unwrap_err();
        assert!(e.message.contains("closing"), "{}", e.message);
    }

    #[test]
    fn escapes_and_multi_line_strings_keep_their_shape_and_lines() {
        let text = "a = \"x\\\"${HOST}\"\nb = \"\"\"\n${HOST}\n\"\"\"\nc = '''\n${HOST}\n'''\nd = \"${NOPE:-}\"\n";
        let out = interpolate(text, env).unwrap();
        let v: toml::Table = out.parse().unwrap();
        assert_eq!(v["a"].as_str(), Some("x\"partner.example"));
        assert_eq!(v["b"].as_str(), Some("partner.example\n"));
        assert_eq!(v["c"].as_str(), Some("partner.example\n"));
        assert_eq!(v["d"].as_str(), Some(""));
        assert_eq!(out.lines().count(), text.lines().count());
    }
}
