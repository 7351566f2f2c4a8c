# kata-e2e-pod: the policy of the whole-guest end-to-end test (tests/kata_agent_e2e.rs)
# and of the lifecycle benchmark (benches/lifecycle.rs), in front of the real kata-agent.
# Rego v1 syntax with `import rego.v1`, so it parses as Rego v0 and v1 and in kata-agent's
# own engine (bin/kata-agent-policy); it uses no agent-warden extensions.
#
# A pod's life is allowed; ExecProcess only for the exact command line `echo hello`.
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

allowed_exec := [["echo", "hello"]]

ExecProcessRequest if input.process.Args in allowed_exec

ExecProcessRequest := false if {
	not input.process.Args in allowed_exec
	print("exec of", input.process.Args, "is not allowed")
}
