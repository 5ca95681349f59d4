//! Drawings as SVG: dependency arcs in displaCy's manner (words in a row, each tag under
//! its word, an arc from head to dependent with the relation on it) and morphology trees
//! in a syntax-tree drawer's manner (labels over their children, lines between). PNG
//! images are rendered from the SVG with resvg and the system's fonts.

use std::fmt::Write;

/// One dependency arc (0-based word indices).
#[derive(Debug, Clone, PartialEq)]
pub struct Arc {
    pub head: usize,
    pub dep: usize,
    pub label: String,
    /// Drawn red when `Some(false)`: the arc disagrees with the reference.
    pub correct: Option<bool>,
}

/// Text escaped for XML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const FONT: &str = "DejaVu Sans, Arial, sans-serif";

/// Approximate width of `s` at `size` px in a sans-serif font.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.6
}

/// A dependency drawing: `words` are (form, tag); `roots` are the words whose head is the
/// root (marked with an arrow from above).
pub fn arcs_svg(words: &[(String, String)], arcs: &[Arc], roots: &[usize]) -> String {
    let word_size = 16.0;
    let gap = 28.0;
    // x centre of each word.
    let mut xs = Vec::with_capacity(words.len());
    let mut x = 20.0;
    for (form, tag) in words {
        let w = text_width(form, word_size)
            .max(text_width(tag, 12.0))
            .max(36.0);
        xs.push(x + w / 2.0);
        x += w + gap;
    }
    let width = x.max(120.0);
    // Arc heights by span rank, so long sentences stay readable.
    let mut spans: Vec<usize> = arcs.iter().map(|a| a.head.abs_diff(a.dep)).collect();
    spans.sort_unstable();
    spans.dedup();
    let level = |a: &Arc| {
        spans
            .iter()
            .position(|&s| s == a.head.abs_diff(a.dep))
            .unwrap_or(0)
            + 1
    };
    let step = 26.0;
    let top = 30.0 + step * spans.len().max(1) as f64;
    let height = top + 60.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="{FONT}"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, (form, tag)) in words.iter().enumerate() {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="{word_size}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##,
            xs[i],
            top + 24.0,
            escape(form),
            xs[i],
            top + 44.0,
            escape(tag)
        );
    }
    for a in arcs {
        let (Some(&xh), Some(&xd)) = (xs.get(a.head), xs.get(a.dep)) else {
            continue;
        };
        let h = step * level(a) as f64;
        let colour = if a.correct == Some(false) {
            "#c0392b"
        } else {
            "#333"
        };
        // Both ends a little off the word centre so arcs meeting there stay apart.
        let off = if xd > xh { 6.0 } else { -6.0 };
        let (x1, x2) = (xh + off, xd - off);
        let y = top;
        let _ = write!(
            s,
            r#"<path d="M{x1:.1},{y:.1} C{x1:.1},{:.1} {x2:.1},{:.1} {x2:.1},{y:.1}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
            y - h * 1.3,
            y - h * 1.3,
        );
        let _ = write!(
            s,
            r#"<path d="M{x2:.1},{y:.1} l-4,-8 l8,0 z" fill="{colour}"/>"#
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{colour}" text-anchor="middle" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            (x1 + x2) / 2.0,
            y - h * 0.975 + 4.0,
            escape(&a.label)
        );
    }
    for &r in roots {
        if let Some(&x) = xs.get(r) {
            let _ = write!(
                s,
                r##"<path d="M{x:.1},6 L{x:.1},{:.1}" stroke="#333" stroke-width="1.5"/><path d="M{x:.1},{top:.1} l-4,-8 l8,0 z" fill="#333"/><text x="{:.1}" y="16" font-size="11">root</text>"##,
                top,
                x + 4.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A labelled tree: a node with a label and children (a leaf has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub label: String,
    pub children: Vec<Tree>,
}

impl Tree {
    fn depth(&self) -> usize {
        1 + self.children.iter().map(Tree::depth).max().unwrap_or(0)
    }
}

/// A tree drawing, leaves in a row at the bottom, each node centred over its children.
pub fn tree_svg(tree: &Tree) -> String {
    let size = 15.0;
    let row = 56.0;
    let gap = 18.0;
    // Lay out leaves left to right; each node's x is the middle of its children's.
    struct Placed {
        x: f64,
        y: f64,
        label: String,
        leaf: bool,
        children: Vec<usize>,
    }
    fn place(
        t: &Tree,
        depth: usize,
        next_x: &mut f64,
        out: &mut Vec<Placed>,
        size: f64,
        row: f64,
        gap: f64,
    ) -> usize {
        let kids: Vec<usize> = t
            .children
            .iter()
            .map(|c| place(c, depth + 1, next_x, out, size, row, gap))
            .collect();
        let x = if kids.is_empty() {
            let w = text_width(&t.label, size).max(20.0);
            let x = *next_x + w / 2.0;
            *next_x += w + gap;
            x
        } else {
            (out[kids[0]].x + out[*kids.last().unwrap_or(&kids[0])].x) / 2.0
        };
        out.push(Placed {
            x,
            y: 30.0 + depth as f64 * row,
            label: t.label.clone(),
            leaf: kids.is_empty(),
            children: kids,
        });
        out.len() - 1
    }
    let mut nodes = Vec::new();
    let mut next_x = 20.0;
    place(tree, 0, &mut next_x, &mut nodes, size, row, gap);
    let width = next_x.max(80.0);
    let height = 30.0 + tree.depth() as f64 * row;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="{FONT}"><rect width="100%" height="100%" fill="white"/>"#
    );
    for n in &nodes {
        for &c in &n.children {
            let _ = write!(
                s,
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555" stroke-width="1.2"/>"##,
                n.x,
                n.y + 6.0,
                nodes[c].x,
                nodes[c].y - size
            );
        }
        let (weight, colour) = if n.leaf {
            ("normal", "#1a5fb4")
        } else {
            ("bold", "#222")
        };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="{size}" font-weight="{weight}" fill="{colour}" text-anchor="middle">{}</text>"#,
            n.x,
            n.y,
            escape(&n.label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Renders SVG text to PNG bytes with the system's fonts.
pub fn png(svg: &str) -> Result<Vec<u8>, String> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| format!("SVG: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("an empty drawing")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| format!("PNG: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arcs_are_drawn_for_every_relation_and_text_is_escaped() {
        let words: Vec<(String, String)> = [("I", "PRON"), ("ate", "VERB"), ("<a>", "DET")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let arcs = vec![
            Arc {
                head: 1,
                dep: 0,
                label: "nsubj".into(),
                correct: Some(true),
            },
            Arc {
                head: 1,
                dep: 2,
                label: "dobj".into(),
                correct: Some(false),
            },
        ];
        let svg = arcs_svg(&words, &arcs, &[1]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;a&gt;"));
        assert!(svg.contains(">nsubj<") && svg.contains(">dobj<") && svg.contains(">root<"));
        assert!(svg.contains("#c0392b"), "the wrong arc is red");
        let png = png(&svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn trees_put_leaves_on_the_bottom_row() {
        let leaf = |s: &str| Tree {
            label: s.into(),
            children: vec![],
        };
        let t = Tree {
            label: "adjective".into(),
            children: vec![
                Tree {
                    label: "prefix".into(),
                    children: vec![leaf("un")],
                },
                Tree {
                    label: "verb".into(),
                    children: vec![leaf("lock")],
                },
            ],
        };
        let svg = tree_svg(&t);
        assert_eq!(svg.matches("<line").count(), 4);
        assert!(svg.contains(">un<") && svg.contains(">adjective<"));
        assert!(png(&svg).is_ok());
    }
}
