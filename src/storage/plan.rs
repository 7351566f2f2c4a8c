//! The scratch-disk plan as data, and the machinery that carries it out.
//!
//! [`setup_plan`] turns a configuration and a checked device into [`PlannedStep`]s:
//! format, open, prewrite (integrity only), mkfs, mount. Each step is a list of
//! [`Action`]s (commands with their argument vectors, file creations, the mkfs
//! pre-write) and at most one [`Undo`]. [`teardown_plan`] is the list of undos.
//! Executing an undo first checks whether there is anything to undo, so rollback and
//! teardown are idempotent and can run after a crash with or without a state file.
//!
//! The LUKS2 parameters and why:
//! - detached header in the (memory-backed) state directory: the host-controlled disk
//!   never holds a header the guest later trusts;
//! - aes-xts-plain64 with 4096-byte sectors; with integrity, hmac-sha256 tags via
//!   dm-integrity, formatted without the initial wipe and opened without the
//!   dm-integrity journal (the disk never outlives the key, so there is no crash to
//!   recover from, and the journal would double every write);
//! - pbkdf2 with the minimum 1000 iterations: the passphrase is 64 random bytes, so a
//!   slow or memory-hard KDF protects nothing;
//! - the passphrase reaches cryptsetup on stdin only (`--key-file -`).
//!
//! With integrity on, sectors never written read as I/O errors, and mkfs.ext4 reads a
//! few blocks before writing them (block 0, the superblock backups, blkid's probes of
//! the head and tail). The prewrite step writes zeros over the first and last MiB,
//! asks `mkfs.ext4 -n` (same arguments) where the superblock backups go, and writes
//! zeros there.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use zeroize::Zeroizing;

use super::config::StorageConfig;
use super::error::{Report, Step, StorageError};
use super::host::{ByteRange, Host};
use super::runner::{CommandOutput, CommandRunner, CommandSpec};

/// Length of the random passphrase handed to cryptsetup.
pub const KEY_BYTES: usize = 64;
/// Sector size of the encrypted mapping (and ext4 block size).
pub const SECTOR_BYTES: u64 = 4096;
/// How much of the head and of the tail of the mapping the prewrite zeroes.
pub const PREWRITE_EDGE_BYTES: u64 = 1 << 20;
/// LUKS2 header sizes: small, since the header lives in (confidential) memory. One
/// keyslot for a 768-bit key with 4000 anti-forensic stripes needs 376 KiB.
pub const LUKS2_METADATA_SIZE: u64 = 16 << 10;
pub const LUKS2_KEYSLOTS_SIZE: u64 = 512 << 10;
/// The detached header file: two metadata copies and the keyslots area.
pub const LUKS2_HEADER_FILE_BYTES: u64 = 2 * LUKS2_METADATA_SIZE + LUKS2_KEYSLOTS_SIZE;
/// PBKDF2 iteration count: cryptsetup's minimum.
pub const PBKDF2_ITERATIONS: &str = "1000";

/// What a command reads on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing (/dev/null).
    Nothing,
    /// The random passphrase.
    Key,
}

/// One thing a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Creates a file of `len` zero bytes, mode 0600; fails if it exists.
    CreateFile { path: PathBuf, len: u64 },
    /// Creates a directory (and parents), mode 0755, if missing.
    CreateDir(PathBuf),
    /// Runs a command; it must exit 0.
    Run { cmd: CommandSpec, input: Input },
    /// Runs `dry_run` (mkfs.ext4 -n), then zeroes the head, the tail and the
    /// superblock backup blocks of `device`.
    Prewrite {
        device: PathBuf,
        dry_run: CommandSpec,
    },
}

/// How to take back what a step did. Each undo checks the system first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// `umount`, then `umount -l` if that fails.
    Unmount(PathBuf),
    /// `cryptsetup close`, then `cryptsetup close --deferred` if that fails.
    Close(String),
    /// Overwrite the header file with random bytes, then delete it.
    DestroyHeader(PathBuf),
}

/// A step of the setup plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub step: Step,
    pub summary: String,
    pub actions: Vec<Action>,
    pub undo: Option<Undo>,
}

