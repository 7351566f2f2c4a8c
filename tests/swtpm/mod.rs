//! A real software TPM (swtpm) for tests and benches: started on a unix socket in a temporary
//! directory, killed when dropped. tpm2-tools reach it through [`Swtpm::tcti`].

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm.
pub struct Swtpm {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

/// The tpm2-tools that read a PCR and make and check a quote ([`Swtpm::quote`]).
pub const QUOTE_TOOLS: &[&str] = &[
    "tpm2_pcrread",
    "tpm2_createek",
    "tpm2_createak",
    "tpm2_quote",
    "tpm2_checkquote",
    "tpm2_flushcontext",
];

/// The first `tool` on PATH (or in /usr/sbin, /sbin).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Why swtpm cannot be used here: the missing tools among `extra` and swtpm itself.
pub fn missing_tools(extra: &[&str]) -> Option<String> {
    let missing: Vec<&str> = std::iter::once("swtpm")
        .chain(extra.iter().copied())
        .filter(|t| find_tool(t).is_none())
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "not installed: {} (Debian packages swtpm swtpm-tools tpm2-tools)",
            missing.join(", ")
        ))
    }
}

/// Under CI=true a missing tool fails the test; otherwise it is skipped with the reason.
pub fn unavailable(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPING {test}: {reason}");
}

impl Swtpm {
    /// Starts a fresh TPM 2.0 (TPM2_Startup already done) on `<tempdir>/tpm.sock`, with
    /// its control channel on `tpm.sock.ctrl` (where tpm2-tss's swtpm TCTI looks for it).
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().expect("tempdir for swtpm");
        let socket = dir.path().join("tpm.sock");
        // swtpm notes every client disconnect on stderr; keep it in a file for failures.
        let log = std::fs::File::create(dir.path().join("swtpm.log")).expect("swtpm log file");
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.path().display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", socket.display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start swtpm");
        let mut tpm = Swtpm { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tpm.socket.exists() {
            if let Ok(Some(status)) = tpm.child.try_wait() {
                let log = std::fs::read_to_string(tpm.dir.path().join("swtpm.log"));
                panic!("swtpm exited before opening its socket: {status}: {log:?}");
            }
            assert!(
                Instant::now() < deadline,
                "swtpm did not open {} in 20 s",
                tpm.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tpm
    }

    /// The data socket (what `tpm:pcr=N,device=PATH` takes).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory (for tpm2-tools' output files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TPM2TOOLS_TCTI value for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:path={}", self.socket.display())
    }

    /// Runs a tpm2-tools command against this TPM in its directory; panics with its
    /// stderr if it fails.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new(tool)
            .args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Swtpm {
    /// A quote of sha256 PCR `pcr` with qualifying data `nonce` (hex) by a fresh
    /// attestation key under the endorsement key, its signature checked by
    /// `tpm2_checkquote`: the TPMS_ATTEST bytes (`quote.msg` in [`Swtpm::dir`]). swtpm has no
    /// resource manager: transient objects are flushed between the steps.
    pub fn quote(&self, pcr: u32, nonce: &str) -> Vec<u8> {
        let selection = format!("sha256:{pcr}");
        self.tool(
            "tpm2_createek",
            &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
        );
        self.tool("tpm2_flushcontext", &["-t"]);
        self.tool(
            "tpm2_createak",
            &[
                "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
                "ak.pub", "-f", "pem", "-n", "ak.name",
            ],
        );
        self.tool("tpm2_flushcontext", &["-t"]);
        self.tool("tpm2_flushcontext", &["-s"]);
        self.tool(
            "tpm2_quote",
            &[
                "-c",
                "ak.ctx",
                "-l",
                &selection,
                "-q",
                nonce,
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-o",
                "quote.pcrs",
                "-g",
                "sha256",
            ],
        );
        // The signature is tpm2_checkquote's job (and it agrees the PCR file matches the
        // digest).
        self.tool(
            "tpm2_checkquote",
            &[
                "-u",
                "ak.pub",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-f",
                "quote.pcrs",
                "-g",
                "sha256",
                "-q",
                nonce,
            ],
        );
        std::fs::read(self.dir().join("quote.msg")).expect("tpm2_quote wrote quote.msg")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
