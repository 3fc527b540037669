//! What one component may declare, and what one run may hold, whatever its shape: a component
//! may legally carry hundreds of core instances, each with its own memory. Each test takes a
//! real plugin built from source and adds core instances of a small module whose memory its
//! start function fills (so the pages are really touched), then runs it through
//! `payflow-edge plugin check|run` as a real process.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::guests;
use wasm_encoder::{
    CodeSection, Function, FunctionSection, Instruction, MemorySection, MemoryType, Module, ModuleArg,
    StartSection, TypeSection,
};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payflow-edge")).args(args).output().expect("payflow-edge runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// How many core modules the component defines at its top level: the index the next one gets.
fn top_level_core_modules(component: &[u8]) -> u32 {
    let (mut depth, mut modules) = (0, 0);
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.expect("a valid component") {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            _ => {}
        }
    }
    modules
}

/// `plugin` with `instances` more core instances, each with a memory of `pages` 64 KiB pages
/// that its start function fills.
fn inflate(plugin: &str, instances: u32, pages: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(guests().join(format!("{plugin}.wasm"))).unwrap();
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    let mut functions = FunctionSection::new();
    functions.function(0);
    module.section(&functions);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: u64::from(pages),
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    module.section(&StartSection { function_index: 0 });
    let mut code = CodeSection::new();
    let mut fill = Function::new([]);
    fill.instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Const((pages * 65536) as i32))
        .instruction(&Instruction::MemoryFill(0))
        .instruction(&Instruction::End);
    code.function(&fill);
    module.section(&code);

    let index = top_level_core_modules(&bytes);
    let mut extra = wasm_encoder::Component::new();
    extra.section(&wasm_encoder::ModuleSection(&module));
    let mut core_instances = wasm_encoder::InstanceSection::new();
    for _ in 0..instances {
        core_instances.instantiate(index, std::iter::empty::<(&str, ModuleArg)>());
    }
    extra.section(&core_instances);
    // Sections may follow the plugin's own: append them without the second header.
    bytes.extend_from_slice(&extra.finish()[8..]);
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn event_file(dir: &Path) -> String {
    write(dir, "event.json", &support::event_body("evt_limits", "payment.succeeded"))
}

/// Regression (issue 16, item 1): one plugin declaring hundreds of core instances, each with a
/// memory, took the instance pool every merchant's runs share. Such a component is refused at
/// check (and so at upload) with the limit it breaks named; one within the caps still loads.
#[test]
fn a_component_over_the_instance_memory_or_table_caps_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            inflate("amount_threshold", 200, 1),
            "core module instances, which exceeds the configured maximum of 32",
        ),
        (
            inflate("amount_threshold", 6, 1),
            "Wasm linear memories, which exceeds the configured maximum of 4",
        ),
    ];
    for (i, (bytes, message)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("big{i}.wasm"), bytes);
        let output = cli(&["plugin", "check", &file]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains("over the sandbox's limits"), "{}", text(&output));
        assert!(text(&output).contains(message), "{}", text(&output));
    }
    let within = write(dir.path(), "within.wasm", &inflate("amount_threshold", 2, 1));
    let output = cli(&["plugin", "check", &within]);
    assert!(output.status.success(), "{}", text(&output));
}

/// Regression (issue 16, item 3): `memory_mb` held per linear memory, so a component with 16
/// instances each touching 31 MiB ran under `memory_mb = 32`. It holds for every memory (and
/// table) of the run together.
#[test]
fn memory_mb_caps_all_the_memories_of_a_run_together() {
    let dir = tempfile::tempdir().unwrap();
    let event = event_file(dir.path());
    // Three extra memories of 16 MiB each, every page touched: 48 MiB beyond the plugin's own,
    // each of them under the 32 MiB cap.
    let file = write(dir.path(), "wide.wasm", &inflate("amount_threshold", 3, 256));
    let run = |memory_mb: &str| {
        cli(&[
            "plugin",
            "run",
            &file,
            "--event",
            &event,
            "--config",
            "min_amount=1",
            "--memory-mb",
            memory_mb,
        ])
    };
    let refused = run("32");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("plugin run failed: memory_exhausted"), "{}", text(&refused));
    let allowed = run("96");
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert!(text(&allowed).contains("outcome: continue"), "{}", text(&allowed));
}
