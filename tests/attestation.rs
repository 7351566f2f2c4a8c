//! Initdata parsing, its block-device image and scan, digest forms, and the evidence check
//! against fake configfs-tsm trees, sysfs files and evidence files.

use std::io::Write;
use std::path::{Path, PathBuf};

use agent_warden::attestation::*;

/// A document per algorithm; only the `algorithm` line differs. Expected digests were computed
/// with `sha256sum` / `sha384sum` / `sha512sum` over these exact bytes.
fn doc(alg: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"{alg}\"\n\n[data]\n\"policy.rego\" = \"\"\"\npackage agent_policy\n\ndefault CreateContainerRequest := true\n\"\"\"\n\"aa.toml\" = \"\"\"\n[token_configs]\n\"\"\"\n"
    )
}

const SHA256_DOC: &str = "bd82a3e22809918e335bd2b317888c129e4438a93c8fae2decba98b044b8d3e3";
const SHA384_DOC: &str = "c67d8e7e21a6166719f41b084bda73aaacd99c43b798b76482c35e42e917a756ade3874f5fd84ef3ddac22ead5b27cd1";
const SHA512_DOC: &str = "0e250785d77e08ee9fa400cd53c2d59d2c7655a8ed4dfa714b99217182433895d256d780946296b5527061acfd9f57a33b4fced021e0422bc96ee9f9bd74103e";
/// `printf 'package agent_policy\n' | sha256sum`
const PLAIN_POLICY: &str = "package agent_policy\n";
const SHA256_PLAIN: &str = "45148e88381b22b43595cc1eaf2fadfd3f93998dbbb75bd4f3d69b641fe6153b";

