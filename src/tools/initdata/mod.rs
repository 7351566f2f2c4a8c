//! The tenant's side: `agent-warden initdata pack` turns a Rego policy (plus, optionally,
//! agent-warden's own configuration and other initdata entries such as `aa.toml`) into
//! what kata consumes and what attestation checks:
//!
//! - the initdata TOML ([`attestation::render_initdata`]), loaded back through the same
//!   code `serve` uses ([`crate::serve::prepare`]) so a policy that does not compile or a
//!   configuration `serve` would refuse is an error here, before anything is written;
//! - the pod annotation value (`io.katacontainers.config.hypervisor.cc_init_data`: gzip,
//!   then base64) and, with `--pod`, that annotation put into a manifest ([`manifest`]);
//! - the digests the TEE will report (the `policy hash` report);
//! - the block-device image kata's runtime attaches ([`attestation::build_initdata_image`]).

pub mod manifest;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::attestation::{self, Algorithm, MeasuredDocument, POLICY_KEY, WARDEN_CONFIG_KEY};
use crate::config::{Config, PolicySection};
use crate::policy::sources::read_text;
use crate::policy::{Policy, RegoVersion};

/// `agent-warden initdata ...`
#[derive(Debug, Args)]
pub struct InitdataArgs {
    #[command(subcommand)]
    pub command: InitdataCommand,
}

/// The initdata tools.
#[derive(Debug, Subcommand)]
pub enum InitdataCommand {
    /// Build initdata from a policy: the TOML, the pod annotation, the TEE digests, the disk image.
    Pack(PackArgs),
}

/// Flags of `initdata pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The policy (Rego, package agent_policy); becomes the entry "policy.rego".
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// agent-warden's configuration for the guest; becomes the entry "agent-warden.toml".
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Another [data] entry, e.g. aa.toml=./aa.toml or cdh.toml=./cdh.toml (repeatable).
    #[arg(long, value_name = "KEY=FILE")]
    pub entry: Vec<String>,
    /// Digest algorithm: sha256, sha384 or sha512.
    #[arg(long, value_name = "ALG", default_value = "sha384")]
    pub algorithm: Algorithm,
    /// How the guest's agent-warden reads the policy (its own --kata, --rego).
    #[command(flatten)]
    pub rego: crate::tools::RegoChoice,
    /// Write the initdata TOML document to FILE.
    #[arg(long, value_name = "FILE")]
    pub write_toml: Option<PathBuf>,
    /// Write the block-device image (magic, length, gzip, padded to 512 bytes) to FILE.
    #[arg(long, value_name = "FILE")]
    pub write_image: Option<PathBuf>,
    /// Add or replace the annotation on every pod (template) in this manifest (YAML).
    #[arg(long, value_name = "FILE.yaml")]
    pub pod: Option<PathBuf>,
    /// Write the annotated manifest to FILE instead of replacing --pod.
    #[arg(long, value_name = "FILE", requires = "pod")]
    pub pod_out: Option<PathBuf>,
    /// Print only the annotation value (for scripts).
    #[arg(long)]
    pub annotation_only: bool,
}

/// What `pack` produced, for the caller to print or test.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The initdata TOML document.
    pub toml: String,
    /// The value of [`attestation::INITDATA_ANNOTATION`].
    pub annotation: String,
    /// The block-device image.
    pub image: Vec<u8>,
    /// The initdata as `serve` reads it (digest, entries).
    pub document: MeasuredDocument,
}

/// Runs an initdata tool; returns the process exit code.
pub fn run_cli(args: InitdataArgs) -> anyhow::Result<i32> {
    match args.command {
        InitdataCommand::Pack(a) => {
            let mut out = std::io::stdout().lock();
            pack_cli(&a, &mut out)
        }
    }
}

/// Builds the initdata from text entries and checks it the way
/// `serve --initdata FILE --rego REGO` would load it: the `policy.rego` entry (named
/// `policy_name` in errors) must compile and the `agent-warden.toml` entry must be a
/// configuration `serve` accepts from initdata.
pub fn pack(
    algorithm: Algorithm,
    rego: RegoVersion,
    policy_name: &str,
    entries: &[(&str, &str)],
) -> anyhow::Result<Packed> {
    let Some((_, policy)) = entries.iter().find(|(k, _)| *k == POLICY_KEY) else {
        anyhow::bail!("no {POLICY_KEY:?} entry: initdata for agent-warden carries the policy");
    };
    Policy::load(policy_name, policy, rego)?;
    let toml = attestation::render_initdata(algorithm, entries)?;
    let dir = tempfile::tempdir()
        .map_err(|e| anyhow::anyhow!("cannot create a temporary directory: {e}"))?;
    let path = dir.path().join("initdata.toml");
    std::fs::write(&path, &toml)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let flags = Config {
        policy: PolicySection {
            initdata: Some(path.clone()),
            rego: Some(rego),
            ..Default::default()
        },
        ..Default::default()
    };
    crate::serve::prepare(Config::default(), flags)
        .map_err(|e| anyhow::anyhow!("the packed initdata would not start agent-warden: {e:#}"))?;
    let document = attestation::load_measured_document(&path)?;
    Ok(Packed {
        annotation: attestation::initdata_annotation_value(toml.as_bytes())?,
        image: attestation::build_initdata_image(toml.as_bytes())?,
        toml,
        document,
    })
}

