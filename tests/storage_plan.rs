//! Unit tests of the scratch-disk plan with a recording command runner: the commands
//! and their arguments in order, rollback when each step fails, idempotent re-runs,
//! teardown and its fallbacks, refusals that must run nothing.
//!
//! [`Fake`] stands in for both seams: as the [`CommandRunner`] it records each command
//! (with the length of its stdin, never the bytes in the log) and simulates what the
//! tools do to the system (a mapping appears after `cryptsetup open`, a mount after
//! `mount`, ...); as the [`Host`] it answers from that simulated state.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agent_warden::storage::state::State;
use agent_warden::storage::{
    setup_with, status_with, teardown_with, ByteRange, CommandOutput, CommandRunner, CommandSpec,
    DeviceFacts, DeviceSpec, Host, Step, StorageConfig, StorageError,
};

const DEVICE: &str = "/dev/vdb";
const NAME: &str = "aw-test";
const MAPPING: &str = "/dev/mapper/aw-test";
const MAPPING_SIZE: u64 = 1 << 30;
const DRY_RUN: &str = "mke2fs 1.47.0 (5-Feb-2023)\n\
    Creating filesystem with 262144 4k blocks and 65536 inodes\n\
    Superblock backups stored on blocks: \n\
    \t32768, 98304, 163840, 229376\n\n";

/// A simulated system that records what is asked of it.
struct Fake {
    log: RefCell<Vec<String>>,
    stdins: RefCell<Vec<Vec<u8>>>,
    mounted: RefCell<BTreeSet<PathBuf>>,
    mappings: RefCell<BTreeSet<String>>,
    facts: DeviceFacts,
    /// The first command whose rendering contains this text gets this output instead.
    fail: RefCell<Vec<(String, CommandOutput)>>,
    /// Programs that "do not exist".
    missing: BTreeSet<String>,
    /// `write_zeros` fails.
    zero_fails: bool,
}

impl Fake {
    fn new() -> Self {
        Fake {
            log: RefCell::new(Vec::new()),
            stdins: RefCell::new(Vec::new()),
            mounted: RefCell::new(BTreeSet::new()),
            mappings: RefCell::new(BTreeSet::new()),
            facts: DeviceFacts {
                path: DEVICE.into(),
                is_block_device: true,
                size_bytes: 2 << 30,
                head: vec![0; 8],
                ..DeviceFacts::default()
            },
            fail: RefCell::new(Vec::new()),
            missing: BTreeSet::new(),
            zero_fails: false,
        }
    }

    fn fail_on(&self, needle: &str, out: CommandOutput) {
        self.fail.borrow_mut().push((needle.to_string(), out));
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }
}

fn arg_after<'a>(cmd: &'a CommandSpec, flag: &str) -> Option<&'a str> {
    let i = cmd.args.iter().position(|a| a == flag)?;
    cmd.args.get(i + 1).map(String::as_str)
}

impl CommandRunner for Fake {
    fn run(&self, cmd: &CommandSpec, stdin: Option<&[u8]>) -> io::Result<CommandOutput> {
        let mut line = cmd.to_string();
        if let Some(s) = stdin {
            line.push_str(&format!(" <stdin:{}>", s.len()));
            self.stdins.borrow_mut().push(s.to_vec());
        }
        self.log.borrow_mut().push(line.clone());
        let prog = cmd.program_name();
        if self.missing.contains(&prog) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "No such file or directory",
            ));
        }
        let injected = {
            let mut fail = self.fail.borrow_mut();
            fail.iter()
                .position(|(n, _)| line.contains(n.as_str()))
                .map(|i| fail.remove(i).1)
        };
        if let Some(out) = injected {
            return Ok(out);
        }
        let a: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        let last = a.last().copied().unwrap_or("");
        match (prog.as_str(), a.first().copied()) {
            ("cryptsetup", Some("--version")) => {
                Ok(CommandOutput::ok("cryptsetup 2.6.1 flags: UDEV BLKID\n"))
            }
            ("cryptsetup", Some("luksFormat")) => {
                let header = arg_after(cmd, "--header").expect("--header");
                fs::write(header, b"LUKS\xba\xbe fake header").expect("write fake header");
                Ok(CommandOutput::ok(""))
            }
            ("cryptsetup", Some("open")) => {
                self.mappings.borrow_mut().insert(last.to_string());
                Ok(CommandOutput::ok(""))
            }
            ("cryptsetup", Some("close")) => {
                self.mappings.borrow_mut().remove(last);
                Ok(CommandOutput::ok(""))
            }
            ("mkfs.ext4", Some("-V")) => Ok(CommandOutput {
                code: Some(0),
                stdout: String::new(),
                stderr: "mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n"
                    .into(),
            }),
            ("mkfs.ext4", _) if a.contains(&"-n") => Ok(CommandOutput::ok(DRY_RUN)),
            ("mkfs.ext4", _) => Ok(CommandOutput::ok("")),
            ("mount", _) => {
                self.mounted.borrow_mut().insert(PathBuf::from(last));
                Ok(CommandOutput::ok(""))
            }
            ("umount", _) => {
                self.mounted.borrow_mut().remove(Path::new(last));
                Ok(CommandOutput::ok(""))
            }
            _ => Ok(CommandOutput::failed(
                127,
                format!("fake: unexpected command {line}"),
            )),
        }
    }
}

