//! Text that clients choose, made safe to keep and to write: cut to a bound (access log
//! lines, trace spans), its control characters, quotes and backslashes escaped (text log
//! lines).

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Appends `text` to `out` with its control characters escaped (`\n`, `\r`, `\t`, else
/// `\u{..}`), and its quotes and backslashes (`\"`, `\\`): a value a client chose cannot start
/// a line of its own, nor end the quotes a format puts around it and forge the fields after.
pub(crate) fn push_escaped(out: &mut String, text: &str) {
    if !text.chars().any(needs_escape) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '"' || c == '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abc", 2), "ab");
        // 'é' takes two bytes: a cut inside it keeps it out.
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
    }

    #[test]
    fn control_characters_quotes_and_backslashes_are_escaped() {
        let mut out = String::new();
        push_escaped(&mut out, "ok");
        push_escaped(&mut out, " a\nb\r\tc\u{1b}[0m");
        assert_eq!(out, "ok a\\nb\\r\\tc\\u{1b}[0m");
        out.clear();
        push_escaped(&mut out, r#"say "hi" \ bye\"#);
        assert_eq!(out, r#"say \"hi\" \\ bye\\"#);
    }
}
