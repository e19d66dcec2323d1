"""The live datapath: programs built with bcc, maps pinned in bpffs, hooks attached with
pyroute2.  Imports bcc (only when programs are built) and pyroute2; the policy package never
imports this one."""
