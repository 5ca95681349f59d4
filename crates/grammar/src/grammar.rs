//! A grammar in the flat form the matcher walks: every rule's alternatives laid out in one
//! array of elements (a character class, a reference to a rule, or the end of an
//! alternative), as llama.cpp stores its GBNF rules. Repetition and grouping are already
//! rewritten into plain rules by the parser, so matching needs only these three elements.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// The largest Unicode scalar value.
pub(crate) const MAX_CHAR: u32 = 0x10FFFF;

/// One element of an alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Elem {
    /// One character from the class with this index.
    Class(u32),
    /// Anything the rule with this index matches.
    Rule(u32),
    /// The end of an alternative.
    End,
}

/// A symbol as the parser builds it, before the grammar is laid out flat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sym {
    /// Inclusive code-point ranges; `negated` matches every character outside them.
    Chars {
        ranges: Vec<(u32, u32)>,
        negated: bool,
    },
    Rule(u32),
}

/// A compiled grammar: what [`Matcher`](crate::Matcher) follows.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    /// Character classes as sorted, disjoint, non-adjacent inclusive ranges (negation
    /// already turned into the complement).
    pub(crate) classes: Vec<Vec<(u32, u32)>>,
    /// For each rule, where each of its alternatives starts in `elems`.
    pub(crate) alts: Vec<Vec<u32>>,
    names: Vec<String>,
    pub(crate) root: u32,
}

/// Limits that keep a hostile grammar (from a request or a file) to a clear error.
pub(crate) const MAX_ELEMS: usize = 1 << 20;
pub(crate) const MAX_RULES: usize = 1 << 16;

