//! Kubernetes manifests: adds or replaces one annotation on every pod (template) in a YAML
//! manifest of one or more documents. Pods carry it in `metadata.annotations`; Deployments,
//! ReplicaSets, StatefulSets, DaemonSets, Jobs and ReplicationControllers in
//! `spec.template.metadata.annotations`; CronJobs in
//! `spec.jobTemplate.spec.template.metadata.annotations`; PodTemplates in
//! `template.metadata.annotations`; a `List` in each of its items. Other objects (Services,
//! ConfigMaps, ...) are left as they are. The manifest is parsed and written back with a
//! YAML library: every value and the key order are kept, comments and layout are not.

use yaml_serde::{Mapping, Value};

/// The annotated manifest and the objects that got the annotation (`Kind/name`).
#[derive(Debug, Clone, PartialEq)]
pub struct Annotated {
    pub text: String,
    pub objects: Vec<String>,
}

/// Where a kind keeps its pod template (the path to the mapping that holds `metadata`
/// and `spec`), or `None` for kinds without one.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        "PodTemplate" => Some(&["template"]),
        _ => None,
    }
}

/// Sets `key: value` in the annotations of every pod (template) in `text`. Errors: YAML
/// that does not parse, a document that is not a mapping, a workload without its pod
/// template or spec, and a manifest with no pod at all.
pub fn annotate(text: &str, key: &str, value: &str) -> Result<Annotated, String> {
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let v = yaml_serde::Value::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        docs.push(v);
    }
    let mut objects = Vec::new();
    let mut kinds = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        if doc.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        annotate_object(doc, key, value, &mut objects, &mut kinds)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
    }
    if objects.is_empty() {
        let seen = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        };
        return Err(format!(
            "no pod spec found: expected a Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController or PodTemplate (kinds found: {seen})"
        ));
    }
    let mut out = String::new();
    for doc in docs.iter().filter(|d| !d.is_null()) {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&yaml_serde::to_string(doc).map_err(|e| format!("cannot write YAML: {e}"))?);
    }
    Ok(Annotated { text: out, objects })
}

use serde::Deserialize as _;

fn annotate_object(
    obj: &mut Value,
    key: &str,
    value: &str,
    objects: &mut Vec<String>,
    kinds: &mut Vec<String>,
) -> Result<(), String> {
    let Some(map) = obj.as_mapping_mut() else {
        return Err("not a mapping (a Kubernetes object)".into());
    };
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    let label = format!(
        "{}/{name}",
        if kind.is_empty() { "(no kind)" } else { &kind }
    );
    kinds.push(if kind.is_empty() {
        "(no kind)".into()
    } else {
        kind.clone()
    });
    if kind == "List" {
        let Some(items) = map.get_mut("items").and_then(Value::as_sequence_mut) else {
            return Err(format!("{label}: a List without an items sequence"));
        };
        for item in items {
            annotate_object(item, key, value, objects, kinds)?;
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        return Ok(());
    };
    let mut template = &mut *map;
    let mut walked = String::new();
    for step in path {
        walked.push_str(if walked.is_empty() { "" } else { "." });
        walked.push_str(step);
        template = template
            .get_mut(*step)
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| format!("{label}: no {walked} (the pod template)"))?;
    }
    let spec_at = if walked.is_empty() {
        "spec".to_string()
    } else {
        format!("{walked}.spec")
    };
    if !template.get("spec").is_some_and(Value::is_mapping) {
        return Err(format!("{label}: no {spec_at} (the pod spec)"));
    }
    let annotations = child_mapping(template, "metadata", &label)?;
    let annotations = child_mapping(annotations, "annotations", &label)?;
    annotations.insert(Value::from(key), Value::from(value));
    objects.push(label);
    Ok(())
}

/// The mapping under `key`, created when absent or null; an error when it is something else.
fn child_mapping<'a>(
    parent: &'a mut Mapping,
    key: &str,
    label: &str,
) -> Result<&'a mut Mapping, String> {
    let slot = parent
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut()
        .ok_or_else(|| format!("{label}: {key} is not a mapping"))
}
