//! Errors and reports of the scratch-disk lifecycle: [`StorageError`] (every failure
//! names its step, and for external tools the command and its stderr) and [`Report`]
//! (what an operation did, step by step, with timings).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A step of setup or teardown; error messages and reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Configuration, state directory, device checks, tool checks.
    Preflight,
    /// `cryptsetup luksFormat` with a detached header in the state directory.
    Format,
    /// `cryptsetup open`.
    Open,
    /// Writing the blocks mkfs.ext4 reads before it writes (integrity only).
    Prewrite,
    /// `mkfs.ext4`.
    Mkfs,
    /// `mount -o nodev,nosuid`.
    Mount,
    /// `umount` (lazy as fallback).
    Unmount,
    /// `cryptsetup close`.
    Close,
    /// Overwriting and deleting the detached header.
    DestroyHeader,
    /// Reading or writing the state file.
    State,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Format => "format",
            Step::Open => "open",
            Step::Prewrite => "prewrite",
            Step::Mkfs => "mkfs",
            Step::Mount => "mount",
            Step::Unmount => "unmount",
            Step::Close => "close",
            Step::DestroyHeader => "destroy-header",
            Step::State => "state",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong. Messages are meant for an operator reading a log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage configuration: {0}")]
    Config(String),

    #[error("step preflight: refusing device {device}: {reason}")]
    Refused { device: String, reason: String },

    #[error("step {step}: cannot run `{command}`: {source}")]
    Spawn {
        step: Step,
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("step {step}: `{command}` failed with {status}: {stderr}")]
    Command {
        step: Step,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("step {step}: {what} {}: {source}", path.display())]
    Io {
        step: Step,
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("step {step}: {message}")]
    Other { step: Step, message: String },

    #[error("inconsistent storage state: {0}; run `agent-warden storage teardown` first")]
    Inconsistent(String),

    #[error(
        "setup failed: {cause}; {}",
        rollback_summary(rollback, rollback_errors)
    )]
    SetupFailed {
        cause: Box<StorageError>,
        rollback: Box<Report>,
        rollback_errors: Vec<StorageError>,
    },

    #[error("teardown incomplete: {}; done before that: {}", join_errors(errors), done.summary())]
    TeardownFailed {
        done: Box<Report>,
        errors: Vec<StorageError>,
    },
}

fn rollback_summary(rollback: &Report, errors: &[StorageError]) -> String {
    if errors.is_empty() {
        format!("rolled back cleanly ({})", rollback.summary())
    } else {
        format!(
            "rollback INCOMPLETE ({}); rollback errors: {}",
            rollback.summary(),
            join_errors(errors)
        )
    }
}

fn join_errors(errors: &[StorageError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl StorageError {
    /// The step the failure belongs to (for `SetupFailed`, the step that failed).
    pub fn step(&self) -> Option<Step> {
        match self {
            StorageError::Config(_) | StorageError::Refused { .. } => Some(Step::Preflight),
            StorageError::Spawn { step, .. }
            | StorageError::Command { step, .. }
            | StorageError::Io { step, .. }
            | StorageError::Other { step, .. } => Some(*step),
            StorageError::Inconsistent(_) => Some(Step::State),
            StorageError::SetupFailed { cause, .. } => cause.step(),
            StorageError::TeardownFailed { errors, .. } => errors.first().and_then(|e| e.step()),
        }
    }

    /// For `SetupFailed`: whether the rollback left nothing behind.
    pub fn rolled_back_cleanly(&self) -> Option<bool> {
        match self {
            StorageError::SetupFailed {
                rollback_errors, ..
            } => Some(rollback_errors.is_empty()),
            _ => None,
        }
    }

    pub(crate) fn io(
        step: Step,
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        StorageError::Io {
            step,
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}

/// Which operation a report describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Setup,
    Teardown,
    Rollback,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Setup => "setup",
            Operation::Teardown => "teardown",
            Operation::Rollback => "rollback",
        })
    }
}

/// One thing an operation did (or found already done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub step: Step,
    /// Whether this changed anything (false: checked and found nothing to do).
    pub changed: bool,
    pub detail: String,
    pub elapsed: Duration,
}

/// What setup, teardown or a rollback did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub operation: Operation,
    pub events: Vec<Event>,
    pub total: Duration,
}

impl Report {
    pub fn new(operation: Operation) -> Self {
        Report {
            operation,
            events: Vec::new(),
            total: Duration::ZERO,
        }
    }

    pub(crate) fn push(
        &mut self,
        step: Step,
        changed: bool,
        detail: impl Into<String>,
        elapsed: Duration,
    ) {
        self.events.push(Event {
            step,
            changed,
            detail: detail.into(),
            elapsed,
        });
    }

    /// Whether anything was changed (false for an idempotent re-run).
    pub fn changed_anything(&self) -> bool {
        self.events.iter().any(|e| e.changed)
    }

    /// Time spent in one step (sum over its events).
    pub fn step_time(&self, step: Step) -> Duration {
        self.events
            .iter()
            .filter(|e| e.step == step)
            .map(|e| e.elapsed)
            .sum()
    }

    /// One line: the changed events' details, or "nothing to do".
    pub fn summary(&self) -> String {
        let done: Vec<&str> = self
            .events
            .iter()
            .filter(|e| e.changed)
            .map(|e| e.detail.as_str())
            .collect();
        if done.is_empty() {
            "nothing to do".to_string()
        } else {
            done.join(", ")
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} in {:.3} s",
            self.operation,
            if self.changed_anything() {
                "done"
            } else {
                "nothing to do"
            },
            self.total.as_secs_f64()
        )?;
        for e in &self.events {
            writeln!(
                f,
                "  {:<14} {:>8.3} s  {}{}",
                e.step.as_str(),
                e.elapsed.as_secs_f64(),
                if e.changed { "" } else { "(unchanged) " },
                e.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_step_command_and_stderr() {
        let e = StorageError::Command {
            step: Step::Mkfs,
            command: "mkfs.ext4 -F /dev/mapper/x".into(),
            status: "exit status 1".into(),
            stderr: "bad option".into(),
        };
        let s = e.to_string();
        assert!(s.contains("step mkfs"), "{s}");
        assert!(s.contains("mkfs.ext4 -F /dev/mapper/x"), "{s}");
        assert!(s.contains("bad option"), "{s}");
        assert_eq!(e.step(), Some(Step::Mkfs));

        let mut rb = Report::new(Operation::Rollback);
        rb.push(Step::Close, true, "closed mapping x", Duration::ZERO);
        let f = StorageError::SetupFailed {
            cause: Box::new(e),
            rollback: Box::new(rb),
            rollback_errors: vec![],
        };
        let s = f.to_string();
        assert!(
            s.contains("step mkfs") && s.contains("rolled back cleanly (closed mapping x)"),
            "{s}"
        );
        assert_eq!(f.step(), Some(Step::Mkfs));
        assert_eq!(f.rolled_back_cleanly(), Some(true));
    }

    #[test]
    fn report_display_lists_events() {
        let mut r = Report::new(Operation::Teardown);
        r.push(
            Step::Unmount,
            false,
            "not mounted",
            Duration::from_millis(1),
        );
        assert!(!r.changed_anything());
        assert_eq!(r.summary(), "nothing to do");
        r.push(Step::Close, true, "closed", Duration::from_millis(20));
        assert!(r.changed_anything());
        let s = r.to_string();
        assert!(s.starts_with("teardown: done"), "{s}");
        assert!(s.contains("(unchanged) not mounted"), "{s}");
        assert_eq!(r.step_time(Step::Close), Duration::from_millis(20));
    }
}
