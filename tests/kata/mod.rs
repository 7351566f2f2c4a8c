//! The real kata-agent (../shared/kata-agent: kata-containers 7c6ba40c, agent 4.1.0) as the
//! backend of the end-to-end test and the lifecycle benchmark: finding it, running it in
//! fresh namespaces (its run-agent.sh), its log and process list as agent-side evidence,
//! the `agent-warden serve` binary in front of it, and one pod's life sent by a real ttrpc
//! client that plays the kata runtime.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_warden::wire::protocols::{agent, oci};
use protobuf::{Message, MessageField};

/// The pod's only container; its init process has the same exec id.
pub const CONTAINER: &str = "c1";
/// Where kata's runtime (virtio-fs or the image pull) puts a container's rootfs.
pub const SHARED: &str = "/run/kata-containers/shared/containers";
/// The exec id of the allowed `echo hello`.
pub const ECHO: &str = "echo-1";
/// The exec id of the denied `sh -c 'cat /etc/shadow'`.
pub const SHADOW: &str = "shadow-1";
/// What the denied command would show in a process list.
pub const SHADOW_CMDLINE: &str = "cat /etc/shadow";
/// The policy the test and the benchmark use (Rego v1 syntax, `import rego.v1`).
pub const POLICY: &str = "testdata/kata-e2e-pod.rego";
/// The `agent-warden` binary cargo built for this test or benchmark.
pub const WARDEN: &str = env!("CARGO_BIN_EXE_agent-warden");
/// ttrpc timeout of every request (part of the request bytes, so the same in every run).
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Under CI=true a missing piece fails the run; elsewhere `what` is skipped with the reason.
pub fn unavailable(what: &str, reason: &str) {
    if in_ci() {
        panic!("{what} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPING {what}: {reason}");
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// What a run needs: the kata-agent binaries and script, a static busybox, root.
pub struct Kit {
    /// bin/kata-agent: no in-process policy.
    pub agent: PathBuf,
    /// bin/kata-agent-policy: kata's own regorus policy (KATA_AGENT_POLICY_FILE).
    pub agent_policy: PathBuf,
    pub run_agent: PathBuf,
    pub busybox: PathBuf,
}

impl Kit {
    /// The pieces, or why they are not all there.
    pub fn locate() -> Result<Kit, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (namespaces, mounts, cgroups)".into());
        }
        let dir = repo_path("../shared/kata-agent");
        let kit = Kit {
            agent: dir.join("bin/kata-agent"),
            agent_policy: dir.join("bin/kata-agent-policy"),
            run_agent: dir.join("run-agent.sh"),
            busybox: ["/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or("no busybox (apt-get install busybox-static)")?,
        };
        for p in [&kit.agent, &kit.agent_policy, &kit.run_agent] {
            if !p.is_file() {
                return Err(format!("{} is missing", p.display()));
            }
        }
        // The container has no libraries: busybox must be the static build.
        let bb = fs::read(&kit.busybox).map_err(|e| format!("{}: {e}", kit.busybox.display()))?;
        if has_interpreter(&bb) {
            return Err(format!(
                "{} is dynamically linked (apt-get install busybox-static)",
                kit.busybox.display()
            ));
        }
        Ok(kit)
    }
}

/// Whether an ELF64 little-endian executable names a program interpreter (PT_INTERP),
/// i.e. is dynamically linked. Anything unreadable counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    if !elf.starts_with(b"\x7fELF") {
        return true;
    }
    (0..count).any(|i| {
        let at = phoff + i * size;
        elf.get(at..at + 4).is_none_or(|typ| typ == [3, 0, 0, 0])
    })
}

/// One kata-agent, run by run-agent.sh in fresh namespaces with its own cgroups.
pub struct KataAgent {
    script: Option<Child>,
    dir: tempfile::TempDir,
    nsinit: u32,
}