/// The mkfs.ext4 arguments (without the program): `-t ext4 -F -b 4096`, then `-n`
/// (dry run) or `-q`, the configured options, `-E` with `nodiscard` merged into any
/// configured `-E` options, and the device. Discards stay off: they would show the host
/// which blocks are in use.
pub fn mkfs_args(cfg: &StorageConfig, device: &Path, dry_run: bool) -> Vec<String> {
    let mut extended: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    let mut it = cfg.mkfs_options.iter();
    while let Some(o) = it.next() {
        if o == "-E" {
            if let Some(v) = it.next() {
                extended.push(v.clone());
            }
        } else if let Some(v) = o.strip_prefix("-E") {
            extended.push(v.to_string());
        } else {
            rest.push(o.clone());
        }
    }
    if !extended
        .iter()
        .any(|e| e.split(',').any(|x| x == "discard" || x == "nodiscard"))
    {
        extended.push("nodiscard".to_string());
    }
    let mut args: Vec<String> = ["-t", "ext4", "-F", "-b", "4096"]
        .map(String::from)
        .to_vec();
    args.push(if dry_run { "-n" } else { "-q" }.to_string());
    args.extend(rest);
    args.push("-E".to_string());
    args.push(extended.join(","));
    args.push(device.to_string_lossy().into_owned());
    args
}

/// The setup plan for `device` (already resolved and checked).
pub fn setup_plan(cfg: &StorageConfig, device: &Path) -> Vec<PlannedStep> {
    let header = cfg.header_path();
    let mapping = cfg.mapping_path();
    let dev = device.to_string_lossy().into_owned();

    let mut format = CommandSpec::new(&cfg.cryptsetup)
        .args(["luksFormat", "--batch-mode", "--type", "luks2", "--header"])
        .arg_path(&header)
        .args(["--cipher", "aes-xts-plain64"]);
    // 512 bits for XTS (AES-256); with integrity cryptsetup adds 256 for the HMAC.
    format = format
        .args(["--key-size", "512"])
        .args(["--sector-size", "4096"])
        .args([
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            PBKDF2_ITERATIONS,
            "--hash",
            "sha256",
        ])
        .arg("--luks2-metadata-size")
        .arg(LUKS2_METADATA_SIZE.to_string())
        .arg("--luks2-keyslots-size")
        .arg(LUKS2_KEYSLOTS_SIZE.to_string());
    if cfg.integrity {
        format = format.args(["--integrity", "hmac-sha256", "--integrity-no-wipe"]);
    }
    format = format.args(["--key-file", "-"]).arg(dev.clone());

    let mut open = CommandSpec::new(&cfg.cryptsetup)
        .args(["open", "--type", "luks2", "--header"])
        .arg_path(&header)
        .args(["--key-file", "-"]);
    if cfg.integrity {
        open = open.arg("--integrity-no-journal");
    }
    open = open.arg(dev.clone()).arg(cfg.mapper_name.clone());

    let mut mount_opts: Vec<String> = cfg.fs_options.clone();
    mount_opts.push("nodev".into());
    mount_opts.push("nosuid".into());
    let mount = CommandSpec::new(&cfg.mount)
        .args(["-t", "ext4", "-o"])
        .arg(mount_opts.join(","))
        .arg_path(&mapping)
        .arg_path(&cfg.mount_point);

    let mut plan = vec![
        PlannedStep {
            step: Step::Format,
            summary: format!(
                "formatted {dev} as LUKS2 (aes-xts-plain64, 4096-byte sectors, pbkdf2{}) with its header detached to {}",
                if cfg.integrity { ", integrity hmac-sha256" } else { "" },
                header.display()
            ),
            actions: vec![
                Action::CreateFile {
                    path: header.clone(),
                    len: LUKS2_HEADER_FILE_BYTES,
                },
                Action::Run {
                    cmd: format,
                    input: Input::Key,
                },
            ],
            undo: Some(Undo::DestroyHeader(header.clone())),
        },
        PlannedStep {
            step: Step::Open,
            summary: format!("opened {} as {}", dev, mapping.display()),
            actions: vec![Action::Run {
                cmd: open,
                input: Input::Key,
            }],
            undo: Some(Undo::Close(cfg.mapper_name.clone())),
        },
    ];
    if cfg.integrity {
        plan.push(PlannedStep {
            step: Step::Prewrite,
            summary: format!(
                "pre-wrote the blocks mkfs.ext4 reads on {}",
                mapping.display()
            ),
            actions: vec![Action::Prewrite {
                device: mapping.clone(),
                dry_run: CommandSpec::new(&cfg.mkfs).args(mkfs_args(cfg, &mapping, true)),
            }],
            undo: None,
        });
    }
    plan.push(PlannedStep {
        step: Step::Mkfs,
        summary: format!("made an ext4 filesystem on {}", mapping.display()),
        actions: vec![Action::Run {
            cmd: CommandSpec::new(&cfg.mkfs).args(mkfs_args(cfg, &mapping, false)),
            input: Input::Nothing,
        }],
        undo: None,
    });
    plan.push(PlannedStep {
        step: Step::Mount,
        summary: format!(
            "mounted {} at {} ({})",
            mapping.display(),
            cfg.mount_point.display(),
            mount_opts.join(",")
        ),
        actions: vec![
            Action::CreateDir(cfg.mount_point.clone()),
            Action::Run {
                cmd: mount,
                input: Input::Nothing,
            },
        ],
        undo: Some(Undo::Unmount(cfg.mount_point.clone())),
    });
    plan
}