fn hex(s: &str) -> Vec<u8> {
    decode_hex(s).expect("test hex")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn image(declared: u64, body: &[u8]) -> Vec<u8> {
    let mut v = b"initdata".to_vec();
    v.extend_from_slice(&declared.to_le_bytes());
    v.extend_from_slice(body);
    v
}

// ---------------------------------------------------------------- digests

#[test]
fn digest_known_vectors() {
    assert_eq!(
        to_hex(&digest(Algorithm::Sha256, b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(to_hex(&digest(Algorithm::Sha384, b"abc")), "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
    assert_eq!(to_hex(&digest(Algorithm::Sha512, b"abc")), "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
    assert_eq!(
        to_hex(&digest(Algorithm::Sha256, b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn initdata_digest_per_algorithm() {
    for (alg, want, a) in [
        ("sha256", SHA256_DOC, Algorithm::Sha256),
        ("sha384", SHA384_DOC, Algorithm::Sha384),
        ("sha512", SHA512_DOC, Algorithm::Sha512),
    ] {
        let i = parse_initdata(doc(alg).as_bytes()).unwrap();
        assert_eq!(i.algorithm, a);
        assert_eq!(to_hex(&i.digest()), want, "{alg}");
        assert_eq!(to_hex(&digest(a, doc(alg).as_bytes())), want, "{alg}");
        assert_eq!(i.digest().len(), a.digest_len());
    }
}

#[test]
fn forms_truncate_and_pad() {
    // sha384: HOSTDATA is the first 32 bytes, MRCONFIGID the whole digest.
    let f = DigestForms::new(&hex(SHA384_DOC));
    assert_eq!(f.hex, SHA384_DOC);
    assert_eq!(to_hex(&f.snp_hostdata), &SHA384_DOC[..64]);
    assert_eq!(to_hex(&f.tdx_mrconfigid), SHA384_DOC);
    assert_eq!(
        f.qemu_host_data_b64,
        "xn2OfiGmFmcZ9BsIS9pzqqzZnEO3mLdkgsNeQukXp1Y="
    );
    assert_eq!(
        f.qemu_mrconfigid_b64,
        "xn2OfiGmFmcZ9BsIS9pzqqzZnEO3mLdkgsNeQukXp1at44dPX9hO892sIurVsnzR"
    );

    // sha256: HOSTDATA is the digest, MRCONFIGID is zero-padded.
    let f = DigestForms::new(&hex(SHA256_DOC));
    assert_eq!(to_hex(&f.snp_hostdata), SHA256_DOC);
    assert_eq!(
        to_hex(&f.tdx_mrconfigid),
        format!("{SHA256_DOC}{}", "00".repeat(16))
    );
    assert_eq!(
        f.qemu_host_data_b64,
        "vYKj4igJkY4zW9KzF4iMEp5EOKk8j64t7LqYsES40+M="
    );
    assert_eq!(
        f.qemu_mrconfigid_b64,
        "vYKj4igJkY4zW9KzF4iMEp5EOKk8j64t7LqYsES40+MAAAAAAAAAAAAAAAAAAAAA"
    );

    // sha512: both truncated.
    let f = DigestForms::new(&hex(SHA512_DOC));
    assert_eq!(to_hex(&f.snp_hostdata), &SHA512_DOC[..64]);
    assert_eq!(to_hex(&f.tdx_mrconfigid), &SHA512_DOC[..96]);
    assert_eq!(f.digest.len(), 64);
}

// ---------------------------------------------------------------- parsing

#[test]
fn parse_keeps_other_entries_and_reads_warden_config() {
    let text = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package p\"\n\"agent-warden.toml\" = \"listen = 'vsock://-1:1024'\"\n\"aa.toml\" = \"x = 1\"\n\"cdh.toml\" = \"y = 2\"\n";
    let i = parse_initdata(text.as_bytes()).unwrap();
    assert_eq!(i.policy.as_deref(), Some("package p"));
    assert_eq!(
        i.warden_config.as_deref(),
        Some("listen = 'vsock://-1:1024'")
    );
    assert_eq!(i.data.len(), 4);
    assert_eq!(i.data["cdh.toml"].as_str(), Some("y = 2"));
    assert_eq!(i.raw, text.as_bytes());
}

#[test]
fn missing_policy_is_reported_on_demand() {
    let i = parse_initdata(
        b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"aa.toml\" = \"\"\n",
    )
    .unwrap();
    assert_eq!(i.policy, None);
    let err = i.require_policy().unwrap_err();
    assert!(matches!(err, AttestationError::MissingPolicy { .. }));
    assert!(err.to_string().contains("policy.rego"), "{err}");
}

#[test]
fn parse_errors_are_specific() {
    let cases: &[(&[u8], &str)] = &[
        (b"algorithm = \"sha256\"\n[data]\n", "missing `version`"),
        (
            b"version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
            "unsupported initdata version \"0.2.0\"",
        ),
        (
            b"version = 1\nalgorithm = \"sha256\"\n[data]\n",
            "`version` must be a string",
        ),
        (b"version = \"0.1.0\"\n[data]\n", "missing `algorithm`"),
        (
            b"version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n",
            "unsupported algorithm \"md5\"",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"SHA256\"\n[data]\n",
            "unsupported algorithm \"SHA256\"",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n",
            "missing `data`",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n",
            "`data` must be a table",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = 5\n",
            "`data.\"policy.rego\"` must be a string",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"agent-warden.toml\" = [1]\n",
            "`data.\"agent-warden.toml\"` must be a string",
        ),
        (b"version = \"0.1.0\"\nalgorithm = ", "TOML error"),
        (b"\xff\xfe version", "not UTF-8"),
        (b"package agent_policy\n", "TOML error"),
    ];
    for (input, want) in cases {
        let err = parse_initdata(input).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{:?}: {err}",
            String::from_utf8_lossy(input)
        );
        assert!(err.starts_with("initdata:"), "{err}");
    }
}

// ---------------------------------------------------------------- image format

#[test]
fn image_round_trip_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_initdata_image(doc("sha384").as_bytes()).unwrap();
    assert!(img.starts_with(INITDATA_MAGIC));
    let p = write(dir.path(), "img", &img);
    let toml = read_initdata_device(&p).unwrap();
    assert_eq!(toml, doc("sha384").as_bytes());
    assert_eq!(to_hex(&parse_initdata(&toml).unwrap().digest()), SHA384_DOC);
    // Trailing bytes after the declared payload (padding, old data) are ignored.
    let mut longer = img.clone();
    longer.extend_from_slice(&[0xee; 4096]);
    let p2 = write(dir.path(), "img2", &longer);
    assert_eq!(read_initdata_device(&p2).unwrap(), doc("sha384").as_bytes());
}

#[test]
fn image_errors_name_the_device_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let gz = gzip(doc("sha256").as_bytes());
    let n = gz.len() as u64;
    let mut bad_gzip = gz.clone();
    bad_gzip[0] = 0x00;
    let mut truncated_gzip = image(n - 10, &gz[..gz.len() - 10]);
    truncated_gzip.extend_from_slice(&[0; 10]);
    let truncated_msg = format!(
        "declares {n} bytes of compressed data but only {} bytes follow",
        n - 1
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short",
            b"initdat".to_vec(),
            "too short for the 16-byte initdata header",
        ),
        (
            "magic",
            image(n, &gz).iter().map(|b| b ^ 0x20).collect(),
            "bad magic",
        ),
        ("zero", image(0, &gz), "declares a length of 0"),
        ("truncated", image(n, &gz[..gz.len() - 1]), &truncated_msg),
        (
            "oversize",
            image(MAX_COMPRESSED_LEN + 1, &gz),
            "over the 16777216-byte limit",
        ),
        ("huge", image(u64::MAX, &gz), "over the 16777216-byte limit"),
        ("badgzip", image(n, &bad_gzip), "gzip error"),
        ("cutgzip", truncated_gzip, "gzip error"),
    ];
    for (name, bytes, want) in cases {
        let p = write(dir.path(), name, &bytes);
        let err = read_initdata_device(&p).unwrap_err().to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&p.display().to_string()),
            "{name} does not name the file: {err}"
        );
        // The in-memory decoder agrees.
        let err2 = decode_initdata_image(&bytes, &p).unwrap_err().to_string();
        assert!(err2.contains(want), "{name} (memory): {err2}");
    }
    let err = read_initdata_device(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot open"), "{err}");
}

#[test]
fn image_with_non_initdata_toml_reads_but_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "vda",
        &build_initdata_image(b"hello = 1\n").unwrap(),
    );
    assert_eq!(read_initdata_device(&p).unwrap(), b"hello = 1\n");
    let err = load_initdata(&p).unwrap_err().to_string();
    assert!(
        err.contains("missing `version`") && err.contains("vda"),
        "{err}"
    );
}

// ---------------------------------------------------------------- scan

#[test]
fn scan_finds_the_device_with_the_magic() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "vda", &[0x55; 4096]);
    write(
        dir.path(),
        "vdb",
        &build_initdata_image(doc("sha512").as_bytes()).unwrap(),
    );
    write(dir.path(), "sda", b"not initdata at all, but long enough");
    write(dir.path(), "vdc", b"ini");
    write(
        dir.path(),
        "loop0",
        &build_initdata_image(b"ignored").unwrap(),
    );
    std::fs::create_dir(dir.path().join("sdz")).unwrap();
    let (path, toml) = scan_for_initdata(dir.path()).unwrap().expect("found");
    assert_eq!(path, dir.path().join("vdb"));
    assert_eq!(toml, doc("sha512").as_bytes());
    assert_eq!(to_hex(&parse_initdata(&toml).unwrap().digest()), SHA512_DOC);
}

#[test]
fn scan_prefers_vd_then_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sda",
        &build_initdata_image(b"from = 'sda'").unwrap(),
    );
    write(
        dir.path(),
        "vdc",
        &build_initdata_image(b"from = 'vdc'").unwrap(),
    );
    write(
        dir.path(),
        "vdb",
        &build_initdata_image(b"from = 'vdb'").unwrap(),
    );
    let (path, toml) = scan_for_initdata(dir.path()).unwrap().unwrap();
    assert_eq!(path, dir.path().join("vdb"));
    assert_eq!(toml, b"from = 'vdb'");
}

