//! The encrypted scratch disk: agent-warden owns the lifecycle of the host-provided
//! disk on which the guest keeps container images and scratch data.
//!
//! The host sees only ciphertext and never holds a header the guest trusts: the disk
//! is formatted as LUKS2 with a fresh 64-byte random passphrase that lives only in this
//! process's memory (zeroised once the mapping is open) and a detached header kept in
//! a memory-backed state directory. Teardown unmounts, closes the mapping and destroys
//! the header, after which the disk is ciphertext whose key exists nowhere.
//!
//! Layout of this module:
//! - [`config`]: the `[storage]` table resolved ([`StorageConfig`]) and its validation
//!   (the table's keys and flags are defined once, in `crate::config::StorageSection`;
//!   the `agent-warden storage` command is `crate::tools::storage`);
//! - [`plan`]: the setup plan as data (commands and their arguments, in order), the
//!   undos, and their execution;
//! - [`runner`]: the [`CommandRunner`] seam over `std::process::Command`;
//! - [`host`]: the [`Host`] seam for device facts, mounts and mappings;
//! - [`state`]: the state file recording completed steps, and the lock;
//! - [`error`]: [`StorageError`] and [`Report`].
//!
//! Entry points: [`setup`], [`teardown`], [`status`] (and `*_with` variants taking
//! the seams, for tests).

pub mod config;
pub mod error;
pub mod host;
pub mod plan;
pub mod runner;
pub mod state;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

pub use config::{DeviceSpec, SetupAt, StorageConfig};
pub use error::{Event, Operation, Report, Step, StorageError};
pub use host::{ByteRange, DeviceFacts, Host, LinuxHost};
pub use runner::{CommandOutput, CommandRunner, CommandSpec, SystemRunner};

use plan::{execute_action, execute_undo, Env, Undo};
use state::{ensure_state_dir, State, StateLock};

/// Sets up the scratch disk on the real system. See [`setup_with`].
pub fn setup(cfg: &StorageConfig) -> Result<Report, StorageError> {
    setup_with(&SystemRunner, &LinuxHost::new(), cfg)
}

/// Tears the scratch disk down on the real system. See [`teardown_with`].
pub fn teardown(cfg: &StorageConfig) -> Result<Report, StorageError> {
    teardown_with(&SystemRunner, &LinuxHost::new(), cfg)
}

/// Reports what is set up on the real system. See [`status_with`].
pub fn status(cfg: &StorageConfig) -> Result<Status, StorageError> {
    status_with(&LinuxHost::new(), cfg)
}

/// Checks the state directory is there and memory-backed (the header must never reach
/// a disk).
fn prepare_state_dir(host: &dyn Host, cfg: &StorageConfig) -> Result<(), StorageError> {
    ensure_state_dir(&cfg.state_dir)?;
    let mem = host
        .is_memory_backed(&cfg.state_dir)
        .map_err(|e| StorageError::io(Step::Preflight, "cannot statfs", &cfg.state_dir, e))?;
    if !mem {
        return Err(StorageError::Config(format!(
            "state_dir {} is not on tmpfs or ramfs; the detached header must stay in memory",
            cfg.state_dir.display()
        )));
    }
    Ok(())
}

