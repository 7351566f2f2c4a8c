# guest-vm-pod: the policy of the guest VM test (tests/guest_vm.rs), which reaches the guest
# in the initdata disk. Rego v1 syntax with `import rego.v1`; no agent-warden extensions.
#
# A pod's life is allowed; ExecProcess only for the exact command lines `echo hello` and the
# marker write to the scratch disk (tests/kata/mod.rs, `guest::marker_cmd`).
package agent_policy

import rego.v1

default CreateSandboxRequest := true
default DestroySandboxRequest := true
default CreateContainerRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default ReadStreamRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default ExecProcessRequest := false

allowed_exec := [
	["echo", "hello"],
	["sh", "-c", "echo agent-warden-guest-marker-7f3a9c0e51d2 > /scratch/marker && sync && cat /scratch/marker"],
]

ExecProcessRequest if input.process.Args in allowed_exec

ExecProcessRequest := false if {
	not input.process.Args in allowed_exec
	print("exec of", input.process.Args, "is not allowed")
}
