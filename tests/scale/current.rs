//! Pods that grow, in the shape today's genpolicy emits (kata-containers 7c6ba40c): the
//! policy is genpolicy's own `rules.rego` from ../shared/peers/kata-genpolicy-current
//! (read here, at run time, never copied) followed by a `policy_data` built the way
//! genpolicy builds it from a pod, its images and that folder's `genpolicy-settings.json`
//! (also read at run time). The requests are what the kata runtime sends for that pod,
//! as kata-agent's current policy input (`InputShape::Current`): CreateSandbox, the pause
//! container's CreateContainer, then each app container's CreateContainer (images pulled
//! in the guest: one `image_guest_pull` storage each) and StartContainer.
//!
//! One dimension grows with `n`, the others stay as in a small pod:
//! - [`Dim::Env`]: `n` entries in the app container's `env:` (literal values, namespace,
//!   values holding `=`, and the downward API: `metadata.name`, `status.podIP`,
//!   `resourceFieldRef`), beside its image's env, `HOSTNAME` and the kubelet's service
//!   variables;
//! - [`Dim::Mounts`]: `n` volume mounts in the app container, in turn a configMap, a secret
//!   and an emptyDir (the settings' `block-encrypted` emptyDir: a `blk` storage each);
//! - [`Dim::Containers`]: `n` app containers in the pod (`policy_data.containers` has
//!   `n + 1` entries); the last one's CreateContainer is measured.
//!
//! Facts taken from genpolicy's source (src/tools/genpolicy/src): `policy.rs`
//! (`generate_initdata_anno`, `get_container_policy`, `get_container_process`,
//! `get_container_annotations`, `get_kata_namespaces`), `containerd.rs` (`get_process`,
//! `get_mounts`, `get_linux`), `mount_and_storage.rs` (`get_policy_mounts`,
//! `get_empty_dir_mount`, `get_guest_empty_dir_mount_and_storage`,
//! `get_config_map_mount_and_storage`), `pod.rs` (`get_env_variables`, `get_value`,
//! `get_value_from_field_ref`, `add_pause_container`), `registry.rs` (`get_process`), and
//! the serialisation of `PolicyData`/`ContainerPolicy`/`KataSpec`.
//!
//! Everything is deterministic: ids and hashes come from the pod's name through [`hex`].

use std::path::Path;

use serde_json::{json, Map, Value};

use super::Scenario;

/// The dimension that grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Env,
    Mounts,
    Containers,
}

impl Dim {
    pub const ALL: [Dim; 3] = [Dim::Env, Dim::Mounts, Dim::Containers];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Env => "env",
            Dim::Mounts => "mounts",
            Dim::Containers => "containers",
        }
    }

    /// The sizes issue 21 asks for.
    pub fn sizes(self) -> &'static [usize] {
        match self {
            Dim::Env => &[1, 16, 64, 256],
            Dim::Mounts => &[1, 8, 32, 64],
            Dim::Containers => &[1, 4, 16],
        }
    }
}

/// The pod of `dim` at size `n`; `shared` is the ../shared folder.
pub fn scenario(shared: &Path, dim: Dim, n: usize) -> Scenario {
    let peer = shared.join("peers/kata-genpolicy-current");
    let rules = std::fs::read_to_string(peer.join("rules.rego"))
        .unwrap_or_else(|e| panic!("{}: {e}", peer.join("rules.rego").display()));
    let settings_text = std::fs::read_to_string(peer.join("genpolicy-settings.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", peer.join("genpolicy-settings.json").display()));
    let settings: Value = serde_json::from_str(&settings_text).expect("settings are JSON");
    let g = Gen { s: &settings };

    let name = format!("{}-{n}", dim.name());
    let pod = Pod::new(&format!("scale-{name}"), &settings);
    let apps: Vec<Ctr> = match dim {
        Dim::Env => vec![app(0, env_entries(n, &pod.name), vec![])],
        Dim::Mounts => vec![app(0, vec![], volumes(n))],
        Dim::Containers => (0..n)
            .map(|k| app(k, vec![env_var("SERVICE_INDEX", &k.to_string())], vec![]))
            .collect(),
    };

    let mut containers = vec![g.policy_container(&pod, &pod.pause, true)];
    containers.extend(apps.iter().map(|c| g.policy_container(&pod, c, false)));
    let policy = format!(
        "{rules}\npolicy_data := {}",
        serde_json::to_string_pretty(&g.policy_data(containers)).unwrap()
    );

    let pause_input = g.create_input(&pod, &pod.pause, true);
    let mut requests = vec![
        ("CreateSandboxRequest".to_string(), g.sandbox_input(&pod)),
        ("CreateContainerRequest".to_string(), pause_input.clone()),
        start(&pause_input),
    ];
    let mut measured = 0;
    let mut first_app = Value::Null;
    for c in &apps {
        let input = g.create_input(&pod, c, false);
        if first_app.is_null() {
            first_app = input.clone();
        }
        measured = requests.len();
        requests.push(("CreateContainerRequest".to_string(), input.clone()));
        requests.push(start(&input));
    }
    let mutations = mutations(dim, n, &requests[measured].1, &first_app);
    Scenario {
        name,
        policy,
        requests,
        measured,
        mutations,
    }
}

