//! lifecycle: one pod's whole life against the real kata-agent (../shared/kata-agent,
//! kata-containers 7c6ba40c), the sequence of tests/kata_agent_e2e.rs, timed per request
//! (round trip seen by the ttrpc client playing the host), three ways:
//!   direct        bin/kata-agent, no policy (the denied exec runs here)
//!   agent-warden  `agent-warden serve --policy testdata/kata-e2e-pod.rego --rego v1` in
//!                 front of bin/kata-agent (the release binary `cargo bench` builds)
//!   kata-policy   bin/kata-agent-policy, kata's in-process regorus policy, the same file
//!                 through KATA_AGENT_POLICY_FILE
//! Each round runs the three in turn (starting with another one each round), each with a
//! fresh kata-agent (DestroySandbox ends it);
//! the rootfs copy after CreateSandbox is not timed. Prints the median of each step and of
//! the per-run sums. LIFECYCLE_RUNS sets the number of rounds (default 11).
//!
//! Only under `cargo bench --bench lifecycle` (needs root, ../shared/kata-agent,
//! libseccomp2, busybox-static); `cargo test --all-targets` runs it without `--bench`, and
//! then it does nothing.

#[path = "../tests/kata/mod.rs"]
mod kata;

use std::time::Duration;

use kata::{KataAgent, Kit, Warden};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Warden,
    KataPolicy,
}

const MODES: [(Mode, &str); 3] = [
    (Mode::Direct, "direct"),
    (Mode::Warden, "agent-warden"),
    (Mode::KataPolicy, "kata-policy"),
];

/// One pod's life in `mode`: each step's answer and round-trip time.
async fn one_pod(kit: &Kit, mode: Mode) -> Result<Vec<(kata::Answer, Duration)>, String> {
    let policy = kata::repo_path(kata::POLICY);
    let policy_env = policy.display().to_string();
    let (binary, env): (_, Vec<(&str, &str)>) = match mode {
        Mode::KataPolicy => (
            &kit.agent_policy,
            vec![("KATA_AGENT_POLICY_FILE", policy_env.as_str())],
        ),
        _ => (&kit.agent, Vec::new()),
    };
    let mut agent = KataAgent::start(kit, binary, &env)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut warden = None;
    let sock = match mode {
        Mode::Warden => {
            let sock = dir.path().join("warden.sock");
            let args = vec![
                "--listen".to_string(),
                format!("unix://{}", sock.display()),
                "--agent".into(),
                format!("unix://{}", agent.socket().display()),
                "--policy".into(),
                policy.display().to_string(),
                "--rego".into(),
                "v1".into(),
            ];
            warden = Some(Warden::start(&args, &sock, &dir.path().join("warden.log"))?);
            sock
        }
        _ => agent.socket(),
    };
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .map_err(|e| e.to_string())?;
    let out = kata::run_pod(kit, &agent, &client, |_, _, _| {}).await;
    drop(client);
    if let Some(mut w) = warden {
        w.stop();
    }
    if !agent.exited(Duration::from_secs(10)) {
        return Err("kata-agent did not exit after DestroySandbox".into());
    }
    let out = out?;
    if let Some((i, (a, _))) = out
        .iter()
        .enumerate()
        .find(|(i, (a, _))| (a.code != 0) != (*i == kata::DENIED && mode != Mode::Direct))
    {
        return Err(format!(
            "step {i} unexpected answer {a:?}\nkata-agent log:\n{}",
            agent.log()
        ));
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("lifecycle: runs only under `cargo bench --bench lifecycle`");
        return;
    }
    let kit = match Kit::locate() {
        Ok(k) => k,
        Err(reason) => {
            println!("lifecycle: skipped: {reason}");
            return;
        }
    };
    let rounds: usize = std::env::var("LIFECYCLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let steps = kata::pod_steps();
    // times[mode][run][step] in ms
    let mut times: Vec<Vec<Vec<f64>>> = vec![Vec::new(); MODES.len()];
    let mut denials: Vec<String> = vec![String::new(); MODES.len()];
    for round in 0..rounds {
        // Each round starts with another mode, so that none always follows the same one.
        for m in (0..MODES.len()).map(|k| (k + round) % MODES.len()) {
            let (mode, name) = &MODES[m];
            match one_pod(&kit, *mode).await {
                Ok(out) => {
                    denials[m] = out[kata::DENIED].0.describe("ExecProcess");
                    times[m].push(out.iter().map(|(_, d)| ms(*d)).collect());
                }
                Err(e) => {
                    eprintln!("lifecycle: round {round}, {name}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "\nlifecycle: {rounds} runs each, median round trip in ms (the ttrpc client's view)\n"
    );
    print!("| step |");
    for (_, name) in MODES {
        print!(" {name} |");
    }
    println!("\n|---|---:|---:|---:|");
    let col = |m: usize, f: &dyn Fn(&[f64]) -> f64| median(times[m].iter().map(|r| f(r)).collect());
    for (i, step) in steps.iter().enumerate() {
        print!("| {} |", step.name);
        for m in 0..MODES.len() {
            print!(" {:.2} |", col(m, &|r| r[i]));
        }
        println!();
    }
    print!("| **sum of the steps** |");
    for m in 0..MODES.len() {
        print!(" **{:.1}** |", col(m, &|r| r.iter().sum()));
    }
    print!("\n| (min–max of the sums) |");
    for run in &times {
        let sums: Vec<f64> = run.iter().map(|r| r.iter().sum()).collect();
        let (lo, hi) = sums
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        print!(" {lo:.1}–{hi:.1} |");
    }
    print!("\n| sum without WaitProcess (init) |");
    for m in 0..MODES.len() {
        print!(
            " {:.1} |",
            col(m, &|r| r.iter().sum::<f64>() - r[kata::WAIT_INIT])
        );
    }
    print!("\n| sum without WaitProcess (init) and the shadow exec |");
    for m in 0..MODES.len() {
        print!(
            " {:.1} |",
            col(m, &|r| r.iter().sum::<f64>()
                - r[kata::WAIT_INIT]
                - r[kata::DENIED])
        );
    }
    println!("\n\nthe shadow exec (step {}):", kata::DENIED + 1);
    for (m, (_, name)) in MODES.iter().enumerate() {
        println!("  {name}: {}", denials[m]);
    }
}
