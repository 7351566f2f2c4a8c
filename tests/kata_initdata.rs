//! kata-agent itself (../shared/kata-agent/bin/kata-agent, built with kata's `init-data`
//! feature) reads the block-device image `initdata pack` writes: attached read-only as a
//! loop device and shown to it as /dev/vda in a private mount namespace, it finds the
//! device, accepts the document, logs the same digest agent-warden computes (base64, at
//! debug level) and writes the same TOML bytes to /run/confidential-containers/initdata.
//! Needs root, loop devices and ../shared; fails when CI=true and any is missing. ~1 s.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use agent_warden::attestation::Algorithm;
use agent_warden::policy::RegoVersion;
use base64::Engine as _;

const POLICY: &str = include_str!("../policies/coco-default.rego");
const CONFIG: &str = "[limits]\nmax_connections = 8\n";

/// The agent binary, or `None` (skip) outside CI when this machine cannot run it.
fn kata_agent() -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/kata-agent/bin/kata-agent");
    let missing = if !bin.exists() {
        Some(format!("{} is missing", bin.display()))
    } else if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        None
    };
    match missing {
        Some(why) if ci => panic!("CI=true but {why}"),
        Some(why) => {
            eprintln!("skipped: {why}");
            None
        }
        None => Some(bin),
    }
}

/// A read-only loop device over a file; detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn dev_numbers(&self) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.0).unwrap().rdev();
        (libc::major(rdev), libc::minor(rdev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// `unshare`, killed (with the whole pid namespace) on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs kata-agent in fresh mount and pid namespaces whose /dev holds only null and `vda`
/// (the loop device), with a private /run. kata-agent is not pid 1 there (as under
/// systemd). Returns the agent and its log lines (JSON, on stdout).
fn start_agent(bin: &Path, lo: &Loop) -> (Agent, mpsc::Receiver<String>) {
    let (major, minor) = lo.dev_numbers();
    let script = format!(
        "set -e; mount -t proc proc /proc; mount -t tmpfs -o mode=0755 tmpfs /dev; \
         mknod -m 666 /dev/null c 1 3; mknod -m 600 /dev/vda b {major} {minor}; \
         mount -t tmpfs -o mode=0755 tmpfs /run; \"$0\" & wait $!"
    );
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/sh",
            "-c",
            &script,
        ])
        .arg(bin)
        .env("KATA_AGENT_SERVER_ADDR", "unix:///run/kata-agent.sock")
        .env("KATA_AGENT_LOG_LEVEL", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let (tx, rx) = mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (Agent(child), rx)
}

/// The `msg` of the first log line whose message starts with `prefix` (30 s at most);
/// panics with everything logged so far otherwise.
fn wait_for_msg(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let msg = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(String::from));
        if let Some(m) = msg.filter(|m| m.starts_with(prefix)) {
            return m;
        }
        seen.push(line);
    }
    panic!(
        "kata-agent never logged {prefix:?}; it logged:\n{}",
        seen.join("\n")
    )
}

/// The host pid of the namespace's init (unshare's only child).
fn ns_init(agent: &Agent) -> u32 {
    let pid = agent.0.id();
    for _ in 0..100 {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(p) = children.split_whitespace().next() {
            return p.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("unshare has no child")
}

#[test]
fn kata_agent_reads_the_packed_image_and_computes_the_same_digest() {
    let Some(bin) = kata_agent() else { return };
    let dir = tempfile::tempdir().unwrap();
    for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
        let packed = agent_warden::tools::initdata::pack(
            alg,
            RegoVersion::V0,
            "coco-default.rego",
            &[("policy.rego", POLICY), ("agent-warden.toml", CONFIG)],
        )
        .unwrap();
        let img = dir.path().join(format!("{alg}.img"));
        std::fs::write(&img, &packed.image).unwrap();
        let lo = Loop::attach(&img);
        let (agent, log) = start_agent(&bin, &lo);
        assert_eq!(
            wait_for_msg(&log, "Found initdata device"),
            "Found initdata device /dev/vda"
        );
        assert_eq!(
            wait_for_msg(&log, "Initdata version"),
            "Initdata version: 0.1.0"
        );
        let digest = wait_for_msg(&log, "Initdata digest: ");
        let digest = base64::engine::general_purpose::STANDARD
            .decode(digest.trim_start_matches("Initdata digest: "))
            .unwrap();
        assert_eq!(digest, packed.document.digest(), "{alg}");
        let written = std::fs::read(format!(
            "/proc/{}/root/run/confidential-containers/initdata/initdata.toml",
            ns_init(&agent)
        ))
        .unwrap();
        assert_eq!(written, packed.toml.as_bytes(), "{alg}");
        drop(agent);
    }
}