// ---- the pod ---------------------------------------------------------------------

/// One `env:` entry: name, the value genpolicy writes into the policy, the value the
/// kubelet puts into the container.
struct EnvVar {
    name: String,
    policy: String,
    input: String,
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        policy: value.into(),
        input: value.into(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum VolKind {
    ConfigMap,
    Secret,
    EmptyDir,
}

struct Volume {
    kind: VolKind,
    mount_path: String,
}

/// A container as genpolicy sees it: its YAML (name, image, env, volume mounts) and its
/// image's config (Entrypoint, Cmd, Env, WorkingDir; no User, so root).
struct Ctr {
    name: String,
    image: String,
    args: Vec<String>,
    image_env: Vec<String>,
    workdir: String,
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
}

struct Pod {
    name: String,
    namespace: String,
    uid: String,
    sandbox_id: String,
    netns: String,
    pause: Ctr,
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SHARED_DIR: &str = "/run/kata-containers/shared/containers/";

impl Pod {
    fn new(name: &str, settings: &Value) -> Pod {
        Pod {
            name: name.into(),
            namespace: "default".into(),
            uid: uuid(&format!("{name}/uid")),
            sandbox_id: hex(&format!("{name}/pause"), 64),
            netns: format!("/var/run/netns/cni-{}", uuid(&format!("{name}/netns"))),
            // pod.rs add_pause_container: the cluster's pause image (Entrypoint /pause,
            // User 65535:65535), readOnlyRootFilesystem, allowPrivilegeEscalation false.
            pause: Ctr {
                name: String::new(),
                image: settings["cluster_config"]["pause_container_image"]
                    .as_str()
                    .expect("pause image")
                    .into(),
                args: vec!["/pause".into()],
                image_env: vec![PATH_ENV.into()],
                workdir: "/".into(),
                env: vec![],
                volumes: vec![],
            },
        }
    }

    fn container_id(&self, c: &Ctr) -> String {
        if c.name.is_empty() {
            self.sandbox_id.clone()
        } else {
            hex(&format!("{}/{}", self.name, c.name), 64)
        }
    }
}

fn app(k: usize, env: Vec<EnvVar>, volumes: Vec<Volume>) -> Ctr {
    Ctr {
        name: format!("app-{k}"),
        image: format!(
            "registry.example.com/team/service-{k}:1.{k}.0@sha256:{}",
            hex(&format!("image-{k}"), 64)
        ),
        args: vec![
            "/usr/local/bin/docker-entrypoint.sh".into(),
            format!("service-{k}"),
            "--port".into(),
            (8080 + k).to_string(),
        ],
        image_env: vec![
            PATH_ENV.into(),
            "LANG=C.UTF-8".into(),
            format!("SERVICE_VERSION=1.{k}.0"),
        ],
        workdir: "/srv".into(),
        env,
        volumes,
    }
}

/// `n` env entries of the kinds a pod spec has (pod.rs `get_value`,
/// `get_value_from_field_ref`): literal values (most), the namespace, values holding `=`,
/// `metadata.name` ($(sandbox-name)), `status.podIP` ($(pod-ip)), `resourceFieldRef`
/// ($(resource-field)).
fn env_entries(n: usize, pod_name: &str) -> Vec<EnvVar> {
    (0..n)
        .map(|i| {
            let (name, policy, input) = match i % 8 {
                0..=2 => (
                    format!("APP_SETTING_{i}"),
                    format!("value-{i}"),
                    format!("value-{i}"),
                ),
                3 => (
                    format!("POD_NAMESPACE_{i}"),
                    "default".into(),
                    "default".into(),
                ),
                4 => (
                    format!("JAVA_OPTS_{i}"),
                    format!("-Dsetting{i}=on"),
                    format!("-Dsetting{i}=on"),
                ),
                5 => (
                    format!("POD_NAME_{i}"),
                    "$(sandbox-name)".into(),
                    pod_name.into(),
                ),
                6 => (
                    format!("POD_IP_{i}"),
                    "$(pod-ip)".into(),
                    "10.244.1.17".into(),
                ),
                _ => (
                    format!("CPU_LIMIT_{i}"),
                    "$(resource-field)".into(),
                    "2".into(),
                ),
            };
            EnvVar {
                name,
                policy,
                input,
            }
        })
        .collect()
}

/// `n` volume mounts: a configMap, a secret and an emptyDir in turn.
fn volumes(n: usize) -> Vec<Volume> {
    (0..n)
        .map(|i| match i % 3 {
            0 => Volume {
                kind: VolKind::ConfigMap,
                mount_path: format!("/etc/config-{i}"),
            },
            1 => Volume {
                kind: VolKind::Secret,
                mount_path: format!("/etc/secret-{i}"),
            },
            _ => Volume {
                kind: VolKind::EmptyDir,
                mount_path: format!("/data/scratch-{i}"),
            },
        })
        .collect()
}

/// The environment the kubelet adds for the `kubernetes` service (matched by the
/// settings' `allow_env_regex`).
const KUBE_ENV: [&str; 8] = [
    "KUBERNETES_SERVICE_HOST=10.0.0.1",
    "KUBERNETES_SERVICE_PORT=443",
    "KUBERNETES_SERVICE_PORT_HTTPS=443",
    "KUBERNETES_PORT=tcp://10.0.0.1:443",
    "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO=tcp",
    "KUBERNETES_PORT_443_TCP_PORT=443",
    "KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1",
];

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn mount(destination: &str, source: &str, type_: &str, options: &[&str]) -> Value {
    json!({"destination": destination, "source": source, "type_": type_, "options": options})
}

fn start(create: &Value) -> (String, Value) {
    (
        "StartContainerRequest".to_string(),
        json!({"container_id": create["container_id"]}),
    )
}

// ---- policy_data and the inputs --------------------------------------------------

struct Gen<'a> {
    s: &'a Value,
}

impl Gen<'_> {
    /// policy.rs `generate_initdata_anno`: containers, then the settings' sections as
    /// `PolicyData` serialises them (`CommonData` and `VfioDevices` keep only their fields).
    fn policy_data(&self, containers: Vec<Value>) -> Value {
        let common_fields = [
            "cpath",
            "root_path",
            "sfprefix",
            "spath",
            "ipv4_a",
            "ip_p",
            "svc_name_downward_env",
            "dns_label",
            "default_caps",
            "privileged_caps",
        ];
        let common: Map<String, Value> = common_fields
            .iter()
            .map(|k| (k.to_string(), self.s["common"][k].clone()))
            .collect();
        json!({
            "containers": containers,
            "common": common,
            "sandbox": {"storages": self.sandbox_storages()},
            "request_defaults": self.s["request_defaults"],
            "devices": {"vfio": {
                "device_path": self.s["devices"]["vfio"]["device_path"],
                "nvidia": {}
            }},
            "cluster_config": self.s["cluster_config"],
        })
    }

    /// The settings' sandbox storages as genpolicy holds them (`agent::Storage`, every
    /// field, proto3 defaults for those the settings leave out).
    fn sandbox_storages(&self) -> Value {
        let all = self.s["sandbox"]["storages"].as_array().unwrap();
        let text = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(json!(""));
        let list = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(json!([]));
        Value::Array(
            all.iter()
                .map(|st| {
                    json!({
                        "driver": text(st, "driver"),
                        "driver_options": list(st, "driver_options"),
                        "source": text(st, "source"),
                        "fstype": text(st, "fstype"),
                        "options": list(st, "options"),
                        "mount_point": text(st, "mount_point"),
                        "fs_group": st.get("fs_group").cloned().unwrap_or(Value::Null),
                        "shared": st.get("shared").cloned().unwrap_or(json!(false)),
                    })
                })
                .collect(),
        )
    }

    fn c_settings(&self, pause: bool) -> &Value {
        &self.s[if pause {
            "pause_container"
        } else {
            "other_container"
        }]
    }

    fn default_caps(&self) -> Value {
        self.s["common"]["default_caps"].clone()
    }

    /// policy.rs `get_container_policy` for a non-privileged container.
    fn policy_container(&self, pod: &Pod, c: &Ctr, pause: bool) -> Value {
        let cs = self.c_settings(pause);

        // get_container_annotations
        let mut ann: Map<String, Value> = cs["Annotations"]
            .as_object()
            .expect("settings annotations")
            .clone();
        ann.insert(
            "io.kubernetes.cri.sandbox-name".into(),
            json!(format!("^{}$", pod.name)),
        );
        if !pause {
            ann.insert("io.kubernetes.cri.image-name".into(), json!(c.image));
        }
        ann.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            json!(pod.namespace),
        );
        if pause {
            ann.insert(
                "nerdctl/network-namespace".into(),
                json!("^/var/run/netns/cni-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
            );
        } else {
            ann.insert("io.kubernetes.cri.container-name".into(), json!(c.name));
        }

        // get_container_process: image env, HOSTNAME, the YAML's env (no duplicates).
        let mut env = c.image_env.clone();
        if !pause {
            env.push("HOSTNAME=$(host-name)".into());
            for e in &c.env {
                let s = format!("{}={}", e.name, e.policy);
                if !env.contains(&s) {
                    env.push(s);
                }
            }
        }
        let user = if pause {
            json!({"UID": 65535, "GID": 65535, "AdditionalGids": [65535], "Username": ""})
        } else {
            json!({"UID": 0, "GID": 0, "AdditionalGids": [0], "Username": ""})
        };
        let caps = self.default_caps();
        let process = json!({
            "Terminal": false,
            "User": user,
            "Args": c.args,
            "Env": env,
            "Cwd": c.workdir,
            "Capabilities": {"Ambient": [], "Bounding": caps, "Effective": caps,
                             "Inheritable": [], "Permitted": caps},
            "NoNewPrivileges": pause,
        });

        // containerd::get_mounts, then mount_and_storage::get_policy_mounts, then each
        // volume (yaml::get_container_mounts_and_storages).
        let mut mounts = containerd_mounts(pause);
        self.settings_mounts(&mut mounts, c, pause);
        let mut storages = vec![];
        for v in &c.volumes {
            match v.kind {
                VolKind::ConfigMap | VolKind::Secret => {
                    let cm = &self.s["volumes"]["configMap"];
                    mounts.push(json!({
                        "destination": v.mount_path,
                        "source": format!("{}{}$", cm["mount_point"].as_str().unwrap(), base_name(&v.mount_path)),
                        "type_": cm["mount_type"],
                        "options": cm["options"],
                    }));
                }
                VolKind::EmptyDir => {
                    // cluster_config.emptydir_type "block-encrypted": emptyDir_encrypted.
                    let ed = &self.s["volumes"]["emptyDir_encrypted"];
                    storages.push(json!({
                        "driver": ed["driver"],
                        "driver_options": ed["driver_options"],
                        "source": ed["source"],
                        "fstype": ed["fstype"],
                        "options": ed["options"],
                        "mount_point": ed["mount_point"],
                        "fs_group": null,
                        "shared": ed["shared"],
                    }));
                    mounts.push(json!({
                        "destination": v.mount_path,
                        "source": "",
                        "type_": ed["mount_type"],
                        "options": ["rbind", "rprivate", "rw"],
                    }));
                }
            }
        }

        // containerd::get_linux, the settings' paths and sysctls, get_kata_namespaces.
        let (masked, readonly) = if pause {
            (
                cs["Linux"]["MaskedPaths"].clone(),
                cs["Linux"]["ReadonlyPaths"].clone(),
            )
        } else {
            (
                json!([
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware"
                ]),
                json!([
                    "/proc/asound",
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger"
                ]),
            )
        };
        let linux = json!({
            "Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""},
                           {"Type": "mount", "Path": ""}],
            "MaskedPaths": masked,
            "ReadonlyPaths": readonly,
            "Devices": [],
            "Sysctl": cs["Linux"]["Sysctl"],
        });
        let runtime_anno_patterns = if pause {
            json!({})
        } else {
            json!({
                "^io\\.kubernetes\\.container\\.terminationMessagePath$": "^/.*$",
                "^io\\.kubernetes\\.container\\.terminationMessagePolicy$": "^(File|FallbackToLogsOnError)$",
            })
        };
        json!({
            "OCI": {
                "Version": self.s["kata_config"]["oci_version"],
                "Process": process,
                "Root": {"Path": cs["Root"]["Path"], "Readonly": pause},
                "Mounts": mounts,
                "Annotations": ann,
                "Linux": linux,
            },
            "storages": storages,
            "devices": [],
            "sandbox_pidns": false,
            "exec_commands": [],
            "runtime_anno_patterns": runtime_anno_patterns,
        })
    }