impl Grammar {
    /// Lays out parsed rules (`rules[i]` = alternatives of rule i, named `names[i]`),
    /// checking that every rule is defined, `root` exists and nothing is left-recursive.
    pub(crate) fn build(names: Vec<String>, rules: Vec<Option<Vec<Vec<Sym>>>>) -> Result<Self> {
        let root = names
            .iter()
            .position(|n| n == "root")
            .ok_or_else(|| Error::Invalid("no rule named `root`".into()))?
            as u32;
        let mut defined = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            match r {
                Some(alts) => defined.push(alts),
                None => {
                    return Err(Error::Invalid(format!(
                        "rule `{}` is used but never defined",
                        names[i]
                    )))
                }
            }
        }
        if defined.len() > MAX_RULES {
            return Err(Error::Invalid(format!(
                "{} rules (at most {MAX_RULES})",
                defined.len()
            )));
        }
        let mut class_ids: HashMap<Vec<(u32, u32)>, u32> = HashMap::new();
        let mut classes = Vec::new();
        let mut elems = Vec::new();
        let mut alts = Vec::with_capacity(defined.len());
        for rule in &defined {
            let mut starts = Vec::with_capacity(rule.len());
            for alt in rule {
                starts.push(elems.len() as u32);
                for sym in alt {
                    elems.push(match sym {
                        Sym::Rule(r) => Elem::Rule(*r),
                        Sym::Chars { ranges, negated } => {
                            let set = normalize(ranges, *negated);
                            let next = classes.len() as u32;
                            let id = *class_ids.entry(set.clone()).or_insert(next);
                            if id == next {
                                classes.push(set);
                            }
                            Elem::Class(id)
                        }
                    });
                }
                elems.push(Elem::End);
                if elems.len() > MAX_ELEMS {
                    return Err(Error::Invalid(format!(
                        "more than {MAX_ELEMS} elements after expanding repetitions"
                    )));
                }
            }
            alts.push(starts);
        }
        let g = Grammar {
            elems,
            classes,
            alts,
            names,
            root,
        };
        g.check_left_recursion()?;
        Ok(g)
    }

    /// The name of rule `r` (generated rules are named after the rule they came from).
    pub fn rule_name(&self, r: u32) -> &str {
        &self.names[r as usize]
    }

    /// Number of rules, generated ones included.
    pub fn rule_count(&self) -> usize {
        self.alts.len()
    }

    /// Whether class `k` contains `c`.
    pub(crate) fn class_has(&self, k: u32, c: u32) -> bool {
        let ranges = &self.classes[k as usize];
        let i = ranges.partition_point(|&(_, hi)| hi < c);
        i < ranges.len() && ranges[i].0 <= c
    }

    /// Whether class `k` has a character in `lo..=hi`.
    pub(crate) fn class_meets(&self, k: u32, lo: u32, hi: u32) -> bool {
        let ranges = &self.classes[k as usize];
        let i = ranges.partition_point(|&(_, h)| h < lo);
        i < ranges.len() && ranges[i].0 <= hi
    }

    /// The symbols of one alternative, starting at `start`.
    fn alt_elems(&self, start: u32) -> impl Iterator<Item = Elem> + '_ {
        self.elems[start as usize..]
            .iter()
            .copied()
            .take_while(|e| *e != Elem::End)
    }

    /// A rule that can begin with itself without consuming a character would make the
    /// matcher expand forever: refuse it, naming the rule.
    fn check_left_recursion(&self) -> Result<()> {
        let n = self.alts.len();
        // Rules that can match the empty string, to a fixed point.
        let mut nullable = vec![false; n];
        loop {
            let mut changed = false;
            for r in 0..n {
                if nullable[r] {
                    continue;
                }
                let empty = self.alts[r].iter().any(|&a| {
                    self.alt_elems(a)
                        .all(|e| matches!(e, Elem::Rule(s) if nullable[s as usize]))
                });
                if empty {
                    nullable[r] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Edges r -> s where s can come first in r; then look for a cycle.
        let mut first: Vec<Vec<u32>> = vec![Vec::new(); n];
        for r in 0..n {
            for &a in &self.alts[r] {
                for e in self.alt_elems(a) {
                    match e {
                        Elem::Rule(s) => {
                            first[r].push(s);
                            if !nullable[s as usize] {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        // Iterative depth-first search: 0 unvisited, 1 on the path, 2 done.
        let mut state = vec![0u8; n];
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (r, ref mut i)) = path.last_mut() {
                if let Some(&s) = first[r].get(*i) {
                    *i += 1;
                    let s = s as usize;
                    match state[s] {
                        0 => {
                            state[s] = 1;
                            path.push((s, 0));
                        }
                        1 => {
                            return Err(Error::Invalid(format!(
                                "rule `{}` is left-recursive (it can start with itself)",
                                self.names[s]
                            )))
                        }
                        _ => {}
                    }
                } else {
                    state[r] = 2;
                    path.pop();
                }
            }
        }
        Ok(())
    }
}

/// Sorted, merged ranges; the complement within `0..=MAX_CHAR` when negated.
fn normalize(ranges: &[(u32, u32)], negated: bool) -> Vec<(u32, u32)> {
    let mut r: Vec<(u32, u32)> = ranges
        .iter()
        .filter(|(lo, hi)| lo <= hi)
        .map(|&(lo, hi)| (lo, hi.min(MAX_CHAR)))
        .filter(|(lo, _)| *lo <= MAX_CHAR)
        .collect();
    r.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    if !negated {
        return merged;
    }
    let mut out = Vec::with_capacity(merged.len() + 1);
    let mut next = 0u32;
    for (lo, hi) in merged {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_CHAR {
        out.push((next, MAX_CHAR));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_merged_and_complemented() {
        assert_eq!(
            normalize(&[(5, 9), (1, 3), (4, 4), (20, 30)], false),
            vec![(1, 9), (20, 30)]
        );
        assert_eq!(
            normalize(&[(1, 3), (10, MAX_CHAR)], true),
            vec![(0, 0), (4, 9)]
        );
        assert_eq!(normalize(&[], true), vec![(0, MAX_CHAR)]);
        assert_eq!(normalize(&[(9, 3)], false), vec![]);
    }
}
