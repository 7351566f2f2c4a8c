//! The guest units in deploy/: the agent-warden unit's ExecStart parses with the real CLI,
//! and, run as written (vsock swapped for a unix socket, /dev for a directory holding an
//! initdata image made by `initdata pack`, the TEE for a file of the expected SNP HOSTDATA),
//! it loads the policy, checks the evidence, binds, and only then notifies systemd
//! (READY=1); with the wrong evidence it never listens nor notifies. The kata-agent drop-in
//! points kata-agent at the address the unit forwards to and orders it after agent-warden.

mod common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_warden::attestation::{self, Algorithm, DigestForms};
use agent_warden::cli::{Cli, Command as Sub};
use agent_warden::policy::RegoVersion;
use clap::Parser;

const UNIT: &str = include_str!("../deploy/agent-warden.service");
const DROP_IN: &str = include_str!("../deploy/kata-agent.service.d/10-agent-warden.conf");
const POLICY: &str = include_str!("../policies/coco-default.rego");

/// `key=value` lines of one `[section]` of a unit file, in order (continuations and quoting
/// are not used in deploy/, and this helper refuses them).
fn section(unit: &str, name: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_string();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "continuation lines are not handled: {line}"
        );
        let (k, v) = line.split_once('=').expect("key=value");
        if current == name {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values<'a>(sec: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    sec.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The unit's ExecStart as argv, `${NAME}` expanded from its Environment= lines (each
/// expansion one word, as systemd does for the braced form).
fn exec_start(unit: &str) -> Vec<String> {
    let service = section(unit, "Service");
    let mut env = HashMap::new();
    for e in values(&service, "Environment") {
        let (k, v) = e.split_once('=').expect("NAME=value");
        env.insert(k.to_string(), v.to_string());
    }
    let exec = values(&service, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    assert!(
        !exec[0].contains(['"', '\'', '\\']),
        "quoting is not handled: {}",
        exec[0]
    );
    exec[0]
        .split_whitespace()
        .map(
            |w| match w.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                Some(name) => env
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("${{{name}}} is not set")),
                None => {
                    assert!(!w.contains('$'), "unexpanded variable in {w}");
                    w.to_string()
                }
            },
        )
        .collect()
}

/// The value after `flag` in `argv`, replaced by `new`; returns the old value.
fn swap(argv: &mut [String], flag: &str, new: &str) -> String {
    let i = argv
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} in ExecStart"));
    std::mem::replace(&mut argv[i + 1], new.to_string())
}

#[test]
fn exec_start_is_what_the_cli_and_the_drop_in_expect() {
    let argv = exec_start(UNIT);
    assert_eq!(argv[0], "/usr/bin/agent-warden");
    let cli = Cli::try_parse_from(&argv).unwrap();
    let Sub::Serve(s) = cli.command else {
        panic!("not serve: {argv:?}")
    };
    let (listen, p) = (&s.settings.listen, &s.settings.policy);
    assert_eq!(listen.as_deref(), Some("vsock://-1:1024"));
    assert_eq!(p.initdata_scan.as_deref(), Some(Path::new("/dev")));
    assert_eq!(p.require_evidence.as_deref(), Some("snp"));
    assert!(p.file.is_none() && p.initdata.is_none() && p.endpoints.is_none());
    // The flags resolve to settings serve accepts (addresses, evidence source).
    let (file, flags) = s.layers().unwrap();
    let settings =
        agent_warden::serve::ServeSettings::from_config(&file.overlay(flags).unwrap()).unwrap();
    assert_eq!(settings.listen.to_string(), "vsock://-1:1024");

    let service = section(UNIT, "Service");
    assert_eq!(values(&service, "Type"), ["notify"]);
    assert_eq!(values(&service, "Restart"), ["no"]);
    assert_eq!(values(&service, "FailureAction"), ["poweroff"]);
    assert_eq!(
        values(&section(UNIT, "Unit"), "Before"),
        ["kata-agent.service"]
    );
    assert_eq!(
        values(&section(UNIT, "Install"), "WantedBy"),
        ["kata-containers.target"]
    );

    // kata-agent listens exactly where agent-warden forwards, and starts after it.
    let agent = s.settings.agent.expect("--agent");
    let drop_service = section(DROP_IN, "Service");
    assert_eq!(
        values(&drop_service, "Environment"),
        [format!("KATA_AGENT_SERVER_ADDR={agent}")]
    );
    let unit = section(DROP_IN, "Unit");
    assert_eq!(values(&unit, "Requires"), ["agent-warden.service"]);
    assert_eq!(values(&unit, "After"), ["agent-warden.service"]);
}