#[test]
fn scan_without_initdata_and_with_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "vda", &[0; 512]);
    write(dir.path(), "sda", &[]);
    assert_eq!(scan_for_initdata(dir.path()).unwrap(), None);

    write(dir.path(), "sdb", &image(100, b"not gzip"));
    let err = scan_for_initdata(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sdb"), "{err}");

    let err = scan_for_initdata(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot list"), "{err}");
}

// ---------------------------------------------------------------- hash report

#[test]
fn hash_report_for_each_input_kind() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(dir.path(), "initdata.toml", doc("sha384").as_bytes());
    let img = write(
        dir.path(),
        "initdata.img",
        &build_initdata_image(doc("sha384").as_bytes()).unwrap(),
    );
    let gz = write(
        dir.path(),
        "initdata.toml.gz",
        &gzip(doc("sha384").as_bytes()),
    );
    for p in [&toml, &img, &gz] {
        let r = hash_report(p).unwrap();
        assert!(r.contains(&format!("file: {}\n", p.display())), "{r}");
        assert!(r.contains("kind: initdata 0.1.0"), "{r}");
        assert!(r.contains("algorithm: sha384\n"), "{r}");
        assert!(r.contains(&format!("digest (hex): {SHA384_DOC}\n")), "{r}");
        assert!(
            r.contains(&format!(
                "snp hostdata (hex, 32 bytes): {}\n",
                &SHA384_DOC[..64]
            )),
            "{r}"
        );
        assert!(
            r.contains(&format!("tdx mrconfigid (hex, 48 bytes): {SHA384_DOC}\n")),
            "{r}"
        );
        assert!(
            r.contains("qemu host-data (base64): xn2OfiGmFmcZ9BsIS9pzqqzZnEO3mLdkgsNeQukXp1Y=\n"),
            "{r}"
        );
        assert!(r.contains("policy.rego: present"), "{r}");
        assert!(
            r.lines().all(|l| l.contains(": ")),
            "every line is labelled: {r}"
        );
        assert_eq!(load_initdata(p).unwrap().raw, doc("sha384").as_bytes());
    }

    let rego = write(dir.path(), "policy.rego", PLAIN_POLICY.as_bytes());
    let r = hash_report(&rego).unwrap();
    assert!(r.contains("kind: plain policy"), "{r}");
    assert!(r.contains("algorithm: sha256\n"), "{r}");
    assert!(
        r.contains(&format!("digest (hex): {SHA256_PLAIN}\n")),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "tdx mrconfigid (hex, 48 bytes): {SHA256_PLAIN}{}\n",
            "00".repeat(16)
        )),
        "{r}"
    );
    assert_eq!(
        load_measured_document(&rego).unwrap(),
        MeasuredDocument::PlainPolicy(PLAIN_POLICY.as_bytes().to_vec())
    );
    assert!(load_initdata(&rego).is_err());
}

