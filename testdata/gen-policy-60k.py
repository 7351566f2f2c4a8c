# Generates testdata/policy-60k.rego: policies/exec-allowlist.rego with its parameter
# tables grown to a genpolicy-like size (~60 KB) by deterministic synthetic entries.
import sys
src = open(sys.argv[1]).read()
head = "# policy-60k: GENERATED for benches/startup.rs (start-up and footprint with a\n# realistically sized policy, about 60 KB like genpolicy's). It is\n# policies/exec-allowlist.rego with allowed_exec grown by synthetic command lines;\n# the rules are unchanged. Regenerate: python3 testdata/gen-policy-60k.py\n#   policies/exec-allowlist.rego > testdata/policy-60k.rego\n#\n"
lines = []
tools = ["ls", "cat", "stat", "du", "df", "ps", "top", "env", "id", "uname", "date", "hostname"]
dirs = ["/", "/etc", "/proc", "/var/log", "/tmp", "/run", "/usr/share", "/opt/app", "/srv/data", "/home/app"]
i = 0
out = src.replace("allowed_exec := [\n", "allowed_exec := [\n", 1)
extra = []
n = 0
while True:
    t = tools[n % len(tools)]
    d = dirs[(n // len(tools)) % len(dirs)]
    extra.append('\t["%s", "-l", "%s/app-%04d/config-%02d.yaml"],\n' % (t, d.rstrip("/"), n, n % 17))
    n += 1
    if len(head) + len(src) + sum(map(len, extra)) >= 60_000:
        break
marker = '\t["/bin/sh", "-c", "uptime"],\n'
assert marker in src
out = head + src.replace(marker, marker + "".join(extra), 1)
sys.stdout.write(out)
