//! genpolicy's 2024 policy family (tardev snapshotter: one dm-verity block storage per
//! image layer) regrown to an image of `n` layers. The base is the recorded `web`
//! scenario of ../shared/peers/kata-genpolicy (read at run time, never copied): its
//! rules, its `policy_data` with the app container's image replaced by one of `n`
//! layers, and its recorded requests with that container's CreateContainerRequest
//! regrown to match.
//!
//! Facts taken from genpolicy's source before the tardev support was removed (kata
//! f6016f4f36^, `policy.rs`: `get_image_layer_storages`, `name_to_hash`):
//! - a layer's name is the sha256 hex of its OCI chain id (`sha256:` + sha256 of
//!   "<previous chain id> <diff id>", the first chain id being the first diff id);
//! - the policy's storages are one `blk`/`tar` storage per layer, options
//!   `["$(hash<i>)"]`, mount point `$(layer<i>)`, index 0 the top layer, then the
//!   `overlayfs`/`fuse3.kata-overlay` storage whose two options are the layer names and
//!   the verity root hashes, each joined with `:`, top layer first;
//! - the runtime sends (as recorded in `web`) one `blk` storage per layer (source a PCI
//!   path, options `ro`, `block_device=file`, `is-layer`, `root-hash=<hash>`, mount
//!   point `/run/kata-containers/sandbox/layers/<name>`), then the overlay storage
//!   (layer-src-prefix, one `layer=<base64 of "<name>,tar,ro,...,root-hash=<hash>">`
//!   per layer, `overlay-rw`, `lowerdir=<names joined by :>`).

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::Scenario;

/// The layer counts the issue asks for.
pub const LAYERS: [usize; 8] = [1, 4, 8, 12, 16, 32, 64, 128];

const BASE: &str = "peers/kata-genpolicy/web";
/// The container of `policy_data.containers` (and the CreateContainerRequest, in
/// request order) that gets the `n`-layer image: `web`'s app container.
const APP: usize = 1;
const DATA_MARK: &str = "\npolicy_data := ";
const OPT_PREFIX: &str = "io.katacontainers.fs-opt.";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (names, verity root hashes) of an `n`-layer image, top layer first, as genpolicy
/// lists them. Deterministic in `n`.
fn image(n: usize) -> (Vec<String>, Vec<String>) {
    let mut chain = String::new();
    let mut names = Vec::new();
    let mut hashes = Vec::new();
    for k in 0..n {
        let diff_id = format!("sha256:{}", sha256_hex(&format!("image {n} diff {k}")));
        chain = if chain.is_empty() {
            diff_id
        } else {
            format!("sha256:{}", sha256_hex(&format!("{chain} {diff_id}")))
        };
        names.push(sha256_hex(&chain));
        hashes.push(sha256_hex(&format!("image {n} verity {k}")));
    }
    names.reverse();
    hashes.reverse();
    (names, hashes)
}

/// The policy's storages for the image: one per layer, then the overlay.
fn policy_storages(names: &[String], hashes: &[String], overlay: &Value) -> Value {
    let mut out: Vec<Value> = (0..names.len())
        .map(|i| {
            json!({
                "driver": "blk", "driver_options": [], "source": "", "fstype": "tar",
                "options": [format!("$(hash{i})")], "mount_point": format!("$(layer{i})"),
                "fs_group": null
            })
        })
        .collect();
    let mut overlay = overlay.clone();
    overlay["options"] = json!([names.join(":"), hashes.join(":")]);
    out.push(overlay);
    Value::Array(out)
}

/// The runtime's storages for the image, shaped as the recorded ones (`blk`, `overlay`:
/// a recorded layer storage and the recorded overlay storage).
fn request_storages(
    names: &[String],
    hashes: &[String],
    blk: &Value,
    overlay: &Value,
) -> Vec<Value> {
    let mut out: Vec<Value> = names
        .iter()
        .zip(hashes)
        .enumerate()
        .map(|(i, (name, hash))| {
            let mut s = blk.clone();
            s["source"] = json!(format!("0001:00:{:02x}.0", i + 2));
            s["options"] = json!([
                "ro",
                format!("{OPT_PREFIX}block_device=file"),
                format!("{OPT_PREFIX}is-layer"),
                format!("{OPT_PREFIX}root-hash={hash}"),
            ]);
            s["mount_point"] = json!(format!("/run/kata-containers/sandbox/layers/{name}"));
            s
        })
        .collect();
    let mut overlay = overlay.clone();
    let prefix = overlay["options"][0].clone();
    let mut options = vec![prefix];
    for (name, hash) in names.iter().zip(hashes) {
        let layer = format!(
            "{name},tar,ro,{OPT_PREFIX}block_device=file,{OPT_PREFIX}is-layer,{OPT_PREFIX}root-hash={hash}"
        );
        options.push(json!(format!(
            "{OPT_PREFIX}layer={}",
            base64::engine::general_purpose::STANDARD.encode(layer)
        )));
    }
    options.push(json!(format!("{OPT_PREFIX}overlay-rw")));
    options.push(json!(format!("lowerdir={}", names.join(":"))));
    overlay["options"] = Value::Array(options);
    out.push(overlay);
    out
}