/// Sets up the scratch disk: preflight checks, then format, open, prewrite (with
/// integrity), mkfs, mount, recording each step in the state file.
///
/// Idempotent: when the state file says setup completed and the mapping and mount are
/// there, nothing is done and the report says so. An interrupted earlier setup (state
/// file with steps begun but not completed) is rolled back first. A failing step rolls
/// back every step begun, and the error says what failed and what the rollback did.
pub fn setup_with(
    runner: &dyn CommandRunner,
    host: &dyn Host,
    cfg: &StorageConfig,
) -> Result<Report, StorageError> {
    let start = Instant::now();
    let env = Env { runner, host };
    cfg.validate(true)?;
    prepare_state_dir(host, cfg)?;
    let _lock = StateLock::acquire(&cfg.lock_path())?;
    let mut report = Report::new(Operation::Setup);
    let state_path = cfg.state_path();

    match State::load(&state_path)? {
        Some(st) if st.complete => {
            let t = Instant::now();
            let active = host.mapping_active(&st.mapper_name).map_err(|e| {
                StorageError::io(
                    Step::State,
                    "cannot check device-mapper for",
                    &st.mapper_name,
                    e,
                )
            })?;
            let mounted = host.is_mounted(&st.mount_point).map_err(|e| {
                StorageError::io(Step::State, "cannot check mounts for", &st.mount_point, e)
            })?;
            let header = st.header_path.exists();
            if active && mounted && header {
                report.push(
                    Step::State,
                    false,
                    format!(
                        "already set up: {} open as {} and mounted at {}",
                        st.device,
                        st.mapper_name,
                        st.mount_point.display()
                    ),
                    t.elapsed(),
                );
                report.total = start.elapsed();
                return Ok(report);
            }
            let mut missing = Vec::new();
            if !active {
                missing.push(format!("mapping {} is gone", st.mapper_name));
            }
            if !mounted {
                missing.push(format!(
                    "nothing is mounted at {}",
                    st.mount_point.display()
                ));
            }
            if !header {
                missing.push(format!("header {} is gone", st.header_path.display()));
            }
            return Err(StorageError::Inconsistent(format!(
                "the state file says setup completed, but {}",
                missing.join(", ")
            )));
        }
        Some(st) => {
            // A setup that was interrupted (crash, kill): its key is gone, so what it
            // did can only be taken back.
            let t = Instant::now();
            let mut rb = Report::new(Operation::Rollback);
            let mut errors = Vec::new();
            for undo in plan::teardown_plan(&st.mount_point, &st.mapper_name, &st.header_path) {
                if let Err(e) = execute_undo(env, cfg, &undo, &mut rb) {
                    errors.push(e);
                }
            }
            if !errors.is_empty() {
                return Err(StorageError::TeardownFailed {
                    done: Box::new(rb),
                    errors,
                });
            }
            State::remove(&state_path)?;
            report.push(
                Step::State,
                true,
                format!(
                    "rolled back an interrupted setup (steps begun: {}): {}",
                    st.begun
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    rb.summary()
                ),
                t.elapsed(),
            );
        }
        None => {
            if cfg.header_path().exists() {
                return Err(StorageError::Inconsistent(format!(
                    "header {} exists without a state file",
                    cfg.header_path().display()
                )));
            }
        }
    }

    let device = preflight(env, cfg, &mut report)?;
    let steps = plan::setup_plan(cfg, &device);
    let mut state = State::new(cfg, &device);
    state.save(&state_path)?;
    let mut key = match plan::new_key() {
        Ok(k) => Some(k),
        Err(e) => {
            let _ = State::remove(&state_path);
            return Err(e);
        }
    };

    for ps in &steps {
        let t = Instant::now();
        state.begun.push(ps.step);
        let mut result = state.save(&state_path);
        if result.is_ok() {
            tracing::info!(step = %ps.step, "storage setup step");
            for action in &ps.actions {
                result = execute_action(env, ps.step, action, key.as_ref().map(|k| k.as_slice()));
                if result.is_err() {
                    break;
                }
            }
        }
        if ps.step == Step::Open || result.is_err() {
            // The kernel holds the volume key now (or nothing will); drop ours, which
            // zeroises it.
            key = None;
        }
        if let Err(cause) = result {
            tracing::warn!(step = %ps.step, error = %cause, "storage setup failed; rolling back");
            return Err(rollback(env, cfg, &steps, &state, cause));
        }
        report.push(ps.step, true, ps.summary.clone(), t.elapsed());
        state.done.push(ps.step);
        if let Err(cause) = state.save(&state_path) {
            return Err(rollback(env, cfg, &steps, &state, cause));
        }
    }
    drop(key);
    state.complete = true;
    if let Err(cause) = state.save(&state_path) {
        return Err(rollback(env, cfg, &steps, &state, cause));
    }
    report.total = start.elapsed();
    tracing::info!(
        total_ms = report.total.as_millis() as u64,
        "storage setup done"
    );
    Ok(report)
}

/// Undoes every begun step in reverse order; removes the state file when that worked.
fn rollback(
    env: Env<'_>,
    cfg: &StorageConfig,
    steps: &[plan::PlannedStep],
    state: &State,
    cause: StorageError,
) -> StorageError {
    let start = Instant::now();
    let mut rb = Report::new(Operation::Rollback);
    let mut errors = Vec::new();
    let undos: Vec<&Undo> = steps
        .iter()
        .filter(|p| state.begun.contains(&p.step))
        .rev()
        .filter_map(|p| p.undo.as_ref())
        .collect();
    for undo in undos {
        if let Err(e) = execute_undo(env, cfg, undo, &mut rb) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        if let Err(e) = State::remove(&cfg.state_path()) {
            errors.push(e);
        }
    }
    rb.total = start.elapsed();
    StorageError::SetupFailed {
        cause: Box::new(cause),
        rollback: Box::new(rb),
        rollback_errors: errors,
    }
}

