//! `agent-warden initdata pack`: what it packs reads back through agent-warden's own
//! initdata loader (file, image, annotation) to the same policy, configuration and digest,
//! for every algorithm; its error cases; and `--pod` on real manifest shapes.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use agent_warden::attestation::{self, Algorithm, MeasuredDocument};
use agent_warden::policy::sources::{self, PolicySources};
use agent_warden::policy::{LoadOptions, RegoVersion};
use agent_warden::tools::initdata::pack;

const POLICY: &str = "package agent_policy\n\ndefault CreateContainerRequest := true\ndefault ExecProcessRequest := false\n";
const CONFIG: &str = "listen = \"vsock://-1:1024\"\n[policy]\nset_policy = \"forbid\"\n";
const ALGORITHMS: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512];

use common::{run_warden as run, stderr as stderr_of};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn from_annotation(value: &str) -> Vec<u8> {
    use base64::Engine as _;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(value)
        .expect("standard base64");
    let mut toml = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut toml)
        .expect("one gzip member");
    toml
}

#[test]
fn pack_round_trips_through_the_loader_for_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ALGORITHMS {
        for config in [None, Some(CONFIG)] {
            let mut entries = vec![("policy.rego", POLICY)];
            if let Some(c) = config {
                entries.push(("agent-warden.toml", c));
            }
            let p = pack(alg, RegoVersion::V0, "p.rego", &entries).unwrap();
            let digest = alg.digest(p.toml.as_bytes());
            assert_eq!(digest.len(), alg.digest_len());
            assert_eq!(p.document.digest(), digest, "{alg}");

            // The image, read as the guest reads its disk.
            let img = dir.path().join(format!("{alg}-{}.img", config.is_some()));
            std::fs::write(&img, &p.image).unwrap();
            assert_eq!(p.image.len() % 512, 0);
            assert_eq!(&p.image[..8], b"initdata");
            let declared = u64::from_le_bytes(p.image[8..16].try_into().unwrap());
            assert!(declared > 0 && 16 + declared <= p.image.len() as u64);
            let init = attestation::load_initdata(&img).unwrap();
            assert_eq!(init.raw, p.toml.as_bytes());
            assert_eq!(init.algorithm, alg);
            assert_eq!(init.policy.as_deref(), Some(POLICY));
            assert_eq!(init.warden_config.as_deref(), config);
            assert_eq!(init.digest(), digest);

            // The annotation, decoded as kata's runtime does (base64, then gunzip).
            let toml = from_annotation(&p.annotation);
            assert_eq!(toml, p.toml.as_bytes());
            assert_eq!(attestation::parse_initdata(&toml).unwrap().digest(), digest);

            // What serve would enforce and expect the TEE to report.
            let loaded = sources::load(
                &PolicySources {
                    initdata: Some(img.clone()),
                    ..Default::default()
                },
                LoadOptions::default(),
            )
            .unwrap();
            assert_eq!(loaded.policy.text(), POLICY);
            assert_eq!(loaded.expected_digest(), digest);
            assert_eq!(loaded.initdata_config.as_deref(), config);

            // `policy hash` on the image agrees.
            match attestation::load_measured_document(&img).unwrap() {
                MeasuredDocument::Initdata(i) => assert_eq!(i.digest(), digest),
                other => panic!("not initdata: {other:?}"),
            }
        }
    }
}

#[test]
fn texts_toml_cannot_quote_literally_still_round_trip() {
    let awkward = "package agent_policy\n# a ''' in a comment, a \"quote\" and a \\ backslash\ndefault X := true\n# ends with a quote'";
    let with_cr = "package agent_policy\r\ndefault X := true\r\n# lone\rCR\n";
    for text in [awkward, with_cr] {
        let p = pack(
            Algorithm::Sha384,
            RegoVersion::V0,
            "p.rego",
            &[("policy.rego", text)],
        )
        .unwrap();
        let i = attestation::parse_initdata(p.toml.as_bytes()).unwrap();
        assert_eq!(i.policy.as_deref(), Some(text));
    }
}

