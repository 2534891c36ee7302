//! The one error type of the SDP module: which line, what was wrong, and the line itself.

/// A rejected session description.
///
/// `line` is 1-based and counts physical lines (LF-separated) of the original text, blank ones
/// included, so it matches what an editor shows. `0` means the whole document (too big, or
/// something required is missing). `text` is the offending line, truncated and with control
/// characters replaced, so it is safe to log and to return to the signaling tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line}: {reason} (`{text}`)")]
pub struct SdpError {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// How much of the offending line an error keeps.
const EXCERPT_CHARS: usize = 120;

impl SdpError {
    /// An error about one line.
    pub(crate) fn at(line: usize, text: &str, reason: impl Into<String>) -> SdpError {
        SdpError {
            line,
            text: excerpt(text),
            reason: neutralise(reason.into()),
        }
    }

    /// An error about the document as a whole (something missing, or it is too big).
    pub(crate) fn document(reason: impl Into<String>) -> SdpError {
        SdpError {
            line: 0,
            text: String::new(),
            reason: neutralise(reason.into()),
        }
    }
}

/// Reasons quote the offending token; replace control characters there too (found by fuzzing:
/// an ESC in `c=` came back verbatim in the reason).
fn neutralise(reason: String) -> String {
    if reason.chars().any(char::is_control) {
        reason
            .chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect()
    } else {
        reason
    }
}

/// The first [`EXCERPT_CHARS`] characters of `text`, control characters replaced by U+FFFD so a
/// hostile line cannot forge log lines or terminal escapes.
fn excerpt(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(EXCERPT_CHARS * 2));
    let mut chars = text.chars();
    for c in chars.by_ref().take(EXCERPT_CHARS) {
        out.push(if c.is_control() { '\u{FFFD}' } else { c });
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_line_reason_and_text() {
        let e = SdpError::at(7, "a=setup:sideways", "unknown a=setup role");
        assert_eq!(
            e.to_string(),
            "SDP line 7: unknown a=setup role (`a=setup:sideways`)"
        );
    }

    #[test]
    fn long_lines_are_truncated_on_char_boundaries() {
        let line = "é".repeat(500);
        let e = SdpError::at(1, &line, "x");
        assert_eq!(e.text.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.text.ends_with('…'));
    }

    #[test]
    fn control_characters_are_neutralised() {
        let e = SdpError::at(1, "a=x\u{1b}[31m\u{0}", "x");
        assert!(!e.text.chars().any(char::is_control));
    }
}