/// Resolves and checks the device, the mount point, the mapping name and the tools.
fn preflight(
    env: Env<'_>,
    cfg: &StorageConfig,
    report: &mut Report,
) -> Result<PathBuf, StorageError> {
    let t = Instant::now();
    let configured = cfg.device.clone().unwrap_or_default();
    let spec = DeviceSpec::parse(&configured)?;
    let refused = |reason: String| StorageError::Refused {
        device: configured.clone(),
        reason,
    };
    let path = env
        .host
        .resolve_device(&spec)
        .map_err(|e| refused(format!("cannot resolve it: {e}")))?;
    let facts = match env.host.inspect_device(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(format!("{} does not exist", path.display())))
        }
        Err(e) => return Err(refused(format!("cannot inspect {}: {e}", path.display()))),
    };
    if let Some(reason) = host::check_device(&facts, cfg.min_size_bytes) {
        return Err(refused(reason));
    }
    let mp_busy = env.host.is_mounted(&cfg.mount_point).map_err(|e| {
        StorageError::io(
            Step::Preflight,
            "cannot check mounts for",
            &cfg.mount_point,
            e,
        )
    })?;
    if mp_busy {
        return Err(StorageError::Other {
            step: Step::Preflight,
            message: format!(
                "something is already mounted at {}",
                cfg.mount_point.display()
            ),
        });
    }
    let name_busy = env.host.mapping_active(&cfg.mapper_name).map_err(|e| {
        StorageError::io(
            Step::Preflight,
            "cannot check device-mapper for",
            &cfg.mapper_name,
            e,
        )
    })?;
    if name_busy {
        return Err(StorageError::Other {
            step: Step::Preflight,
            message: format!(
                "a device-mapper device named {} already exists",
                cfg.mapper_name
            ),
        });
    }
    // The tools, before anything is written: a missing one fails here, cleanly.
    let cs = plan::run_checked(
        env,
        Step::Preflight,
        &CommandSpec::new(&cfg.cryptsetup).arg("--version"),
        None,
    )?;
    let mk = plan::run_checked(
        env,
        Step::Preflight,
        &CommandSpec::new(&cfg.mkfs).arg("-V"),
        None,
    )?;
    let first_line = |o: &CommandOutput| {
        let text = if o.stdout.trim().is_empty() {
            &o.stderr
        } else {
            &o.stdout
        };
        text.lines().next().unwrap_or("").trim().to_string()
    };
    report.push(
        Step::Preflight,
        false,
        format!(
            "{} accepted ({} bytes); {}; {}",
            facts.path.display(),
            facts.size_bytes,
            first_line(&cs),
            first_line(&mk)
        ),
        t.elapsed(),
    );
    Ok(facts.path)
}

/// Tears the scratch disk down: unmount (lazy as fallback), close the mapping
/// (deferred as fallback), overwrite and delete the detached header, remove the state
/// file. Works from the state file when there is one and from the configuration
/// otherwise; each part checks whether there is anything to do, so teardown is
/// idempotent and the report says what it did. The passphrase was dropped when setup
/// opened the mapping; closing the mapping drops the kernel's volume key.
pub fn teardown_with(
    runner: &dyn CommandRunner,
    host: &dyn Host,
    cfg: &StorageConfig,
) -> Result<Report, StorageError> {
    let start = Instant::now();
    let env = Env { runner, host };
    cfg.validate(false)?;
    ensure_state_dir(&cfg.state_dir)?;
    let _lock = StateLock::acquire(&cfg.lock_path())?;
    let mut report = Report::new(Operation::Teardown);
    let state_path = cfg.state_path();
    let state = match State::load(&state_path) {
        Ok(s) => s,
        Err(e) => {
            report.push(
                Step::State,
                false,
                format!("ignoring the state file: {e}"),
                std::time::Duration::ZERO,
            );
            None
        }
    };
    let (mp, name, header) = match &state {
        Some(s) => (
            s.mount_point.clone(),
            s.mapper_name.clone(),
            s.header_path.clone(),
        ),
        None => (
            cfg.mount_point.clone(),
            cfg.mapper_name.clone(),
            cfg.header_path(),
        ),
    };
    let mut errors = Vec::new();
    for undo in plan::teardown_plan(&mp, &name, &header) {
        if let Err(e) = execute_undo(env, cfg, &undo, &mut report) {
            tracing::warn!(error = %e, "storage teardown step failed");
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        report.total = start.elapsed();
        return Err(StorageError::TeardownFailed {
            done: Box::new(report),
            errors,
        });
    }
    let t = Instant::now();
    if State::remove(&state_path)? {
        report.push(Step::State, true, "removed the state file", t.elapsed());
    }
    report.total = start.elapsed();
    tracing::info!(
        total_ms = report.total.as_millis() as u64,
        changed = report.changed_anything(),
        "storage teardown done"
    );
    Ok(report)
}

/// Where the scratch disk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Set up and in place.
    Active,
    /// Nothing set up, nothing left over.
    Inactive,
    /// Partly set up, interrupted, or out of step with the state file.
    Partial,
}

