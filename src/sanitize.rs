//! Host side: text that came from a payload (its output, its answers, names it
//! chose) made safe for an audit log or an operator's terminal. Control
//! characters (C0, DEL, C1: `ESC ]0;title BEL`, `CSI`...) and the Unicode
//! bidirectional overrides are written as visible escapes (`\x1b`, `\u{9b}`),
//! so that nothing a payload prints can move a cursor, retitle a window, hide
//! text or forge a line. Escaping twice changes nothing more.

use std::fmt::Write;

fn needs_escape(c: char) -> bool {
    // Unicode's Bidi_Control set (U+061C included), and the line and paragraph
    // separators, which many viewers take for a new line.
    c.is_control() || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

fn escape_into(out: &mut String, text: &str, keep_newlines: bool) {
    for c in text.chars() {
        match c {
            '\n' | '\t' if keep_newlines => out.push(c),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// One line: every control character escaped, newlines included.
pub fn line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, false);
    out
}

/// Multi-line text (a log): control characters escaped, newlines and tabs kept.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, true);
    out
}

/// Bytes of unknown encoding as multi-line text (invalid UTF-8 becomes U+FFFD).
pub fn bytes(b: &[u8]) -> String {
    text(&String::from_utf8_lossy(b))
}

/// Payload-chosen text inside a message of ours: quoted and escaped, at most
/// `max` characters (marked when cut).
pub fn quote(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max).collect();
    let more = if cut.len() < text.len() { "..." } else { "" };
    format!("\"{}\"{more}", line(&cut).replace('"', "\\\""))
}

/// A JSON value as one line for a terminal: serde escapes C0 controls; DEL,
/// C1 controls and bidi overrides are escaped here too (`\u009b`), so the
/// output stays valid JSON and inert.
pub fn json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in v.to_string().chars() {
        if needs_escape(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_and_plain_text_stays() {
        assert_eq!(line("ok: 200"), "ok: 200");
        assert_eq!(line("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(line("a\nswarmcell: forged"), "a\\x0aswarmcell: forged");
        assert_eq!(text("a\nb\tc\r\u{9b}31m"), "a\nb\tc\\x0d\\u{9b}31m");
        assert_eq!(line("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(line(&line("\x1b[2J")), line("\x1b[2J"), "idempotent: escaped text has no control left");
        assert_eq!(bytes(b"\xff\x1b[2J"), "\u{fffd}\\x1b[2J");
        assert_eq!(quote("evil\"host\x1b", 100), "\"evil\\\"host\\x1b\"");
        assert_eq!(quote("abcdef", 3), "\"abc\"...");
        let v = serde_json::json!({ "log": "\x1b]0;t\x07 \u{9b}31m \u{7f} a\\b" });
        let shown = json(&v);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), v, "still the same JSON");
    }
}
