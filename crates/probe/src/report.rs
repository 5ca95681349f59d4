//! The dependency probe's HTML report: per sentence, the gold tree, the model's (arcs
//! that disagree with gold in red) and any other parser's, drawn side by side.

use std::fmt::Write;

use crate::conllu::Sentence;
use crate::dependency::labels::universal;
use crate::dependency::{Outcome, Scores};
use crate::draw::{arcs_svg, escape, Arc};

/// A parse to draw beside the model's: a name and its sentences (aligned with gold).
pub struct Other<'a> {
    pub name: &'a str,
    pub sentences: &'a [Option<Sentence>],
    pub scores: &'a Scores,
}

/// The drawing of `s`, arcs compared with `gold` when given.
pub fn drawing(s: &Sentence, gold: Option<&Sentence>) -> String {
    let words: Vec<(String, String)> = s
        .words
        .iter()
        .map(|w| (w.form.clone(), w.upos.clone()))
        .collect();
    let aligned = gold.filter(|g| g.forms() == s.forms());
    let mut arcs = Vec::new();
    let mut roots = Vec::new();
    for (i, w) in s.words.iter().enumerate() {
        if w.head == 0 {
            roots.push(i);
            continue;
        }
        let correct = aligned.map(|g| {
            let gw = &g.words[i];
            gw.head == w.head && universal(&gw.deprel) == universal(&w.deprel)
        });
        arcs.push(Arc {
            head: w.head - 1,
            dep: i,
            label: w.deprel.clone(),
            correct,
        });
    }
    arcs_svg(&words, &arcs, &roots)
}

/// The whole report.
pub fn html(
    title: &str,
    gold: &[Sentence],
    outcomes: &[Outcome],
    model: &Scores,
    others: &[Other],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:2em}} .s{{margin:2em 0;border-top:1px solid #ccc}}\
         .d{{overflow-x:auto}} table{{border-collapse:collapse}} td,th{{padding:4px 10px;border:1px solid #ddd}}\
         pre{{background:#f6f6f6;padding:8px;white-space:pre-wrap}}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    h.push_str("<table><tr><th>parser</th><th>sentences</th><th>parsed</th><th>UPOS</th><th>UAS</th><th>LAS</th></tr>");
    let mut row = |name: &str, s: &Scores| {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1} %</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape(name),
            s.sentences,
            100.0 * s.parse_rate(),
            s.upos(),
            s.uas(),
            s.las()
        );
    };
    row("model", model);
    for o in others {
        row(o.name, o.scores);
    }
    h.push_str("</table>");
    for (i, (g, o)) in gold.iter().zip(outcomes).enumerate() {
        let _ = write!(
            h,
            "<div class=\"s\"><h3>{}. {}</h3>",
            i + 1,
            escape(&g.text)
        );
        let _ = write!(
            h,
            "<p>gold ({})</p><div class=\"d\">{}</div>",
            escape(&g.id),
            drawing(g, None)
        );
        match o.predicted(g) {
            Some(p) => {
                let _ = write!(
                    h,
                    "<p>model</p><div class=\"d\">{}</div>",
                    drawing(&p, Some(g))
                );
            }
            None => {
                let why = o.analysis.as_ref().err().cloned().unwrap_or_default();
                let _ = write!(
                    h,
                    "<p>model: no analysis ({})</p><pre>{}</pre>",
                    escape(&why),
                    escape(&o.answer)
                );
            }
        }
        for other in others {
            if let Some(Some(p)) = other.sentences.get(i) {
                let _ = write!(
                    h,
                    "<p>{}</p><div class=\"d\">{}</div>",
                    escape(other.name),
                    drawing(p, Some(g))
                );
            }
        }
        h.push_str("</div>");
    }
    h.push_str("</body></html>");
    h
}