/// What [`status`] found.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: Option<State>,
    /// Why the state file could not be read, if it could not.
    pub state_error: Option<String>,
    pub mapper_name: String,
    pub mount_point: PathBuf,
    pub header_path: PathBuf,
    pub mapping_active: bool,
    pub mounted: bool,
    pub header_present: bool,
}

impl Status {
    pub fn phase(&self) -> Phase {
        let complete = self.state.as_ref().is_some_and(|s| s.complete);
        if complete
            && self.mapping_active
            && self.mounted
            && self.header_present
            && self.state_error.is_none()
        {
            Phase::Active
        } else if self.state.is_none()
            && self.state_error.is_none()
            && !self.mapping_active
            && !self.mounted
            && !self.header_present
        {
            Phase::Inactive
        } else {
            Phase::Partial
        }
    }

    /// The CLI's exit code: 0 active, 3 inactive, 4 partial.
    pub fn exit_code(&self) -> i32 {
        match self.phase() {
            Phase::Active => 0,
            Phase::Inactive => 3,
            Phase::Partial => 4,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase() {
            Phase::Active => "active",
            Phase::Inactive => "inactive",
            Phase::Partial => "partial",
        };
        writeln!(f, "storage: {phase}")?;
        match (&self.state, &self.state_error) {
            (_, Some(e)) => writeln!(f, "  state file:  unreadable: {e}")?,
            (Some(s), None) => writeln!(
                f,
                "  state file:  device {}, integrity {}, steps done: {}{}",
                s.device,
                if s.integrity { "on" } else { "off" },
                if s.done.is_empty() {
                    "none".to_string()
                } else {
                    s.done
                        .iter()
                        .map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if s.complete {
                    " (complete)"
                } else {
                    " (incomplete)"
                }
            )?,
            (None, None) => writeln!(f, "  state file:  none")?,
        }
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "  mapping:     {} active: {}",
            self.mapper_name,
            yn(self.mapping_active)
        )?;
        writeln!(
            f,
            "  mounted:     {}: {}",
            self.mount_point.display(),
            yn(self.mounted)
        )?;
        writeln!(
            f,
            "  header:      {}: {}",
            self.header_path.display(),
            yn(self.header_present)
        )
    }
}

/// Looks without touching: state file, mapping, mount, header.
pub fn status_with(host: &dyn Host, cfg: &StorageConfig) -> Result<Status, StorageError> {
    cfg.validate(false)?;
    let (state, state_error) = match State::load(&cfg.state_path()) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (mapper_name, mount_point, header_path) = match &state {
        Some(s) => (
            s.mapper_name.clone(),
            s.mount_point.clone(),
            s.header_path.clone(),
        ),
        None => (
            cfg.mapper_name.clone(),
            cfg.mount_point.clone(),
            cfg.header_path(),
        ),
    };
    let mapping_active = host.mapping_active(&mapper_name).map_err(|e| {
        StorageError::io(
            Step::State,
            "cannot check device-mapper for",
            &mapper_name,
            e,
        )
    })?;
    let mounted = host
        .is_mounted(&mount_point)
        .map_err(|e| StorageError::io(Step::State, "cannot check mounts for", &mount_point, e))?;
    let header_present = header_path.exists();
    Ok(Status {
        state,
        state_error,
        mapper_name,
        mount_point,
        header_path,
        mapping_active,
        mounted,
        header_present,
    })
}
