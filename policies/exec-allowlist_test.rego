# Tests of exec-allowlist.rego: `agent-warden policy test policies/`.
package agent_policy

import rego.v1

shared := "/run/kata-containers/shared/containers"

exec(container_id, args) := {"container_id": container_id, "exec_id": "e1", "process": {"Args": args, "Env": []}}

test_lifecycle_allowed if {
	CreateSandboxRequest with input as {"sandbox_id": "s1"}
	StartContainerRequest with input as {"container_id": "c1"}
	WaitProcessRequest with input as {"container_id": "c1", "exec_id": "c1"}
	DestroySandboxRequest with input as {}
	CreateContainerRequest.allowed with input as {"container_id": "c1"}
	RemoveContainerRequest with input as {"container_id": "c1"}
}

test_create_container_records_the_container if {
	first := CreateContainerRequest with input as {"container_id": "c1"}
	first == {"allowed": true, "ops": [{"op": "add", "path": "/pstate/containers", "value": {"c1": true}}]}
	next := CreateContainerRequest with input as {"container_id": "c/2~"} with data.pstate.containers as {"c1": true}
	next == {"allowed": true, "ops": [{"op": "add", "path": "/pstate/containers/c~12~0", "value": true}]}
}

test_remove_container_forgets_the_container if {
	r := RemoveContainerRequest with input as {"container_id": "c1"} with data.pstate.containers as {"c1": true}
	r == {"allowed": true, "ops": [{"op": "remove", "path": "/pstate/containers/c1"}]}
	RemoveContainerRequest == true with input as {"container_id": "c9"} with data.pstate.containers as {"c1": true}
}

test_exec_listed_command_into_pattern_container_allowed if {
	ExecProcessRequest with input as exec("debug-1", ["/bin/ls"])
	ExecProcessRequest with input as exec("debug-abc", ["cat", "/proc/meminfo"])
}

test_exec_listed_command_into_recorded_container_allowed if {
	ExecProcessRequest with input as exec("c1", ["ls", "-l", "/"]) with data.pstate.containers as {"c1": true}
}

test_exec_unlisted_command_denied if {
	not ExecProcessRequest with input as exec("debug-1", ["/bin/sh"])
	not ExecProcessRequest with input as exec("debug-1", ["cat", "/etc/shadow"])
	not ExecProcessRequest with input as exec("debug-1", ["/bin/ls", "-la"])
	not ExecProcessRequest with input as exec("debug-1", ["cat"])
	not ExecProcessRequest with input as exec("debug-1", [])
	not ExecProcessRequest with input as {"container_id": "debug-1", "process": null}
}

test_exec_into_unknown_container_denied if {
	not ExecProcessRequest with input as exec("c1", ["/bin/ls"])
	not ExecProcessRequest with input as exec("xdebug-1", ["/bin/ls"])
	not ExecProcessRequest with input as exec("debug-1-", ["/bin/ls"])
	not ExecProcessRequest with input as exec("c2", ["/bin/ls"]) with data.pstate.containers as {"c1": true}
}

test_streams_and_set_policy if {
	ReadStreamRequest with input as {"container_id": "c1", "exec_id": "c1", "len": 1024}
	not WriteStreamRequest with input as {"container_id": "c1", "exec_id": "c1", "data": [104]}
	not SetPolicyRequest with input as {"policy": "package agent_policy\n"}
}

test_copy_file_beneath_shared_dir_allowed if {
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-abc/hostname"]), "file_type": "Regular", "symlink_target": null}
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-abc"]), "file_type": "Directory", "symlink_target": null}
}

test_copy_file_dot_dot_escapes_denied if {
	not CopyFileRequest with input as {"path": concat("/", [shared, "../../../etc/passwd"]), "symlink_target": null}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/../../x"]), "symlink_target": null}
	not CopyFileRequest with input as {"path": concat("/", [shared, "link/../x"]), "symlink_target": null}
	not CopyFileRequest with input as {"path": concat("/", [shared, ".."]), "symlink_target": null}
}

test_copy_file_outside_denied if {
	not CopyFileRequest with input as {"path": "/etc/passwd", "symlink_target": null}
	not CopyFileRequest with input as {"path": shared, "symlink_target": null}
	not CopyFileRequest with input as {"path": concat("", [shared, "X/a"]), "symlink_target": null}
	not CopyFileRequest with input as {"path": "run/kata-containers/shared/containers/a", "symlink_target": null}
}

# Kubernetes ConfigMap volumes: key -> ..data/key, ..data -> ..2024_01_01_00_00_00.1
test_copy_file_configmap_symlinks_allowed if {
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-cm/key"]), "file_type": "Symlink", "symlink_target": "..data/key"}
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-cm/..data"]), "file_type": "Symlink", "symlink_target": "..2024_01_01_00_00_00.1"}
	# Older kata-agent input shape.
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-cm/key"]), "symlink_src": "..data/key"}
}

test_copy_file_escaping_symlinks_denied if {
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/l"]), "file_type": "Symlink", "symlink_target": "/etc"}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/l"]), "file_type": "Symlink", "symlink_target": "../../../../etc"}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/l"]), "file_type": "Symlink", "symlink_target": "a/../../x"}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/l"]), "file_type": "Symlink", "symlink_target": "."}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/l"]), "symlink_src": "/etc/shadow"}
}