impl KataAgent {
    /// Starts `binary` and waits until its socket appears. `env`: extra environment.
    pub fn start(kit: &Kit, binary: &Path, env: &[(&str, &str)]) -> Result<KataAgent, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let create =
            |name: &str| fs::File::create(dir.path().join(name)).map_err(|e| e.to_string());
        let (log, script_log) = (create("agent.log")?, create("run-agent.log")?);
        let mut script = Command::new("bash")
            .arg(&kit.run_agent)
            .arg(binary)
            .arg(dir.path())
            .envs(env.iter().copied())
            .env("KATA_AGENT_LOG_LEVEL", "info")
            // As in a guest: no backtraces in kata-agent's error texts.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            // kata-agent writes its JSON log lines to stdout, run-agent.sh to stderr.
            .stdout(log)
            .stderr(script_log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", kit.run_agent.display()))?;
        let sock = dir.path().join("sock/kata-agent.sock");
        let pidfile = dir.path().join("nsinit.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        let nsinit = loop {
            let pid = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            // The socket file appears at bind(), before listen(): wait for a connection.
            if let (Some(pid), true) = (pid, std::os::unix::net::UnixStream::connect(&sock).is_ok())
            {
                break pid;
            }
            if let Ok(Some(st)) = script.try_wait() {
                let log =
                    |name: &str| fs::read_to_string(dir.path().join(name)).unwrap_or_default();
                return Err(format!(
                    "run-agent.sh exited with {st} before listening:\n{}{}",
                    log("run-agent.log"),
                    log("agent.log")
                ));
            }
            if Instant::now() > deadline {
                let _ = script.kill();
                return Err("kata-agent did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(KataAgent {
            script: Some(script),
            dir,
            nsinit,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock/kata-agent.sock")
    }

    /// The agent's view of the filesystem (its mount namespace).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.nsinit))
    }

    /// kata-agent's log so far (JSON lines, which it writes to stdout).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// What run-agent.sh and kata-agent wrote to stderr (panics, shutdown).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("run-agent.log")).unwrap_or_default()
    }

    /// The RPCs kata-agent received, in order: its own `rpc call from shim to agent:
    /// "<name>"` log lines (snake_case names, e.g. `exec_process`). Read from the raw text,
    /// not as JSON: kata-agent exits right after DestroySandbox, and that line is sometimes
    /// cut short as it exits.
    pub fn rpc_calls(&self) -> Vec<String> {
        rpc_calls_in(&self.log())
    }

    /// The command lines of every process in the agent's pid namespace (containers included).
    pub fn processes(&self) -> Vec<String> {
        let proc_dir = self.root().join("proc");
        let Ok(entries) = fs::read_dir(&proc_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(raw) = fs::read(e.path().join("cmdline")) {
                let words: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|w| !w.is_empty())
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                out.push(words.join(" "));
            }
        }
        out
    }