impl Host for Fake {
    fn resolve_device(&self, spec: &DeviceSpec) -> io::Result<PathBuf> {
        match spec {
            DeviceSpec::Path(p) => Ok(p.clone()),
            DeviceSpec::Number {
                major: 254,
                minor: 16,
            } => Ok(PathBuf::from(DEVICE)),
            DeviceSpec::Number { .. } => {
                Err(io::Error::new(io::ErrorKind::NotFound, "no such MAJ:MIN"))
            }
        }
    }
    fn inspect_device(&self, path: &Path) -> io::Result<DeviceFacts> {
        if path == self.facts.path {
            Ok(self.facts.clone())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such device"))
        }
    }
    fn is_mounted(&self, mount_point: &Path) -> io::Result<bool> {
        Ok(self.mounted.borrow().contains(mount_point))
    }
    fn mapping_active(&self, name: &str) -> io::Result<bool> {
        Ok(self.mappings.borrow().contains(name))
    }
    fn is_memory_backed(&self, _dir: &Path) -> io::Result<bool> {
        Ok(true)
    }
    fn block_device_size(&self, path: &Path) -> io::Result<u64> {
        assert_eq!(path, Path::new(MAPPING));
        Ok(MAPPING_SIZE)
    }
    fn write_zeros(&self, path: &Path, ranges: &[ByteRange]) -> io::Result<()> {
        let r: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}+{}", r.start, r.len))
            .collect();
        self.log
            .borrow_mut()
            .push(format!("<zero {} {}>", path.display(), r.join(" ")));
        if self.zero_fails {
            return Err(io::Error::other("simulated write error"));
        }
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: StorageConfig,
}

fn config(integrity: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StorageConfig {
        device: Some(DEVICE.into()),
        mount_point: dir.path().join("image"),
        state_dir: dir.path().join("state"),
        mapper_name: NAME.into(),
        integrity,
        ..StorageConfig::default()
    };
    Setup { _dir: dir, cfg }
}

fn expected_setup(cfg: &StorageConfig, integrity: bool) -> Vec<String> {
    let hdr = cfg.header_path().display().to_string();
    let mp = cfg.mount_point.display().to_string();
    let mut v = vec![
        "cryptsetup --version".to_string(),
        "mkfs.ext4 -V".to_string(),
        format!(
            "cryptsetup luksFormat --batch-mode --type luks2 --header {hdr} --cipher aes-xts-plain64 \
             --key-size 512 --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 \
             --luks2-metadata-size 16384 --luks2-keyslots-size 524288{} --key-file - {DEVICE} <stdin:64>",
            if integrity { " --integrity hmac-sha256 --integrity-no-wipe" } else { "" }
        ),
        format!(
            "cryptsetup open --type luks2 --header {hdr} --key-file -{} {DEVICE} {NAME} <stdin:64>",
            if integrity { " --integrity-no-journal" } else { "" }
        ),
    ];
    if integrity {
        let tail = MAPPING_SIZE - (1 << 20);
        v.push(format!("<zero {MAPPING} 0+1048576 {tail}+1048576>"));
        v.push(format!(
            "mkfs.ext4 -t ext4 -F -b 4096 -n -E nodiscard {MAPPING}"
        ));
        v.push(format!(
            "<zero {MAPPING} {}+4096 {}+4096 {}+4096 {}+4096>",
            32768u64 * 4096,
            98304u64 * 4096,
            163840u64 * 4096,
            229376u64 * 4096
        ));
    }
    v.push(format!(
        "mkfs.ext4 -t ext4 -F -b 4096 -q -E nodiscard {MAPPING}"
    ));
    v.push(format!("mount -t ext4 -o nodev,nosuid {MAPPING} {mp}"));
    v
}