    /// mount_and_storage::get_policy_mounts: the settings' mounts whose destination is in
    /// `mount_destinations` (or a volume mount's path), a missing bind source made
    /// `$(sfprefix)<file name>$`, an existing destination replaced in place, and `rw`
    /// appended to an app container's /etc/hostname and /etc/resolv.conf.
    fn settings_mounts(&self, mounts: &mut Vec<Value>, c: &Ctr, pause: bool) {
        let destinations = strings(&self.s["mount_destinations"]);
        for sm in self.c_settings(pause)["Mounts"].as_array().unwrap() {
            let dest = sm["destination"].as_str().unwrap();
            if !destinations.iter().any(|d| d == dest)
                && !c.volumes.iter().any(|v| v.mount_path == dest)
            {
                continue;
            }
            let type_ = sm["type_"].as_str().unwrap();
            let mut source = sm["source"].as_str().unwrap_or("").to_string();
            if source.is_empty() && type_ == "bind" {
                source = format!("$(sfprefix){}$", base_name(dest));
            }
            let mut options = strings(&sm["options"]);
            if let Some(m) = mounts.iter_mut().find(|m| m["destination"] == dest) {
                m["type_"] = json!(type_);
                m["source"] = json!(source);
                m["options"] = json!(options);
            } else {
                if !pause && (dest == "/etc/hostname" || dest == "/etc/resolv.conf") {
                    options.push("rw".into());
                }
                mounts.push(json!({"destination": dest, "source": source, "type_": type_, "options": options}));
            }
        }
    }

