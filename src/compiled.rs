//! The compiled fast path of [`crate::policy`]: each request type's rule compiled once
//! (lazily, on its first request) to a regorus RVM program, run in a fresh VM per
//! request without the engine lock.
//!
//! It may only *allow*. A policy's decision is the interpreter's; the VM answers first
//! because it is several times faster, and whenever it does not produce an allow (a
//! denial, an error, an instruction or time limit, a rule it cannot compile such as one
//! calling our `path.*` extensions) the interpreter decides, with its prints as the
//! reason. The RVM has no `print`, so the program is compiled from the policy text with
//! its print statements removed (a line that is only `print(...)`); print always
//! succeeds in Rego, so removing it cannot change a value. A line the removal would
//! break makes compilation fail, and that rule stays on the interpreter.
// Host data reaches this module: no unwrap/expect/indexing/panic outside tests.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::{Engine, Value};

/// Compiled programs of one policy, by request type.
pub(crate) struct Compiled {
    /// An engine over the print-free text, used only to compile.
    engine: Mutex<Engine>,
    programs: Mutex<HashMap<String, Option<Arc<Program>>>>,
    timeout: Mutex<Duration>,
}

/// The policy text with statement-only `print(...)` lines blanked (line numbers kept).
pub(crate) fn strip_prints(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if is_print_statement(line.trim()) {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Whether `t` is exactly one `print(...)` call: the parenthesis opened by `print(`
/// closes at the last character (strings skipped). `print(a); deny(b)` or
/// `print(a) == x` are not, so removing the line can only ever drop a print.
fn is_print_statement(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("print(") else {
        return false;
    };
    let mut depth = 1usize;
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        chars.next();
                    }
                    Some((_, '"')) => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            '`' => loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + c.len_utf8() == rest.len();
                }
            }
            _ => {}
        }
    }
    false
}

impl Compiled {
    /// Prepares the compiling engine; `engine` must already hold the stripped text.
    pub(crate) fn new(engine: Engine, timeout: Duration) -> Compiled {
        Compiled {
            engine: Mutex::new(engine),
            programs: Mutex::new(HashMap::new()),
            timeout: Mutex::new(timeout),
        }
    }

    pub(crate) fn set_timeout(&self, limit: Duration) {
        if let Ok(mut t) = self.timeout.lock() {
            *t = limit;
        }
    }

    fn program(&self, request_type: &str) -> Option<Arc<Program>> {
        if let Some(p) = self.programs.lock().ok()?.get(request_type) {
            return p.clone();
        }
        let entry = format!("data.agent_policy.{request_type}");
        let program = {
            let mut engine = self.engine.lock().ok()?;
            engine
                .compile_with_entrypoint(&entry.as_str().into())
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    Compiler::compile_from_policy(&c, &[entry.as_str()]).map_err(|e| e.to_string())
                })
        };
        let program = match program {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(request_type, error = %e, "rule not compiled; the interpreter decides it");
                None
            }
        };
        if let Ok(mut m) = self.programs.lock() {
            m.insert(request_type.to_string(), program.clone());
        }
        program
    }

    /// The rule's value from the compiled program, or `None` when the program cannot
    /// say (not compiled, or the VM failed).
    pub(crate) fn eval(
        &self,
        request_type: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Option<Value> {
        let program = self.program(request_type)?;
        let timeout = self.timeout.lock().map(|t| *t).ok()?;
        let mut vm = RegoVM::new();
        vm.load_program(program);
        vm.set_execution_timer_config(Some(crate::policy::timer_config(timeout)));
        if let Some(d) = data {
            vm.set_data(d.clone()).ok()?;
        }
        vm.set_input(input.clone());
        match vm.execute_entry_point_by_name(&format!("data.agent_policy.{request_type}")) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(request_type, error = %e, "compiled evaluation failed; the interpreter decides");
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn strips_print_statements_only() {
        let t = "a {\n    print(\"x\", y)\n    y == 1\n}\nprint_it := 1\n  print(z) # no\n";
        assert_eq!(
            strip_prints(t),
            "a {\n\n    y == 1\n}\nprint_it := 1\n  print(z) # no\n"
        );
    }

    #[test]
    fn keeps_lines_where_print_is_not_the_whole_statement() {
        for keep in [
            "print(a); not allowed(input)",
            "print(a) == x",
            "print(\"(\", x) ; y(z)",
            "print(f(x)) ; g(y)",
            "print(\"unterminated",
            "print(a",
        ] {
            assert!(!is_print_statement(keep), "{keep}");
        }
        for strip in [
            "print(a)",
            "print(\"x)\", concat(\",\", [a, b]))",
            "print(`raw ) text`, {\"k\": f(x)})",
            "print(\"esc \\\" )\", y)",
        ] {
            assert!(is_print_statement(strip), "{strip}");
        }
    }
}