/// What teardown undoes, in order.
pub fn teardown_plan(mount_point: &Path, mapper_name: &str, header: &Path) -> Vec<Undo> {
    vec![
        Undo::Unmount(mount_point.to_path_buf()),
        Undo::Close(mapper_name.to_string()),
        Undo::DestroyHeader(header.to_path_buf()),
    ]
}

/// What `mkfs.ext4 -n` says about the layout it would create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsLayout {
    pub block_size: u64,
    pub backup_blocks: Vec<u64>,
}

/// Parses the output of `mkfs.ext4 -n` (C locale): the block size from "Creating
/// filesystem with N 4k blocks" and the list after "Superblock backups stored on
/// blocks:" (which may be absent for tiny filesystems).
pub fn parse_mkfs_dry_run(out: &str) -> Result<MkfsLayout, String> {
    let mut block_size = None;
    let mut backups = Vec::new();
    let mut in_backups = false;
    for line in out.lines() {
        if in_backups {
            let t = line.trim();
            if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
                in_backups = false;
            } else {
                for tok in t
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                {
                    backups.push(
                        tok.parse::<u64>()
                            .map_err(|_| format!("bad backup block {tok:?}"))?,
                    );
                }
                continue;
            }
        }
        if let Some(rest) = line.trim().strip_prefix("Creating filesystem with ") {
            // "65536 4k blocks and 16384 inodes"
            let mut w = rest.split_whitespace();
            let _count = w.next();
            let unit = w.next().unwrap_or("");
            let kib: u64 = unit
                .strip_suffix('k')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("cannot read the block size from {line:?}"))?;
            block_size = Some(kib * 1024);
        } else if let Some(rest) = line
            .trim()
            .strip_prefix("Superblock backups stored on blocks:")
        {
            in_backups = true;
            for tok in rest
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
            {
                backups.push(
                    tok.parse::<u64>()
                        .map_err(|_| format!("bad backup block {tok:?}"))?,
                );
            }
        }
    }
    let block_size =
        block_size.ok_or_else(|| "no \"Creating filesystem with\" line".to_string())?;
    Ok(MkfsLayout {
        block_size,
        backup_blocks: backups,
    })
}

/// The first and last [`PREWRITE_EDGE_BYTES`] of a mapping of `size` bytes (where
/// mke2fs and blkid probe), aligned to whole 4096-byte sectors so the writes never
/// read, merged and clamped to the device.
pub fn edge_ranges(size: u64) -> Vec<ByteRange> {
    let size = size / SECTOR_BYTES * SECTOR_BYTES;
    let len = PREWRITE_EDGE_BYTES.min(size);
    merge_ranges(
        size,
        vec![
            ByteRange { start: 0, len },
            ByteRange {
                start: size - len,
                len,
            },
        ],
    )
}

/// The superblock backup blocks of `layout`, as whole 4096-byte sectors, merged and
/// clamped to a mapping of `size` bytes.
pub fn backup_ranges(size: u64, layout: &MkfsLayout) -> Vec<ByteRange> {
    let ranges = layout
        .backup_blocks
        .iter()
        .map(|&b| {
            let start = b.saturating_mul(layout.block_size) / SECTOR_BYTES * SECTOR_BYTES;
            let end =
                (start + layout.block_size.max(SECTOR_BYTES)).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
            ByteRange {
                start,
                len: end - start,
            }
        })
        .collect();
    merge_ranges(size, ranges)
}

