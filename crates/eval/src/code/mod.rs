//! Code generation scored by running the code: HumanEval and MBPP in Python as
//! lm-evaluation-harness defines them, and MBPP in Rust from OLMo's request files, each
//! program run in [`ferrollama_sandbox`]; pass@k with the unbiased estimator.

pub mod exec;
pub mod passk;
pub mod problems;
pub mod pyliteral;
pub mod run;
pub mod rust_tests;