/// Nothing left: no mapping, no mount, no header, no state file.
fn assert_clean(fake: &Fake, cfg: &StorageConfig) {
    assert!(
        fake.mappings.borrow().is_empty(),
        "mappings left: {:?}",
        fake.mappings.borrow()
    );
    assert!(
        fake.mounted.borrow().is_empty(),
        "mounts left: {:?}",
        fake.mounted.borrow()
    );
    assert!(!cfg.header_path().exists(), "header left");
    assert!(!cfg.state_path().exists(), "state file left");
}

#[test]
fn setup_runs_the_plan_in_order_with_integrity() {
    let s = config(true);
    let fake = Fake::new();
    let report = setup_with(&fake, &fake, &s.cfg).expect("setup");
    assert_eq!(fake.take_log(), expected_setup(&s.cfg, true));
    assert!(report.changed_anything());
    let steps: Vec<Step> = report
        .events
        .iter()
        .filter(|e| e.changed)
        .map(|e| e.step)
        .collect();
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

    // One 64-byte random key, the same for format and open, in no argument.
    let stdins = fake.stdins.borrow();
    assert_eq!(stdins.len(), 2);
    assert_eq!(stdins[0], stdins[1]);
    assert_eq!(stdins[0].len(), 64);
    assert!(stdins[0].iter().any(|&b| b != 0));

    // The header lives in the state directory, private; the state file says complete.
    let mode = fs::metadata(s.cfg.header_path())
        .expect("header")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let st = State::load(&s.cfg.state_path())
        .expect("load")
        .expect("state");
    assert!(st.complete);
    assert_eq!(
        st.done,
        [
            Step::Format,
            Step::Open,
            Step::Prewrite,
            Step::Mkfs,
            Step::Mount
        ]
    );
    assert!(s.cfg.mount_point.is_dir(), "mount point created");
}

#[test]
fn setup_without_integrity_skips_prewrite_and_integrity_flags() {
    let s = config(false);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    assert_eq!(fake.take_log(), expected_setup(&s.cfg, false));
}

#[test]
fn setup_resolves_maj_min_and_keeps_configured_options() {
    let mut s = config(true);
    s.cfg.device = Some("254:16".into());
    s.cfg.fs_options = vec!["noatime".into()];
    s.cfg.mkfs_options = vec![
        "-m".into(),
        "0".into(),
        "-E".into(),
        "lazy_itable_init=0".into(),
    ];
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    let log = fake.take_log();
    assert!(log
        .iter()
        .any(|l| l.starts_with("cryptsetup luksFormat")
            && l.contains(&format!(" {DEVICE} <stdin:64>"))));
    assert!(log.contains(&format!(
        "mkfs.ext4 -t ext4 -F -b 4096 -q -m 0 -E lazy_itable_init=0,nodiscard {MAPPING}"
    )));
    assert!(log.contains(&format!(
        "mount -t ext4 -o noatime,nodev,nosuid {MAPPING} {}",
        s.cfg.mount_point.display()
    )));
}

#[test]
fn setup_is_idempotent() {
    let s = config(true);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fake.take_log();
    let again = setup_with(&fake, &fake, &s.cfg).expect("setup again");
    assert!(fake.take_log().is_empty(), "a re-run runs nothing");
    assert!(!again.changed_anything());
    assert!(again.to_string().contains("already set up"), "{again}");
}

