#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrollama_fuzzing::run("gbnf", data));
