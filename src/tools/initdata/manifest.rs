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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "io.katacontainers.config.hypervisor.cc_init_data";

    fn docs(text: &str) -> Vec<Value> {
        yaml_serde::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect()
    }

    fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| &v[*k])
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  runtimeClassName: kata\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'echo hi']\n";

    #[test]
    fn pod_gets_annotations_created() {
        let a = annotate(POD, KEY, "v1").unwrap();
        assert_eq!(a.objects, vec!["Pod/p"]);
        let d = &docs(&a.text)[0];
        assert_eq!(
            at(d, &["metadata", "annotations", KEY]).as_str(),
            Some("v1")
        );
        // Everything else is as it was.
        let mut expected = docs(POD).remove(0);
        let mut got = d.clone();
        got["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("annotations");
        expected["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(got, expected);
    }

    #[test]
    fn existing_annotation_is_replaced_and_others_kept() {
        let text = "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    other: x\n    io.katacontainers.config.hypervisor.cc_init_data: old\nspec:\n  containers: []\n";
        let a = annotate(text, KEY, "new").unwrap();
        let d = &docs(&a.text)[0];
        let ann = at(d, &["metadata", "annotations"]).as_mapping().unwrap();
        assert_eq!(ann.len(), 2);
        assert_eq!(ann.get("other").and_then(Value::as_str), Some("x"));
        assert_eq!(ann.get(KEY).and_then(Value::as_str), Some("new"));
        // Null annotations (`annotations:` with nothing) become a mapping.
        let a = annotate("kind: Pod\nmetadata:\n  annotations:\nspec: {}\n", KEY, "v").unwrap();
        assert_eq!(
            at(&docs(&a.text)[0], &["metadata", "annotations", KEY]).as_str(),
            Some("v")
        );
    }

    #[test]
    fn every_workload_kind_annotates_its_pod_template() {
        let template = "  template:\n    metadata:\n      labels: {app: a}\n    spec:\n      containers: [{name: c, image: i}]\n";
        for kind in [
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "ReplicationController",
        ] {
            let text =
                format!("kind: {kind}\nmetadata:\n  name: w\nspec:\n  replicas: 1\n{template}");
            let a = annotate(&text, KEY, "v").unwrap();
            assert_eq!(a.objects, vec![format!("{kind}/w")]);
            let d = &docs(&a.text)[0];
            assert_eq!(
                at(d, &["spec", "template", "metadata", "annotations", KEY]).as_str(),
                Some("v"),
                "{kind}"
            );
            assert_eq!(
                at(d, &["spec", "template", "metadata", "labels", "app"]).as_str(),
                Some("a")
            );
            assert!(
                at(d, &["metadata", "annotations"]).is_null(),
                "{kind}: object itself untouched"
            );
        }
        let cron = "kind: CronJob\nmetadata:\n  name: c\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{name: c, image: i}]\n";
        let a = annotate(cron, KEY, "v").unwrap();
        let d = &docs(&a.text)[0];
        assert_eq!(
            at(
                d,
                &[
                    "spec",
                    "jobTemplate",
                    "spec",
                    "template",
                    "metadata",
                    "annotations",
                    KEY
                ]
            )
            .as_str(),
            Some("v")
        );
        assert_eq!(at(d, &["spec", "schedule"]).as_str(), Some("* * * * *"));
        let pt = "kind: PodTemplate\nmetadata: {name: t}\ntemplate:\n  spec:\n    containers: []\n";
        let a = annotate(pt, KEY, "v").unwrap();
        assert_eq!(
            at(
                &docs(&a.text)[0],
                &["template", "metadata", "annotations", KEY]
            )
            .as_str(),
            Some("v")
        );
    }

    #[test]
    fn multi_document_and_list_manifests() {
        let svc =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: 80\n";
        let job = "kind: Job\nmetadata:\n  name: j\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: []\n";
        let text = format!("---\n{svc}---\n{POD}---\n{job}---\n");
        let a = annotate(&text, KEY, "v").unwrap();
        assert_eq!(a.objects, vec!["Pod/p", "Job/j"]);
        let d = docs(&a.text);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], docs(svc)[0], "the Service is unchanged");
        assert_eq!(
            at(&d[1], &["metadata", "annotations", KEY]).as_str(),
            Some("v")
        );
        assert_eq!(
            at(&d[2], &["spec", "template", "metadata", "annotations", KEY]).as_str(),
            Some("v")
        );
        let list = "kind: List\nitems:\n- kind: ConfigMap\n  metadata: {name: m}\n- kind: Pod\n  metadata: {name: q}\n  spec: {containers: []}\n";
        let a = annotate(list, KEY, "v").unwrap();
        assert_eq!(a.objects, vec!["Pod/q"]);
        assert_eq!(
            at(
                &docs(&a.text)[0]["items"][1],
                &["metadata", "annotations", KEY]
            )
            .as_str(),
            Some("v")
        );
    }

    #[test]
    fn manifests_without_a_pod_spec_are_errors() {
        let e = annotate("kind: ConfigMap\nmetadata: {name: m}\ndata: {}\n", KEY, "v").unwrap_err();
        assert!(
            e.contains("no pod spec found") && e.contains("ConfigMap"),
            "{e}"
        );
        let e = annotate("", KEY, "v").unwrap_err();
        assert!(e.contains("no pod spec found") && e.contains("none"), "{e}");
        let e = annotate(
            "kind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 1\n",
            KEY,
            "v",
        )
        .unwrap_err();
        assert!(e.contains("Deployment/d: no spec.template"), "{e}");
        let e = annotate(
            "kind: Job\nmetadata: {name: j}\nspec:\n  template:\n    metadata: {}\n",
            KEY,
            "v",
        )
        .unwrap_err();
        assert!(
            e.contains("Job/j: no spec.template.spec (the pod spec)"),
            "{e}"
        );
        let e = annotate("kind: Pod\nmetadata: {name: p}\n", KEY, "v").unwrap_err();
        assert!(e.contains("Pod/p: no spec"), "{e}");
        let e = annotate("kind: Pod\nmetadata: [1]\nspec: {}\n", KEY, "v").unwrap_err();
        assert!(e.contains("metadata is not a mapping"), "{e}");
        let e = annotate("- just\n- a list\n", KEY, "v").unwrap_err();
        assert!(e.contains("document 1: not a mapping"), "{e}");
        let e = annotate("kind: Pod\nmetadata: {name: p\n", KEY, "v").unwrap_err();
        assert!(e.contains("not valid YAML"), "{e}");
    }
}