#[test]
fn hash_report_does_not_fall_back_to_plain_for_broken_initdata() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.toml",
        b"version = \"0.1.0\"\nalgorithm = \"sha1\"\n[data]\n",
    );
    let err = hash_report(&p).unwrap_err().to_string();
    assert!(
        err.contains("unsupported algorithm \"sha1\"") && err.contains("bad.toml"),
        "{err}"
    );
    // TOML that is not initdata-shaped is a plain policy (hashed as bytes).
    let q = write(dir.path(), "other.toml", b"a = 1\n");
    assert!(matches!(
        load_measured_document(&q).unwrap(),
        MeasuredDocument::PlainPolicy(_)
    ));
    let err = hash_report(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot open"), "{err}");
}

// ---------------------------------------------------------------- evidence: fakes

/// A synthetic SNP ATTESTATION_REPORT with HOST_DATA and REPORT_DATA set.
fn snp_report(hostdata: &[u8], report_data: &[u8; 64]) -> Vec<u8> {
    let mut r = vec![0u8; SNP_REPORT_LEN];
    r[0] = 3; // version
    r[SNP_REPORT_DATA_OFFSET..SNP_REPORT_DATA_OFFSET + 64].copy_from_slice(report_data);
    r[SNP_HOSTDATA_OFFSET..SNP_HOSTDATA_OFFSET + 32].copy_from_slice(hostdata);
    r
}

/// A synthetic TD quote (header, body; a dummy signature section after it).
fn td_quote(version: u16, mrconfigid: &[u8], report_data: &[u8; 64]) -> Vec<u8> {
    let mut q = vec![0u8; TDX_QUOTE_HEADER_LEN];
    q[0..2].copy_from_slice(&version.to_le_bytes());
    q[2..4].copy_from_slice(&2u16.to_le_bytes()); // ECDSA-256
    q[4..8].copy_from_slice(&0x81u32.to_le_bytes());
    let body_len = if version == 5 {
        TDX_TD10_BODY_LEN + 64
    } else {
        TDX_TD10_BODY_LEN
    };
    if version == 5 {
        q.extend_from_slice(&3u16.to_le_bytes());
        q.extend_from_slice(&(body_len as u32).to_le_bytes());
    }
    let start = q.len();
    q.resize(start + body_len, 0x11);
    q[start + TDX_BODY_MRCONFIGID_OFFSET..start + TDX_BODY_MRCONFIGID_OFFSET + 48]
        .copy_from_slice(mrconfigid);
    q[start + TDX_BODY_REPORTDATA_OFFSET..start + TDX_BODY_REPORTDATA_OFFSET + 64]
        .copy_from_slice(report_data);
    q.extend_from_slice(&[0xaa; 128]);
    q
}

