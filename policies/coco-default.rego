# coco-default: the embedded default policy of agent-warden.
#
# The pod lifecycle is allowed (sandbox, containers, networking, stats); what would
# let the untrusted host look into or change a running workload is denied: exec into
# containers, writing to or reading from their stdio, replacing the policy, and
# copying files anywhere but beneath the shared containers directory.
package agent_policy

import rego.v1

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
default ReadStreamRequest := false
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

shared_dir := "/run/kata-containers/shared/containers/"

# CopyFile: only paths strictly beneath the shared directory, and only if already
# clean (no ".", "..", empty components or trailing slash): the agent's filesystem
# resolves ".." after following symbolic links, so a lexically harmless "a/.." could
# still lead outside. path.clean and path.is_beneath are agent-warden's path helpers
# (docs/POLICY.md).
CopyFileRequest if {
	input.path == path.clean(input.path)
	path.is_beneath(input.path, shared_dir)
}

ExecProcessRequest := false if {
	print("exec into container", input.container_id, "is not allowed:", concat(" ", input.process.Args))
}