    /// Writes the container's busybox rootfs where the runtime would have put it. Call after
    /// CreateSandbox, which empties /run/kata-containers. Its /etc/shadow is a FIFO, so a
    /// `cat /etc/shadow` that runs blocks and stays in the process list until the container
    /// dies.
    pub fn write_rootfs(&self, kit: &Kit) -> Result<(), String> {
        let rootfs = self
            .root()
            .join(SHARED.trim_start_matches('/'))
            .join(CONTAINER)
            .join("rootfs");
        write_busybox_rootfs(&rootfs, &kit.busybox)?;
        let err = |what: &str, e: std::io::Error| format!("rootfs {what}: {e}");
        let fifo = CString::new(rootfs.join("etc/shadow").as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        if unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) } != 0 {
            return Err(err("etc/shadow", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Whether kata-agent said on stderr that it shut down (it does after DestroySandbox).
    pub fn shut_down(&self) -> bool {
        self.stderr().contains("kata-agent shutdown complete")
    }

    /// Waits up to `within` for kata-agent to exit on its own (it does after DestroySandbox).
    pub fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.script.as_mut().map(|s| s.try_wait()) {
                Some(Ok(Some(_))) | None => return true,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    }

    /// Stops the namespace (SIGTERM to run-agent.sh, which SIGKILLs the namespace's init
    /// and removes its cgroups); SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut script) = self.script.take() else {
            return;
        };
        if let Ok(None) = script.try_wait() {
            unsafe { libc::kill(script.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = script.try_wait() {
                if Instant::now() > deadline {
                    unsafe { libc::kill(self.nsinit as i32, libc::SIGKILL) };
                    let _ = script.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = script.wait();
    }
}

impl Drop for KataAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The RPCs a kata-agent log names, in order: its `rpc call from shim to agent: "<name>"`
/// lines (snake_case names, e.g. `exec_process`), wherever they start on a line (a VM's
/// console may carry other output before them).
pub fn rpc_calls_in(log: &str) -> Vec<String> {
    const PREFIX: &str = r#"{"msg":"rpc call from shim to agent: \""#;
    log.lines()
        .filter_map(|l| {
            let at = l.find(PREFIX)?;
            l[at + PREFIX.len()..].split_once(r#"\""#)
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A container rootfs in `rootfs`: busybox (static) with the applets the pod's commands use,
/// and the directories a container needs. The caller adds its /etc/shadow.
pub fn write_busybox_rootfs(rootfs: &Path, busybox: &Path) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("rootfs {what}: {e}");
    for d in ["bin", "etc", "proc", "dev", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).map_err(|e| err(d, e))?;
    }
    fs::copy(busybox, rootfs.join("bin/busybox")).map_err(|e| err("busybox", e))?;
    for applet in ["sh", "echo", "cat", "sleep", "sync"] {
        symlink("busybox", rootfs.join("bin").join(applet)).map_err(|e| err(applet, e))?;
    }
    Ok(())
}

/// `agent-warden serve` as a child process.
pub struct Warden {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr: PathBuf,
}

impl Warden {
    /// Runs `agent-warden serve ARGS` (which must make it listen on `socket`) and waits until
    /// it listens; Err with its stderr if it exits first.
    pub fn start(args: &[String], socket: &Path, stderr: &Path) -> Result<Warden, String> {
        let log = fs::File::create(stderr).map_err(|e| e.to_string())?;
        let mut child = Command::new(WARDEN)
            .args(["--log", "info", "serve"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {WARDEN}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                let err = fs::read_to_string(stderr).unwrap_or_default();
                return Err(format!("agent-warden exited with {st}:\n{err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("agent-warden did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Warden {
            child: Some(child),
            socket: socket.to_path_buf(),
            stderr: stderr.to_path_buf(),
        })
    }

    /// SIGTERM, then its exit code and stderr.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        let code = self.child.take().and_then(|mut c| {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().ok().and_then(|s| s.code())
        });
        (code, fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request of the pod's life.
pub struct Step {
    /// What the table shows, e.g. `ExecProcess echo hello`.
    pub name: &'static str,
    /// The AgentService method.
    pub method: &'static str,
    /// The protobuf request message.
    pub payload: Vec<u8>,
}

/// What came back for one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// ttrpc status code (0 OK).
    pub code: i32,
    pub message: String,
    /// The response message's bytes (empty on error).
    pub payload: Vec<u8>,
}

impl Answer {
    /// One line for the table: the status and what the answer carries for this method.
    pub fn describe(&self, method: &str) -> String {
        if self.code != 0 {
            return format!("{} {}", code_name(self.code), self.message);
        }
        match method {
            "ReadStdout" | "ReadStderr" => {
                agent::ReadStreamResponse::parse_from_bytes(&self.payload)
                    .map(|r| format!("OK data={:?}", String::from_utf8_lossy(&r.data)))
                    .unwrap_or_else(|e| format!("OK (undecodable: {e})"))
            }
            "WaitProcess" => agent::WaitProcessResponse::parse_from_bytes(&self.payload)
                .map(|r| format!("OK status={}", r.status))
                .unwrap_or_else(|e| format!("OK (undecodable: {e})")),
            _ => format!("OK ({} bytes)", self.payload.len()),
        }
    }
}

fn code_name(code: i32) -> String {
    match <ttrpc::Code as protobuf::Enum>::from_i32(code) {
        Some(c) => format!("{c:?}({code})"),
        None => format!("code {code}"),
    }
}

fn bytes(m: &impl Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

/// The container's OCI spec: busybox rootfs in the shared directory, init `sleep 3600`,
/// its own mount/ipc/uts namespaces, cgroups under the sandbox's.
fn spec() -> oci::Spec {
    container_spec(Vec::new())
}

/// [`spec`] with `extra` mounts after /proc and /dev.
fn container_spec(extra: Vec<oci::Mount>) -> oci::Spec {
    let process = oci::Process {
        Args: vec!["sleep".into(), "3600".into()],
        Env: vec!["PATH=/bin".into()],
        Cwd: "/".into(),
        User: MessageField::some(oci::User::default()),
        Capabilities: MessageField::some(oci::LinuxCapabilities::default()),
        ..Default::default()
    };
    let mount = |dest: &str, typ: &str, opts: &[&str]| oci::Mount {
        destination: dest.into(),
        source: typ.into(),
        type_: typ.into(),
        options: opts.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    };
    let ns = |t: &str| oci::LinuxNamespace {
        Type: t.into(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.0.2".into(),
        Process: MessageField::some(process),
        Root: MessageField::some(oci::Root {
            Path: format!("{SHARED}/{CONTAINER}/rootfs"),
            ..Default::default()
        }),
        Hostname: "e2e-pod".into(),
        Mounts: [
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", &["nosuid", "mode=755"]),
        ]
        .into_iter()
        .chain(extra)
        .collect(),
        Linux: MessageField::some(oci::Linux {
            CgroupsPath: format!("/kata-e2e/{CONTAINER}"),
            Namespaces: vec![ns("mount"), ns("ipc"), ns("uts")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exec(exec_id: &str, args: &[&str]) -> Vec<u8> {
    bytes(&agent::ExecProcessRequest {
        container_id: CONTAINER.into(),
        exec_id: exec_id.into(),
        process: MessageField::some(oci::Process {
            Args: args.iter().map(|a| a.to_string()).collect(),
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            User: MessageField::some(oci::User::default()),
            Capabilities: MessageField::some(oci::LinuxCapabilities::default()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn wait(exec_id: &str) -> Vec<u8> {
    bytes(&agent::WaitProcessRequest {
        container_id: CONTAINER.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    })
}

/// Index of the step after which the rootfs is written (CreateSandbox).
pub const ROOTFS_AFTER: usize = 0;
/// Index of the ReadStdout of `echo hello`.
pub const READ_ECHO: usize = 4;
/// Index of the denied exec.
pub const DENIED: usize = 6;
/// Index of the WaitProcess of the killed init process.
pub const WAIT_INIT: usize = 8;

/// The pod's life, in order.
pub fn pod_steps() -> Vec<Step> {
    vec![
        Step {
            name: "CreateSandbox",
            method: "CreateSandbox",
            payload: bytes(&agent::CreateSandboxRequest {
                hostname: "e2e-pod".into(),
                sandbox_id: "e2e-sandbox".into(),
                ..Default::default()
            }),
        },
        Step {
            name: "CreateContainer c1 (busybox, sleep 3600)",
            method: "CreateContainer",
            payload: bytes(&agent::CreateContainerRequest {
                container_id: CONTAINER.into(),
                exec_id: CONTAINER.into(),
                OCI: MessageField::some(spec()),
                ..Default::default()
            }),
        },
        Step {
            name: "StartContainer c1",
            method: "StartContainer",
            payload: bytes(&agent::StartContainerRequest {
                container_id: CONTAINER.into(),
                ..Default::default()
            }),
        },
        Step {
            name: "ExecProcess echo hello",
            method: "ExecProcess",
            payload: exec(ECHO, &["echo", "hello"]),
        },
        Step {
            name: "ReadStdout (echo)",
            method: "ReadStdout",
            payload: bytes(&agent::ReadStreamRequest {
                container_id: CONTAINER.into(),
                exec_id: ECHO.into(),
                len: 1024,
                ..Default::default()
            }),
        },
        Step {
            name: "WaitProcess (echo)",
            method: "WaitProcess",
            payload: wait(ECHO),
        },
        Step {
            name: "ExecProcess sh -c 'cat /etc/shadow'",
            method: "ExecProcess",
            payload: exec(SHADOW, &["sh", "-c", SHADOW_CMDLINE]),
        },
    ]
    .into_iter()
    .chain(teardown_steps())
    .collect()
}

/// `agent-warden initdata pack ARGS --write-image IMAGE`, as a tenant runs it: the disk
/// image is written and the digest the TEE would report (TDX MRCONFIGID, hex) returned.
pub fn pack_initdata_image(args: &[&str], image: &Path) -> String {
    let pack = Command::new(WARDEN)
        .args(["initdata", "pack"])
        .args(args)
        .arg("--write-image")
        .arg(image)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&pack.stdout).into_owned();
    assert!(
        pack.status.success(),
        "initdata pack: {printed}{}",
        String::from_utf8_lossy(&pack.stderr)
    );
    printed
        .lines()
        .find_map(|l| l.strip_prefix("tdx mrconfigid (hex, 48 bytes): "))
        .unwrap_or_else(|| panic!("no MRCONFIGID in: {printed}"))
        .to_string()
}

/// The end of a pod's life: kill the container's init, wait for it, remove the
/// container, destroy the sandbox.
pub fn teardown_steps() -> Vec<Step> {
    vec![
        Step {
            name: "SignalProcess c1 KILL",
            method: "SignalProcess",
            payload: bytes(&agent::SignalProcessRequest {
                container_id: CONTAINER.into(),
                exec_id: CONTAINER.into(),
                signal: libc::SIGKILL as u32,
                ..Default::default()
            }),
        },
        Step {
            name: "WaitProcess (init)",
            method: "WaitProcess",
            payload: wait(CONTAINER),
        },
        Step {
            name: "RemoveContainer c1",
            method: "RemoveContainer",
            payload: bytes(&agent::RemoveContainerRequest {
                container_id: CONTAINER.into(),
                ..Default::default()
            }),
        },
        Step {
            name: "DestroySandbox",
            method: "DestroySandbox",
            payload: bytes(&agent::DestroySandboxRequest::default()),
        },
    ]
}

/// The name kata-agent logs (`rpc call from shim to agent: "<name>"`) when `method` reaches
/// it; None for the stream methods, which it does not log.
pub fn logged_name(method: &str) -> Option<String> {
    if matches!(method, "ReadStdout" | "ReadStderr" | "WriteStdin") {
        return None;
    }
    let mut s = String::new();
    for (i, c) in method.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_lowercase());
    }
    Some(s)
}

/// Sends one step over `client` and returns the answer and the round-trip time.
pub async fn send(client: &ttrpc::r#async::Client, step: &Step) -> (Answer, Duration) {
    let req = ttrpc::proto::Request {
        timeout_nano: TIMEOUT.as_nanos() as i64,
        ..agent_warden::wire::envelope::request(
            "grpc.AgentService",
            step.method,
            step.payload.clone(),
        )
    };
    let t = Instant::now();
    let res = client.request(req).await;
    let elapsed = t.elapsed();
    let answer = match res {
        Ok(r) => Answer {
            code: 0,
            message: String::new(),
            payload: r.payload,
        },
        Err(ttrpc::Error::RpcStatus(s)) => Answer {
            code: s.code.value(),
            message: s.message,
            payload: Vec::new(),
        },
        Err(e) => Answer {
            code: -1,
            message: format!("transport: {e}"),
            payload: Vec::new(),
        },
    };
    (answer, elapsed)
}

/// Runs the pod's life over `client` against `agent` (directly or through agent-warden):
/// each step, the rootfs after CreateSandbox (not timed), then `after(i, answer)` (not
/// timed). Returns each step's answer and round-trip time.
pub async fn run_pod(
    kit: &Kit,
    agent: &KataAgent,
    client: &ttrpc::r#async::Client,
    after: impl FnMut(usize, &Step, &Answer),
) -> Result<Vec<(Answer, Duration)>, String> {
    run_steps(&pod_steps(), client, || agent.write_rootfs(kit), after).await
}

/// Sends `steps` over `client` in order; `rootfs()` runs once CreateSandbox (step
/// [`ROOTFS_AFTER`]) has succeeded, `after(i, step, answer)` after each step (neither timed).
pub async fn run_steps(
    steps: &[Step],
    client: &ttrpc::r#async::Client,
    mut rootfs: impl FnMut() -> Result<(), String>,
    mut after: impl FnMut(usize, &Step, &Answer),
) -> Result<Vec<(Answer, Duration)>, String> {
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (answer, took) = send(client, step).await;
        if i == ROOTFS_AFTER && answer.code == 0 {
            rootfs()?;
        }
        after(i, step, &answer);
        out.push((answer, took));
    }
    Ok(out)
}

/// The pod's life in a VM (tests/guest_vm.rs), as kata's runtime sends it.
pub mod guest {
    use super::*;

    /// Where kata-agent mounts the virtio-fs share (tag kataShared): kata's runtime asks
    /// for it in CreateSandbox, and puts each container's rootfs at `<share>/<id>/rootfs`.
    pub const SHARE_TAG: &str = "kataShared";
    /// The scratch disk's mount point in the guest (the `[storage]` of the initdata's
    /// agent-warden.toml), bound into the container at [`SCRATCH_IN_CONTAINER`].
    pub const SCRATCH_MOUNT: &str = "/mnt/scratch";
    pub const SCRATCH_IN_CONTAINER: &str = "/scratch";
    /// The bytes the container writes to the scratch disk; the host must not find them in
    /// the raw disk image.
    pub const MARKER: &str = "agent-warden-guest-marker-7f3a9c0e51d2";
    /// The exec id and command of the marker write.
    pub const MARKER_EXEC: &str = "marker-1";
    pub fn marker_cmd() -> String {
        format!("echo {MARKER} > {SCRATCH_IN_CONTAINER}/marker && sync && cat {SCRATCH_IN_CONTAINER}/marker")
    }
    /// The denied command: had it run, /leaked in the rootfs (the host's shared directory)
    /// would hold the rootfs's /etc/shadow.
    pub const LEAK_CMD: &str = "cat /etc/shadow > /leaked";
    pub const LEAKED: &str = "leaked";
    /// What the rootfs's /etc/shadow holds.
    pub const SHADOW_TEXT: &str = "root:guest-vm-secret:19000:0:99999:7:::\n";

    /// Index of the ReadStdout of `echo hello`.
    pub const READ_ECHO: usize = 4;
    /// Index of the denied exec.
    pub const DENIED: usize = 6;
    /// Index of the ReadStdout of the marker write.
    pub const READ_MARKER: usize = 8;
    /// Index of the WaitProcess of the killed init process.
    pub const WAIT_INIT: usize = 11;

    /// Writes container [`CONTAINER`]'s rootfs into the host's shared directory `share`,
    /// where kata's runtime puts it (`<share>/<id>/rootfs`): busybox, /etc/shadow, and the
    /// mount point of the scratch bind.
    pub fn write_rootfs(share: &Path, busybox: &Path) -> Result<(), String> {
        let rootfs = share.join(CONTAINER).join("rootfs");
        write_busybox_rootfs(&rootfs, busybox)?;
        let err = |what: &str, e: std::io::Error| format!("rootfs {what}: {e}");
        fs::write(rootfs.join("etc/shadow"), SHADOW_TEXT).map_err(|e| err("etc/shadow", e))?;
        fs::create_dir_all(rootfs.join(SCRATCH_IN_CONTAINER.trim_start_matches('/')))
            .map_err(|e| err("scratch", e))
    }

    /// The pod's life: as [`pod_steps`], with CreateSandbox asking for the virtio-fs share,
    /// the container's spec binding the scratch disk, a leak denied by the policy instead of
    /// the shadow exec, and an allowed exec writing the marker to the scratch disk.
    pub fn pod_steps() -> Vec<Step> {
        let share = agent::Storage {
            driver: "virtio-fs".into(),
            source: SHARE_TAG.into(),
            fstype: "virtiofs".into(),
            mount_point: SHARED.to_string() + "/",
            ..Default::default()
        };
        let scratch = oci::Mount {
            destination: SCRATCH_IN_CONTAINER.into(),
            source: SCRATCH_MOUNT.into(),
            type_: "bind".into(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        let read = |exec_id: &str| {
            bytes(&agent::ReadStreamRequest {
                container_id: CONTAINER.into(),
                exec_id: exec_id.into(),
                len: 1024,
                ..Default::default()
            })
        };
        vec![
            Step {
                name: "CreateSandbox (virtio-fs kataShared)",
                method: "CreateSandbox",
                payload: bytes(&agent::CreateSandboxRequest {
                    hostname: "guest-pod".into(),
                    sandbox_id: "guest-sandbox".into(),
                    storages: vec![share],
                    ..Default::default()
                }),
            },
            Step {
                name: "CreateContainer c1 (busybox from the share, /scratch bound)",
                method: "CreateContainer",
                payload: bytes(&agent::CreateContainerRequest {
                    container_id: CONTAINER.into(),
                    exec_id: CONTAINER.into(),
                    OCI: MessageField::some(container_spec(vec![scratch])),
                    ..Default::default()
                }),
            },
            Step {
                name: "StartContainer c1",
                method: "StartContainer",
                payload: bytes(&agent::StartContainerRequest {
                    container_id: CONTAINER.into(),
                    ..Default::default()
                }),
            },
            Step {
                name: "ExecProcess echo hello",
                method: "ExecProcess",
                payload: exec(ECHO, &["echo", "hello"]),
            },
            Step {
                name: "ReadStdout (echo)",
                method: "ReadStdout",
                payload: read(ECHO),
            },
            Step {
                name: "WaitProcess (echo)",
                method: "WaitProcess",
                payload: wait(ECHO),
            },
            Step {
                name: "ExecProcess sh -c 'cat /etc/shadow > /leaked'",
                method: "ExecProcess",
                payload: exec(SHADOW, &["sh", "-c", LEAK_CMD]),
            },
            Step {
                name: "ExecProcess sh -c 'echo MARKER > /scratch/marker ...'",
                method: "ExecProcess",
                payload: exec(MARKER_EXEC, &["sh", "-c", &marker_cmd()]),
            },
            Step {
                name: "ReadStdout (marker)",
                method: "ReadStdout",
                payload: read(MARKER_EXEC),
            },
            Step {
                name: "WaitProcess (marker)",
                method: "WaitProcess",
                payload: wait(MARKER_EXEC),
            },
        ]
        .into_iter()
        .chain(super::teardown_steps())
        .collect()
    }
}