/// A report directory as configfs-tsm shows it after a request: provider, generation, outblob.
fn fake_report_dir(parent: &Path, name: &str, provider: &str, outblob: &[u8]) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("provider"), format!("{provider}\n")).unwrap();
    std::fs::write(d.join("generation"), "1\n").unwrap();
    std::fs::write(d.join("outblob"), outblob).unwrap();
    d
}

fn snp_existing(dir: PathBuf) -> EvidenceSource {
    EvidenceSource::SnpConfigfsTsm {
        tsm: TsmReportDir::Existing { dir },
    }
}

fn tdx_quote_existing(dir: PathBuf) -> EvidenceSource {
    EvidenceSource::TdxConfigfsTsm {
        tsm: TsmReportDir::Existing { dir },
    }
}

// ---------------------------------------------------------------- evidence: SNP

#[test]
fn snp_hostdata_match_and_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA384_DOC);
    let rd = evidence_report_data(&expected);

    let good = fake_report_dir(
        tmp.path(),
        "good",
        SNP_PROVIDER,
        &snp_report(&expected[..32], &rd),
    );
    check_evidence(&snp_existing(good.clone()), &expected).unwrap();
    // The request was written: 64 bytes of REPORT_DATA in inblob.
    assert_eq!(std::fs::read(good.join("inblob")).unwrap(), rd.to_vec());
    assert_eq!(
        read_evidence(&snp_existing(good.clone()), &expected)
            .unwrap()
            .bytes,
        expected[..32].to_vec()
    );

    let wrong_host = [0x42u8; 32];
    let bad = fake_report_dir(
        tmp.path(),
        "bad",
        SNP_PROVIDER,
        &snp_report(&wrong_host, &rd),
    );
    let err = check_evidence(&snp_existing(bad.clone()), &expected).unwrap_err();
    assert!(matches!(err, AttestationError::EvidenceMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&SHA384_DOC[..64]),
        "expected value missing: {msg}"
    );
    assert!(
        msg.contains(&"42".repeat(32)),
        "reported value missing: {msg}"
    );
    assert!(
        msg.contains("HOSTDATA") && msg.contains("SNP") && msg.contains(&bad.display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("digest {SHA384_DOC} truncated to 32 bytes")),
        "{msg}"
    );
}

#[test]
fn snp_report_asks_at_the_privlevel_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA256_DOC);
    let rd = evidence_report_data(&expected);
    let d = fake_report_dir(
        tmp.path(),
        "svsm",
        SNP_PROVIDER,
        &snp_report(&expected, &rd),
    );
    std::fs::write(d.join("privlevel_floor"), "2\n").unwrap();
    check_evidence(&snp_existing(d.clone()), &expected).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("privlevel")).unwrap(), "2");

    let d0 = fake_report_dir(
        tmp.path(),
        "vmpl0",
        SNP_PROVIDER,
        &snp_report(&expected, &rd),
    );
    std::fs::write(d0.join("privlevel_floor"), "0\n").unwrap();
    check_evidence(&snp_existing(d0.clone()), &expected).unwrap();
    assert!(!d0.join("privlevel").exists());
}

#[test]
fn snp_sha256_digest_fills_hostdata_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA256_DOC);
    let rd = evidence_report_data(&expected);
    let d = fake_report_dir(tmp.path(), "r", SNP_PROVIDER, &snp_report(&expected, &rd));
    check_evidence(&snp_existing(d), &expected).unwrap();
}

#[test]
fn snp_refuses_wrong_provider_stale_report_and_short_outblob() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA256_DOC);
    let rd = evidence_report_data(&expected);

    let tdx = fake_report_dir(tmp.path(), "tdx", TDX_PROVIDER, &snp_report(&expected, &rd));
    let msg = check_evidence(&snp_existing(tdx), &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"tdx_guest\", expected \"sev_guest\""),
        "{msg}"
    );
    assert!(msg.contains(SHA256_DOC), "names the expected digest: {msg}");

    let stale = fake_report_dir(
        tmp.path(),
        "stale",
        SNP_PROVIDER,
        &snp_report(&expected, &[0; 64]),
    );
    let msg = check_evidence(&snp_existing(stale), &expected)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("REPORT_DATA"), "{msg}");

    let short = fake_report_dir(
        tmp.path(),
        "short",
        SNP_PROVIDER,
        &snp_report(&expected, &rd)[..0xE0],
    );
    let err = check_evidence(&snp_existing(short), &expected).unwrap_err();
    // The parser's typed error is the detail, and the error's source.
    assert!(
        matches!(
            &err,
            AttestationError::EvidenceUnavailable { detail, .. }
                if matches!(**detail, EvidenceError::SnpTooShort { len: 0xE0 })
        ),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).map(|s| s.to_string());
    assert_eq!(
        source.as_deref(),
        Some("SNP report is 224 bytes, expected at least 1184")
    );
    let msg = err.to_string();
    assert!(msg.contains("SNP report is 224 bytes"), "{msg}");

    let no_outblob = tmp.path().join("no_outblob");
    std::fs::create_dir(&no_outblob).unwrap();
    std::fs::write(no_outblob.join("provider"), "sev_guest").unwrap();
    let msg = check_evidence(&snp_existing(no_outblob), &expected)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("outblob"), "{msg}");

    let not_tsm = tmp.path().join("empty");
    std::fs::create_dir(&not_tsm).unwrap();
    let msg = check_evidence(&snp_existing(not_tsm), &expected)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("provider is missing"), "{msg}");
}