/// The `[data]` entries named on the command line: (key, text), policy first.
fn entries(a: &PackArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut entries = vec![(POLICY_KEY.to_string(), read_text(&a.policy, "policy")?)];
    if let Some(c) = &a.config {
        entries.push((
            WARDEN_CONFIG_KEY.to_string(),
            read_text(c, "configuration")?,
        ));
    }
    for spec in &a.entry {
        let Some((key, file)) = spec
            .split_once('=')
            .filter(|(k, f)| !k.is_empty() && !f.is_empty())
        else {
            anyhow::bail!("--entry {spec:?}: expected KEY=FILE, e.g. aa.toml=./aa.toml");
        };
        if entries.iter().any(|(k, _)| k == key) {
            anyhow::bail!(
                "--entry {spec:?}: the entry {key:?} is already set (policy.rego comes from --policy, agent-warden.toml from --config)"
            );
        }
        entries.push((key.to_string(), read_text(Path::new(file), "entry")?));
    }
    Ok(entries)
}

fn write_file(path: &Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {what} {}: {e}", path.display()))
}

/// `initdata pack`: builds, checks, writes what was asked for and prints the annotation
/// and the digests.
fn pack_cli(a: &PackArgs, out: &mut impl Write) -> anyhow::Result<i32> {
    let owned = entries(a)?;
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let packed = pack(
        a.algorithm,
        a.rego.version(),
        &a.policy.display().to_string(),
        &refs,
    )?;
    // Read the manifest before writing anything, so a bad manifest leaves no half result.
    let annotated = match &a.pod {
        Some(pod) => Some(
            manifest::annotate(
                &read_text(pod, "pod manifest")?,
                attestation::INITDATA_ANNOTATION,
                &packed.annotation,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", pod.display()))?,
        ),
        None => None,
    };
    if let Some(p) = &a.write_toml {
        write_file(p, packed.toml.as_bytes(), "the initdata TOML")?;
    }
    if let Some(p) = &a.write_image {
        write_file(p, &packed.image, "the initdata image")?;
    }
    if let (Some(pod), Some(annotated)) = (&a.pod, &annotated) {
        let target = a.pod_out.as_ref().unwrap_or(pod);
        write_file(target, annotated.text.as_bytes(), "the pod manifest")?;
    }
    if a.annotation_only {
        writeln!(out, "{}", packed.annotation)?;
        return Ok(0);
    }
    let name = a
        .write_toml
        .clone()
        .unwrap_or_else(|| PathBuf::from("(initdata, not written)"));
    writeln!(out, "annotation: {}", attestation::INITDATA_ANNOTATION)?;
    writeln!(out, "annotation value: {}", packed.annotation)?;
    if let Some(p) = &a.write_image {
        writeln!(out, "image: {} ({} bytes)", p.display(), packed.image.len())?;
    }
    if let (Some(pod), Some(annotated)) = (&a.pod, &annotated) {
        let target = a.pod_out.as_ref().unwrap_or(pod);
        writeln!(
            out,
            "pod manifest: {} (annotated: {})",
            target.display(),
            annotated.objects.join(", ")
        )?;
    }
    write!(
        out,
        "{}",
        attestation::render_report(&name, &packed.document)
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "package agent_policy\ndefault CreateContainerRequest := true\n";

    #[test]
    fn entries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("p.rego");
        std::fs::write(&pol, POLICY).unwrap();
        let aa = dir.path().join("aa.toml");
        std::fs::write(&aa, "[token_configs]\n").unwrap();
        let mut a = PackArgs {
            policy: pol,
            config: None,
            entry: vec![format!("aa.toml={}", aa.display())],
            algorithm: Algorithm::Sha256,
            rego: crate::tools::RegoChoice {
                kata: None,
                rego: Some(RegoVersion::V0),
            },
            write_toml: None,
            write_image: None,
            pod: None,
            pod_out: None,
            annotation_only: false,
        };
        let e = entries(&a).unwrap();
        assert_eq!(e[0].0, "policy.rego");
        assert_eq!(
            e[1],
            ("aa.toml".to_string(), "[token_configs]\n".to_string())
        );
        a.entry = vec!["policy.rego=/x".into()];
        let err = entries(&a).unwrap_err().to_string();
        assert!(err.contains("already set"), "{err}");
        a.entry = vec!["noequals".into()];
        let err = entries(&a).unwrap_err().to_string();
        assert!(err.contains("expected KEY=FILE"), "{err}");
    }
}
