#![no_main]
libfuzzer_sys::fuzz_target!(init: ferrollama_fuzzing::run_parallel_loops_inline(), |data: &[u8]| ferrollama_fuzzing::run("lora_adapter", data));
