//! Quoting untrusted text (file contents, header names) in messages: bounded
//! and with control characters escaped, so an error can neither carry a
//! file's content away nor grow past what a gRPC status or a log line holds.

/// At most `max_chars` characters of `text`, control characters escaped
/// (`\n`, `\u{1b}`), and a note of how much was left out.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (shown, (i, c)) in text.char_indices().enumerate() {
        if shown == max_chars {
            out.push_str(&format!("… ({} more bytes)", text.len() - i));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Names as a list for a message: each name bounded, at most `max_names`.
pub fn name_list(names: &[String], max_names: usize) -> String {
    let mut shown: Vec<String> = names
        .iter()
        .take(max_names)
        .map(|n| excerpt(n, 64))
        .collect();
    if names.len() > max_names {
        shown.push(format!("… and {} more", names.len() - max_names));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("a\nb\u{1b}", 10), "a\\nb\\u{1b}");
        assert_eq!(excerpt("abcdef", 3), "abc… (3 more bytes)");
        assert_eq!(excerpt(&"é".repeat(10), 2), "éé… (16 more bytes)");
        let names: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
        assert_eq!(name_list(&names, 3), "c0, c1, c2, … and 2 more");
        assert!(name_list(&["x".repeat(100)], 3).chars().count() < 90);
    }
}
