//! `agent-warden serve` as a whole: the built binary refusing to start (bad policy,
//! evidence mismatch, bad endpoint list, forbidden initdata configuration, missing
//! scratch device) and stopping cleanly on SIGTERM; and, in process, the order of
//! storage setup, listening, the DestroySandbox teardown and the shutdown teardown,
//! with storage test doubles and a real ttrpc host and agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_warden::config::Config;
use agent_warden::serve::{self, StorageOp};
use agent_warden::storage::{Operation, Report, StorageConfig, StorageError};
use agent_warden::wire::protocols::{agent, agent_ttrpc, health_ttrpc};
use common::{ctx, status, RecordingAgent, ROOT};

fn warden(args: &[&str]) -> Command {
    let mut c = common::warden_command(&["serve"]);
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `serve` expecting it to refuse to start: returns stderr.
fn refused(args: &[&str], sock: &Path) -> String {
    // A start-up that should fail but serves instead must fail the test, not hang it.
    let mut child = warden(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent-warden");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "agent-warden {args:?} still running after 30 s: expected it to refuse to start"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o: Output = child
        .wait_with_output()
        .expect("collect agent-warden's output");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr:\n{err}");
    assert!(
        !sock.exists(),
        "the listener must never open when start-up fails"
    );
    err
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("agent-warden exited early with {st}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault CreateContainerRequest := true\n'''\n";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
    fn sock(&self) -> (PathBuf, String, String) {
        let s = self.path("warden.sock");
        let listen = format!("unix://{}", s.display());
        let agent = format!("unix://{}", self.path("agent.sock").display());
        (s, listen, agent)
    }
}

#[test]
fn kata_picks_the_rego_version_and_rego_overrides_it() {
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    let v0 = d.write(
        "v0.rego",
        "package agent_policy\nCreateContainerRequest { true }\n",
    );
    let base = ["--listen", &listen, "--agent", &agent];
    let serve = |extra: &[&str]| refused(&[&base[..], extra].concat(), &sock);
    // Default: today's kata-agent, Rego v1; the error names the other version.
    let err = serve(&["--policy", &v0]);
    assert!(
        err.contains("failed to parse as Rego v1") && err.contains("it does parse as Rego v0"),
        "{err}"
    );
    // The 2024 kata-agents parsed Rego v0: the policy loads, and start-up goes on to
    // the next step (here an evidence file that does not exist).
    let missing = format!("file:{}", d.path("no-evidence").display());
    let err = serve(&[
        "--kata",
        "2024",
        "--policy",
        &v0,
        "--require-evidence",
        &missing,
    ]);
    assert!(
        err.contains("refusing to serve") && !err.contains("failed to parse"),
        "{err}"
    );
    // --rego overrides --kata.
    let err = serve(&["--kata", "2024", "--rego", "v1", "--policy", &v0]);
    assert!(err.contains("failed to parse as Rego v1"), "{err}");
}

#[test]
fn a_broken_policy_stops_the_process_before_listening() {
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    let pol = d.write("bad.rego", "package agent_policy\nallow { \n");
    let err = refused(
        &["--listen", &listen, "--agent", &agent, "--policy", &pol],
        &sock,
    );
    assert!(err.contains("bad.rego"), "{err}");
    let err = refused(
        &[
            "--listen",
            &listen,
            "--agent",
            &agent,
            "--policy",
            &d.path("absent.rego").display().to_string(),
        ],
        &sock,
    );
    assert!(
        err.contains("cannot read policy") && err.contains("absent.rego"),
        "{err}"
    );
}

#[test]
fn evidence_mismatch_refuses_to_serve_and_names_both_digests() {
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    let init = d.write("initdata.toml", INITDATA);
    let good = agent_warden::attestation::to_hex(&agent_warden::attestation::digest(
        agent_warden::attestation::Algorithm::Sha256,
        INITDATA.as_bytes(),
    ));
    let wrong = "ab".repeat(32);
    let ev = d.write("hostdata.hex", &wrong);
    let err = refused(
        &[
            "--listen",
            &listen,
            "--agent",
            &agent,
            "--initdata",
            &init,
            "--require-evidence",
            &format!("file:{ev}"),
        ],
        &sock,
    );
    assert!(err.contains("refusing to serve"), "{err}");
    assert!(err.contains(&good), "expected digest missing: {err}");
    assert!(err.contains(&wrong), "reported digest missing: {err}");

    // Unreadable evidence is a refusal too.
    let err = refused(
        &[
            "--listen",
            &listen,
            "--agent",
            &agent,
            "--initdata",
            &init,
            "--require-evidence",
            &format!("file:{}", d.path("missing").display()),
        ],
        &sock,
    );
    assert!(
        err.contains("refusing to serve") && err.contains("missing"),
        "{err}"
    );

    // The matching value lets it serve; SIGTERM then stops it with exit 0.
    let ev = d.write("hostdata-ok.hex", &good);
    let mut child = warden(&[
        "--listen",
        &listen,
        "--agent",
        &agent,
        "--initdata",
        &init,
        "--require-evidence",
        &format!("file:{ev}"),
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(&sock, &mut child);
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("evidence matches"), "{err}");
    assert!(err.contains("shutting down"), "{err}");
}

#[test]
fn bad_endpoint_list_and_bad_initdata_configuration_refuse_to_start() {
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    let list = d.write(
        "endpoints.toml",
        "[endpoints]\nallowed = [\"CreateContainer\"]\n",
    );
    let err = refused(
        &["--listen", &listen, "--agent", &agent, "--endpoints", &list],
        &sock,
    );
    assert!(
        err.contains("\"CreateContainer\"") && err.contains("CreateContainerRequest"),
        "{err}"
    );

    let with_cfg = format!(
        "{INITDATA}\"agent-warden.toml\" = '''\n[policy]\nfile = \"/etc/other.rego\"\n'''\n"
    );
    let init = d.write("initdata.toml", &with_cfg);
    let err = refused(
        &["--listen", &listen, "--agent", &agent, "--initdata", &init],
        &sock,
    );
    assert!(err.contains("policy.file"), "{err}");

    let cfg = d.write("aw.toml", "[policy]\nrequire_evidence = \"tpm\"\n");
    let err = refused(
        &["--listen", &listen, "--agent", &agent, "--config", &cfg],
        &sock,
    );
    assert!(err.contains("require_evidence"), "{err}");
}

#[test]
fn a_missing_scratch_device_refuses_to_start() {
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    // The state directory must be memory-backed: a fresh one under /dev/shm.
    let state = tempfile::tempdir_in("/dev/shm").unwrap();
    let cfg = d.write(
        "aw.toml",
        &format!(
            "[storage]\nstate_dir = \"{}\"\nmount_point = \"{}\"\n",
            state.path().join("s").display(),
            d.path("mnt").display()
        ),
    );
    let dev = d.path("no-such-disk").display().to_string();
    let err = refused(
        &[
            "--listen",
            &listen,
            "--agent",
            &agent,
            "--config",
            &cfg,
            "--storage-device",
            &dev,
        ],
        &sock,
    );
    assert!(err.contains("scratch disk setup failed"), "{err}");
    assert!(err.contains("no-such-disk"), "{err}");
}

// ---------------------------------------------------------------- in process

/// What the storage doubles saw, in order, with whether the listener existed then.
#[derive(Default)]
struct Calls(Mutex<Vec<(&'static str, bool)>>);

impl Calls {
    fn op(self: &Arc<Self>, name: &'static str, sock: PathBuf, fail: bool) -> StorageOp {
        let me = self.clone();
        Arc::new(move |_: &StorageConfig| {
            me.0.lock().unwrap().push((name, sock.exists()));
            if fail {
                Err(StorageError::Config(format!("{name} double fails")))
            } else {
                Ok(Report::new(if name == "setup" {
                    Operation::Setup
                } else {
                    Operation::Teardown
                }))
            }
        })
    }
    fn seen(&self) -> Vec<(&'static str, bool)> {
        self.0.lock().unwrap().clone()
    }
}

async fn start_agent(sock: &Path) -> (ttrpc::r#async::Server, Arc<RecordingAgent>) {
    let agent = Arc::new(RecordingAgent::default());
    let mut services = agent_ttrpc::create_agent_service(agent.clone());
    services.extend(health_ttrpc::create_health(agent.clone()));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", sock.display()))
        .unwrap()
        .register_service(services);
    server.start().await.unwrap();
    (server, agent)
}

/// `serve_with` running with storage doubles until `stop_tx` is sent.
struct Serving {
    calls: Arc<Calls>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts `serve_with(file, flags)` and waits until it listens on `sock`.
async fn serving(file: Config, flags: Config, sock: &Path) -> Serving {
    let calls = Arc::new(Calls::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve_with(
        file,
        flags,
        calls.op("setup", sock.to_path_buf(), false),
        calls.op("teardown", sock.to_path_buf(), false),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Serving {
        calls,
        stop_tx,
        task,
    }
}

async fn client(sock: &Path) -> agent_ttrpc::AgentServiceClient {
    agent_ttrpc::AgentServiceClient::new(
        ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
            .await
            .unwrap(),
    )
}

fn layers(d: &Dir, extra: &str) -> (Config, Config) {
    let (_, listen, agent) = d.sock();
    let file = Config::parse(
        &format!(
            "listen = \"{listen}\"\nagent = \"{agent}\"\n[policy]\nfile = \"{ROOT}/policies/allow-all.rego\"\n{extra}"
        ),
        "test",
    )
    .unwrap();
    (file, Config::default())
}

#[tokio::test]
async fn storage_is_set_up_before_listening_and_torn_down_after_destroy_and_at_shutdown() {
    let d = Dir::new();
    let (sock, _, _) = d.sock();
    let (mut agent_server, agent) = start_agent(&d.path("agent.sock")).await;
    let (file, flags) = layers(&d, "[storage]\ndevice = \"/dev/vdb\"\n");
    let Serving {
        calls,
        stop_tx,
        task,
    } = serving(file, flags, &sock).await;
    assert_eq!(
        calls.seen(),
        vec![("setup", false)],
        "setup before listening"
    );

    let c = client(&sock).await;
    c.destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.seen().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no teardown after DestroySandbox"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.seen()[1].0, "teardown");
    assert!(agent.calls().contains(&"DestroySandbox".to_string()));
    drop(c);

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        calls.seen().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec!["setup", "teardown", "teardown"],
        "teardown again at shutdown (idempotent)"
    );
    let _ = agent_server.shutdown().await;
}

#[tokio::test]
async fn a_denied_destroy_sandbox_does_not_tear_down() {
    // A DestroySandbox denied by policy never reaches the agent: the hook must not run.
    let d = Dir::new();
    let (sock, _, agent_addr) = d.sock();
    let (mut agent_server, agent) = start_agent(&d.path("agent.sock")).await;
    let pol = d.write(
        "p.rego",
        "package agent_policy\ndefault DestroySandboxRequest := false\n",
    );
    let file = Config::parse(
        &format!(
            "listen = \"unix://{}\"\nagent = \"{agent_addr}\"\n[policy]\nfile = \"{pol}\"\n[storage]\ndevice = \"/dev/vdb\"\nsetup_at = \"on-demand\"\n",
            sock.display()
        ),
        "test",
    )
    .unwrap();
    let Serving {
        calls,
        stop_tx,
        task,
    } = serving(file, Config::default(), &sock).await;
    let c = client(&sock).await;
    let (code, _) = status(
        c.destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
            .await,
    );
    assert_eq!(code, 7);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        calls.seen().is_empty(),
        "on-demand: no setup; denied: no teardown"
    );
    assert!(agent.calls().is_empty());
    drop(c);
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        calls.seen().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec!["teardown"],
        "teardown at shutdown only"
    );
    let _ = agent_server.shutdown().await;
}

#[tokio::test]
async fn failed_setup_never_listens_and_failed_bind_tears_down() {
    let d = Dir::new();
    let (sock, _, _) = d.sock();
    let (file, flags) = layers(&d, "[storage]\ndevice = \"/dev/vdb\"\n");
    let calls = Arc::new(Calls::default());
    let e = serve::serve_with(
        file,
        flags,
        calls.op("setup", sock.clone(), true),
        calls.op("teardown", sock.clone(), false),
        std::future::ready(()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("scratch disk setup failed: ") && e.contains("setup double fails"),
        "{e}"
    );
    assert_eq!(calls.seen(), vec![("setup", false)]);
    assert!(!sock.exists());

    // Listening on a path whose directory does not exist fails after setup: the disk
    // set up for it is torn down again.
    let bad = Config::parse(
        &format!(
            "listen = \"unix://{}/no/such/dir/w.sock\"\n",
            d.path("x").display()
        ),
        "flags",
    )
    .unwrap();
    let (file, _) = layers(&d, "[storage]\ndevice = \"/dev/vdb\"\n");
    let calls = Arc::new(Calls::default());
    let e = serve::serve_with(
        file,
        bad,
        calls.op("setup", sock.clone(), false),
        calls.op("teardown", sock.clone(), false),
        std::future::ready(()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot listen on"), "{e}");
    assert_eq!(
        calls.seen().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec!["setup", "teardown"]
    );
}

#[tokio::test]
async fn initdata_policy_forbids_set_policy_unless_configured_and_carries_configuration() {
    let d = Dir::new();
    // The initdata's own agent-warden.toml sets listen (flags still win) and capture.
    let capture = d.path("capture.jsonl");
    let text = format!(
        "{INITDATA}\"agent-warden.toml\" = '''\nlisten = \"unix:///nonexistent/ignored.sock\"\n[audit]\ncapture = \"{}\"\n'''\n",
        capture.display()
    );
    let init = d.write("initdata.toml", &text);
    let (_, listen, _) = d.sock();
    let flags = Config::parse(
        &format!("listen = \"{listen}\"\n[policy]\ninitdata = \"{init}\"\n"),
        "flags",
    )
    .unwrap();
    let p = serve::prepare(Config::default(), flags).unwrap();
    assert_eq!(
        p.settings.listen.to_string(),
        listen,
        "flags win over initdata"
    );
    assert_eq!(p.settings.capture.as_ref().map(|c| &c.0), Some(&capture));
    let guard = serve::build_guard(&p.settings, p.loaded, None).unwrap();
    let h = common::Harness::start_guard(guard).await;
    let c = h.agent_client().await;
    let (code, msg) = status(
        c.set_policy(
            ctx(),
            &agent::SetPolicyRequest {
                policy: "package agent_policy\ndefault CreateContainerRequest := false\n".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, 7, "{msg}");
    assert!(h.agent.calls().is_empty());
    assert!(capture.exists(), "capture from the initdata configuration");

    // set_policy = "policy": the initdata policy decides (it has no SetPolicyRequest
    // rule, so it denies with the policy's message rather than the forbidden one).
    let flags = Config::parse(
        &format!("[policy]\ninitdata = \"{init}\"\nset_policy = \"policy\"\n"),
        "flags",
    )
    .unwrap();
    let p = serve::prepare(Config::default(), flags).unwrap();
    let guard = serve::build_guard(&p.settings, p.loaded, None).unwrap();
    let h2 = common::Harness::start_guard(guard).await;
    let (code2, msg2) = status(
        h2.agent_client()
            .await
            .set_policy(ctx(), &agent::SetPolicyRequest::new())
            .await,
    );
    assert_eq!(code2, 7);
    assert_ne!(msg, msg2, "forbidden and policy-denied answers differ");
    h.stop().await;
    h2.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_slots_are_reused() {
    let d = Dir::new();
    let (sock, _, _) = d.sock();
    let (mut agent_server, agent) = start_agent(&d.path("agent.sock")).await;
    let (file, _) = layers(&d, "");
    let flags = Config::parse("[limits]\nmax_connections = 2\n", "flags").unwrap();
    let Serving { stop_tx, task, .. } = serving(file, flags, &sock).await;
    let connect = || client(&sock);
    let short_ctx = || ttrpc::context::with_timeout(Duration::from_secs(2).as_nanos() as i64);
    // Two connections, each holding a long poll.
    let (a, b) = (connect().await, connect().await);
    // Each task owns its client: the connection closes when its poll completes.
    let mut pa = tokio::spawn(async move {
        a.wait_process(ctx(), &agent::WaitProcessRequest::new())
            .await
    });
    let mut pb = tokio::spawn(async move {
        b.wait_process(ctx(), &agent::WaitProcessRequest::new())
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.calls().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "long polls never reached the agent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A third is closed without reaching the agent.
    let c = connect().await;
    let r = c
        .get_guest_details(short_ctx(), &agent::GuestDetailsRequest::new())
        .await;
    assert!(r.is_err(), "third connection served: {r:?}");
    assert_eq!(agent.calls().len(), 2);
    drop(c);
    // Finishing one connection frees its slot.
    agent.release(1);
    let (first, other) = tokio::select! { r = &mut pa => (r, pb), r = &mut pb => (r, pa) };
    first.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = connect().await;
        if c.get_guest_details(short_ctx(), &agent::GuestDetailsRequest::new())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.release(1);
    other.await.unwrap().unwrap();
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    let _ = agent_server.shutdown().await;
}

#[test]
fn sigterm_during_start_up_is_never_lost() {
    // A SIGTERM at any moment of start-up ends the process (before the handlers exist
    // it dies of the signal; after, it exits 0) instead of leaving it serving.
    let d = Dir::new();
    let (sock, listen, agent) = d.sock();
    for delay_ms in [0u64, 2, 5, 10, 15, 20, 30, 40, 60, 100] {
        let mut child = warden(&["--listen", &listen, "--agent", &agent])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("SIGTERM after {delay_ms} ms was lost: still running after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.code() == Some(0) || status.code().is_none(),
            "after {delay_ms} ms: {status}"
        );
        let _ = std::fs::remove_file(&sock);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_lets_in_flight_finish_and_drops_stragglers_after_the_deadline() {
    let d = Dir::new();
    let (sock, _, _) = d.sock();
    let (mut agent_server, agent) = start_agent(&d.path("agent.sock")).await;
    let (file, flags) = layers(&d, "[storage]\ndevice = \"/dev/vdb\"\n");
    let Serving {
        calls,
        stop_tx,
        task,
    } = serving(file, flags, &sock).await;
    let connect = || client(&sock);
    // Two long polls in flight, on two connections.
    let (a, b) = (connect().await, connect().await);
    let pa = tokio::spawn(async move {
        a.wait_process(ctx(), &agent::WaitProcessRequest::new())
            .await
    });
    let pb = tokio::spawn(async move {
        b.wait_process(ctx(), &agent::WaitProcessRequest::new())
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.calls().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "long polls never reached the agent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connection is accepted once shutdown began.
    assert!(
        tokio::net::UnixStream::connect(&sock).await.is_err(),
        "still accepting after shutdown"
    );
    // One in-flight request finishes normally during the drain.
    agent.release(1);
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! { r = pa => r, r = pb => r }
    })
    .await
    .expect("the released long poll finished");
    first.unwrap().unwrap();
    // The other is never answered: the drain deadline ends it, then storage is torn down.
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("serve returned after the drain deadline")
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= serve::DRAIN - Duration::from_millis(500),
        "returned after {took:?}, before the drain deadline"
    );
    assert_eq!(
        calls.seen().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec!["setup", "teardown"]
    );
    agent.release(1);
    let _ = agent_server.shutdown().await;
}