/// Each failing step rolls back everything begun, in reverse, and leaves nothing.
#[test]
fn each_failing_step_rolls_back() {
    struct Case {
        needle: &'static str,
        step: Step,
        integrity: bool,
        /// Commands expected after the failing one (the rollback's).
        rollback: Vec<String>,
    }
    let close = format!("cryptsetup close {NAME}");
    let cases = [
        Case {
            needle: "luksFormat",
            step: Step::Format,
            integrity: true,
            rollback: vec![],
        },
        Case {
            needle: "cryptsetup open",
            step: Step::Open,
            integrity: true,
            rollback: vec![],
        },
        Case {
            needle: " -n ",
            step: Step::Prewrite,
            integrity: true,
            rollback: vec![close.clone()],
        },
        Case {
            needle: " -q ",
            step: Step::Mkfs,
            integrity: true,
            rollback: vec![close.clone()],
        },
        Case {
            needle: " -q ",
            step: Step::Mkfs,
            integrity: false,
            rollback: vec![close.clone()],
        },
        Case {
            needle: "mount -t",
            step: Step::Mount,
            integrity: true,
            rollback: vec![close.clone()],
        },
    ];
    for case in cases {
        let s = config(case.integrity);
        let fake = Fake::new();
        fake.fail_on(
            case.needle,
            CommandOutput::failed(1, format!("simulated {} failure", case.step)),
        );
        let err = setup_with(&fake, &fake, &s.cfg).expect_err("must fail");
        let log = fake.take_log();
        let at = log
            .iter()
            .position(|l| l.contains(case.needle))
            .unwrap_or_else(|| panic!("{:?}: failing command not run: {log:?}", case.step));
        assert_eq!(log[at + 1..].to_vec(), case.rollback, "{:?}", case.step);
        assert_eq!(err.step(), Some(case.step), "{err}");
        assert_eq!(err.rolled_back_cleanly(), Some(true), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("step {}", case.step)), "{msg}");
        assert!(
            msg.contains(&log[at].replace(" <stdin:64>", "")),
            "names the command: {msg}"
        );
        assert!(
            msg.contains(&format!("simulated {} failure", case.step)),
            "carries stderr: {msg}"
        );
        if case.step != Step::Format && case.step != Step::Open {
            assert!(msg.contains("closed mapping"), "{msg}");
        }
        assert!(msg.contains("deleted the header"), "{msg}");
        assert_clean(&fake, &s.cfg);
    }
}

#[test]
fn a_failing_prewrite_rolls_back() {
    let s = config(true);
    let mut fake = Fake::new();
    fake.zero_fails = true;
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("must fail");
    assert_eq!(err.step(), Some(Step::Prewrite));
    assert!(err.to_string().contains("simulated write error"), "{err}");
    let log = fake.take_log();
    assert_eq!(
        log.last().map(String::as_str),
        Some(format!("cryptsetup close {NAME}").as_str())
    );
    assert_clean(&fake, &s.cfg);
}

#[test]
fn a_failed_rollback_keeps_the_state_for_teardown() {
    let s = config(true);
    let fake = Fake::new();
    fake.fail_on("-q -E", CommandOutput::failed(1, "mkfs broke"));
    fake.fail_on("cryptsetup close", CommandOutput::failed(5, "device busy"));
    fake.fail_on(
        "cryptsetup close --deferred",
        CommandOutput::failed(5, "still busy"),
    );
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("must fail");
    assert_eq!(err.rolled_back_cleanly(), Some(false), "{err}");
    assert!(err.to_string().contains("rollback INCOMPLETE"), "{err}");
    assert!(err.to_string().contains("still busy"), "{err}");
    assert!(
        s.cfg.state_path().exists(),
        "state kept for a later teardown"
    );
    // The header is destroyed even though the mapping could not be closed.
    assert!(!s.cfg.header_path().exists());
    fake.take_log();
    // Teardown finishes the job.
    let r = teardown_with(&fake, &fake, &s.cfg).expect("teardown");
    assert_eq!(fake.take_log(), [format!("cryptsetup close {NAME}")]);
    assert!(r.changed_anything());
    assert_clean(&fake, &s.cfg);
}