#[test]
fn snp_fresh_report_dir_is_made_and_removed() {
    // On a plain filesystem mkdir gives an empty directory (configfs would populate it), so
    // the request fails at `provider`; the directory must still be created under report/ and
    // removed afterwards.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("report")).unwrap();
    let src = EvidenceSource::SnpConfigfsTsm {
        tsm: TsmReportDir::Fresh {
            root: tmp.path().to_path_buf(),
        },
    };
    let msg = check_evidence(&src, &hex(SHA256_DOC))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("agent-warden-") && msg.contains("provider is missing"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("report"))
            .unwrap()
            .count(),
        0,
        "report dir left behind"
    );

    let missing = EvidenceSource::SnpConfigfsTsm {
        tsm: TsmReportDir::Fresh {
            root: tmp.path().join("nope"),
        },
    };
    let msg = check_evidence(&missing, &hex(SHA256_DOC))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no configfs-tsm"), "{msg}");
    assert!(msg.contains(SHA256_DOC), "{msg}");
}

// ---------------------------------------------------------------- evidence: TDX

#[test]
fn tdx_quote_v4_and_v5_match_and_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA384_DOC);
    let rd = evidence_report_data(&expected);
    for v in [4u16, 5] {
        let good = fake_report_dir(
            tmp.path(),
            &format!("good{v}"),
            TDX_PROVIDER,
            &td_quote(v, &expected, &rd),
        );
        check_evidence(&tdx_quote_existing(good), &expected).unwrap();

        let bad = fake_report_dir(
            tmp.path(),
            &format!("bad{v}"),
            TDX_PROVIDER,
            &td_quote(v, &[0x99; 48], &rd),
        );
        let msg = check_evidence(&tdx_quote_existing(bad), &expected)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("MRCONFIGID")
                && msg.contains(SHA384_DOC)
                && msg.contains(&"99".repeat(48)),
            "{msg}"
        );
    }
}

#[test]
fn tdx_sha256_digest_is_compared_zero_padded() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA256_DOC);
    let rd = evidence_report_data(&expected);
    let padded = fit(&expected, 48);
    let good = fake_report_dir(tmp.path(), "good", TDX_PROVIDER, &td_quote(4, &padded, &rd));
    check_evidence(&tdx_quote_existing(good), &expected).unwrap();

    // The digest in the first 32 bytes but garbage (not zeros) after it is a mismatch.
    let mut dirty = padded.clone();
    dirty[40] = 1;
    let bad = fake_report_dir(tmp.path(), "bad", TDX_PROVIDER, &td_quote(4, &dirty, &rd));
    let msg = check_evidence(&tdx_quote_existing(bad), &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("{SHA256_DOC}{}", "00".repeat(16))),
        "{msg}"
    );
    assert!(msg.contains("zero-padded to 48 bytes"), "{msg}");
}

