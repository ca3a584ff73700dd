//! Splitting a long text into Telegram-sized parts.

/// How far back from the limit a part may end early to break at a newline or space, in UTF-16
/// units: a break that would leave a part much shorter is not worth it.
const BREAK_WINDOW: usize = 512;

/// Splits `text` into parts of at most `limit` UTF-16 code units each (Telegram's unit), in
/// order. A part ends after the last newline within the window before the limit, else after
/// the last space, else exactly at the limit; never inside a character (a surrogate pair counts
/// two units and stays whole). Concatenating the parts gives `text` back.
pub fn split(text: &str, limit: usize) -> Vec<&str> {
    let limit = limit.max(2);
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // Byte offset where `limit` units end (on a char boundary), and the break candidates.
        let mut units = 0;
        let mut end = rest.len();
        let mut newline = None;
        let mut space = None;
        for (i, c) in rest.char_indices() {
            let w = c.len_utf16();
            if units + w > limit {
                end = i;
                break;
            }
            units += w;
            let after = i + c.len_utf8();
            if units + BREAK_WINDOW >= limit {
                if c == '\n' {
                    newline = Some(after);
                } else if c == ' ' {
                    space = Some(after);
                }
            }
        }
        let cut = if end == rest.len() {
            end
        } else {
            newline.or(space).unwrap_or(end)
        };
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::split;

    fn units(s: &str) -> usize {
        s.encode_utf16().count()
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split("hello", 4096), vec!["hello"]);
        assert!(split("", 4096).is_empty());
    }

    #[test]
    fn ten_thousand_chars_make_three_ordered_parts() {
        let text: String = (0..10_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let parts = split(&text, 4096);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| units(p) <= 4096));
    }

    #[test]
    fn breaks_at_a_newline_then_a_space_near_the_limit() {
        let text = format!(
            "{}\n{} {}",
            "a".repeat(3800),
            "b".repeat(100),
            "c".repeat(400)
        );
        let parts = split(&text, 4096);
        assert_eq!(parts[0], format!("{}\n", "a".repeat(3800)));
        let text = format!("{} {}", "a".repeat(4000), "b".repeat(400));
        assert_eq!(split(&text, 4096)[0], format!("{} ", "a".repeat(4000)));
        // A break far from the limit is not taken.
        let text = format!("{} {}", "a".repeat(10), "b".repeat(5000));
        assert_eq!(units(split(&text, 4096)[0]), 4096);
    }

    #[test]
    fn never_splits_a_surrogate_pair() {
        // Each emoji is two UTF-16 units: 4096 units hold 2048 of them.
        let text = "😀".repeat(3000);
        let parts = split(&text, 4095);
        assert_eq!(units(parts[0]), 4094);
        assert_eq!(parts.concat(), text);
        for p in &parts {
            assert!(units(p) <= 4095);
        }
    }

    #[test]
    fn parts_concatenate_to_the_text_within_the_limit() {
        // A small deterministic generator over the interesting characters (1-, 2-, 4-byte
        // UTF-8; 1 and 2 UTF-16 units; break characters).
        let alphabet = ['a', ' ', '\n', '😀', 'é', 'z'];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 3000) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let limit = 2 + (seed % 700) as usize;
            let parts = split(&text, limit);
            assert_eq!(parts.concat(), text, "round {round}");
            for p in &parts {
                assert!(units(p) <= limit && !p.is_empty(), "round {round}");
            }
        }
    }
}
