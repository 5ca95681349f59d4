//! Cutting a document into chunks the encoder reads whole: windows of at most `size` word
//! pieces that overlap by about `overlap`, ending where a sentence or at least a word ends,
//! each a byte range of the document (so a citation can point into the file).

/// A chunk's byte range in its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// The chunks of `text`, given its word pieces' byte ranges (`pieces`, in order, as
/// [`ferrollama_embed::Embedder::piece_offsets`] gives them). A chunk never starts inside
/// a word; it ends after a sentence when one ends in its second half, else after the last
/// whole word, and only cuts a word longer than half a chunk. An empty `pieces` gives no
/// chunk.
pub fn spans(text: &str, pieces: &[(usize, usize)], size: usize, overlap: usize) -> Vec<Span> {
    let n = pieces.len();
    let size = size.max(1);
    let overlap = overlap.min(size / 2);
    // A piece starts a word when whitespace (or the document's start) comes before it.
    let starts_word = |i: usize| i == 0 || pieces[i].0 > pieces[i - 1].1;
    let gap = |i: usize| text.get(pieces[i - 1].1..pieces[i].0).unwrap_or("");
    let ends_sentence = |i: usize| {
        let prev = text.get(pieces[i - 1].0..pieces[i - 1].1).unwrap_or("");
        starts_word(i) && (matches!(prev, "." | "?" | "!") || gap(i).contains('\n'))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let mut end = (i + size).min(n);
        if end < n {
            let half = i + size.div_ceil(2);
            let cut = (half..=end)
                .rev()
                .find(|&j| ends_sentence(j))
                .or_else(|| (half..=end).rev().find(|&j| starts_word(j)));
            if let Some(j) = cut {
                end = j;
            }
        }
        out.push(Span {
            start: pieces[i].0,
            end: pieces[end - 1].1,
        });
        if end == n {
            break;
        }
        let mut next = end.saturating_sub(overlap).max(i + 1);
        while next > i + 1 && !starts_word(next) {
            next -= 1;
        }
        // Never step back into the chunk's first half: that would repeat more than it adds.
        if next <= i + size / 4 && end > i + 1 {
            next = end;
        }
        i = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace-separated words, with `.`, `,` split off as their own pieces: the shape
    /// of a WordPiece split, without a model.
    fn pieces(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() || c == '.' || c == ',' {
                if let Some(s) = start.take() {
                    out.push((s, i));
                }
                if c == '.' || c == ',' {
                    out.push((i, i + 1));
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }

    #[test]
    fn short_text_is_one_chunk_and_empty_none() {
        let t = "  Water boils at one hundred degrees.  ";
        let s = spans(t, &pieces(t), 64, 8);
        assert_eq!(s.len(), 1);
        assert_eq!(
            &t[s[0].start..s[0].end],
            "Water boils at one hundred degrees."
        );
        assert!(spans("", &[], 64, 8).is_empty());
    }

    #[test]
    fn chunks_cover_everything_end_at_sentences_and_overlap() {
        let text = (0..40)
            .map(|i| format!("Sentence number {i} has six words."))
            .collect::<Vec<_>>()
            .join(" ");
        let p = pieces(&text);
        let s = spans(&text, &p, 20, 6);
        assert!(s.len() > 5);
        assert_eq!(s[0].start, 0);
        assert_eq!(s.last().unwrap().end, text.len());
        for w in s.windows(2) {
            // Consecutive chunks overlap (or touch), and each moves forward.
            assert!(w[1].start <= w[0].end && w[1].start > w[0].start, "{w:?}");
        }
        for c in &s {
            let piece_count = p.iter().filter(|r| r.0 >= c.start && r.1 <= c.end).count();
            assert!(piece_count <= 20);
            let chunk = &text[c.start..c.end];
            assert!(
                chunk.starts_with("Sentence")
                    || chunk.starts_with("number")
                    || chunk.chars().next().unwrap().is_alphanumeric(),
                "{chunk}"
            );
        }
        // Every chunk but the last ends a sentence (one ends in each second half).
        for c in &s[..s.len() - 1] {
            assert!(
                text[c.start..c.end].ends_with('.'),
                "{}",
                &text[c.start..c.end]
            );
        }
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut() {
        // One "word" of 50 pieces with no whitespace between them.
        let text = "ab".repeat(50);
        let p: Vec<(usize, usize)> = (0..50).map(|i| (2 * i, 2 * i + 2)).collect();
        let s = spans(&text, &p, 16, 4);
        assert_eq!(s.first().unwrap().start, 0);
        assert_eq!(s.last().unwrap().end, 100);
        assert!(s.iter().all(|c| c.end - c.start <= 32));
        assert!(s.windows(2).all(|w| w[1].start > w[0].start));
    }
}