fn merge_ranges(size: u64, mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    let size = size / SECTOR_BYTES * SECTOR_BYTES;
    ranges.retain(|r| r.len > 0 && r.start < size);
    for r in &mut ranges {
        r.len = r.len.min(size - r.start);
    }
    ranges.sort();
    let mut merged: Vec<ByteRange> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end() => {
                let end = last.end().max(r.end());
                last.len = end - last.start;
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// A fresh random passphrase, zeroised when dropped.
pub fn new_key() -> Result<Zeroizing<Vec<u8>>, StorageError> {
    let mut key = Zeroizing::new(vec![0u8; KEY_BYTES]);
    getrandom::fill(key.as_mut_slice()).map_err(|e| StorageError::Other {
        step: Step::Format,
        message: format!("cannot get {KEY_BYTES} random bytes from the OS: {e}"),
    })?;
    Ok(key)
}

/// The seams an execution uses.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub runner: &'a dyn CommandRunner,
    pub host: &'a dyn Host,
}

/// Keeps error messages readable when a tool prints a lot (a usage text, say): the
/// last lines, where tools put the actual complaint.
fn tidy(s: &str) -> String {
    const MAX: usize = 4000;
    const LINES: usize = 12;
    let t = s.trim();
    let lines: Vec<&str> = t.lines().collect();
    if lines.len() > LINES {
        let tail = lines.get(lines.len() - LINES..).unwrap_or_default();
        return tidy(&format!("...\n{}", tail.join("\n")));
    }
    if t.len() <= MAX {
        return t.to_string();
    }
    let mut cut = t.len() - MAX;
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &t[cut..])
}

/// Runs a command; a failure to start or a non-zero exit is an error naming the step,
/// the command and its stderr.
pub fn run_checked(
    env: Env<'_>,
    step: Step,
    cmd: &CommandSpec,
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, StorageError> {
    tracing::debug!(step = %step, command = %cmd, "running");
    let out = env
        .runner
        .run(cmd, stdin)
        .map_err(|source| StorageError::Spawn {
            step,
            command: cmd.to_string(),
            source,
        })?;
    if out.success() {
        Ok(out)
    } else {
        let stderr = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        Err(StorageError::Command {
            step,
            command: cmd.to_string(),
            status: out.status_text(),
            stderr: tidy(stderr),
        })
    }
}

/// Carries out one action of `step`. `key` is the passphrase while it exists.
pub fn execute_action(
    env: Env<'_>,
    step: Step,
    action: &Action,
    key: Option<&[u8]>,
) -> Result<(), StorageError> {
    match action {
        Action::CreateFile { path, len } => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StorageError::io(step, "cannot create", path, e))?;
            f.set_len(*len)
                .map_err(|e| StorageError::io(step, "cannot size", path, e))
        }
        Action::CreateDir(path) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| StorageError::io(step, "cannot create directory", path, e)),
        Action::Run { cmd, input } => {
            let stdin = match input {
                Input::Nothing => None,
                Input::Key => Some(key.ok_or_else(|| StorageError::Other {
                    step,
                    message: "the key is no longer held (internal error)".into(),
                })?),
            };
            run_checked(env, step, cmd, stdin).map(|_| ())
        }
        Action::Prewrite { device, dry_run } => {
            let size = env
                .host
                .block_device_size(device)
                .map_err(|e| StorageError::io(step, "cannot get the size of", device, e))?;
            let zero = |ranges: &[ByteRange]| {
                env.host
                    .write_zeros(device, ranges)
                    .map_err(|e| StorageError::io(step, "cannot write zeros to", device, e))
            };
            // The edges first, so that even the dry run's probing reads written blocks.
            zero(&edge_ranges(size))?;
            let out = run_checked(env, step, dry_run, None)?;
            let layout = parse_mkfs_dry_run(&out.stdout).map_err(|m| StorageError::Other {
                step,
                message: format!(
                    "cannot read the layout from `{dry_run}`: {m}; output: {}",
                    tidy(&out.stdout)
                ),
            })?;
            zero(&backup_ranges(size, &layout))
        }
    }
}

