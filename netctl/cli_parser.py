"""The `netctl` command line's grammar: every verb, its options and the examples its
`--help` ends with.  netctl/cli.py dispatches; this module only describes."""

from __future__ import annotations

import argparse
import textwrap

from . import __version__

EXAMPLES = {
    "validate": """
        netctl validate policies/web-server.yaml
        netctl validate -o json policy.yaml | jq .errors
        netctl validate --no-warnings big-blocklist.yaml
        render-policy | netctl validate -           # standard input, named <stdin>""",
    "explain": """
        netctl explain policies/web-server.yaml --src 198.51.100.7 --dst 192.0.2.10 --dport 22
        netctl explain policy.yaml --src 2001:db8::1 --dst 2001:db8::2 --proto icmpv6 \\
            --icmp-type echo-request
        netctl explain policy.yaml --src 10.0.0.1 --dst 10.0.0.2 --proto udp --dport 53 \\
            --direction egress -o json""",
    "test": """
        netctl test policies/web-server.yaml
        netctl test -o json policy.yaml""",
    "schema": """
        netctl schema > netctl-policy.schema.json
        # VS Code YAML extension, settings.json:
        #   "yaml.schemas": {"netctl-policy.schema.json": "policies/*.yaml"}""",
    "doctor": """
        netctl doctor
        netctl doctor -o json | jq '.checks[] | select(.ok == false)'""",
    "apply": """
        netctl apply policies/web-server.yaml
        netctl apply policy.yaml --dev eth0 --dev eth1
        netctl apply policy.yaml --dry-run          # rule and map changes, nothing written
        netctl apply policy.yaml --xdp-mode generic -o json
        netctl apply policy.yaml --confirm 120      # undone in 2 min unless confirmed
        render-policy | netctl apply - --dev eth0   # from standard input
        ip netns exec lab netctl apply policy.yaml --dev veth0""",
    "status": """
        netctl status
        netctl status -o json | jq '.rules[] | select(.packets > 0)'
        netctl status --no-verify                       # counters only, no read-back
        ip netns exec lab netctl status""",
    "confirm": """
        netctl apply new.yaml --confirm 60 && ssh-still-works && netctl confirm
        netctl status -o json | jq .confirm""",
    "show": """
        netctl show                                  # the live policy, as applied
        netctl show -o json | jq -r .policy_file.state
        netctl show > live.yaml && netctl diff live.yaml policy.yaml""",
    "diff": """
        netctl diff old.yaml new.yaml
        netctl diff old.yaml new.yaml -o json | jq .changed""",
    "detach": """
        netctl detach --all
        netctl detach --dev eth1""",
    "conntrack": """
        netctl conntrack
        netctl conntrack -o json | jq '.flows[] | select(.state == "established")'
        ip netns exec lab netctl conntrack""",
    "monitor": """
        netctl monitor                                  # policy and kernel drops, live
        netctl monitor --type policy --dev eth0 -o json | jq .
        netctl monitor --type drop,retrans,cong --port 443 --timeout 30
        netctl monitor --type socket --count 20
        ip netns exec lab netctl monitor --type policy""",
    "top": """
        netctl top                                   # busiest rules, drops, retransmits
        netctl top --interval 5 --limit 20
        netctl top --iterations 3 -o json | jq '.kernel_drops'
        ip netns exec lab netctl top --no-kernel""",
    "exporter": """
        netctl exporter                              # http://127.0.0.1:9433/metrics
        netctl exporter --listen 0.0.0.0:9433        # every address: metrics name flows
        netctl exporter --once | grep netctl_drops   # one scrape on stdout
        netctl exporter --rules top:100              # only the 100 busiest rules' counters
        ip netns exec lab netctl exporter --listen 127.0.0.1:9500""",
    "agent": """
        netctl agent --etcd http://10.0.0.5:2379 --node web-1 --label role=web
        NETCTL_ETCD=https://etcd:2379 NETCTL_ETCD_CA=/etc/netctl/etcd-ca.pem \\
            netctl agent --node "$(hostname)" --etcd-cert node.pem --etcd-key node-key.pem
        netctl agent --etcd http://127.0.0.1:2379 --node test-7 --dry-run   # scale tests
        netctl agent --etcd http://10.0.0.5:2379 --node db-2 --dev ens5   # its uplink's name""",
    "push": """
        netctl push policies/web-server.yaml --etcd http://10.0.0.5:2379
        netctl push web.yaml --etcd http://10.0.0.5:2379 --nodes role=web --canary 1
        netctl push web.yaml --etcd http://10.0.0.5:2379 --nodes web-1,web-2 --timeout 60
        netctl push web.yaml --name web --canary 2 -o json | jq .failed""",
    "fleet": """
        netctl fleet status --etcd http://10.0.0.5:2379
        netctl fleet status -o json | jq '.nodes[] | select(.converged | not)'""",
    "lab": """
        netctl lab run                               # the packaged web-server.yaml
        netctl lab run policies/dual-stack.yaml --count 50""",
    "set": """
        netctl set list                              # the live sets: size, file, live edits
        netctl set list blocklist > now.txt          # one set's prefixes (a set file)
        netctl set add blocklist 203.0.113.9 2001:db8:bad::/48
        netctl set del blocklist 203.0.113.9
        netctl set reset blocklist                   # every live edit of the set undone
        ip netns exec lab netctl set add blocklist 10.9.9.9""",
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netctl",
        description="Compile YAML firewall and forwarding policies into BPF maps for XDP and "
                    "tc, and test them before they go live.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'netctl VERB --help' for a verb's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"netctl {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(
            name, help=help_text, description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="examples:" + textwrap.indent(textwrap.dedent(EXAMPLES[name]), "  ") + "\n",
        )
        p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                       help="output format (default: text)")
        return p

    p = verb("validate", "check a policy file; print every problem as FILE:LINE: message")
    p.add_argument("file", metavar="FILE", help="the policy file, or - for standard input")
    p.add_argument("--no-warnings", action="store_true",
                   help="skip the analysis for rules that can never match")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")

    p = verb("explain", "show the verdict a policy gives one packet, the deciding rule and why")
    p.add_argument("file", metavar="FILE", help="the policy file, or - for standard input")
    p.add_argument("--src", required=True, help="source address")
    p.add_argument("--dst", required=True, help="destination address")
    p.add_argument("--proto", help="tcp, udp, icmp, icmpv6 or a number (default: tcp with "
                   "ports, icmp/icmpv6 with --icmp-type)")
    p.add_argument("--sport", help="source port (default 12345 for tcp/udp)")
    p.add_argument("--dport", help="destination port (default 0 for tcp/udp)")
    p.add_argument("--icmp-type", help="ICMP type name or number")
    p.add_argument("--icmp-code", type=int, help="ICMP code, 0-255 (default 0)")
    p.add_argument("--ttl", type=int, help="IPv4 TTL or IPv6 hop limit, 0-255 (default 255 "
                   "for neighbour discovery, else 64)")
    p.add_argument("--fragment", action="store_true", help="a non-first fragment (no ports)")
    p.add_argument("--direction", choices=("ingress", "egress"), default="ingress")

    p = verb("test", "run the policy's tests: section on the reference model and the "
             "compiled maps")
    p.add_argument("file", metavar="FILE", help="the policy file, or - for standard input")

    p = verb("schema", "print the JSON Schema of policy v1 (for editors)")
    p.set_defaults(output="json")

    verb("doctor", "check what this machine offers netctl: kernel, BTF, headers, mounts, "
         "and which BPF program types really load")

    p = verb("apply", "compile a policy into the datapath of this network namespace and "
             "attach it to its interfaces (atomically replacing the live policy)")
    p.add_argument("file", metavar="FILE", help="the policy file, or - for standard input")
    p.add_argument("--dev", action="append", metavar="IF",
                   help="interface to enforce on (repeatable); replaces the policy's list")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic", "off"),
                   help="override the policy's xdp setting for every interface")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change (rules by name and field against the live "
                        "policy, map entries, hooks) and change nothing")
    p.add_argument("--confirm", type=int, metavar="SECONDS",
                   help="keep the new policy only if 'netctl confirm' comes within SECONDS; "
                        "else the policy before comes back by itself (the programs read the "
                        "deadline: no process needs to survive)")
    p.add_argument("--force", action="store_true",
                   help="apply even when the policy would drop the SSH session this runs "
                        "from (SSH_CONNECTION); without it such a policy is refused (exit 6)")
    p.add_argument("--max-entries", type=int, metavar="N",
                   help="refuse a policy that needs more than N entries in any map (a guard "
                        "for kernel memory; default: grow each map as far as its ceiling)")

    p = verb("status", "show the live datapath of this network namespace: hooks, programs, "
             "per-rule and default counters, drop reasons, and anything that differs from "
             "what netctl applied (exit 1)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not read the live maps back to compare them with what was "
                        "applied (that takes about 3 s at 100,000 rules)")

    verb("confirm", "keep the policy applied with --confirm (before its deadline; after it, "
         "the policy before is back and this says so, exit 1)")

    verb("show", "print the live policy as it was applied (its text is kept with the state), "
         "and whether the file it came from has changed since")

    p = verb("diff", "compare two policy files rule by rule: added, removed, changed (each "
             "field) and moved rules (exit 1 when they differ, as diff does; no privilege)")
    p.add_argument("old", metavar="OLD", help="the policy file before")
    p.add_argument("new", metavar="NEW", help="the policy file after (or - for standard input)")

    p = verb("detach", "remove netctl's programs from interfaces (and, with --all or when the "
             "last interface goes, its pins and state)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--dev", action="append", metavar="IF", help="interface (repeatable)")
    group.add_argument("--all", action="store_true", help="every interface (the default)")

    p = verb("monitor", "show drops as they happen: netctl's policy drops and logged "
             "matches, the kernel's own drops with reason and stack, TCP retransmits, "
             "congestion and socket events")
    p.add_argument("--type", default="policy,drop",
                   help="comma list of policy, drop, retrans, cong, socket "
                        "(default: policy,drop)")
    p.add_argument("--dev", help="only policy events of this interface")
    p.add_argument("--src", help="only events from this address or prefix")
    p.add_argument("--dst", help="only events to this address or prefix")
    p.add_argument("--port", type=int, help="only events with this source or destination port")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--hook", choices=("fentry", "tracepoint", "kprobe"),
                   help="force the kernel tracers' hook instead of the best available")

    p = verb("top", "a refreshing table of the busiest rules, datapath drop reasons, routes, "
             "kernel drops (reason and location) and TCP retransmits, as rates and totals")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes "
                   "(default 1)")
    p.add_argument("--iterations", type=int, help="stop after this many refreshes")
    p.add_argument("--limit", type=int, default=10, help="rows per table (default 10)")
    p.add_argument("--no-kernel", action="store_true",
                   help="datapath counters only, no kernel tracers")

    p = verb("exporter", "serve Prometheus metrics: the datapath's counters and the kernel "
             "tracers' drop and retransmit counts")
    p.add_argument("--listen", default="127.0.0.1:9433", metavar="HOST:PORT",
                   help="address to serve /metrics on (default 127.0.0.1:9433, loopback: "
                        "metrics name hosts and flows)")
    p.add_argument("--once", action="store_true",
                   help="print one scrape in the text exposition format and exit")
    p.add_argument("--no-kernel", action="store_true",
                   help="datapath metrics only, no kernel tracers")
    p.add_argument("--rules", default="all", metavar="all|marked|top:K",
                   help="which rules' counters to export: all (default), marked (rules with "
                        "metrics: true), or top:K (the K busiest by packets)")

    verb("conntrack", "list the flows tracked for stateful: true (5-tuple as this host "
         "started it, state, age, packets), with table size and evictions")

    p = verb("set", "edit a named set of the live policy without applying the policy again: "
             "list its prefixes, add or delete some (the edits stay in force when the policy "
             "is applied again), or reset it to its file")
    p.add_argument("action", choices=("list", "add", "del", "reset"),
                   help="list [NAME], add NAME PREFIX..., del NAME PREFIX..., reset NAME")
    p.add_argument("name", metavar="NAME", nargs="?", help="the set (as in \"@NAME\")")
    p.add_argument("prefixes", metavar="PREFIX", nargs="*",
                   help="addresses or prefixes to add or delete")

    def etcd_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("etcd (each also from the environment: NETCTL_ETCD, "
                                 "NETCTL_ETCD_CA, _CERT, _KEY, _USER, _PASSWORD, "
                                 "_PASSWORD_FILE)")
        g.add_argument("--etcd", metavar="URL",
                       help="etcd client URL, http[s]://HOST:PORT; a cluster's members "
                            "comma-separated, tried in turn")
        g.add_argument("--etcd-ca", metavar="FILE", help="CA certificate that signed etcd's")
        g.add_argument("--etcd-cert", metavar="FILE", help="client certificate (TLS)")
        g.add_argument("--etcd-key", metavar="FILE", help="the client certificate's key")
        g.add_argument("--etcd-user", metavar="NAME", help="etcd user (authentication on)")
        g.add_argument("--etcd-password-file", metavar="FILE",
                       help="file holding the user's password (never on the command line)")
        g.add_argument("--etcd-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="seconds for one request to etcd (default 5)")

    p = verb("agent", "run on a node: register in etcd, apply the policy assigned to this "
             "node as 'netctl apply' does, report status; runs until SIGTERM, which leaves "
             "the datapath as it is")
    etcd_options(p)
    p.add_argument("--node", required=True, metavar="NAME",
                   help="this node's name in the fleet (Kubernetes: the node name)")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="a label push selectors can match (repeatable)")
    p.add_argument("--dev", action="append", metavar="IF",
                   help="apply every assigned policy to this interface (repeatable) instead "
                        "of the interfaces the policy names, as 'netctl apply --dev' does: "
                        "for nodes whose interfaces are named differently")
    p.add_argument("--dry-run", action="store_true",
                   help="load and compile assigned policies, never touch the kernel (scale "
                        "tests; needs no privilege)")
    p.add_argument("--lease-ttl", type=int, default=10, metavar="SECONDS",
                   help="the node counts as dead this long after its last heartbeat "
                        "(default 10)")
    p.add_argument("--state-dir", default="/var/lib/netctl/agent", metavar="DIR",
                   help="where the agent keeps the policy it applies, one file per node "
                        "(default /var/lib/netctl/agent)")

    p = verb("push", "roll a policy out to the fleet through etcd: validate it here, store "
             "it, apply it on canary nodes first, then on the rest; a canary failure stops "
             "the rollout and puts the canaries back on their policy before (exit 1)")
    etcd_options(p)
    p.add_argument("file", metavar="FILE", help="the policy file")
    p.add_argument("--nodes", metavar="SELECTOR",
                   help="comma-separated node names, or LABEL=VALUE (default: every "
                        "registered node)")
    p.add_argument("--canary", type=int, default=0, metavar="N",
                   help="apply on the first N selected nodes (by name) and wait for them "
                        "before the rest (default 0: all at once)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up (exit 1) when nodes have not reported within this many "
                        "seconds of the start (default 120)")
    p.add_argument("--name", help="the policy's name in etcd (default: the file name "
                   "without .yaml)")

    p = verb("fleet", "the fleet as etcd sees it: per node the desired and applied policy, "
             "generation, heartbeat, last error, packets dropped (exit 1 when any node has "
             "not converged)")
    p.add_argument("action", choices=("status",), help="status: one row per node")
    etcd_options(p)

    p = verb("lab", "try a policy on a throwaway namespace lab: apply it, send its tests: "
             "packets as real frames, show the counters, clean up")
    p.add_argument("action", choices=("run",), help="run: the whole cycle, then clean up")
    p.add_argument("file", metavar="FILE", nargs="?", default=None,
                   help="policy with a tests: section (default: the packaged example "
                        "web-server.yaml)")
    p.add_argument("--count", type=int, default=10, help="frames per test packet (default 10)")
    return parser
