//! CoNLL-U, as Universal Dependencies treebanks are written: one word per line, ten
//! tab-separated columns, sentences separated by blank lines, `# key = value` comments.
//! Multiword tokens (`3-4`) and empty nodes (`5.1`) are skipped: the probes work on
//! syntactic words, as UD's basic trees do.

use crate::error::{Error, Result};

/// One syntactic word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub form: String,
    pub upos: String,
    /// 1-based index of the head word; 0 for the root.
    pub head: usize,
    pub deprel: String,
}

/// One sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    pub id: String,
    /// The `# text` comment, or the forms joined by spaces.
    pub text: String,
    pub words: Vec<Word>,
}

impl Sentence {
    /// The forms of the words.
    pub fn forms(&self) -> Vec<&str> {
        self.words.iter().map(|w| w.form.as_str()).collect()
    }
}

/// Reads every sentence of a CoNLL-U text. Errors name the line.
pub fn read(text: &str) -> Result<Vec<Sentence>> {
    let mut out = Vec::new();
    let mut cur = Sentence {
        id: String::new(),
        text: String::new(),
        words: Vec::new(),
    };
    let finish = |cur: &mut Sentence, out: &mut Vec<Sentence>, line: usize| -> Result<()> {
        if cur.words.is_empty() {
            *cur = Sentence {
                id: String::new(),
                text: String::new(),
                words: Vec::new(),
            };
            return Ok(());
        }
        let n = cur.words.len();
        if let Some(w) = cur.words.iter().find(|w| w.head > n) {
            return Err(Error::Conllu {
                line,
                message: format!(
                    "head {} of `{}` is past the sentence's {n} words",
                    w.head, w.form
                ),
            });
        }
        if cur.text.is_empty() {
            cur.text = cur.forms().join(" ");
        }
        if cur.id.is_empty() {
            cur.id = format!("s{}", out.len() + 1);
        }
        out.push(std::mem::replace(
            cur,
            Sentence {
                id: String::new(),
                text: String::new(),
                words: Vec::new(),
            },
        ));
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            finish(&mut cur, &mut out, ln)?;
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            if let Some((k, v)) = c.split_once('=') {
                match k.trim() {
                    "sent_id" => cur.id = v.trim().to_string(),
                    "text" => cur.text = v.trim().to_string(),
                    _ => {}
                }
            }
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 10 {
            return Err(Error::Conllu {
                line: ln,
                message: format!("{} columns, not 10", cols.len()),
            });
        }
        if cols[0].contains('-') || cols[0].contains('.') {
            continue;
        }
        let id: usize = cols[0].parse().map_err(|_| Error::Conllu {
            line: ln,
            message: format!("word id `{}` is not a number", cols[0]),
        })?;
        if id != cur.words.len() + 1 {
            return Err(Error::Conllu {
                line: ln,
                message: format!("word id {id} where {} was due", cur.words.len() + 1),
            });
        }
        let head: usize = cols[6].parse().map_err(|_| Error::Conllu {
            line: ln,
            message: format!("head `{}` is not a number", cols[6]),
        })?;
        cur.words.push(Word {
            form: cols[1].to_string(),
            upos: cols[3].to_string(),
            head,
            deprel: cols[7].to_string(),
        });
    }
    finish(&mut cur, &mut out, text.lines().count() + 1)?;
    Ok(out)
}

/// Writes sentences as CoNLL-U (the columns the probes know; the rest `_`).
pub fn write(sentences: &[Sentence]) -> String {
    let mut s = String::new();
    for sent in sentences {
        s.push_str(&format!(
            "# sent_id = {}\n# text = {}\n",
            sent.id, sent.text
        ));
        for (i, w) in sent.words.iter().enumerate() {
            s.push_str(&format!(
                "{}\t{}\t_\t{}\t_\t_\t{}\t{}\t_\t_\n",
                i + 1,
                w.form,
                w.upos,
                w.head,
                w.deprel
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "# sent_id = a\n# text = I ate.\n1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_\n2\tate\teat\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No\n3\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_\n\n\
1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_\n2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n3.1\tx\t_\t_\t_\t_\t_\t_\t_\t_\n";

    #[test]
    fn reads_words_skipping_multiword_tokens_and_empty_nodes() {
        let s = read(TWO).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "a");
        assert_eq!(s[0].text, "I ate.");
        assert_eq!(
            s[0].words[1],
            Word {
                form: "ate".into(),
                upos: "VERB".into(),
                head: 0,
                deprel: "root".into()
            }
        );
        assert_eq!(s[1].forms(), ["do", "n't", "go"]);
        assert_eq!(s[1].text, "do n't go");
        assert_eq!(read(&write(&s)).unwrap(), s);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = read("1\tI\tI\tPRON\n").unwrap_err().to_string();
        assert_eq!(e, "CoNLL-U line 1: 4 columns, not 10");
        let e = read("1\tI\tI\tPRON\t_\t_\t5\tnsubj\t_\t_\n\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the sentence"), "{e}");
        let e = read("2\tI\tI\tPRON\t_\t_\t0\troot\t_\t_\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("where 1 was due"), "{e}");
        let e = read("1\tI\tI\tPRON\t_\t_\tx\troot\t_\t_\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("head `x`"), "{e}");
    }
}
