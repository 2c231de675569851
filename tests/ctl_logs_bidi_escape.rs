//! Attack (red15): `ctl logs` and audit fields escape control characters and
//! the bidirectional overrides, but not every Unicode bidi control: U+061C
//! (ARABIC LETTER MARK) reorders text like U+200F does, and U+2028/U+2029
//! (line and paragraph separators) start a new line in many viewers, so a
//! payload could still disguise or forge a line of its log.

#[test]
fn every_bidi_control_and_line_separator_in_payload_text_is_escaped() {
    for (c, shown) in [('\u{61c}', "\\u{61c}"), ('\u{2028}', "\\u{2028}"), ('\u{2029}', "\\u{2029}")] {
        let text = format!("ok{c}swarmcell: forged");
        assert_eq!(swarmcell::sanitize::text(&text), format!("ok{shown}swarmcell: forged"), "{c:?} reached the terminal raw");
        assert_eq!(swarmcell::sanitize::line(&text), format!("ok{shown}swarmcell: forged"), "{c:?} reached the terminal raw");
    }
}
