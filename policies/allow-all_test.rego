# Tests of allow-all.rego: `agent-warden policy test policies/`.
package agent_policy

import rego.v1

test_lifecycle_allowed if {
	CreateSandboxRequest with input as {"sandbox_id": "s1"}
	CreateContainerRequest with input as {"container_id": "c1"}
	StartContainerRequest with input as {"container_id": "c1"}
	RemoveContainerRequest with input as {"container_id": "c1"}
	DestroySandboxRequest with input as {}
}

test_exec_streams_and_set_policy_allowed if {
	ExecProcessRequest with input as {"container_id": "c1", "process": {"Args": ["/bin/sh"]}}
	WriteStreamRequest with input as {"container_id": "c1", "data": [1]}
	ReadStreamRequest with input as {"container_id": "c1", "len": 10}
	SetPolicyRequest with input as {"policy": ""}
}

# allow-all does not filter anything, not even paths leading out of the shared directory.
test_copy_file_anywhere_allowed if {
	CopyFileRequest with input as {"path": "/run/kata-containers/shared/containers/../../../etc/passwd"}
	CopyFileRequest with input as {"path": "/etc/shadow"}
}