/// Takes back one thing, if it is there, and says what happened in `report`.
pub fn execute_undo(
    env: Env<'_>,
    cfg: &StorageConfig,
    undo: &Undo,
    report: &mut Report,
) -> Result<(), StorageError> {
    let t = Instant::now();
    match undo {
        Undo::Unmount(mp) => {
            let step = Step::Unmount;
            let mounted = env
                .host
                .is_mounted(mp)
                .map_err(|e| StorageError::io(step, "cannot check mounts for", mp, e))?;
            if !mounted {
                report.push(
                    step,
                    false,
                    format!("nothing mounted at {}", mp.display()),
                    t.elapsed(),
                );
                return Ok(());
            }
            let umount = CommandSpec::new(&cfg.umount).arg_path(mp);
            match run_checked(env, step, &umount, None) {
                Ok(_) => {
                    report.push(
                        step,
                        true,
                        format!("unmounted {}", mp.display()),
                        t.elapsed(),
                    );
                    Ok(())
                }
                Err(first) => {
                    tracing::warn!(error = %first, "unmount failed; trying a lazy unmount");
                    let lazy = CommandSpec::new(&cfg.umount).arg("-l").arg_path(mp);
                    run_checked(env, step, &lazy, None)?;
                    report.push(
                        step,
                        true,
                        format!(
                            "lazily unmounted {} (a plain unmount failed: {first})",
                            mp.display()
                        ),
                        t.elapsed(),
                    );
                    Ok(())
                }
            }
        }
        Undo::Close(name) => {
            let step = Step::Close;
            let active = env
                .host
                .mapping_active(name)
                .map_err(|e| StorageError::io(step, "cannot check device-mapper for", name, e))?;
            if !active {
                report.push(step, false, format!("no mapping {name}"), t.elapsed());
                return Ok(());
            }
            let close = CommandSpec::new(&cfg.cryptsetup)
                .arg("close")
                .arg(name.clone());
            match run_checked(env, step, &close, None) {
                Ok(_) => {
                    report.push(
                        step,
                        true,
                        format!("closed mapping {name} (the kernel dropped its key)"),
                        t.elapsed(),
                    );
                    Ok(())
                }
                Err(first) => {
                    tracing::warn!(error = %first, "close failed; asking for a deferred close");
                    let deferred = CommandSpec::new(&cfg.cryptsetup)
                        .args(["close", "--deferred"])
                        .arg(name.clone());
                    run_checked(env, step, &deferred, None)?;
                    report.push(
                        step,
                        true,
                        format!("deferred the close of {name} until its last user goes (a plain close failed: {first})"),
                        t.elapsed(),
                    );
                    Ok(())
                }
            }
        }
        Undo::DestroyHeader(path) => {
            let step = Step::DestroyHeader;
            match destroy_file(path) {
                Ok(None) => {
                    report.push(
                        step,
                        false,
                        format!("no header at {}", path.display()),
                        t.elapsed(),
                    );
                    Ok(())
                }
                Ok(Some(n)) => {
                    report.push(
                        step,
                        true,
                        format!(
                            "overwrote ({n} bytes) and deleted the header {}",
                            path.display()
                        ),
                        t.elapsed(),
                    );
                    Ok(())
                }
                Err(e) => Err(StorageError::io(step, "cannot destroy", path, e)),
            }
        }
    }
}

