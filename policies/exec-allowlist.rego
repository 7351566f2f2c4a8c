# exec-allowlist: coco-default, plus exec of listed command lines into known
# containers. An example of parameter filtering; edit the parameters below.
#
# - The pod lifecycle is allowed. CreateContainer records the container in the
#   policy state (data.pstate.containers, an object keyed by container id), and
#   RemoveContainer forgets it; agent-warden applies these state operations once
#   the agent has answered successfully.
# - ExecProcess is allowed only for a command line listed in allowed_exec (the
#   process's Args, compared exactly, argument by argument) and only into a known
#   container: one whose id matches a pattern in exec_container_patterns, or one
#   recorded in data.pstate.containers. Only Args are filtered (not Env, Cwd, User).
# - CopyFile only to clean paths strictly beneath the shared directory; a symbolic
#   link only with a clean relative target that stays inside the link's directory.
# - ReadStream (container output) is allowed; WriteStream (stdin) and SetPolicy
#   are denied.
package agent_policy

import rego.v1

# ---- Parameters ------------------------------------------------------------

# Command lines that may be executed, each exactly as the process's Args.
allowed_exec := [
	["/bin/ls"],
	["ls", "-l", "/"],
	["cat", "/proc/meminfo"],
	["cat", "/proc/cpuinfo"],
	["/bin/sh", "-c", "uptime"],
]

# Container ids exec may target without being recorded in the policy state
# (regular expressions, RE2 syntax; anchor them with ^...$).
exec_container_patterns := ["^debug-[a-z0-9]{1,32}$"]

shared_dir := "/run/kata-containers/shared/containers"

# ---- Defaults ----------------------------------------------------------------

default AddARPNeighborsRequest := true
default AddSwapPathRequest := true
default AddSwapRequest := true
default CloseStdinRequest := true
default CopyFileRequest := false
default CreateContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetDiagnosticDataRequest := true
default GetIPTablesRequest := true
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemAgentCompactConfig := true
default MemAgentMemcgConfig := true
default MemHotplugByProbeRequest := true
default OnlineCPUMemRequest := true
default PauseContainerRequest := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := true
default ResizeVolumeRequest := true
default ResumeContainerRequest := true
default SetGuestDateTimeRequest := true
default SetIPTablesRequest := true
default SetPolicyRequest := false
default SignalProcessRequest := true
default StartContainerRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default VolumeStatsRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := false

# ---- Container state ---------------------------------------------------------

# The container id as one JSON-pointer token (RFC 6901: "~" and "/" escaped).
container_token := replace(replace(input.container_id, "~", "~0"), "/", "~1")

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	not data.pstate.containers
	ops := [{"op": "add", "path": "/pstate/containers", "value": {input.container_id: true}}]
}

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	data.pstate.containers
	ops := [{"op": "add", "path": concat("/", ["/pstate/containers", container_token]), "value": true}]
}

RemoveContainerRequest := {"allowed": true, "ops": ops} if {
	data.pstate.containers[input.container_id]
	ops := [{"op": "remove", "path": concat("/", ["/pstate/containers", container_token])}]
}

known_container if {
	some pattern in exec_container_patterns
	regex.match(pattern, input.container_id)
}

known_container if data.pstate.containers[input.container_id]

# ---- ExecProcess -------------------------------------------------------------

ExecProcessRequest if {
	exec_command_listed
	exec_container_known
}

exec_command_listed if input.process.Args in allowed_exec

exec_command_listed := false if {
	not input.process.Args in allowed_exec
	print("exec of", input.process.Args, "is not allowed: the command line is not in allowed_exec")
}

exec_container_known if known_container

exec_container_known := false if {
	not known_container
	print("exec into container", input.container_id, "is not allowed: not a known container")
}

# ---- CopyFile ----------------------------------------------------------------

# The agent's filesystem resolves ".." after following symbolic links, so only
# paths that are already clean are accepted (path.clean and path.is_beneath are
# agent-warden's path helpers, docs/POLICY.md).
copy_path_allowed if {
	input.path == path.clean(input.path)
	path.is_beneath(input.path, shared_dir)
}

# The target of a symbolic link; "" for anything else. Current kata-agent:
# symlink_target, null unless a symlink; older kata-agent: symlink_src, "" unless
# a symlink.
link_target := input.symlink_target if is_string(input.symlink_target)
else := input.symlink_src if is_string(input.symlink_src)
else := ""

copy_link_allowed if link_target == ""

# Relative, clean, and not leading out of the link's own directory (no "..").
copy_link_allowed if {
	link_target != ""
	link_target == path.clean(link_target)
	path.is_beneath(link_target, ".")
}

CopyFileRequest if {
	copy_path_allowed
	copy_link_allowed
}

CopyFileRequest := false if {
	not copy_path_allowed
	print("CopyFile to", input.path, "is not allowed: only clean paths beneath", shared_dir)
}

CopyFileRequest := false if {
	copy_path_allowed
	not copy_link_allowed
	print("CopyFile of a symbolic link to", link_target, "is not allowed: only clean relative targets inside the link's directory")
}