#[test]
fn missing_cryptsetup_fails_before_anything_is_done() {
    let s = config(true);
    let mut fake = Fake::new();
    fake.missing.insert("cryptsetup".into());
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("must fail");
    assert_eq!(fake.take_log(), ["cryptsetup --version"]);
    assert!(
        matches!(
            err,
            StorageError::Spawn {
                step: Step::Preflight,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cannot run `cryptsetup --version`") && msg.contains("No such file"),
        "{msg}"
    );
    assert_clean(&fake, &s.cfg);
}

/// Changes a fake or a configuration so that the device gets refused.
type Tweak = Box<dyn Fn(&mut Fake, &mut StorageConfig)>;

#[test]
fn refused_devices_run_nothing() {
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "does not exist",
            Box::new(|_, c| c.device = Some("/dev/vdz".into())),
        ),
        (
            "cannot resolve",
            Box::new(|_, c| c.device = Some("1:2".into())),
        ),
        (
            "not a block device",
            Box::new(|f, _| f.facts.is_block_device = false),
        ),
        ("too small", Box::new(|f, _| f.facts.size_bytes = 1 << 20)),
        (
            "mounted (at /data)",
            Box::new(|f, _| f.facts.mounted_at = vec!["/data".into()]),
        ),
        (
            "root filesystem",
            Box::new(|f, _| f.facts.holds_root = true),
        ),
        (
            "initdata",
            Box::new(|f, _| f.facts.head = b"initdata".to_vec()),
        ),
        (
            "in use by dm-3",
            Box::new(|f, _| f.facts.holders = vec!["dm-3".into()]),
        ),
        ("swap", Box::new(|f, _| f.facts.swap = true)),
    ];
    for (want, tweak) in cases {
        let mut s = config(true);
        let mut fake = Fake::new();
        tweak(&mut fake, &mut s.cfg);
        let err = setup_with(&fake, &fake, &s.cfg).expect_err(want);
        assert!(
            matches!(err, StorageError::Refused { .. }),
            "{want}: {err:?}"
        );
        assert!(err.to_string().contains(want), "{want}: {err}");
        assert_eq!(err.step(), Some(Step::Preflight));
        assert!(fake.take_log().is_empty(), "{want}: nothing may run");
        assert_clean(&fake, &s.cfg);
    }
}

#[test]
fn busy_mount_point_or_mapping_name_is_refused() {
    let s = config(true);
    let fake = Fake::new();
    fake.mounted.borrow_mut().insert(s.cfg.mount_point.clone());
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("mount point busy");
    assert!(err.to_string().contains("already mounted at"), "{err}");
    fake.mounted.borrow_mut().clear();
    fake.mappings.borrow_mut().insert(NAME.into());
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("name busy");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(fake.take_log().is_empty());
}

#[test]
fn config_errors_run_nothing() {
    let mut s = config(true);
    s.cfg.device = None;
    let fake = Fake::new();
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("no device");
    assert!(matches!(err, StorageError::Config(_)), "{err:?}");
    assert!(fake.take_log().is_empty());
}

#[test]
fn teardown_undoes_in_order_and_is_idempotent() {
    let s = config(true);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fake.take_log();
    let r = teardown_with(&fake, &fake, &s.cfg).expect("teardown");
    assert_eq!(
        fake.take_log(),
        [
            format!("umount {}", s.cfg.mount_point.display()),
            format!("cryptsetup close {NAME}")
        ]
    );
    let text = r.to_string();
    assert!(
        text.contains("unmounted") && text.contains("closed mapping"),
        "{text}"
    );
    assert!(
        text.contains("overwrote (") && text.contains("deleted the header"),
        "{text}"
    );
    assert!(text.contains("removed the state file"), "{text}");
    assert_clean(&fake, &s.cfg);

    let again = teardown_with(&fake, &fake, &s.cfg).expect("teardown again");
    assert!(fake.take_log().is_empty());
    assert!(!again.changed_anything());
    assert!(
        again.to_string().starts_with("teardown: nothing to do"),
        "{again}"
    );
}