#[test]
fn cli_writes_toml_image_and_prints_annotation_and_digests() {
    let dir = tempfile::tempdir().unwrap();
    let pol = write(dir.path(), "p.rego", POLICY);
    let cfg = write(dir.path(), "agent-warden.toml", CONFIG);
    let aa = write(dir.path(), "aa.toml", "[token_configs]\n");
    let toml = dir.path().join("initdata.toml");
    let img = dir.path().join("initdata.img");
    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--entry",
        &format!("aa.toml={}", aa.display()),
        "--algorithm",
        "sha384",
        "--write-toml",
        toml.to_str().unwrap(),
        "--write-image",
        img.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&toml).unwrap();
    let digest = Algorithm::Sha384.digest(&written);
    let forms = attestation::DigestForms::new(&digest);
    let value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("annotation value: "))
        .expect("annotation value line");
    assert_eq!(from_annotation(value), written);
    assert!(stdout.contains("annotation: io.katacontainers.config.hypervisor.cc_init_data\n"));
    assert!(stdout.contains(&format!("digest (hex): {}\n", forms.hex)));
    assert!(stdout.contains(&format!(
        "snp hostdata (hex, 32 bytes): {}\n",
        attestation::to_hex(&forms.snp_hostdata)
    )));
    assert!(stdout.contains(&format!(
        "tdx mrconfigid (hex, 48 bytes): {}\n",
        attestation::to_hex(&forms.tdx_mrconfigid)
    )));
    let init = attestation::load_initdata(&img).unwrap();
    assert_eq!(init.raw, written);
    assert_eq!(
        init.data.get("aa.toml").and_then(|v| v.as_str()),
        Some("[token_configs]\n")
    );
    // `policy hash` prints the same report for the image.
    let hash = run(&["policy", "hash", "--hex", img.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&hash.stdout).trim(), forms.hex);

    let only = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--annotation-only",
    ]);
    assert!(only.status.success());
    let only = String::from_utf8_lossy(&only.stdout);
    assert_eq!(only.lines().count(), 1);
    assert_eq!(
        attestation::parse_initdata(&from_annotation(only.trim()))
            .unwrap()
            .policy
            .as_deref(),
        Some(POLICY)
    );
}

#[test]
fn cli_errors_are_clear_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pol = write(dir.path(), "p.rego", POLICY);
    let toml = dir.path().join("out.toml");
    let toml_arg = toml.to_str().unwrap();

    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--algorithm",
        "md5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("unsupported algorithm \"md5\""),
        "{}",
        stderr_of(&out)
    );

    let bad = write(dir.path(), "bad.rego", "package agent_policy\nallow if {\n");
    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        bad.to_str().unwrap(),
        "--write-toml",
        toml_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr_of(&out);
    assert!(
        e.contains("bad.rego") && e.contains("failed to parse"),
        "{e}"
    );
    assert!(!toml.exists());

    let cfg = write(
        dir.path(),
        "c.toml",
        "[policy]\nfile = \"/etc/other.rego\"\n",
    );
    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--write-toml",
        toml_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("policy.file"),
        "{}",
        stderr_of(&out)
    );
    assert!(!toml.exists());

    let svc = write(
        dir.path(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n",
    );
    let before = std::fs::read(&svc).unwrap();
    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--pod",
        svc.to_str().unwrap(),
        "--write-toml",
        toml_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr_of(&out);
    assert!(
        e.contains("svc.yaml") && e.contains("no pod spec found") && e.contains("Service"),
        "{e}"
    );
    assert_eq!(std::fs::read(&svc).unwrap(), before);
    assert!(!toml.exists());
}

#[test]
fn cli_annotates_a_deployment_in_place_and_to_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let pol = write(dir.path(), "p.rego", POLICY);
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      runtimeClassName: kata-qemu-snp\n      containers:\n      - name: web\n        image: nginx\n";
    let dep = write(dir.path(), "dep.yaml", yaml);
    let copy = dir.path().join("copy.yaml");
    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--pod",
        dep.to_str().unwrap(),
        "--pod-out",
        copy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read_to_string(&dep).unwrap(),
        yaml,
        "--pod-out leaves --pod alone"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(annotated: Deployment/web)"), "{stdout}");
    let value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("annotation value: "))
        .unwrap()
        .to_string();
    let doc: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(&copy).unwrap()).unwrap();
    let ann = &doc["spec"]["template"]["metadata"]["annotations"]
        ["io.katacontainers.config.hypervisor.cc_init_data"];
    assert_eq!(ann.as_str(), Some(value.as_str()));
    assert_eq!(doc["spec"]["replicas"].as_u64(), Some(2));

    let out = run(&[
        "initdata",
        "pack",
        "--policy",
        pol.to_str().unwrap(),
        "--pod",
        dep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read_to_string(&dep).unwrap(),
        std::fs::read_to_string(&copy).unwrap()
    );
}
