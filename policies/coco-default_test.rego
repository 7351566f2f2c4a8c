# Tests of coco-default.rego: `agent-warden policy test policies/`.
package agent_policy

import rego.v1

shared := "/run/kata-containers/shared/containers"

test_lifecycle_allowed if {
	CreateSandboxRequest with input as {"sandbox_id": "s1"}
	CreateContainerRequest with input as {"container_id": "c1", "exec_id": "c1"}
	StartContainerRequest with input as {"container_id": "c1"}
	WaitProcessRequest with input as {"container_id": "c1", "exec_id": "c1"}
	SignalProcessRequest with input as {"container_id": "c1", "exec_id": "c1", "signal": 15}
	RemoveContainerRequest with input as {"container_id": "c1", "timeout": 0}
	DestroySandboxRequest with input as {}
	CloseStdinRequest with input as {"container_id": "c1", "exec_id": "c1"}
	UpdateRoutesRequest with input as {"routes": null}
	GuestDetailsRequest with input as {"mem_block_size": true}
}

test_exec_denied if {
	not ExecProcessRequest with input as {"container_id": "c1", "exec_id": "e1", "process": {"Args": ["/bin/ls"]}}
}

test_exec_denied_without_process if {
	not ExecProcessRequest with input as {"container_id": "c1", "exec_id": "e1", "process": null}
}

test_streams_denied if {
	not WriteStreamRequest with input as {"container_id": "c1", "exec_id": "c1", "data": [104, 105]}
	not ReadStreamRequest with input as {"container_id": "c1", "exec_id": "c1", "len": 1024}
}

test_set_policy_denied if {
	not SetPolicyRequest with input as {"policy": "package agent_policy\ndefault ExecProcessRequest := true\n"}
}

test_copy_file_beneath_shared_dir_allowed if {
	CopyFileRequest with input as {"path": concat("/", [shared, "c1-abc/hostname"])}
	CopyFileRequest with input as {"path": concat("/", [shared, "c1/..data"])}
	CopyFileRequest with input as {"path": concat("/", [shared, "x"])}
}

test_copy_file_dot_dot_escapes_denied if {
	not CopyFileRequest with input as {"path": concat("/", [shared, "../../../etc/passwd"])}
	not CopyFileRequest with input as {"path": concat("/", [shared, "c1/../../x"])}
	not CopyFileRequest with input as {"path": concat("/", [shared, ".."])}
	# Lexically inside, but not clean: refused (the agent resolves ".." after symlinks).
	not CopyFileRequest with input as {"path": concat("/", [shared, "link/../x"])}
}

test_copy_file_outside_or_unclean_denied if {
	not CopyFileRequest with input as {"path": "/etc/passwd"}
	not CopyFileRequest with input as {"path": shared}
	not CopyFileRequest with input as {"path": concat("", [shared, "/"])}
	not CopyFileRequest with input as {"path": concat("", [shared, "X/a"])}
	not CopyFileRequest with input as {"path": concat("", [shared, "//a"])}
	not CopyFileRequest with input as {"path": concat("", [shared, "/./a"])}
	not CopyFileRequest with input as {"path": concat("", [shared, "/a/"])}
	not CopyFileRequest with input as {"path": "run/kata-containers/shared/containers/a"}
	not CopyFileRequest with input as {"path": ""}
}