    /// CreateSandboxRequest as the kata runtime sends it: the sandbox's shm storage.
    fn sandbox_input(&self, pod: &Pod) -> Value {
        json!({
            "hostname": pod.name,
            "dns": ["nameserver 10.96.0.10",
                    "search default.svc.cluster.local svc.cluster.local cluster.local",
                    "options ndots:5"],
            "storages": self.sandbox_storages(),
            "sandbox_pidns": false,
            "sandbox_id": pod.sandbox_id,
            "guest_hook_path": "",
            "kernel_modules": [],
        })
    }

    /// CreateContainerRequest as containerd + the kata runtime send it for `c` (every
    /// field of the protobuf message, as kata-agent's policy input has them).
    fn create_input(&self, pod: &Pod, c: &Ctr, pause: bool) -> Value {
        let cid = pod.container_id(c);
        let mut ann = Map::new();
        let mut put = |k: &str, v: &str| {
            ann.insert(k.to_string(), json!(v));
        };
        put(
            "io.katacontainers.pkg.oci.bundle_path",
            &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{cid}"),
        );
        put(
            "io.katacontainers.pkg.oci.container_type",
            if pause {
                "pod_sandbox"
            } else {
                "pod_container"
            },
        );
        put(
            "io.kubernetes.cri.container-type",
            if pause { "sandbox" } else { "container" },
        );
        put("io.kubernetes.cri.sandbox-id", &pod.sandbox_id);
        put("io.kubernetes.cri.sandbox-name", &pod.name);
        put("io.kubernetes.cri.sandbox-namespace", &pod.namespace);
        put("io.kubernetes.cri.sandbox-uid", &pod.uid);
        if pause {
            put(
                "io.kubernetes.cri.sandbox-log-directory",
                &format!("/var/log/pods/{}_{}_{}", pod.namespace, pod.name, pod.uid),
            );
            put("nerdctl/network-namespace", &pod.netns);
        } else {
            put("io.kubernetes.cri.container-name", &c.name);
            put("io.kubernetes.cri.image-name", &c.image);
        }

        // Files the runtime shares with the guest: <cid>-<16 hex>-<name>.
        let shared = |name: &str| {
            format!(
                "{SHARED_DIR}{cid}-{}-{name}",
                hex(&format!("{cid}/{name}"), 16)
            )
        };
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
        ];
        let root = format!("/run/kata-containers/{cid}/rootfs");
        let pull = json!({"metadata": ann}).to_string();
        let mut storages = vec![json!({
            "driver": "image_guest_pull",
            "driver_options": [format!("image_guest_pull={pull}")],
            "source": c.image,
            "fstype": "overlay",
            "options": [],
            "mount_point": root,
            "fs_group": null,
            "shared": false,
        })];
        if pause {
            mounts.push(mount(
                "/dev/shm",
                "/run/kata-containers/sandbox/shm",
                "bind",
                &["rbind"],
            ));
            mounts.push(mount(
                "/etc/resolv.conf",
                &shared("resolv.conf"),
                "bind",
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            ));
        } else {
            mounts.push(mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ));
            let mut blk = 0;
            for v in &c.volumes {
                match v.kind {
                    VolKind::ConfigMap | VolKind::Secret => {
                        // configMaps and secrets are shared "watchable" (sfprefix allows it).
                        let src = format!(
                            "{SHARED_DIR}watchable/{cid}-{}-{}",
                            hex(&format!("{cid}{}", v.mount_path), 16),
                            base_name(&v.mount_path)
                        );
                        mounts.push(mount(
                            &v.mount_path,
                            &src,
                            "bind",
                            &["rbind", "rprivate", "ro"],
                        ));
                    }
                    VolKind::EmptyDir => {
                        // A virtio-blk disk per emptyDir, at its PCI path (bridge/slot).
                        let source = format!("{:02x}/{:02x}", 2 + blk / 30, 1 + blk % 30);
                        blk += 1;
                        let mount_point = format!(
                            "/run/kata-containers/sandbox/storage/{}",
                            base64url(source.as_bytes())
                        );
                        storages.push(json!({
                            "driver": "blk",
                            "driver_options": ["encryption_key=ephemeral", "create_filesystem"],
                            "source": source,
                            "fstype": "ext4",
                            "options": [],
                            "mount_point": mount_point,
                            "fs_group": null,
                            "shared": true,
                        }));
                        mounts.push(mount(
                            &v.mount_path,
                            &mount_point,
                            "bind",
                            &["rbind", "rprivate", "rw"],
                        ));
                    }
                }
            }
            mounts.push(mount(
                "/etc/hosts",
                &shared("hosts"),
                "bind",
                &["rbind", "rprivate", "rw"],
            ));
            mounts.push(mount(
                "/dev/termination-log",
                &shared("termination-log"),
                "bind",
                &["rbind", "rprivate", "rw"],
            ));
            mounts.push(mount(
                "/etc/hostname",
                &shared("hostname"),
                "bind",
                &["rbind", "rprivate", "rw"],
            ));
            mounts.push(mount(
                "/etc/resolv.conf",
                &shared("resolv.conf"),
                "bind",
                &["rbind", "rprivate", "rw"],
            ));
            mounts.push(mount(
                "/dev/shm",
                "/run/kata-containers/sandbox/shm",
                "bind",
                &["rbind"],
            ));
            mounts.push(mount(
                "/var/run/secrets/kubernetes.io/serviceaccount",
                &shared("serviceaccount"),
                "bind",
                &["rbind", "rprivate", "ro"],
            ));
        }

        let mut env = c.image_env.clone();
        if !pause {
            env.push(format!("HOSTNAME={}", pod.name));
            env.extend(c.env.iter().map(|e| format!("{}={}", e.name, e.input)));
            env.extend(KUBE_ENV.iter().map(|s| s.to_string()));
        }
        let user = if pause {
            json!({"UID": 65535, "GID": 65535, "AdditionalGids": [65535], "Username": ""})
        } else {
            json!({"UID": 0, "GID": 0, "AdditionalGids": [0], "Username": ""})
        };
        let caps = self.default_caps();
        let process = json!({
            "Terminal": false,
            "ConsoleSize": null,
            "User": user,
            "Args": c.args,
            "Env": env,
            "Cwd": c.workdir,
            "Capabilities": {"Bounding": caps, "Effective": caps, "Inheritable": [],
                             "Permitted": caps, "Ambient": []},
            "Rlimits": [],
            "NoNewPrivileges": pause,
            "ApparmorProfile": if pause { "" } else { "cri-containerd.apparmor.d" },
            "OOMScoreAdj": if pause { -998 } else { 1000 },
            "SelinuxLabel": "",
        });
        let masked = if pause {
            self.c_settings(true)["Linux"]["MaskedPaths"].clone()
        } else {
            json!([
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap"
            ])
        };
        let memory = if pause {
            Value::Null
        } else {
            json!({"Limit": 0, "Reservation": 0, "Swap": 0, "Kernel": 0, "KernelTCP": 0,
                   "Swappiness": 0, "DisableOOMKiller": false})
        };
        let linux = json!({
            "UIDMappings": [],
            "GIDMappings": [],
            "Sysctl": if pause { self.c_settings(true)["Linux"]["Sysctl"].clone() } else { json!({}) },
            "Resources": {
                "Devices": [],
                "Memory": memory,
                "CPU": {"Shares": 2, "Quota": 0, "Period": 100000, "RealtimeRuntime": 0,
                        "RealtimePeriod": 0, "Cpus": "", "Mems": ""},
                "Pids": null,
                "BlockIO": null,
                "HugepageLimits": [],
                "Network": null,
            },
            "CgroupsPath": format!("kubepods-besteffort-pod{}.slice:cri-containerd:{cid}",
                                   pod.uid.replace('-', "_")),
            "Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""},
                           {"Type": "mount", "Path": ""}, {"Type": "network", "Path": pod.netns}],
            "Devices": [],
            "Seccomp": null,
            "RootfsPropagation": "",
            "MaskedPaths": masked,
            "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "MountLabel": "",
            "IntelRdt": null,
        });
        json!({
            "container_id": cid,
            "exec_id": cid,
            "string_user": null,
            "devices": [],
            "storages": storages,
            "OCI": {
                "Version": "1.1.0",
                "Process": process,
                "Root": {"Path": root, "Readonly": pause},
                "Hostname": if pause { pod.name.as_str() } else { "" },
                "Mounts": mounts,
                "Hooks": null,
                "Annotations": ann,
                "Linux": linux,
                "Solaris": null,
                "Windows": null,
            },
            "sandbox_pidns": false,
            "shared_mounts": [],
            "stdin_port": 0,
            "stdout_port": 0,
            "stderr_port": 0,
        })
    }
}

