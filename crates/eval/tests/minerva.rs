//! MATH answers read as lm-evaluation-harness's `minerva_math` reads them: its
//! `normalize_final_answer`, `get_unnormalized_answer` and `last_boxed_only_string` run on
//! every boxed answer of MATH-500 and on edge cases (`tests/data/minerva_normalize.json`,
//! recorded from the harness's own functions), equal to ours string for string.

use ferrollama_eval::harness::minerva;

#[test]
fn the_harness_normalisation_on_math500_and_edge_cases() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("data/minerva_normalize.json")).unwrap();
    let pairs = |k: &str| fixture[k].as_array().unwrap().clone();
    let normalize = pairs("normalize");
    assert!(normalize.len() > 500);
    let mut wrong = Vec::new();
    for p in &normalize {
        let (input, want) = (p[0].as_str().unwrap(), p[1].as_str().unwrap());
        let got = minerva::normalize_final_answer(input);
        if got != want {
            wrong.push(format!("{input:?}: {got:?} != {want:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        normalize.len(),
        wrong.join("\n")
    );
    for p in pairs("unnormalized") {
        assert_eq!(
            minerva::unnormalized_answer(p[0].as_str().unwrap()),
            p[1].as_str().unwrap()
        );
    }
    for p in pairs("last_boxed") {
        assert_eq!(
            minerva::last_boxed(p[0].as_str().unwrap()).as_deref(),
            p[1].as_str(),
            "{p}"
        );
    }
}

#[test]
fn an_answer_is_scored_against_the_solution_box() {
    let solution = "So $x = \\boxed{\\frac{1}{2}}$.";
    let right = "We find x. Final Answer: The final answer is $\\frac12$. I hope it is correct.";
    assert_eq!(minerva::exact_match(right, solution), 1.0);
    assert_eq!(
        minerva::exact_match("Final Answer: The final answer is $3$.", solution),
        0.0
    );
    assert_eq!(minerva::exact_match("no answer", solution), 0.0);
    assert_eq!(minerva::exact_match(right, "no box"), 0.0);
}
