//! What the plan asks of the running system other than external commands: device
//! facts (block device? size? mounted? root? in use? initdata magic?), mount and
//! mapping queries, and the zero pre-writes before mkfs. The [`Host`] trait is the
//! seam; [`LinuxHost`] reads /sys, /proc/self/mountinfo and /proc/swaps. The refusal
//! rules over those facts ([`check_device`]) are pure.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::config::DeviceSpec;
/// The 8 bytes at offset 0 that mark a Kata initdata device, which must never be
/// formatted (defined with the initdata image format).
use crate::attestation::INITDATA_MAGIC;

/// A byte range `[start, start + len)` on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

impl ByteRange {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Facts about a candidate device, gathered before anything is written to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The device path after resolving symlinks.
    pub path: PathBuf,
    pub is_block_device: bool,
    pub size_bytes: u64,
    /// Mount points of the device, one of its partitions, or a device stacked on it.
    pub mounted_at: Vec<PathBuf>,
    /// Whether the root filesystem lives on the device (or on a partition or a device
    /// stacked on it).
    pub holds_root: bool,
    /// Devices stacked on it (device-mapper, md, ...), by kernel name.
    pub holders: Vec<String>,
    /// Whether it (or a partition) is active swap.
    pub swap: bool,
    /// The first bytes of the device (up to 8).
    pub head: Vec<u8>,
}

/// The system as the plan sees it. Test doubles implement it in memory.
pub trait Host {
    /// Turns the configured device into a path (`MAJ:MIN` through /sys/dev/block).
    fn resolve_device(&self, spec: &DeviceSpec) -> io::Result<PathBuf>;
    /// Gathers [`DeviceFacts`]; `NotFound` when the path does not exist.
    fn inspect_device(&self, path: &Path) -> io::Result<DeviceFacts>;
    /// Whether something is mounted at `mount_point`.
    fn is_mounted(&self, mount_point: &Path) -> io::Result<bool>;
    /// Whether a device-mapper device with this name exists.
    fn mapping_active(&self, name: &str) -> io::Result<bool>;
    /// Whether `dir` is on tmpfs or ramfs (so that nothing written there reaches a disk).
    fn is_memory_backed(&self, dir: &Path) -> io::Result<bool>;
    /// Size in bytes of a block device (the opened mapping).
    fn block_device_size(&self, path: &Path) -> io::Result<u64>;
    /// Writes zeros over each range and flushes the device.
    fn write_zeros(&self, path: &Path, ranges: &[ByteRange]) -> io::Result<()>;
}

/// Why a device must not be used, or `None` when it may. The order of the checks is
/// the order of the messages an operator would want first.
pub fn check_device(facts: &DeviceFacts, min_size: u64) -> Option<String> {
    if !facts.is_block_device {
        return Some("not a block device".to_string());
    }
    if facts.holds_root {
        return Some("it holds the root filesystem".to_string());
    }
    if !facts.mounted_at.is_empty() {
        let at: Vec<String> = facts
            .mounted_at
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Some(format!("it is mounted (at {})", at.join(", ")));
    }
    if facts.swap {
        return Some("it is in use as swap".to_string());
    }
    if !facts.holders.is_empty() {
        return Some(format!(
            "it is in use by {} (a device-mapper or md device is stacked on it)",
            facts.holders.join(", ")
        ));
    }
    if facts.head.starts_with(INITDATA_MAGIC) {
        return Some(
            "it carries the initdata magic at offset 0 (it is the initdata device)".to_string(),
        );
    }
    if facts.size_bytes < min_size {
        return Some(format!(
            "it is too small: {} bytes, the minimum is {} bytes",
            facts.size_bytes, min_size
        ));
    }
    None
}

/// Device number helpers (glibc's encoding of dev_t).
pub fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

pub fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// One line of /proc/self/mountinfo, the parts the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
}

/// Parses /proc/self/mountinfo text. Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let _id = f.next()?;
            let _parent = f.next()?;
            let (maj, min) = f.next()?.split_once(':')?;
            let _root = f.next()?;
            let mp = f.next()?;
            Some(MountEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(mp))),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut rest = b;
    while let Some((&c, tail)) = rest.split_first() {
        if let (b'\\', [d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7', after @ ..]) =
            (c, tail)
        {
            out.push((d0 - b'0') * 64 + (d1 - b'0') * 8 + (d2 - b'0'));
            rest = after;
            continue;
        }
        out.push(c);
        rest = tail;
    }
    out
}

/// Parses the `DEVNAME=` line of a sysfs uevent file.
pub fn devname_from_uevent(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.contains("..") && !n.starts_with('/'))
}

/// The real system: sysfs, procfs and the device nodes.
#[derive(Debug, Clone)]
pub struct LinuxHost {
    sys: PathBuf,
    proc_: PathBuf,
    dev: PathBuf,
}

