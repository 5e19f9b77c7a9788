//! Finding textual markers in a buffer that may end in the middle of one.

/// The earliest complete marker in `text`: its byte offset and which marker.
/// On a tie the marker listed first wins.
pub(super) fn find_first(text: &str, markers: &[&'static str]) -> Option<(usize, &'static str)> {
    markers
        .iter()
        .filter_map(|&m| text.find(m).map(|at| (at, m)))
        .min_by_key(|&(at, _)| at)
}

/// How many bytes at the front of `text` can be released: all but the
/// longest suffix that is the beginning of some marker. The caller has already
/// looked for complete markers, so only partial ones are considered.
pub(super) fn safe_len(text: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    // A partial marker is at most one byte shorter than the marker.
    let from = text.len().saturating_sub(longest.saturating_sub(1));
    (from..text.len())
        .filter(|&at| text.is_char_boundary(at))
        .find(|&at| {
            let tail = &text[at..];
            markers.iter().any(|m| m.len() > tail.len() && m.starts_with(tail))
        })
        .unwrap_or(text.len())
}

/// Length of the leading whitespace of `text`, in bytes.
pub(super) fn blank_prefix_len(text: &str) -> usize {
    text.len() - text.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_earliest_marker() {
        let markers = ["<b>", "<a>"];
        assert_eq!(find_first("x<a>y<b>", &markers), Some((1, "<a>")));
        assert_eq!(find_first("x<a", &markers), None);
    }

    #[test]
    fn holds_back_only_a_possible_marker_start() {
        let markers = ["<think>", "</think>"];
        assert_eq!(safe_len("hello <thi", &markers), 6);
        assert_eq!(safe_len("hello </", &markers), 6);
        assert_eq!(safe_len("hello <", &markers), 6);
        assert_eq!(safe_len("a < b", &markers), 5);
        assert_eq!(safe_len("<thinking", &markers), 9);
        assert_eq!(safe_len("", &markers), 0);
        assert_eq!(safe_len("héllo", &[]), "héllo".len());
    }
}