struct Run {
    child: Child,
    notify: UnixDatagram,
    /// Stands in for kata-agent's socket, so a host connection is relayed at once.
    _agent: std::os::unix::net::UnixListener,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the unit's command line with the guest-only parts swapped for test ones.
fn start(dir: &Path, evidence: &Path) -> (Run, std::path::PathBuf) {
    let mut argv = exec_start(UNIT);
    let listen = dir.join("vsock-1024.sock");
    swap(
        &mut argv,
        "--listen",
        &format!("unix://{}", listen.display()),
    );
    let agent = dir.join("kata-agent.sock");
    let _ = std::fs::remove_file(&agent);
    let agent_listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    swap(&mut argv, "--agent", &format!("unix://{}", agent.display()));
    swap(
        &mut argv,
        "--initdata-scan",
        dir.join("dev").to_str().unwrap(),
    );
    swap(
        &mut argv,
        "--require-evidence",
        &format!("file:{}", evidence.display()),
    );
    let notify_path = dir.join("notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let child = common::warden_command(&argv[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (
        Run {
            child,
            notify,
            _agent: agent_listener,
        },
        listen,
    )
}

/// The next notification, or `None` once the process exited or 60 s passed.
fn next_notification(run: &mut Run) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match run.notify.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if run.child.try_wait().unwrap().is_some() {
                    return None;
                }
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    None
}

fn stderr_of(run: &mut Run) -> String {
    let mut s = String::new();
    if let Some(mut e) = run.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

#[test]
fn the_unit_command_serves_a_packed_initdata_and_notifies_only_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let packed = agent_warden::tools::initdata::pack(
        Algorithm::Sha384,
        RegoVersion::V0,
        "coco-default.rego",
        &[("policy.rego", POLICY)],
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("dev")).unwrap();
    std::fs::write(dir.path().join("dev/vda"), &packed.image).unwrap();
    let forms = DigestForms::new(&packed.document.digest());
    let hostdata = dir.path().join("hostdata");
    std::fs::write(&hostdata, attestation::to_hex(&forms.snp_hostdata)).unwrap();

    let (mut run, listen) = start(dir.path(), &hostdata);
    let first = next_notification(&mut run);
    assert_eq!(first.as_deref(), Some("READY=1"), "{}", stderr_of(&mut run));
    // READY=1 comes after the bind: the host can connect at once.
    UnixStream::connect(&listen).expect("listening when READY=1 arrives");
    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = i32::try_from(run.child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(next_notification(&mut run).as_deref(), Some("STOPPING=1"));
    let status = run.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", stderr_of(&mut run));
    drop(run);

    // The TEE reports another digest: refuse, never listen, never notify.
    let other = DigestForms::new(&Algorithm::Sha384.digest(b"another initdata"));
    std::fs::write(&hostdata, attestation::to_hex(&other.snp_hostdata)).unwrap();
    let _ = std::fs::remove_file(&listen);
    let (mut run, listen) = start(dir.path(), &hostdata);
    assert_eq!(next_notification(&mut run), None);
    let status = run.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let err = stderr_of(&mut run);
    assert!(
        err.contains("refusing to serve")
            && err.contains(&attestation::to_hex(&forms.snp_hostdata)),
        "{err}"
    );
    assert!(!listen.exists(), "nothing listened");
}