impl Default for LinuxHost {
    fn default() -> Self {
        LinuxHost {
            sys: PathBuf::from("/sys"),
            proc_: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl LinuxHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn sys_block_dir(&self, major: u32, minor: u32) -> io::Result<PathBuf> {
        fs::canonicalize(self.sys.join(format!("dev/block/{major}:{minor}")))
    }

    /// The device, its partitions, and everything stacked on any of them.
    fn related_devices(&self, major: u32, minor: u32) -> BTreeSet<(u32, u32)> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![(major, minor)];
        while let Some((ma, mi)) = todo.pop() {
            if !seen.insert((ma, mi)) {
                continue;
            }
            let Ok(dir) = self.sys_block_dir(ma, mi) else {
                continue;
            };
            // Partitions are subdirectories with a `partition` file.
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.join("partition").exists() {
                        if let Some(d) = read_dev_file(&p.join("dev")) {
                            todo.push(d);
                        }
                    }
                }
            }
            for name in self.holders_of(&dir) {
                if let Some(d) =
                    read_dev_file(&self.sys.join("class/block").join(&name).join("dev"))
                {
                    todo.push(d);
                }
            }
        }
        seen
    }

    fn holders_of(&self, sys_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(sys_dir.join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        Ok(parse_mountinfo(&fs::read_to_string(
            self.proc_.join("self/mountinfo"),
        )?))
    }

    fn swap_devices(&self) -> BTreeSet<(u32, u32)> {
        let text = fs::read_to_string(self.proc_.join("swaps")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| fs::metadata(unescape_path(name)).ok())
            .filter(|m| m.file_type().is_block_device())
            .map(|m| (dev_major(m.rdev()), dev_minor(m.rdev())))
            .collect()
    }
}

fn unescape_path(s: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(s)))
}