fn driver_is(s: &Value, driver: &str) -> bool {
    s["driver"] == driver
}

/// The `web` pod with its app container's image grown to `n` layers. `shared` is
/// ../shared.
pub fn scenario(shared: &Path, n: usize) -> Scenario {
    assert!(n >= 1, "an image has at least one layer");
    let dir = shared.join(BASE);
    let text = std::fs::read_to_string(dir.join("policy.rego"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let at = text
        .find(DATA_MARK)
        .expect("policy_data in the base policy");
    let (rules, data) = text.split_at(at);
    let mut data: Value =
        serde_json::from_str(&data[DATA_MARK.len()..]).expect("policy_data is JSON");
    let inputs = std::fs::read_to_string(dir.join("inputs.txt")).expect("inputs.txt");
    let requests: Vec<(String, Value)> = super::parse_inputs(&inputs)
        .into_iter()
        .filter(|(ty, _)| ty != "AllowRequestsFailingPolicy")
        .collect();

    let (names, hashes) = image(n);
    let container = &mut data["containers"][APP];
    let overlay = container["storages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| driver_is(s, "overlayfs")))
        .expect("the app container has an overlay storage")
        .clone();
    container["storages"] = policy_storages(&names, &hashes, &overlay);
    let policy = format!(
        "{rules}{DATA_MARK}{}\n",
        serde_json::to_string_pretty(&data).expect("policy_data")
    );

    let measured = requests
        .iter()
        .enumerate()
        .filter(|(_, (ty, _))| ty == "CreateContainerRequest")
        .nth(APP)
        .map(|(i, _)| i)
        .expect("the app container's CreateContainerRequest");
    let mut requests = requests;
    let input = &mut requests[measured].1;
    let recorded = input["storages"].as_array().expect("storages").clone();
    let blk = recorded
        .iter()
        .find(|s| driver_is(s, "blk"))
        .expect("a recorded layer storage");
    let overlay = recorded
        .iter()
        .find(|s| driver_is(s, "overlayfs"))
        .expect("a recorded overlay storage");
    let storages = request_storages(&names, &hashes, blk, overlay);
    input["storages"] = Value::Array(storages.clone());
    let mutations = mutations(input, &storages, n);
    Scenario {
        name: format!("layers-{n}"),
        policy,
        requests,
        measured,
        mutations,
    }
}

/// Variants of the grown request that genpolicy's rules deny: a changed root hash (in
/// the middle layer's block storage), a missing layer (its block storage, overlay
/// option and lowerdir entry all gone), and, with two layers or more, two layers
/// swapped in the overlay (options and lowerdir).
fn mutations(input: &Value, storages: &[Value], n: usize) -> Vec<(String, Value)> {
    let mid = n / 2;
    let overlay_at = storages.len() - 1;
    let with = |storages: Vec<Value>| {
        let mut v = input.clone();
        v["storages"] = Value::Array(storages);
        v
    };
    let mut out = Vec::new();

    let mut changed = storages.to_vec();
    let opt = changed[mid]["options"][3]
        .as_str()
        .expect("root-hash option")
        .to_string();
    let flipped = if opt.ends_with('0') { '1' } else { '0' };
    changed[mid]["options"][3] = json!(format!("{}{flipped}", &opt[..opt.len() - 1]));
    out.push((
        format!("layers-{n}: root hash of layer {mid} changed"),
        with(changed),
    ));

    let mut missing = storages.to_vec();
    let names: Vec<String> = lowerdir(&missing[overlay_at]);
    missing.remove(mid);
    let overlay = &mut missing[overlay_at - 1];
    let mut options = overlay["options"].as_array().expect("options").clone();
    options.remove(mid + 1);
    let mut kept = names.clone();
    kept.remove(mid);
    *options.last_mut().expect("lowerdir") = json!(format!("lowerdir={}", kept.join(":")));
    overlay["options"] = Value::Array(options);
    out.push((format!("layers-{n}: layer {mid} missing"), with(missing)));

    if n >= 2 {
        let mut swapped = storages.to_vec();
        let overlay = &mut swapped[overlay_at];
        let mut options = overlay["options"].as_array().expect("options").clone();
        options.swap(mid, mid + 1);
        let mut order = names;
        order.swap(mid - 1, mid);
        *options.last_mut().expect("lowerdir") = json!(format!("lowerdir={}", order.join(":")));
        overlay["options"] = Value::Array(options);
        out.push((
            format!("layers-{n}: layers {} and {mid} swapped", mid - 1),
            with(swapped),
        ));
    }
    out
}

fn lowerdir(overlay: &Value) -> Vec<String> {
    overlay["options"]
        .as_array()
        .and_then(|o| o.last())
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("lowerdir="))
        .expect("lowerdir option")
        .split(':')
        .map(str::to_string)
        .collect()
}