/// Overwrites a file with random bytes, flushes it, and deletes it. `None` when there
/// was no file.
fn destroy_file(path: &Path) -> io::Result<Option<u64>> {
    let len = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m.len(),
        Ok(_) => {
            // Not a regular file (someone replaced it): remove the name, write nothing.
            fs::remove_file(path)?;
            return Ok(Some(0));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    {
        let mut f = OpenOptions::new().write(true).open(path)?;
        let mut buf = Zeroizing::new(vec![0u8; 64 * 1024]);
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            let chunk = buf.get_mut(..n).unwrap_or_default();
            getrandom::fill(chunk).map_err(|e| io::Error::other(e.to_string()))?;
            f.write_all(chunk)?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    fs::remove_file(path)?;
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRY_RUN: &str = "mke2fs 1.47.0 (5-Feb-2023)\n\
        Creating filesystem with 262144 4k blocks and 65536 inodes\n\
        Filesystem UUID: 8389491a-bef4-4361-8c3c-f9a3e309e246\n\
        Superblock backups stored on blocks: \n\
        \t32768, 98304, 163840, \n\
        \t229376\n\
        \n";

    #[test]
    fn dry_run_output_is_parsed() {
        let l = parse_mkfs_dry_run(DRY_RUN).expect("parses");
        assert_eq!(l.block_size, 4096);
        assert_eq!(l.backup_blocks, vec![32768, 98304, 163840, 229376]);
        let tiny =
            parse_mkfs_dry_run("Creating filesystem with 1024 4k blocks and 1024 inodes\n\n")
                .expect("no backups");
        assert!(tiny.backup_blocks.is_empty());
        assert!(parse_mkfs_dry_run("mke2fs: bad\n").is_err());
        assert!(parse_mkfs_dry_run("Creating filesystem with 12 bogus blocks\n").is_err());
    }

    #[test]
    fn prewrite_covers_edges_and_backups() {
        let l = MkfsLayout {
            block_size: 4096,
            backup_blocks: vec![32768, 98304, 1 << 40],
        };
        let size = 1u64 << 30;
        assert_eq!(
            edge_ranges(size),
            vec![
                ByteRange {
                    start: 0,
                    len: 1 << 20
                },
                ByteRange {
                    start: size - (1 << 20),
                    len: 1 << 20
                },
            ]
        );
        assert_eq!(
            backup_ranges(size, &l),
            vec![
                ByteRange {
                    start: 32768 * 4096,
                    len: 4096
                },
                ByteRange {
                    start: 98304 * 4096,
                    len: 4096
                },
            ]
        );
        // A small device: head and tail overlap and merge, down to whole sectors.
        assert_eq!(
            edge_ranges(1_500_000),
            vec![ByteRange {
                start: 0,
                len: 1_499_136
            }]
        );
        // 1 KiB blocks: the backup at block 8193 lies in the sector starting at 8192 KiB.
        let k = MkfsLayout {
            block_size: 1024,
            backup_blocks: vec![8193],
        };
        assert_eq!(
            backup_ranges(size, &k),
            vec![ByteRange {
                start: 8192 * 1024,
                len: 4096
            }]
        );
    }

    #[test]
    fn mkfs_args_merge_extended_options() {
        let mut cfg = StorageConfig::default();
        let dev = Path::new("/dev/mapper/x");
        assert_eq!(
            mkfs_args(&cfg, dev, false),
            [
                "-t",
                "ext4",
                "-F",
                "-b",
                "4096",
                "-q",
                "-E",
                "nodiscard",
                "/dev/mapper/x"
            ]
        );
        cfg.mkfs_options = vec![
            "-m".into(),
            "0".into(),
            "-E".into(),
            "lazy_itable_init=0".into(),
            "-Eroot_owner=0:0".into(),
        ];
        assert_eq!(
            mkfs_args(&cfg, dev, true),
            [
                "-t",
                "ext4",
                "-F",
                "-b",
                "4096",
                "-n",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=0,root_owner=0:0,nodiscard",
                "/dev/mapper/x"
            ]
        );
    }

    #[test]
    fn plan_has_no_secret_in_argv_and_expected_shape() {
        let cfg = StorageConfig {
            device: Some("/dev/vdb".into()),
            ..StorageConfig::default()
        };
        let plan = setup_plan(&cfg, Path::new("/dev/vdb"));
        let steps: Vec<Step> = plan.iter().map(|p| p.step).collect();
        assert_eq!(
            steps,
            [
                Step::Format,
                Step::Open,
                Step::Prewrite,
                Step::Mkfs,
                Step::Mount
            ]
        );
        let no_int = StorageConfig {
            integrity: false,
            ..cfg.clone()
        };
        let steps: Vec<Step> = setup_plan(&no_int, Path::new("/dev/vdb"))
            .iter()
            .map(|p| p.step)
            .collect();
        assert_eq!(steps, [Step::Format, Step::Open, Step::Mkfs, Step::Mount]);
        for p in &plan {
            for a in &p.actions {
                if let Action::Run { cmd, input } = a {
                    let uses_key = cmd.args.iter().any(|x| x == "--key-file");
                    assert_eq!(uses_key, *input == Input::Key, "{cmd}");
                    if uses_key {
                        let i = cmd
                            .args
                            .iter()
                            .position(|x| x == "--key-file")
                            .expect("flag");
                        assert_eq!(cmd.args[i + 1], "-", "key only on stdin: {cmd}");
                    }
                }
            }
        }
    }

    #[test]
    fn new_keys_are_random_and_sized() {
        let a = new_key().expect("key");
        let b = new_key().expect("key");
        assert_eq!(a.len(), KEY_BYTES);
        assert_ne!(*a, *b);
    }

    #[test]
    fn destroy_file_overwrites_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("h");
        fs::write(&p, vec![7u8; 100_000]).expect("write");
        assert_eq!(destroy_file(&p).expect("destroy"), Some(100_000));
        assert!(!p.exists());
        assert_eq!(destroy_file(&p).expect("again"), None);
    }
}