fn read_dev_file(path: &Path) -> Option<(u32, u32)> {
    let text = fs::read_to_string(path).ok()?;
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn read_head(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while let Some(free) = buf.get_mut(got..).filter(|b| !b.is_empty()) {
        match f.read(free) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

impl Host for LinuxHost {
    fn resolve_device(&self, spec: &DeviceSpec) -> io::Result<PathBuf> {
        match spec {
            DeviceSpec::Path(p) => Ok(fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            DeviceSpec::Number { major, minor } => {
                let uevent = self.sys.join(format!("dev/block/{major}:{minor}/uevent"));
                let text = fs::read_to_string(&uevent).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "no block device {major}:{minor} ({}: {e})",
                            uevent.display()
                        ),
                    )
                })?;
                let name = devname_from_uevent(&text).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} has no DEVNAME", uevent.display()),
                    )
                })?;
                Ok(self.dev.join(name))
            }
        }
    }

    fn inspect_device(&self, path: &Path) -> io::Result<DeviceFacts> {
        let meta = fs::metadata(path)?;
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut facts = DeviceFacts {
            path: canonical,
            ..DeviceFacts::default()
        };
        if !meta.file_type().is_block_device() {
            return Ok(facts);
        }
        facts.is_block_device = true;
        let (major, minor) = (dev_major(meta.rdev()), dev_minor(meta.rdev()));
        let related = self.related_devices(major, minor);
        for m in self.mounts()? {
            if related.contains(&(m.major, m.minor)) {
                if m.mount_point == Path::new("/") {
                    facts.holds_root = true;
                }
                facts.mounted_at.push(m.mount_point);
            }
        }
        // The root filesystem's device as stat sees it, in case mountinfo shows it
        // differently (e.g. /dev/root).
        if let Ok(root) = fs::metadata("/") {
            if related.contains(&(dev_major(root.dev()), dev_minor(root.dev()))) {
                facts.holds_root = true;
            }
        }
        facts.swap = !self.swap_devices().is_disjoint(&related);
        if let Ok(dir) = self.sys_block_dir(major, minor) {
            facts.holders = self.holders_of(&dir);
        }
        if facts.holds_root
            || !facts.mounted_at.is_empty()
            || facts.swap
            || !facts.holders.is_empty()
        {
            // Refused anyway: no need to open a device that is in use.
            return Ok(facts);
        }
        let mut f = File::open(path)?;
        facts.size_bytes = f.seek(SeekFrom::End(0))?;
        facts.head = read_head(path, INITDATA_MAGIC.len())?;
        Ok(facts)
    }

    fn is_mounted(&self, mount_point: &Path) -> io::Result<bool> {
        let Ok(target) = fs::canonicalize(mount_point) else {
            return Ok(false);
        };
        Ok(self.mounts()?.iter().any(|m| m.mount_point == target))
    }

    fn mapping_active(&self, name: &str) -> io::Result<bool> {
        let rd = match fs::read_dir(self.sys.join("block")) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        for e in rd.flatten() {
            if let Ok(n) = fs::read_to_string(e.path().join("dm/name")) {
                if n.trim_end_matches('\n') == name {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn is_memory_backed(&self, dir: &Path) -> io::Result<bool> {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)]
        let t = st.f_type as i64;
        Ok(t == TMPFS_MAGIC || t == RAMFS_MAGIC)
    }

    fn block_device_size(&self, path: &Path) -> io::Result<u64> {
        File::open(path)?.seek(SeekFrom::End(0))
    }

    fn write_zeros(&self, path: &Path, ranges: &[ByteRange]) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let f = OpenOptions::new().write(true).open(path)?;
        let zeros = vec![0u8; CHUNK];
        for r in ranges {
            let mut off = r.start;
            while off < r.end() {
                let n = (r.end() - off).min(CHUNK as u64) as usize;
                f.write_all_at(zeros.get(..n).unwrap_or(&zeros), off)?;
                off += n as u64;
            }
        }
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DeviceFacts {
        DeviceFacts {
            path: "/dev/vdb".into(),
            is_block_device: true,
            size_bytes: 1 << 30,
            head: vec![0; 8],
            ..DeviceFacts::default()
        }
    }

    #[test]
    fn device_checks_refuse_each_case() {
        assert_eq!(check_device(&good(), 64 << 20), None);
        let cases: Vec<(DeviceFacts, &str)> = vec![
            (
                DeviceFacts {
                    is_block_device: false,
                    ..good()
                },
                "not a block device",
            ),
            (
                DeviceFacts {
                    holds_root: true,
                    ..good()
                },
                "root filesystem",
            ),
            (
                DeviceFacts {
                    mounted_at: vec!["/mnt".into()],
                    ..good()
                },
                "mounted (at /mnt)",
            ),
            (
                DeviceFacts {
                    swap: true,
                    ..good()
                },
                "swap",
            ),
            (
                DeviceFacts {
                    holders: vec!["dm-0".into()],
                    ..good()
                },
                "in use by dm-0",
            ),
            (
                DeviceFacts {
                    head: b"initdata".to_vec(),
                    ..good()
                },
                "initdata",
            ),
            (
                DeviceFacts {
                    size_bytes: 1 << 20,
                    ..good()
                },
                "too small",
            ),
        ];
        for (facts, want) in cases {
            let got = check_device(&facts, 64 << 20).expect("refused");
            assert!(got.contains(want), "{got:?} should mention {want:?}");
        }
        // "initdat" alone (7 bytes) is not the magic.
        assert_eq!(
            check_device(
                &DeviceFacts {
                    head: b"initdat\0".to_vec(),
                    ..good()
                },
                1
            ),
            None
        );
    }

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let text = "22 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw\n\
                    30 22 0:25 / /run rw - tmpfs tmpfs rw\n\
                    31 22 254:16 / /mnt/with\\040space rw - ext4 /dev/vdb rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].major, m[0].minor, m[0].mount_point.as_path()),
            (253, 1, Path::new("/"))
        );
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn dev_numbers_decode() {
        // makedev(254, 16) and a large minor.
        assert_eq!((dev_major(0xfe10), dev_minor(0xfe10)), (254, 16));
        let dev: u64 = (259u64 << 8) | ((1u64 << 20) << 12) | 5;
        assert_eq!((dev_major(dev), dev_minor(dev)), (259, (1 << 20) | 5));
    }

    #[test]
    fn uevent_devname() {
        assert_eq!(
            devname_from_uevent("MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n"),
            Some("vdb")
        );
        assert_eq!(devname_from_uevent("MAJOR=254\n"), None);
        assert_eq!(devname_from_uevent("DEVNAME=../etc\n"), None);
    }

    #[test]
    fn linux_host_sees_a_regular_file_as_not_a_block_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("disk.img");
        fs::write(&f, vec![0u8; 4096]).expect("write");
        let facts = LinuxHost::new().inspect_device(&f).expect("inspect");
        assert!(!facts.is_block_device);
        assert_eq!(
            check_device(&facts, 1).as_deref(),
            Some("not a block device")
        );
        let e = LinuxHost::new()
            .inspect_device(&dir.path().join("missing"))
            .expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn linux_host_writes_zero_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("img");
        fs::write(&f, vec![0xffu8; 3 * 4096]).expect("write");
        LinuxHost::new()
            .write_zeros(
                &f,
                &[ByteRange {
                    start: 4096,
                    len: 4096,
                }],
            )
            .expect("zero");
        let b = fs::read(&f).expect("read");
        assert!(b[..4096].iter().all(|&x| x == 0xff));
        assert!(b[4096..8192].iter().all(|&x| x == 0));
        assert!(b[8192..].iter().all(|&x| x == 0xff));
    }

    #[test]
    fn linux_host_mount_queries_do_not_fail() {
        let h = LinuxHost::new();
        assert!(h.is_mounted(Path::new("/")).expect("mountinfo"));
        assert!(!h
            .is_mounted(Path::new("/nonexistent/agent-warden"))
            .expect("mountinfo"));
        assert!(!h
            .mapping_active("agent-warden-no-such-mapping")
            .expect("sysfs"));
    }
}
