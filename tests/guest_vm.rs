//! The whole guest in a VM laid out like kata's: the image from guest/build-image.sh
//! (Debian cloud kernel, systemd, agent-warden and kata-agent with deploy/'s units) booted by
//! qemu with vsock through vhost-device-vsock (hybrid vsock: the host connects to a unix
//! socket and sends `CONNECT 1024`), the containers' share over virtio-fs (virtiofsd, tag
//! kataShared), disk 1 the initdata image from `agent-warden initdata pack --write-image`,
//! disk 2 an empty disk that agent-warden turns into the encrypted scratch disk, disk 3 a
//! raw disk agent-warden writes its decision log to, and a software TPM (swtpm as
//! `tpm-crb`: /dev/tpmrm0 in the guest) that every record is measured into (PCR 23). The
//! host side is a ttrpc client playing kata's runtime, through a byte tap.
//!
//! Three boots, one after the other:
//! - direct: the same image without agent-warden's files (no drop-in, no agent-warden),
//!   so kata-agent itself listens on vsock 1024; the reference answers;
//! - through agent-warden: boot order from the console's journal, the pod's life (every
//!   answer byte-for-byte the direct one except the denied exec, which never ran: no
//!   exec_process in kata-agent's console log, no /leaked in the share), the marker on
//!   the scratch disk, the scratch mapping torn down after DestroySandbox, then the raw
//!   scratch image (no marker, no LUKS magic) and what the guest did next (power-off);
//!   the decision log read from its disk verifies against the PCR value agent-warden
//!   logged at shutdown (`log verify --pcr`), and without its last line it does not;
//! - failed evidence: the VM launched with another digest: agent-warden fails, kata-agent
//!   never starts, every CONNECT 1024 is refused, the VM powers off by itself.
//!
//! Needs root, qemu-system-x86_64, debugfs, swtpm, the image (GUEST_IMAGE, default
//! target/guest: `guest/build-image.sh target/guest`), vhost-device-vsock and virtiofsd
//! (PATH, or ../shared/reference/guest-vm/bin), ../shared/kata-agent and busybox-static.
//! Skipped otherwise, except under CI=true, where it fails. KVM is used when a kernel
//! boots under it, else TCG (GUEST_VM_ACCEL=tcg|kvm forces one); the output says which.