#[test]
fn teardown_falls_back_to_lazy_unmount_and_deferred_close() {
    let s = config(false);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fake.take_log();
    let mp = s.cfg.mount_point.display().to_string();
    fake.fail_on(
        &format!("umount {mp}"),
        CommandOutput::failed(32, "target is busy"),
    );
    fake.fail_on(
        &format!("cryptsetup close {NAME}"),
        CommandOutput::failed(5, "Device aw-test is still in use"),
    );
    let r = teardown_with(&fake, &fake, &s.cfg).expect("teardown");
    assert_eq!(
        fake.take_log(),
        [
            format!("umount {mp}"),
            format!("umount -l {mp}"),
            format!("cryptsetup close {NAME}"),
            format!("cryptsetup close --deferred {NAME}"),
        ]
    );
    let text = r.to_string();
    assert!(
        text.contains("lazily unmounted") && text.contains("target is busy"),
        "{text}"
    );
    assert!(text.contains("deferred the close"), "{text}");
    assert_clean(&fake, &s.cfg);
}

#[test]
fn teardown_without_state_file_uses_the_configuration() {
    let s = config(true);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fs::remove_file(s.cfg.state_path()).expect("lose the state file");
    fake.take_log();
    teardown_with(&fake, &fake, &s.cfg).expect("teardown");
    assert_eq!(fake.take_log().len(), 2, "umount and close");
    assert_clean(&fake, &s.cfg);
}

#[test]
fn teardown_that_cannot_close_reports_and_keeps_state() {
    let s = config(true);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fake.fail_on("cryptsetup close", CommandOutput::failed(5, "busy"));
    fake.fail_on(
        "cryptsetup close --deferred",
        CommandOutput::failed(5, "really busy"),
    );
    let err = teardown_with(&fake, &fake, &s.cfg).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.starts_with("teardown incomplete"), "{msg}");
    assert!(
        msg.contains("step close") && msg.contains("really busy"),
        "{msg}"
    );
    assert!(
        msg.contains("unmounted") && msg.contains("deleted the header"),
        "did the rest: {msg}"
    );
    assert!(s.cfg.state_path().exists());
}

#[test]
fn an_interrupted_setup_is_rolled_back_then_redone() {
    let s = config(true);
    let fake = Fake::new();
    // A previous run got as far as opening the mapping, then died.
    fs::create_dir_all(&s.cfg.state_dir).expect("state dir");
    let mut st = State::new(&s.cfg, Path::new(DEVICE));
    st.begun = vec![Step::Format, Step::Open];
    st.done = vec![Step::Format];
    st.save(&s.cfg.state_path()).expect("save");
    fs::write(s.cfg.header_path(), b"old header").expect("header");
    fake.mappings.borrow_mut().insert(NAME.into());

    let r = setup_with(&fake, &fake, &s.cfg).expect("setup");
    let log = fake.take_log();
    assert_eq!(log[0], format!("cryptsetup close {NAME}"));
    assert_eq!(log[1..].to_vec(), expected_setup(&s.cfg, true));
    assert!(
        r.to_string().contains("rolled back an interrupted setup"),
        "{r}"
    );
    assert!(
        State::load(&s.cfg.state_path())
            .expect("load")
            .expect("state")
            .complete
    );
}

#[test]
fn complete_state_without_its_mapping_is_inconsistent() {
    let s = config(true);
    let fake = Fake::new();
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    fake.mappings.borrow_mut().clear();
    fake.take_log();
    let err = setup_with(&fake, &fake, &s.cfg).expect_err("inconsistent");
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err:?}");
    assert!(err.to_string().contains("mapping aw-test is gone"), "{err}");
    assert!(fake.take_log().is_empty());
}

#[test]
fn status_reports_phases() {
    let s = config(true);
    let fake = Fake::new();
    let st = status_with(&fake, &s.cfg).expect("status");
    assert_eq!(st.exit_code(), 3, "{st}");
    setup_with(&fake, &fake, &s.cfg).expect("setup");
    let st = status_with(&fake, &s.cfg).expect("status");
    assert_eq!(st.exit_code(), 0, "{st}");
    assert!(st.to_string().starts_with("storage: active"), "{st}");
    fake.mounted.borrow_mut().clear();
    let st = status_with(&fake, &s.cfg).expect("status");
    assert_eq!(st.exit_code(), 4, "{st}");
    teardown_with(&fake, &fake, &s.cfg).expect("teardown");
    assert_eq!(status_with(&fake, &s.cfg).expect("status").exit_code(), 3);
}