#[test]
fn tdx_quote_format_errors() {
    let expected = hex(SHA384_DOC);
    let rd = evidence_report_data(&expected);
    let mut wrong_tee = td_quote(4, &expected, &rd);
    wrong_tee[4] = 0;
    let e = tdx_quote_fields(&wrong_tee).unwrap_err();
    assert!(
        matches!(e, EvidenceError::QuoteTeeType { found: 0 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("TEE type"), "{e}");
    let mut v3 = td_quote(4, &expected, &rd);
    v3[0] = 3;
    let e = tdx_quote_fields(&v3).unwrap_err();
    assert!(
        matches!(e, EvidenceError::QuoteVersion { found: 3 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("version 3"), "{e}");
    let mut v5_type = td_quote(5, &expected, &rd);
    v5_type[48] = 9;
    let e = tdx_quote_fields(&v5_type).unwrap_err();
    assert!(
        matches!(e, EvidenceError::QuoteBodyType { found: 9 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("body type"), "{e}");
    let q = td_quote(4, &expected, &rd);
    let e = tdx_quote_fields(&q[..TDX_QUOTE_HEADER_LEN + 100]).unwrap_err();
    assert!(
        matches!(e, EvidenceError::QuoteBodyTooShort { len: 148, body: 48 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("too short"), "{e}");
    let f = tdx_quote_fields(&q).unwrap();
    assert_eq!(f.measured, expected);
    assert_eq!(f.report_data, rd);
    // SNP report fields too.
    let s = snp_report(&expected[..32], &rd);
    let f = snp_report_fields(&s).unwrap();
    assert_eq!(f.measured, expected[..32].to_vec());
    assert_eq!(f.report_data, rd);
}

#[test]
fn tdx_sysfs_raw_and_hex() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA384_DOC);
    let raw = write(tmp.path(), "raw", &expected);
    check_evidence(&EvidenceSource::TdxSysfs { path: raw }, &expected).unwrap();
    let hexfile = write(tmp.path(), "hex", format!("{SHA384_DOC}\n").as_bytes());
    check_evidence(&EvidenceSource::TdxSysfs { path: hexfile }, &expected).unwrap();

    let wrong = write(tmp.path(), "wrong", &[0u8; 48]);
    let msg = check_evidence(&EvidenceSource::TdxSysfs { path: wrong }, &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(SHA384_DOC) && msg.contains(&"00".repeat(48)),
        "{msg}"
    );

    let short = write(tmp.path(), "short", &[0u8; 32]);
    let msg = check_evidence(&EvidenceSource::TdxSysfs { path: short }, &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot read evidence") && msg.contains("48"),
        "{msg}"
    );
}

#[test]
fn tdx_report_device_that_is_not_a_tdx_guest_fails_with_both_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = write(tmp.path(), "tdx_guest", b"");
    let expected = hex(SHA384_DOC);
    let msg = check_evidence(
        &EvidenceSource::TdxReport {
            device: dev.clone(),
        },
        &expected,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("TDX_CMD_GET_REPORT0") && msg.contains(&dev.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(SHA384_DOC), "{msg}");
}

// ---------------------------------------------------------------- evidence: file

#[test]
fn file_evidence_raw_and_hex() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = hex(SHA512_DOC);
    // HOSTDATA form (32 raw), MRCONFIGID form (48 as hex), full digest (64 raw).
    for (name, content) in [
        ("hostdata.bin", expected[..32].to_vec()),
        (
            "mrconfigid.hex",
            format!("{}\n", &SHA512_DOC[..96]).into_bytes(),
        ),
        ("digest.bin", expected.clone()),
        (
            "digest.hex",
            format!("0x{}", SHA512_DOC.to_uppercase()).into_bytes(),
        ),
    ] {
        let p = write(tmp.path(), name, &content);
        check_evidence(&EvidenceSource::File { path: p }, &expected)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let p = write(tmp.path(), "wrong.hex", "ab".repeat(32).as_bytes());
    let msg = check_evidence(&EvidenceSource::File { path: p.clone() }, &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&SHA512_DOC[..64]) && msg.contains(&"ab".repeat(32)),
        "{msg}"
    );
    assert!(msg.contains(&p.display().to_string()), "{msg}");

    let p = write(tmp.path(), "wrong.bin", &[7u8; 48]);
    let msg = check_evidence(&EvidenceSource::File { path: p }, &expected)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&"07".repeat(48)), "{msg}");

    let p = write(tmp.path(), "odd", &[1u8; 20]);
    let msg = check_evidence(&EvidenceSource::File { path: p }, &expected)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("holds 20 bytes"), "{msg}");

    let msg = check_evidence(
        &EvidenceSource::File {
            path: tmp.path().join("absent"),
        },
        &expected,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("cannot open") && msg.contains(SHA512_DOC),
        "{msg}"
    );
}

#[test]
fn plain_policy_digest_checks_against_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let rego = write(tmp.path(), "policy.rego", PLAIN_POLICY.as_bytes());
    let d = load_measured_document(&rego).unwrap().digest();
    assert_eq!(to_hex(&d), SHA256_PLAIN);
    let ev = write(tmp.path(), "hostdata", SHA256_PLAIN.as_bytes());
    check_evidence(&EvidenceSource::File { path: ev }, &d).unwrap();
}

// ---------------------------------------------------------------- CLI syntax

#[test]
fn evidence_source_from_str() {
    let p = |s: &str| PathBuf::from(s);
    let fresh = |r: &str| TsmReportDir::Fresh { root: p(r) };
    let cases = [
        (
            "snp",
            EvidenceSource::SnpConfigfsTsm {
                tsm: fresh(DEFAULT_TSM_ROOT),
            },
        ),
        (
            "snp:/tmp/tsm",
            EvidenceSource::SnpConfigfsTsm {
                tsm: fresh("/tmp/tsm"),
            },
        ),
        (
            "snp-report:/x/r0",
            EvidenceSource::SnpConfigfsTsm {
                tsm: TsmReportDir::Existing { dir: p("/x/r0") },
            },
        ),
        (
            "tdx",
            EvidenceSource::TdxReport {
                device: p(DEFAULT_TDX_GUEST_DEVICE),
            },
        ),
        (
            "tdx:/dev/other",
            EvidenceSource::TdxReport {
                device: p("/dev/other"),
            },
        ),
        (
            "tdx-sysfs",
            EvidenceSource::TdxSysfs {
                path: p(DEFAULT_TDX_MRCONFIGID_SYSFS),
            },
        ),
        ("tdx-sysfs:/m", EvidenceSource::TdxSysfs { path: p("/m") }),
        (
            "tdx-quote",
            EvidenceSource::TdxConfigfsTsm {
                tsm: fresh(DEFAULT_TSM_ROOT),
            },
        ),
        (
            "tdx-quote-report:/r",
            EvidenceSource::TdxConfigfsTsm {
                tsm: TsmReportDir::Existing { dir: p("/r") },
            },
        ),
        (
            "file:/e:with:colons",
            EvidenceSource::File {
                path: p("/e:with:colons"),
            },
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(spec.parse::<EvidenceSource>().unwrap(), want, "{spec}");
    }
    for bad in [
        "",
        "sev",
        "file",
        "file:",
        "snp:",
        "snp-report",
        "tdx-quote-report",
        "SNP",
    ] {
        let err = bad.parse::<EvidenceSource>().unwrap_err();
        assert!(
            matches!(err, AttestationError::BadEvidenceSpec { .. }),
            "{bad}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

// ---------------------------------------------------------------- no panics

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn hostile_inputs_never_panic() {
    let expected = hex(SHA384_DOC);
    let rd = evidence_report_data(&expected);
    let valid_image = build_initdata_image(doc("sha384").as_bytes()).unwrap();
    let samples: Vec<Vec<u8>> = vec![
        valid_image.clone(),
        doc("sha384").into_bytes(),
        snp_report(&expected[..32], &rd),
        td_quote(4, &expected, &rd),
        td_quote(5, &expected, &rd),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    for s in &samples {
        // Every prefix, and every prefix with one byte flipped.
        for cut in (0..=s.len()).step_by(7).chain([s.len()]) {
            let mut b = s[..cut].to_vec();
            let _ = parse_initdata(&b);
            let _ = decode_initdata_image(&b, &path);
            let _ = snp_report_fields(&b);
            let _ = tdx_quote_fields(&b);
            let _ = tdreport_fields(&b);
            if let Some(x) = b.get_mut(cut / 2) {
                *x ^= 0x5a;
            }
            let _ = parse_initdata(&b);
            let _ = decode_initdata_image(&b, &path);
            let _ = tdx_quote_fields(&b);
        }
    }
    for seed in 1..300u64 {
        let b = noise(seed, (seed as usize * 13) % 2000);
        let _ = parse_initdata(&b);
        let _ = snp_report_fields(&b);
        let _ = tdx_quote_fields(&b);
        let _ = tdreport_fields(&b);
        let mut img = image(b.len() as u64, &b);
        let _ = decode_initdata_image(&img, &path);
        img.truncate(20);
        let _ = decode_initdata_image(&img, &path);
        let _ = String::from_utf8_lossy(&b).parse::<EvidenceSource>();
        std::fs::write(&path, &b).unwrap();
        let _ = read_initdata_device(&path);
        let _ = load_measured_document(&path);
        let _ = check_evidence(&EvidenceSource::File { path: path.clone() }, &b);
        let _ = check_evidence(&EvidenceSource::TdxSysfs { path: path.clone() }, &[]);
    }
}