/// containerd::get_mounts for a non-privileged container.
fn containerd_mounts(pause: bool) -> Vec<Value> {
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    if !pause {
        m.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ));
    }
    m
}

// ---- mutations -------------------------------------------------------------------

/// Variants of the measured CreateContainer that kata denies.
fn mutations(dim: Dim, n: usize, base: &Value, first_app: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut edit = |label: &str, f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        out.push((label.to_string(), v));
    };
    let env =
        |v: &mut Value| -> Vec<Value> { v["OCI"]["Process"]["Env"].as_array().unwrap().clone() };
    edit("extra env var not in the policy", &|v| {
        let mut e = env(v);
        e.push(json!("LD_PRELOAD=/tmp/evil.so"));
        v["OCI"]["Process"]["Env"] = json!(e);
    });
    edit("changed image env value (PATH)", &|v| {
        v["OCI"]["Process"]["Env"][0] = json!("PATH=/tmp/evil:/usr/bin:/bin");
    });
    edit("other command line", &|v| {
        v["OCI"]["Process"]["Args"] = json!(["/bin/sh", "-c", "id"]);
    });
    edit("extra host bind mount", &|v| {
        v["OCI"]["Mounts"].as_array_mut().unwrap().push(mount(
            "/host",
            "/",
            "bind",
            &["rbind", "rw"],
        ));
    });
    let last_index = |v: &Value, key: &str, pred: &dyn Fn(&Value) -> bool| -> usize {
        let a = v
            .pointer(key)
            .and_then(Value::as_array)
            .expect("array in the input");
        a.iter().rposition(pred).expect("an element to mutate")
    };
    match dim {
        Dim::Env => {
            edit("changed pod env value", &|v| {
                let i = last_index(v, "/OCI/Process/Env", &|e| {
                    e.as_str().unwrap().starts_with("APP_SETTING_")
                });
                let s = v["OCI"]["Process"]["Env"][i].as_str().unwrap().to_string();
                v["OCI"]["Process"]["Env"][i] = json!(format!("{s}-evil"));
            });
            if n >= 6 {
                edit("metadata.name env var with another pod's name", &|v| {
                    let i = last_index(v, "/OCI/Process/Env", &|e| {
                        e.as_str().unwrap().starts_with("POD_NAME_")
                    });
                    let s = v["OCI"]["Process"]["Env"][i].as_str().unwrap().to_string();
                    let name = s.split('=').next().unwrap().to_string();
                    v["OCI"]["Process"]["Env"][i] = json!(format!("{name}=other-pod"));
                });
            }
        }
        Dim::Mounts => {
            let is_volume = |m: &Value| {
                let d = m["destination"].as_str().unwrap();
                d.starts_with("/etc/config-")
                    || d.starts_with("/etc/secret-")
                    || d.starts_with("/data/scratch-")
            };
            edit("changed volume mount destination", &|v| {
                let i = last_index(v, "/OCI/Mounts", &is_volume);
                v["OCI"]["Mounts"][i]["destination"] = json!("/etc/evil");
            });
            edit(
                "configMap mount source in another container's share",
                &|v| {
                    let i = last_index(v, "/OCI/Mounts", &|m| {
                        m["destination"]
                            .as_str()
                            .unwrap()
                            .starts_with("/etc/config-")
                    });
                    let cid = v["container_id"].as_str().unwrap().to_string();
                    let src = v["OCI"]["Mounts"][i]["source"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    v["OCI"]["Mounts"][i]["source"] = json!(src.replace(&cid, &"f".repeat(64)));
                },
            );
            edit("configMap mount read-write", &|v| {
                let i = last_index(v, "/OCI/Mounts", &|m| {
                    m["destination"]
                        .as_str()
                        .unwrap()
                        .starts_with("/etc/config-")
                });
                v["OCI"]["Mounts"][i]["options"] = json!(["rbind", "rprivate", "rw"]);
            });
            edit("extra block storage", &|v| {
                v["storages"].as_array_mut().unwrap().push(json!({
                    "driver": "blk",
                    "driver_options": ["encryption_key=ephemeral", "create_filesystem"],
                    "source": "1f/1f",
                    "fstype": "ext4",
                    "options": [],
                    "mount_point": format!("/run/kata-containers/sandbox/storage/{}", base64url(b"1f/1f")),
                    "fs_group": null,
                    "shared": true,
                }));
            });
        }
        Dim::Containers => {
            if n > 1 {
                let args = first_app["OCI"]["Process"]["Args"].clone();
                edit("another container's command line", &|v| {
                    v["OCI"]["Process"]["Args"] = args.clone();
                });
            }
            edit("container name not in the policy", &|v| {
                v["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = json!("intruder");
            });
            edit("other sandbox name", &|v| {
                v["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = json!("other-pod");
            });
        }
    }
    out
}

// ---- deterministic ids -----------------------------------------------------------

/// `len` lowercase hex digits derived from `seed` (FNV-1a, then splitmix64 steps).
pub fn hex(seed: &str, len: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(len);
    out
}

/// A UUID-shaped id derived from `seed`.
pub fn uuid(seed: &str) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// base64url with padding, as Rego's `base64url.encode` (the rules derive a block
/// device's mount point from its source with it).
fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