mod common;
mod kata;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kata::guest;
use kata::{Answer, Kit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a boot may take until vsock 1024 accepts (TCG on a loaded machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest the guest may take to power off by itself.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(180);
const SCRATCH_SIZE: u64 = 128 << 20;
/// The raw disk the guest's decision log is written to.
const DECISION_LOG_SIZE: u64 = 8 << 20;
/// The guest's vsock CID (any ≥ 3) and the agent's port.
const CID: u32 = 3;
const AGENT_PORT: u32 = 1024;
/// The memory of the VM (shared memfd, as vhost-user needs).
const MEM: &str = "1G";

/// Everything a boot needs from the machine.
struct Pieces {
    kit: Kit,
    qemu: PathBuf,
    debugfs: PathBuf,
    vsockd: PathBuf,
    virtiofsd: PathBuf,
    /// The software TPM the guest gets as `tpm-crb` (its decision log is measured there).
    swtpm: PathBuf,
    /// guest/build-image.sh's OUTDIR.
    image: PathBuf,
}

fn find_tool(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .chain([kata::repo_path("../shared/reference/guest-vm/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Pieces {
    fn locate() -> Result<Pieces, String> {
        let kit = Kit::locate()?;
        let tool = |name: &str, env: &str, hint: &str| {
            find_tool(name, env).ok_or(format!("no {name} ({hint})"))
        };
        let image = std::env::var_os("GUEST_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| kata::repo_path("target/guest"));
        for f in ["vmlinuz", "rootfs.img", "cmdline"] {
            if !image.join(f).is_file() {
                return Err(format!(
                    "no guest image at {} (guest/build-image.sh {})",
                    image.display(),
                    image.display()
                ));
            }
        }
        Ok(Pieces {
            kit,
            qemu: tool(
                "qemu-system-x86_64",
                "QEMU",
                "apt-get install qemu-system-x86",
            )?,
            debugfs: tool("debugfs", "DEBUGFS", "apt-get install e2fsprogs")?,
            vsockd: tool(
                "vhost-device-vsock",
                "VHOST_DEVICE_VSOCK",
                "cargo install --locked vhost-device-vsock",
            )?,
            virtiofsd: tool("virtiofsd", "VIRTIOFSD", "cargo install --locked virtiofsd")?,
            swtpm: tool("swtpm", "SWTPM", "apt-get install swtpm swtpm-tools")?,
            image,
        })
    }
}

/// KVM if a kernel boots under it here (the first console line within 10 s), else TCG.
fn pick_accel(p: &Pieces, dir: &Path) -> (&'static str, String) {
    match std::env::var("GUEST_VM_ACCEL").as_deref() {
        Ok("tcg") => return ("tcg", "GUEST_VM_ACCEL=tcg".into()),
        Ok("kvm") => return ("kvm", "GUEST_VM_ACCEL=kvm".into()),
        _ => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return ("tcg", "/dev/kvm cannot be opened".into());
    }
    let log = dir.join("kvm-probe.log");
    let child = Command::new(&p.qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "256M",
            "-nodefaults",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(p.image.join("vmlinuz"))
        .args(["-append", "console=ttyS0 panic=-1", "-serial"])
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return ("tcg", "qemu -accel kvm did not start".into());
    };
    let t = Instant::now();
    let booted = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Linux version") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(10) || matches!(child.try_wait(), Ok(Some(_))) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    if booted {
        (
            "kvm",
            format!(
                "the kernel printed its first line under KVM in {:.1} s",
                t.elapsed().as_secs_f64()
            ),
        )
    } else {
        (
            "tcg",
            "/dev/kvm is there, but the kernel printed nothing under KVM within 10 s".into(),
        )
    }
}

/// The serial console's text without colour codes and carriage returns.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// One qemu with its vhost-user back-ends.
struct Vm {
    name: &'static str,
    dir: PathBuf,
    qemu: Child,
    helpers: Vec<Child>,
    started: Instant,
    exited: Option<(ExitStatus, Duration)>,
}

impl Vm {
    /// Boots `rootfs` with the initdata disk and a fresh scratch disk; the VMM hands the
    /// guest `hostdata` (hex) as its evidence (fw_cfg, see docs/DEPLOY.md).
    fn boot(
        p: &Pieces,
        accel: &str,
        name: &'static str,
        dir: &Path,
        rootfs: &Path,
        initdata: &Path,
        hostdata: &str,
    ) -> Vm {
        fs::create_dir_all(dir.join("share")).unwrap();
        let scratch = fs::File::create(dir.join("scratch.raw")).unwrap();
        scratch.set_len(SCRATCH_SIZE).unwrap();
        // The decision log's disk: agent-warden writes its log to the raw device, the host
        // reads it after power-off.
        let declog = fs::File::create(dir.join("declog.raw")).unwrap();
        declog.set_len(DECISION_LOG_SIZE).unwrap();
        let log = |n: &str| Stdio::from(fs::File::create(dir.join(n)).unwrap());
        let vsockd = Command::new(&p.vsockd)
            .arg("--vm")
            .arg(format!(
                "guest-cid={CID},socket={},uds-path={}",
                dir.join("vhu.sock").display(),
                dir.join("vm.vsock").display()
            ))
            .stdout(log("vsockd.log"))
            .stderr(log("vsockd.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", p.vsockd.display()));
        let virtiofsd = Command::new(&p.virtiofsd)
            .arg(format!("--socket-path={}", dir.join("vfs.sock").display()))
            .arg(format!("--shared-dir={}", dir.join("share").display()))
            .args(["--sandbox=namespace", "--cache=auto"])
            .stdout(log("virtiofsd.log"))
            .stderr(log("virtiofsd.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", p.virtiofsd.display()));
        // A fresh TPM per boot (PCRs at zero), gone when qemu disconnects.
        fs::create_dir_all(dir.join("tpm")).unwrap();
        let swtpm = Command::new(&p.swtpm)
            .args(["socket", "--tpm2", "--terminate"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.join("tpm").display()))
            .arg("--ctrl")
            .arg(format!(
                "type=unixio,path={}",
                dir.join("swtpm.sock").display()
            ))
            .stdout(log("swtpm.log"))
            .stderr(log("swtpm.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", p.swtpm.display()));
        let t = Instant::now();
        while !(dir.join("vhu.sock").exists()
            && dir.join("vfs.sock").exists()
            && dir.join("swtpm.sock").exists())
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "vhost-user back-ends did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let cmdline = fs::read_to_string(p.image.join("cmdline")).unwrap();
        let drive = |id: &str, file: &Path, extra: &str| {
            format!("file={},if=none,id={id},format=raw{extra}", file.display())
        };
        let started = Instant::now();
        let qemu = Command::new(&p.qemu)
            .args([
                "-accel", accel, "-machine", "q35", "-cpu", "max", "-smp", "2", "-m", MEM,
            ])
            .args(["-nodefaults", "-nographic", "-no-reboot"])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={MEM},share=on"),
            ])
            .args(["-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(p.image.join("vmlinuz"))
            .args(["-append", cmdline.trim()])
            // Root on NVMe (built into the kernel), never written (snapshot).
            .args(["-drive", &drive("root", rootfs, ",snapshot=on")])
            .args(["-device", "nvme,drive=root,serial=rootfs"])
            // virtio-blk 1: initdata (/dev/vda); 2: the scratch disk (/dev/vdb).
            .args(["-drive", &drive("initdata", initdata, ",readonly=on")])
            .args(["-device", "virtio-blk-pci,drive=initdata"])
            .args(["-drive", &drive("scratch", &dir.join("scratch.raw"), "")])
            .args(["-device", "virtio-blk-pci,drive=scratch"])
            // virtio-blk 3: the decision log (/dev/vdc).
            .args(["-drive", &drive("declog", &dir.join("declog.raw"), "")])
            .args(["-device", "virtio-blk-pci,drive=declog"])
            .args([
                "-chardev",
                &format!("socket,id=chrtpm,path={}", dir.join("swtpm.sock").display()),
            ])
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-crb,tpmdev=tpm0"])
            .args([
                "-chardev",
                &format!("socket,id=vsock,path={}", dir.join("vhu.sock").display()),
            ])
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock"])
            .args([
                "-chardev",
                &format!("socket,id=fs,path={}", dir.join("vfs.sock").display()),
            ])
            .args([
                "-device",
                &format!("vhost-user-fs-pci,chardev=fs,tag={}", guest::SHARE_TAG),
            ])
            .args([
                "-fw_cfg",
                &format!("name=opt/org.agent-warden/hostdata,string={hostdata}"),
            ])
            .args([
                "-serial",
                &format!("file:{}", dir.join("console.log").display()),
            ])
            .stdin(Stdio::null())
            .stdout(log("qemu.log"))
            .stderr(log("qemu.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", p.qemu.display()));
        Vm {
            name,
            dir: dir.to_path_buf(),
            qemu,
            helpers: vec![vsockd, virtiofsd, swtpm],
            started,
            exited: None,
        }
    }

    fn console(&self) -> String {
        clean(&fs::read(self.dir.join("console.log")).unwrap_or_default())
    }

    fn tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        let qemu_err = fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default();
        format!(
            "--- {} console (last 80 lines) ---\n{}\n--- qemu stderr ---\n{qemu_err}",
            self.name,
            lines[lines.len().saturating_sub(80)..].join("\n")
        )
    }

    fn vsock(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// qemu's exit status and when (since start), once it has exited.
    fn poll_exit(&mut self) -> Option<(ExitStatus, Duration)> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.qemu.try_wait() {
                self.exited = Some((st, self.started.elapsed()));
            }
        }
        self.exited
    }

    /// Waits up to `within` for qemu to exit by itself.
    fn wait_exit(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(e) = self.poll_exit() {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Keeps the console next to the other test output (target/guest-vm/NAME.console.log).
    fn keep_console(&self) {
        let out = kata::repo_path("target/guest-vm");
        let _ = fs::create_dir_all(&out);
        let _ = fs::write(
            out.join(format!("{}.console.log", self.name)),
            self.console(),
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.keep_console();
        for c in std::iter::once(&mut self.qemu).chain(self.helpers.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One hybrid-vsock connection to `port`: `CONNECT <port>\n`, answered `OK <n>\n` once the
/// guest accepts (before that the back-end closes the connection).
async fn hvsock_connect(uds: PathBuf, port: u32) -> std::io::Result<tokio::net::UnixStream> {
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why);
    let mut s = tokio::net::UnixStream::connect(&uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    let read_line = async {
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await? == 0 {
                return Err(refused(format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            if b[0] == b'\n' {
                return Ok(());
            }
            line.push(b[0]);
            if line.len() > 64 {
                return Err(refused("no OK line".into()));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_line)
        .await
        .map_err(|_| refused("no answer to CONNECT within 5 s".into()))??;
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(refused(format!(
            "answered {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

/// Tries CONNECT 1024 every 100 ms until it is accepted; the time since the VM started.
async fn wait_accept(vm: &mut Vm) -> Result<Duration, String> {
    loop {
        if let Ok(s) = hvsock_connect(vm.vsock(), AGENT_PORT).await {
            let at = vm.started.elapsed();
            drop(s);
            return Ok(at);
        }
        if let Some((st, _)) = vm.poll_exit() {
            return Err(format!(
                "qemu exited ({st}) before vsock {AGENT_PORT} accepted"
            ));
        }
        if vm.started.elapsed() > BOOT_TIMEOUT {
            return Err(format!(
                "vsock {AGENT_PORT} did not accept within {BOOT_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kata-agent's own lines on the console (its JSON log, `"name":"kata-agent"`).
fn agent_lines(console: &str) -> String {
    console
        .lines()
        .filter(|l| l.contains(r#""name":"kata-agent""#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What kata-agent prints (stderr, the console) as it exits after DestroySandbox.
const SHUTDOWN: &str = "kata-agent shutdown complete";

/// One pod's life in one boot, as recorded.
struct PodRun {
    accept: Duration,
    first_answer: Duration,
    answers: Vec<Answer>,
    took: Vec<Duration>,
    /// The raw response frames, one per step.
    frames: Vec<Vec<u8>>,
    /// The RPCs kata-agent logged on the console while each step was answered.
    logged: Vec<Vec<String>>,
    /// What the denied command would have written into the share.
    leaked: Option<String>,
    /// The console at the end (after the guest powered off).
    console: String,
    /// When qemu exited, counted from the DestroySandbox answer.
    poweroff_after_destroy: Option<Duration>,
}

async fn pod_life(p: &Pieces, vm: &mut Vm) -> PodRun {
    let accept = wait_accept(vm)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.tail()));
    let uds = vm.vsock();
    let tap = common::Tap::start_with(&vm.dir.join("tap.sock"), move || {
        hvsock_connect(uds.clone(), AGENT_PORT)
    })
    .await;
    let client =
        ttrpc::r#async::Client::connect(&format!("unix://{}", vm.dir.join("tap.sock").display()))
            .await
            .unwrap();
    let share = vm.dir.join("share");
    let steps = guest::pod_steps();
    let mut logged = Vec::new();
    let mut seen = 0;
    let mut first_answer = None;
    let console_file = vm.dir.join("console.log");
    let started = vm.started;
    let answers = kata::run_steps(
        &steps,
        &client,
        || guest::write_rootfs(&share, &p.kit.busybox),
        |_, step, answer| {
            first_answer.get_or_insert(started.elapsed());
            // kata-agent logs each RPC as it starts: wait (≤ 5 s, TCG) for the line of an
            // answered request; give a refused one (or a stream read, which it does not
            // log) 500 ms to (not) leave a line. DestroySandbox's is taken at the end.
            let no_line = answer.code != 0
                || kata::logged_name(step.method).is_none()
                || step.method == "DestroySandbox";
            let wait = if no_line { 500 } else { 5000 };
            let deadline = Instant::now() + Duration::from_millis(wait);
            let calls = loop {
                let calls =
                    kata::rpc_calls_in(&clean(&fs::read(&console_file).unwrap_or_default()));
                if (!no_line && calls.len() > seen) || Instant::now() > deadline {
                    break calls;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            logged.push(calls.get(seen..).unwrap_or_default().to_vec());
            seen = calls.len();
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", vm.tail()));
    let destroyed = Instant::now();
    // Under kata's units the guest powers itself off once kata-agent exits (ExecStop).
    let poweroff_after_destroy = vm.wait_exit(POWEROFF_TIMEOUT).map(|_| destroyed.elapsed());
    drop(client);
    let console = vm.console();
    // The last step's evidence, from the final console: its RPC line (kata-agent may exit
    // before it is out) and kata-agent's exit.
    let calls = kata::rpc_calls_in(&console);
    let last = logged.len() - 1;
    let start: usize = logged[..last].iter().map(Vec::len).sum();
    logged[last] = calls.get(start..).unwrap_or_default().to_vec();
    if console.contains(SHUTDOWN) {
        logged[last].push(format!("exited ({SHUTDOWN})"));
    }
    let to_client = tap.to_client.lock().unwrap().clone();
    PodRun {
        accept,
        first_answer: first_answer.unwrap_or_default(),
        took: answers.iter().map(|(_, t)| *t).collect(),
        answers: answers.into_iter().map(|(a, _)| a).collect(),
        frames: common::raw_frames(&to_client).await,
        logged,
        leaked: fs::read_to_string(
            share
                .join(kata::CONTAINER)
                .join("rootfs")
                .join(guest::LEAKED),
        )
        .ok(),
        console,
        poweroff_after_destroy,
    }
}

/// The rootfs without agent-warden: a sparse copy with agent-warden's files removed by
/// debugfs (no image mount), so kata-agent keeps kata's own unit and listens on vsock 1024.
fn direct_rootfs(p: &Pieces, dir: &Path) -> PathBuf {
    let out = dir.join("rootfs-direct.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(p.image.join("rootfs.img"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "cp rootfs.img");
    let removed = [
        "rm /usr/bin/agent-warden",
        "rm /usr/lib/systemd/system/agent-warden.service",
        "rm /usr/lib/systemd/system/kata-agent.service.d/10-agent-warden.conf",
        "rmdir /usr/lib/systemd/system/kata-agent.service.d",
        "rm /etc/systemd/system/agent-warden.service.d/50-evidence-fw-cfg.conf",
        "rmdir /etc/systemd/system/agent-warden.service.d",
    ];
    fs::write(dir.join("debugfs.cmds"), removed.join("\n") + "\n").unwrap();
    let o = Command::new(&p.debugfs)
        .arg("-w")
        .arg("-f")
        .arg(dir.join("debugfs.cmds"))
        .arg(&out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !said.contains("not found"),
        "debugfs: {said}"
    );
    for path in [
        "/usr/bin/agent-warden",
        "/usr/lib/systemd/system/kata-agent.service.d",
    ] {
        let o = Command::new(&p.debugfs)
            .args(["-R", &format!("stat {path}")])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("File not found"),
            "{path} still in the direct image"
        );
    }
    out
}

/// The initdata disk (policy + agent-warden.toml naming the scratch disk) and the digest the
/// TEE would report (TDX MRCONFIGID: the sha384 digest, 48 bytes).
fn pack_initdata(dir: &Path) -> (PathBuf, String) {
    let config = dir.join("agent-warden.toml");
    fs::write(
        &config,
        format!(
            "# The scratch disk: virtio-blk disk 2.\n[storage]\ndevice = \"/dev/vdb\"\nmount_point = \"{}\"\n\
             # The decision log on virtio-blk disk 3 (read by the host after power-off), every\n\
             # record measured into the TPM's PCR 23.\n\
             [decision_log]\nfile = \"/dev/vdc\"\nmax_bytes = 0\nmeasure = \"tpm:pcr=23\"\n",
            guest::SCRATCH_MOUNT
        ),
    )
    .unwrap();
    let image = dir.join("initdata.img");
    let digest = kata::pack_initdata_image(
        &[
            "--policy",
            "testdata/guest-vm-pod.rego",
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
        &image,
    );
    (image, digest)
}

/// The guest's decision log, read from its raw disk after power-off: it must verify as a
/// chain and against the PCR value agent-warden logged at shutdown (read back from the
/// guest's TPM through /dev/tpmrm0), record the denied exec as refused, and measure every
/// record. Returns a summary for the output.
fn check_decision_log(vm: &Vm) -> String {
    let raw = fs::read(vm.dir.join("declog.raw")).unwrap();
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let log = vm.dir.join("decisions.jsonl");
    fs::write(&log, &raw[..end]).unwrap();
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let console = vm.console();
    let (_, closed) = line_of(&console, "decision log closed").unwrap_or_else(|| {
        panic!(
            "no 'decision log closed' line on the console\n{}",
            vm.tail()
        )
    });
    let value = closed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("register_value="))
        .unwrap_or_else(|| panic!("no register value in {closed:?}"));
    assert!(
        closed.contains("register=tpm:pcr=23") && value.len() == 64,
        "{closed}"
    );
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let own = |r: &serde_json::Value| r["agent_warden"].clone();
    assert!(
        records.iter().all(|r| own(r)["measured"] == true),
        "every record is measured: {text}"
    );
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| own(r)["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["path"], "agent_policy/ExecProcessRequest");
    assert_eq!(own(refused[0])["status"], 7);
    let o = common::run_warden(&["log", "verify", log.to_str().unwrap(), "--pcr", value]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("register: matches"),
        "log verify --pcr {value}: {out}"
    );
    // The same log without its last record is caught by the register only.
    let cut = vm.dir.join("cut.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let o = common::run_warden(&["log", "verify", cut.to_str().unwrap(), "--pcr", value]);
    let cut_out = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && cut_out.contains("register mismatch"),
        "{cut_out}"
    );
    format!(
        "decision log from the guest: {} records, {} decisions, PCR 23 = {value} (logged by agent-warden at shutdown, read through /dev/tpmrm0); log verify --pcr: matches; without its last line: {}",
        records.len(),
        records.iter().filter(|r| own(r)["type"] == "decision").count(),
        cut_out.trim().chars().take(120).collect::<String>()
    )
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The console line (index, text) of the first line containing `what`.
fn line_of(console: &str, what: &str) -> Option<(usize, String)> {
    console
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(what))
        .map(|(i, l)| (i, l.trim().to_string()))
}

/// The first `n` characters of `line`.
fn short(line: &str, n: usize) -> &str {
    line.char_indices().nth(n).map_or(line, |(i, _)| &line[..i])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_vm_pod_life_over_vsock() {
    let p = match Pieces::locate() {
        Ok(p) => p,
        Err(reason) => return kata::unavailable("the guest VM test", &reason),
    };
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (accel, why) = pick_accel(&p, work.path());
    println!(
        "\nguest VM test: accelerator {} ({why})",
        accel.to_uppercase()
    );
    let (initdata, digest) = pack_initdata(work.path());
    let direct_img = direct_rootfs(&p, work.path());

    // 1. The reference: kata-agent itself on vsock 1024.
    let mut vm = Vm::boot(
        &p,
        accel,
        "direct",
        &work.path().join("direct"),
        &direct_img,
        &initdata,
        &digest,
    );
    let direct = pod_life(&p, &mut vm).await;
    drop(vm);

    // 2. Through agent-warden.
    let image = p.image.join("rootfs.img");
    let mut vm = Vm::boot(
        &p,
        accel,
        "agent-warden",
        &work.path().join("warden"),
        &image,
        &initdata,
        &digest,
    );
    let through = pod_life(&p, &mut vm).await;
    let scratch = fs::read(vm.dir.join("scratch.raw")).unwrap();
    let warden_tail = vm.tail();
    let log_check = check_decision_log(&vm);
    drop(vm);

    // 3. The VM launched with another digest than the initdata's.
    let wrong = "ab".repeat(48);
    let mut vm = Vm::boot(
        &p,
        accel,
        "failed-evidence",
        &work.path().join("failed"),
        &image,
        &initdata,
        &wrong,
    );
    let (mut attempts, mut accepted) = (0, 0);
    while vm.poll_exit().is_none() && vm.started.elapsed() < BOOT_TIMEOUT {
        attempts += 1;
        if hvsock_connect(vm.vsock(), AGENT_PORT).await.is_ok() {
            accepted += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed_exit = vm.wait_exit(Duration::from_secs(1));
    let failed_console = vm.console();
    let failed_tail = vm.tail();
    drop(vm);

    println!("\n{log_check}");

    // The per-request table.
    let steps = guest::pod_steps();
    println!(
        "\n| # | request | answer direct | answer through agent-warden | frames | what the guest saw \
         (kata-agent's console log through agent-warden; directly) |\n|---|---|---|---|---|---|"
    );
    for (i, step) in steps.iter().enumerate() {
        let saw = |r: &PodRun| {
            if kata::logged_name(step.method).is_none() {
                "(no log line for stream reads)".to_string()
            } else if r.logged[i].is_empty() {
                "no RPC logged".to_string()
            } else {
                r.logged[i].join(", ")
            }
        };
        let mut evidence = saw(&through);
        if i == guest::DENIED {
            let leak = |r: &PodRun| match &r.leaked {
                Some(t) => format!("/leaked in the share holds {:?}", t),
                None => "no /leaked in the share".to_string(),
            };
            evidence = format!(
                "{evidence}, {} (directly: {}, {})",
                leak(&through),
                saw(&direct),
                leak(&direct)
            );
        }
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            i + 1,
            step.name,
            direct.answers[i].describe(step.method),
            through.answers[i].describe(step.method),
            if direct.frames.get(i) == through.frames.get(i) {
                "same"
            } else {
                "DIFF"
            },
            evidence
        );
    }

    // Boot order, as the console's journal shows it.
    let (w_at, w_line) = line_of(&through.console, "systemd[1]: Started agent-warden.service")
        .unwrap_or_else(|| panic!("no agent-warden start in the journal\n{warden_tail}"));
    let (k_at, k_line) = line_of(&through.console, "systemd[1]: Started kata-agent.service")
        .unwrap_or_else(|| panic!("no kata-agent start in the journal\n{warden_tail}"));
    let (s_at, s_line) = line_of(&through.console, "agent-warden is serving").unwrap();
    let (a_at, a_line) = line_of(&through.console, r#"{"msg":"announce""#).unwrap();
    println!("\nboot order through agent-warden (console lines {s_at}, {w_at}, {k_at}, {a_at}):\n  {s_line}\n  {w_line}\n  {k_line}\n  {}…", short(&a_line, 90));

    // After DestroySandbox.
    let torn = line_of(
        &through.console,
        "scratch disk torn down after DestroySandbox",
    );
    let ready = line_of(&through.console, "scratch disk ready");
    let power = line_of(&through.console, "reboot: Power down");
    println!(
        "\nscratch disk: {}",
        ready
            .as_ref()
            .map(|l| l.1.as_str())
            .unwrap_or("(no setup line)")
    );
    println!(
        "after DestroySandbox: {}",
        torn.as_ref()
            .map(|l| l.1.as_str())
            .unwrap_or("(no teardown line)")
    );
    let destroy_at = line_of(&through.console, r#"agent: \"destroy_sandbox\""#).map_or(0, |l| l.0);
    let after: Vec<&str> = through
        .console
        .lines()
        .skip(destroy_at)
        .filter(|l| {
            l.contains("systemd[1]:")
                || l.contains("reboot:")
                || l.contains(SHUTDOWN)
                || (l.contains("agent_warden") && !l.contains("decision"))
        })
        .map(|l| short(l, 200))
        .collect();
    println!("then the guest (kata's units):\n  {}", after.join("\n  "));
    println!(
        "qemu exited by itself {} after the DestroySandbox answer",
        through
            .poweroff_after_destroy
            .map(ms)
            .unwrap_or("NOT (killed)".into())
    );

    // The raw scratch disk.
    let written = scratch.iter().filter(|b| **b != 0).count();
    println!(
        "\nraw scratch image: {written} non-zero bytes of {SCRATCH_SIZE}; marker found: {:?}; LUKS magic found: {:?}/{:?}",
        find(&scratch, guest::MARKER.as_bytes()),
        find(&scratch, b"LUKS\xba\xbe"),
        find(&scratch, b"SKUL\xba\xbe")
    );

    // The failed-evidence boot.
    let fail_lines: Vec<&str> = failed_console
        .lines()
        .filter(|l| {
            l.contains("agent-warden")
                || l.contains("kata-agent")
                || l.contains("Kata")
                || l.contains("reboot:")
                || l.contains("poweroff")
                || l.contains("Power")
        })
        .collect();
    println!(
        "\nfailed-evidence boot: CONNECT {AGENT_PORT} tried {attempts} times, accepted {accepted}; qemu exited {}; console:\n  {}",
        failed_exit.map(|(st, at)| format!("({st}) {:.1} s after start", at.as_secs_f64())).unwrap_or("NOT".into()),
        fail_lines.join("\n  ")
    );

    // Figures.
    println!(
        "\nfigures ({}): VM start until vsock {AGENT_PORT} accepts: direct {:.1} s, through agent-warden {:.1} s; until the first answer (CreateSandbox): direct {:.1} s, through agent-warden {:.1} s",
        accel.to_uppercase(),
        direct.accept.as_secs_f64(),
        through.accept.as_secs_f64(),
        direct.first_answer.as_secs_f64(),
        through.first_answer.as_secs_f64()
    );
    println!("\n| step | direct | through agent-warden |\n|---|---|---|");
    for (i, step) in steps.iter().enumerate() {
        println!(
            "| {} | {} | {} |",
            step.name,
            ms(direct.took[i]),
            ms(through.took[i])
        );
    }
    let sum = |r: &PodRun| r.took.iter().sum::<Duration>();
    println!(
        "| whole life | {} | {} |",
        ms(sum(&direct)),
        ms(sum(&through))
    );
    println!("(test took {:.0} s)", started.elapsed().as_secs_f64());

    // --- Assertions ---
    // Directly, every step succeeds and the denied command ran (positive control).
    for (i, a) in direct.answers.iter().enumerate() {
        assert_eq!(
            a.code,
            0,
            "direct step {}: {a:?}\n{}",
            steps[i].name,
            agent_lines(&direct.console)
        );
    }
    assert_eq!(
        direct.leaked.as_deref(),
        Some(guest::SHADOW_TEXT),
        "positive control: directly, the leak runs"
    );
    assert_eq!(direct.logged[guest::DENIED], ["exec_process"]);
    // Where kata-agent listened: vsock 1024 alone, the unix socket behind agent-warden.
    let listened = |console: &str| {
        line_of(console, r#"{"msg":"ttRPC server started""#)
            .map(|(_, l)| l)
            .unwrap_or_default()
    };
    assert!(listened(&direct.console).contains(r#""address":"vsock://-1:1024""#));
    assert!(listened(&through.console).contains(r#""address":"unix:///run/kata-agent.sock""#));
    // Through agent-warden: kata-agent's answers, byte for byte, except the denied exec.
    assert_eq!(direct.frames.len(), steps.len());
    assert_eq!(through.frames.len(), steps.len());
    for (i, step) in steps.iter().enumerate() {
        if i != guest::DENIED {
            assert_eq!(
                through.frames[i], direct.frames[i],
                "step {}: not kata-agent's own answer",
                step.name
            );
            if step.method == "DestroySandbox" {
                // kata-agent exits right after answering it: its exit line is always on
                // the console, but its RPC line was once missing there (1 run in ~5,
                // either side): lines a process logs as it exits can be lost. So: both
                // exited, and nothing but that RPC was logged.
                for (side, logged) in [
                    ("through", &through.logged[i]),
                    ("direct", &direct.logged[i]),
                ] {
                    assert!(
                        logged.contains(&format!("exited ({SHUTDOWN})")),
                        "{side}: kata-agent did not exit after DestroySandbox: {logged:?}"
                    );
                    assert!(
                        logged
                            .iter()
                            .all(|l| l == "destroy_sandbox" || l.starts_with("exited (")),
                        "{side}: kata-agent logged {logged:?} for DestroySandbox"
                    );
                }
            } else {
                assert_eq!(
                    through.logged[i], direct.logged[i],
                    "step {}: what kata-agent logged",
                    step.name
                );
            }
        }
    }
    assert_eq!(
        through.answers[guest::READ_ECHO].describe("ReadStdout"),
        "OK data=\"hello\\n\""
    );
    assert_eq!(
        through.answers[guest::READ_MARKER].describe("ReadStdout"),
        format!("OK data=\"{}\\n\"", guest::MARKER)
    );
    assert_eq!(
        through.answers[guest::WAIT_INIT].describe("WaitProcess"),
        "OK status=137"
    );
    // The denied exec: PERMISSION_DENIED, never reached kata-agent, never ran.
    let denied = &through.answers[guest::DENIED];
    assert_eq!(denied.code, 7, "{denied:?}");
    // deploy/'s default `deny_message = "reason"`: where it failed, no input values.
    // The point of the policy where the evaluation failed (its second body held and
    // gives `false`); the policy's file name is the initdata entry's.
    assert!(
        denied
            .message
            .starts_with("ExecProcessRequest is blocked by policy: ")
            && denied.message.ends_with(
                ":27: ExecProcessRequest := false if { … (in ExecProcessRequest); that body held and its value denied; the other bodies got furthest at line 25: input.process.Args in allowed_exec"
            ),
        "{denied:?}"
    );
    assert!(
        through.logged[guest::DENIED].is_empty(),
        "kata-agent logged {:?}",
        through.logged[guest::DENIED]
    );
    assert_eq!(through.leaked, None, "the denied command ran");
    assert!(agent_lines(&direct.console).contains(kata::SHADOW));
    assert!(
        !agent_lines(&through.console).contains(kata::SHADOW),
        "kata-agent heard of the denied exec"
    );
    // Boot order: agent-warden serving and READY before kata-agent starts.
    assert!(
        s_at < w_at && w_at < k_at && k_at < a_at,
        "boot order: {s_at} {w_at} {k_at} {a_at}"
    );
    // The scratch disk: set up before serving, torn down after DestroySandbox and before
    // the power-off; on the host, ciphertext only.
    let (ready_at, _) = ready.unwrap_or_else(|| panic!("no scratch disk setup\n{warden_tail}"));
    assert!(ready_at < s_at);
    let (torn_at, torn_line) =
        torn.unwrap_or_else(|| panic!("no teardown after DestroySandbox\n{warden_tail}"));
    assert!(torn_line.contains("agent-warden-scratch"), "{torn_line}");
    if let Some((power_at, _)) = power {
        assert!(torn_at < power_at);
    }
    assert!(
        through.logged[steps.len() - 1]
            .iter()
            .any(|l| l.starts_with("exited")),
        "kata-agent exits after DestroySandbox: {:?}",
        through.logged[steps.len() - 1]
    );
    assert!(
        through.poweroff_after_destroy.is_some(),
        "the guest powers off after DestroySandbox"
    );
    assert!(written > 0, "the scratch disk was written");
    assert_eq!(
        find(&scratch, guest::MARKER.as_bytes()),
        None,
        "marker in the raw scratch image"
    );
    assert_eq!(
        find(&scratch, b"LUKS\xba\xbe"),
        None,
        "LUKS header on the scratch disk"
    );
    assert_eq!(
        find(&scratch, b"SKUL\xba\xbe"),
        None,
        "LUKS2 second header on the scratch disk"
    );
    // The failed-evidence boot: agent-warden refuses, kata-agent never starts, nothing
    // accepts on vsock 1024, the VM powers itself off.
    assert!(
        attempts > 0 && accepted == 0,
        "CONNECT {AGENT_PORT}: {accepted} of {attempts} accepted"
    );
    assert!(
        failed_exit.is_some(),
        "the VM did not power off\n{failed_tail}"
    );
    assert!(
        failed_console.contains("refusing to serve"),
        "{failed_tail}"
    );
    assert!(
        failed_console.contains("Failed to start agent-warden.service"),
        "{failed_tail}"
    );
    assert!(
        failed_console.contains("Dependency failed for kata-agent.service"),
        "{failed_tail}"
    );
    assert!(
        !failed_console.contains("Started kata-agent.service"),
        "{failed_tail}"
    );
    assert!(
        agent_lines(&failed_console).is_empty(),
        "kata-agent ran:\n{failed_tail}"
    );
    assert!(
        failed_console.contains("reboot: Power down"),
        "{failed_tail}"
    );
}
