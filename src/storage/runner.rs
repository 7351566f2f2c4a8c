//! Running external tools (cryptsetup, mkfs.ext4, mount, umount): the [`CommandRunner`]
//! seam and the real implementation over `std::process::Command`.
//!
//! Commands are argument vectors, never shell strings. Secrets travel only on the
//! child's stdin; [`CommandSpec`] (which ends up in logs and error messages) holds
//! none. Tests substitute a recording runner for [`SystemRunner`].

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One external command: the program and its arguments, exactly as passed to exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl CommandSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends a path argument (lossy for non-UTF-8 paths, which the config refuses).
    pub fn arg_path(self, path: &Path) -> Self {
        let s = path.to_string_lossy().into_owned();
        self.arg(s)
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The program's file name (`cryptsetup`, `mkfs.ext4`, ...), for matching in tests.
    pub fn program_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.to_string_lossy().into_owned())
    }
}

/// Renders the command for humans, quoting arguments that would otherwise be ambiguous.
/// The rendering is for messages only; nothing ever parses it back.
impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", quote(&self.program.to_string_lossy()))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '^')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code, or `None` when the child was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Convenience for test doubles: a successful run with the given stdout.
    pub fn ok(stdout: impl Into<String>) -> Self {
        CommandOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// Convenience for test doubles: a failed run with the given exit code and stderr.
    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        CommandOutput {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    /// "exit status 2" or "killed by a signal", for messages.
    pub fn status_text(&self) -> String {
        match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Runs external commands. `stdin`, when given, is written to the child's stdin and the
/// pipe is then closed; otherwise the child's stdin is /dev/null.
///
/// An `Err` means the command could not be run at all (not found, not executable);
/// a command that ran and failed is an `Ok` with a non-zero code.
pub trait CommandRunner {
    fn run(&self, cmd: &CommandSpec, stdin: Option<&[u8]>) -> io::Result<CommandOutput>;
}

/// The real runner: `std::process::Command`, argv only, `LC_ALL=C` so that tool output
/// that the plan parses (mkfs.ext4 -n) is not translated.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, cmd: &CommandSpec, stdin: Option<&[u8]>) -> io::Result<CommandOutput> {
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        if let Some(input) = stdin {
            if let Some(mut pipe) = child.stdin.take() {
                // A child that exits without reading its stdin closes the pipe; its exit
                // status then tells what went wrong, so a broken pipe is not an error here.
                match pipe.write_all(input) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                }
                // Dropping the pipe closes it: the child sees end of input.
            }
        }
        let out = child.wait_with_output()?;
        Ok(CommandOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_display_quotes_only_when_needed() {
        let c = CommandSpec::new("/usr/sbin/cryptsetup")
            .arg("open")
            .arg("--key-file")
            .arg("-")
            .arg("a b")
            .arg("it's");
        assert_eq!(
            c.to_string(),
            r"/usr/sbin/cryptsetup open --key-file - 'a b' 'it'\''s'"
        );
        assert_eq!(c.program_name(), "cryptsetup");
    }

    #[test]
    fn storage_system_runner_passes_stdin_and_argv() {
        let out = SystemRunner
            .run(&CommandSpec::new("cat"), Some(b"secret\0bytes"))
            .expect("cat runs");
        assert!(out.success());
        assert_eq!(out.stdout.as_bytes(), b"secret\0bytes");

        let out = SystemRunner
            .run(
                &CommandSpec::new("sh").args(["-c", "echo $1 >&2; exit 3", "x", "a;b"]),
                None,
            )
            .expect("sh runs");
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stderr, "a;b\n");
    }

    #[test]
    fn storage_system_runner_reports_missing_program() {
        let err = SystemRunner
            .run(&CommandSpec::new("/nonexistent/agent-warden-tool"), None)
            .expect_err("missing program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn storage_system_runner_tolerates_child_ignoring_stdin() {
        let out = SystemRunner
            .run(&CommandSpec::new("true"), Some(&[0u8; 1 << 20]))
            .expect("true runs");
        assert!(out.success());
    }
}
