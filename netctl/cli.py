"""The `netctl` command line.

Each verb is a short process.  Expected failures print one clear line per problem and
exit with the code of their error class (see netctl.errors); only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .cli_parser import EXAMPLES as EXAMPLES  # re-exported: the verbs' examples
from .cli_parser import parser as _parser
from .errors import NetctlError, PolicyError, Problem
from .gcpause import gc_paused
from .kernel import privilege
from .present import format_set, format_sets, format_status

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2
# Verbs that run until stopped keep the cyclic garbage collector; every other verb is one
# short burst of allocation without cycles and runs with it paused (netctl/gcpause.py).
LONG_RUNNING = frozenset({"monitor", "top", "exporter", "agent", "lab"})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb in LONG_RUNNING:
            return int(HANDLERS[args.verb](args) or 0)
        with gc_paused():
            return int(HANDLERS[args.verb](args) or 0)
    except NetctlError as exc:
        print(_error_text(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `netctl ... | head`
        sys.stderr.close()
        return EXIT_OK


def _error_text(exc: NetctlError) -> str:
    if isinstance(exc, PolicyError):
        return "\n".join(f"error: {p}" if not p.line else str(p) for p in exc.problems)
    return f"netctl: {exc}"


def _emit_json(data: object) -> None:
    # One string, one write: json.dump streams millions of small writes (status -o json at
    # 100,000 rules spent 2.5 s in them).
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# -- validate -----------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from .policy.analyze import analyze
    from .policy.load import load_policy

    name = _shown(args.file)
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        if args.output == "json":
            _emit_json({"file": name, "valid": False,
                        "errors": [_problem_dict(p) for p in exc.problems], "warnings": []})
        else:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print(f"{name}: invalid ({len(exc.problems)} error"
                  f"{'s' if len(exc.problems) != 1 else ''})", file=sys.stderr)
        return EXIT_INVALID
    findings = [] if args.no_warnings else analyze(policy)
    if args.output == "json":
        _emit_json({
            "file": name, "valid": not (args.strict and findings), "errors": [],
            "warnings": [{"line": f.line, "message": f.message, "rule": f.rule,
                          "covered_by": list(f.covered_by)} for f in findings],
            "rules": len(policy.rules), "tests": len(policy.tests),
        })
    else:
        for f in findings:
            where = f"{name}:{f.line}" if f.line else name
            print(f"{where}: warning: {f.message}", file=sys.stderr)
        print(f"{name}: valid ({len(policy.rules)} rules, {len(policy.tests)} tests, "
              f"{len(findings)} warning{'s' if len(findings) != 1 else ''})")
    return EXIT_INVALID if args.strict and findings else EXIT_OK


def _shown(file: str) -> str:
    """How messages name the policy: `-` is standard input."""
    from .policy.load import STDIN, STDIN_SOURCE

    return STDIN_SOURCE if file == STDIN else file


def _problem_dict(p: Problem) -> dict:
    return {"file": p.source, "line": p.line, "column": p.column, "message": p.message}


# -- explain ------------------------------------------------------------------------------

def cmd_explain(args: argparse.Namespace) -> int:
    from .policy.explain import describe_packet, explain
    from .policy.load import load_policy
    from .policy.model import Direction

    policy = load_policy(args.file)
    packet = packet_from_args(args)
    result = explain(policy, packet, Direction(args.direction))
    if args.output == "json":
        _emit_json(result.as_dict())
        return EXIT_OK
    d = result.decision
    print(f"packet:    {describe_packet(packet)} ({args.direction})")
    print(f"verdict:   {d.verdict.value.upper()}")
    if d.why == "rule":
        print(f"decided by rule '{d.rule.name}' ({policy.source}:{d.rule.line}), "
              f"the first {args.direction} rule that matches:")
        for check in result.matched:
            print(f"  {check.field:<9} {check.detail}")
        if not result.matched:
            print("  (the rule has no match fields: it matches every packet)")
    elif d.why == "ndp":
        print("decided by the built-in IPv6 neighbour-discovery accept (ICMPv6 133-137); "
              "set allow_ndp: false to let rules decide")
    else:
        print(f"decided by the {args.direction} default: no {args.direction} rule matches")
    if result.near_misses:
        print("near misses (earlier rules that failed on one field):")
        for rule, checks in result.near_misses:
            failed = next(c for c in checks if not c.ok)
            print(f"  '{rule.name}' (line {rule.line}): {failed.field}: {failed.detail}")
    return EXIT_OK


def packet_from_args(args: argparse.Namespace):
    """Build a Packet from explain's options, reporting bad values like a policy would."""
    from .policy.load import packet_from_options

    return packet_from_options(args.src, args.dst, proto=args.proto, sport=args.sport,
                               dport=args.dport, icmp_type=args.icmp_type,
                               icmp_code=args.icmp_code, ttl=args.ttl, fragment=args.fragment)


# -- test ---------------------------------------------------------------------------------

def cmd_test(args: argparse.Namespace) -> int:
    from .policy.explain import describe_packet
    from .policy.load import load_policy
    from .policy.testing import run_policy_tests

    policy = load_policy(args.file)
    results = run_policy_tests(policy)
    if results and _kernel_available():
        from .datapath.sandbox import run_policy_tests_in_kernel

        engines = [*results[0].engines, run_policy_tests_in_kernel(policy, results)]
        for r in results:
            r.engines = engines
    failed = [r for r in results if not r.passed]
    if args.output == "json":
        _emit_json({
            "file": policy.source, "passed": len(results) - len(failed), "failed": len(failed),
            "engines": results[0].engines if results else [],
            "results": [r.as_dict() for r in results],
        })
        return EXIT_FAIL if failed else EXIT_OK
    if not results:
        print(f"{policy.source}: no tests: section (add tests: to check the policy's intent)")
        return EXIT_OK
    for r in results:
        status = "ok  " if r.passed else "FAIL"
        line = (f"{status} {policy.source}:{r.test.line}: {describe_packet(r.test.packet)} "
                f"{r.test.direction.value}: expected {r.test.expect}, got {r.got}")
        print(line)
        for problem in r.problems:
            print(f"       {problem}")
    engines = " and ".join(results[0].engines)
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({engines})")
    return EXIT_FAIL if failed else EXIT_OK


def _kernel_available() -> bool:
    """As root with bcc installed, `netctl test` also runs the real programs."""
    import importlib.util

    return not privilege.missing(privilege.LOAD) and importlib.util.find_spec("bcc") \
        is not None


# -- schema, doctor -----------------------------------------------------------------------

def cmd_schema(_args: argparse.Namespace) -> int:
    from .policy.schema import policy_schema

    _emit_json(policy_schema())
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .tools import doctor

    return doctor.main(args.output)


# -- apply, status, detach --------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    from .datapath.applyfile import apply_file

    done = apply_file(args.file, devs=args.dev, xdp_mode=args.xdp_mode, dry_run=args.dry_run,
                      confirm=args.confirm, force=args.force, max_entries=args.max_entries)
    if done.live is not None:
        return _report_already_live(args, done.live)
    policy, result = done.policy, done.result
    if args.output == "json":
        _emit_json(result.as_dict())
        return EXIT_OK
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    change = result.change
    if result.dry_run:
        _print_rule_changes(policy.source, result.rules)
        head = "would build and attach the programs, then write" if result.reload \
            else "would write"
        print(f"{policy.source}: {head} {change.entries()} map entries")
        for name, d in change.maps.items():
            if d:
                print(f"  {name:<15} +{len(d.added)} ~{len(d.changed)} -{len(d.removed)}")
    elif result.unchanged:
        print(f"{policy.source}: already live (generation {result.generation}); nothing to do")
    else:
        built = "programs built and attached; " if result.reload else ""
        print(f"{policy.source}: live as generation {result.generation} ({built}"
              f"{change.entries()} map entries written in {result.seconds:.2f} s)")
        if args.confirm:
            print(f"  until {args.confirm} s from now unless 'netctl confirm': then the "
                  "policy before comes back by itself")
    for name, rec in result.interfaces.items():
        print(f"  {name}: {_hooks_text(rec)}")
    for name in result.detached:
        print(f"  {name}: {'would be ' if result.dry_run else ''}detached (no longer listed)")
    _print_set_edits(result.sets)
    return EXIT_OK


def _report_already_live(args: argparse.Namespace, live: dict) -> int:
    if args.output == "json":
        _emit_json({**({"sets": live["sets"]} if live.get("sets") else {}),
                    "policy": args.file, "generation": live["generation"], "reload": False,
                    "dry_run": False, "unchanged": True, "entries": 0, "changes": {},
                    "interfaces": live["interfaces"], "detached": [], "warnings": [],
                    "seconds": 0.0})
        return EXIT_OK
    print(f"{args.file}: already live (generation {live['generation']}); nothing to do")
    for name, rec in live["interfaces"].items():
        print(f"  {name}: {_hooks_text(rec)}")
    _print_set_edits(live.get("sets") or {})
    return EXIT_OK


def _hooks_text(rec: dict) -> str:
    """"ingress tc, egress tc (why), tc as tcx": the hooks, then the way each is reached."""
    ways = [f"{hook} as {rec[key]}" for hook, key in (("XDP", "xdp_attach"),
                                                      ("tc", "tc_attach")) if rec.get(key)]
    return (f"ingress {rec['ingress'] or 'not enforced'}, egress "
            f"{rec['egress'] or 'not enforced'} ({rec['why']})"
            + "".join(f", {way}" for way in ways))


def _print_set_edits(sets: dict) -> None:
    for name, rec in sets.items():
        if rec["add"] or rec["del"]:
            print(f"  set @{name}: live edits in force (+{len(rec['add'])} -{len(rec['del'])}; "
                  f"'netctl set list {name}' shows them, 'netctl set reset {name}' undoes "
                  "them)")


def _print_rule_changes(source: str, rules: dict | None) -> None:
    from .policy.rulediff import RuleChange, RuleDiff

    if rules is None:
        return
    if "unknown" in rules:
        print(f"{source}: rule changes unknown ({rules['unknown']})")
        return
    d = RuleDiff(rules["added"], rules["removed"],
                 [RuleChange(c["name"], {k: (v["old"], v["new"]) for k, v in c["fields"].items()})
                  for c in rules["changed"]], rules["moved"],
                 {k: (v["old"], v["new"]) for k, v in rules["settings"].items()}, rules["sets"])
    lines = d.lines()
    print(f"{source}: {'rule changes against the live policy:' if lines else 'no rule changes'}")
    for line in lines:
        print(line)


def cmd_confirm(args: argparse.Namespace) -> int:
    from .datapath.confirm import confirm

    result = confirm()
    if args.output == "json":
        _emit_json(result)
    else:
        print(f"confirmed: {result['confirmed']} stays live")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from .datapath.control import show

    report = show()
    if args.output == "json":
        _emit_json(report)
        return EXIT_OK
    drift = report["policy_file"]
    note = {"changed": "the file has changed since", "missing": "the file is gone"}.get(
        drift["state"])
    if note:
        print(f"# netctl show: {report['policy']} as applied ({note})", file=sys.stderr)
    sys.stdout.write(report["text"])
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from .policy.load import load_policy
    from .policy.rulediff import rule_diff

    d = rule_diff(load_policy(args.old), load_policy(args.new))
    if args.output == "json":
        _emit_json(d.as_dict())
    else:
        lines = d.lines()
        print(f"{_shown(args.old)} -> {_shown(args.new)}: "
              f"{'differ:' if lines else 'no rule changes'}")
        for line in lines:
            print(line)
    return EXIT_FAIL if d else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .datapath.control import status

    report = status(verify=not args.no_verify)
    if args.output == "json":
        _emit_json(report)
        return EXIT_FAIL if report["problems"] else EXIT_OK
    print(format_status(report))
    return EXIT_FAIL if report["problems"] else EXIT_OK


def cmd_detach(args: argparse.Namespace) -> int:
    from .datapath.control import detach

    result = detach(devs=args.dev, everything=args.all)
    if args.output == "json":
        _emit_json(result)
        return EXIT_OK
    if result.get("unreadable_state"):
        print(f"the state file could not be read ({result['unreadable_state']}): "
              "detached from every interface netctl's programs were found on")
    if not result["detached"] and not result["gone"]:
        print("nothing of netctl's was attached")
    for name in result["detached"]:
        print(f"detached from {name}")
    for name in result["gone"]:
        print(f"{name}: interface gone; forgotten")
    if result["removed_pins"]:
        print("pins and state removed")
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    from .datapath import setctl
    from .policy.sets import parse_prefixes

    name = args.name[1:] if args.name and args.name.startswith("@") else args.name
    usage = {
        "list": args.prefixes and "netctl set list [NAME]: no prefixes",
        "add": (not name or not args.prefixes) and "netctl set add NAME PREFIX...",
        "del": (not name or not args.prefixes) and "netctl set del NAME PREFIX...",
        "reset": (not name or args.prefixes) and "netctl set reset NAME",
    }[args.action]
    if usage:
        print(f"usage: {usage}", file=sys.stderr)
        return EXIT_INVALID
    if args.action == "list":
        report = setctl.set_list(name)
        if args.output == "json":
            _emit_json(report)
        elif name is None:
            print(format_sets(report))
        else:
            print(format_set(report))
        return EXIT_OK
    prefixes = parse_prefixes(args.prefixes)   # all checked before anything changes
    outcome, result = setctl.set_edit(
        name, add=prefixes if args.action == "add" else [],
        delete=prefixes if args.action == "del" else [], reset=args.action == "reset")
    if args.output == "json":
        _emit_json({"set": outcome.name, "done": outcome.done, "already": outcome.already,
                    "prefixes": outcome.size, "added": outcome.added,
                    "removed": outcome.removed,
                    "apply": result.as_dict() if result is not None else None})
        return EXIT_OK
    verb = {"add": "added", "del": "deleted", "reset": "undid"}[args.action]
    done = f"{verb} {len(outcome.done)}" + (f" edit{'s' if len(outcome.done) != 1 else ''}"
                                            if args.action == "reset" else "")
    if outcome.already:
        done += f" ({len(outcome.already)} already in the set: {', '.join(outcome.already[:3])}" \
                f"{' ...' if len(outcome.already) > 3 else ''})"
    print(f"@{outcome.name}: {done}; {outcome.size:,} prefixes, live edits +{outcome.added} "
          f"-{outcome.removed}")
    if result is None:
        print("nothing to change")
    else:
        print(f"live as generation {result.generation} ({result.change.entries()} map entries "
              f"written in {result.seconds:.2f} s)")
    for warning in result.warnings if result is not None else ():
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_lab(args: argparse.Namespace) -> int:
    from .kernel.bpfsrc import POLICIES_DIR
    from .policy.load import STDIN, load_policy
    from .tools import lab

    if args.file == STDIN:   # the lab applies the file from inside its namespace
        print("netctl lab run: give the policy as a file; the lab does not read standard "
              "input", file=sys.stderr)
        return EXIT_INVALID
    path = args.file or str(POLICIES_DIR / "web-server.yaml")
    return lab.run(load_policy(path), path, count=max(1, args.count))


def cmd_conntrack(args: argparse.Namespace) -> int:
    from .datapath.control import conntrack
    from .policy.load import PROTOCOLS

    report = conntrack()
    if args.output == "json":
        _emit_json(report)
        return EXIT_OK
    if "problem" in report:
        print(f"no datapath: {report['problem']}")
        return EXIT_OK
    if not report["enabled"]:
        print("connection tracking is off (the live policy has no stateful: true)")
    names = {v: k for k, v in PROTOCOLS.items()}
    print(f"{'PROTO':<7} {'LOCAL':<41} {'REMOTE':<41} {'STATE':<12} {'TABLE':<11} "
          f"{'AGE':>8} {'IDLE':>8} {'OUT':>7} {'IN':>7}")
    for f in report["flows"]:
        local = f"{f['src']}:{f['sport']}" if f["family"] == 4 else f"[{f['src']}]:{f['sport']}"
        remote = f"{f['dst']}:{f['dport']}" if f["family"] == 4 else f"[{f['dst']}]:{f['dport']}"
        print(f"{names.get(f['proto'], str(f['proto'])):<7} {local:<41} {remote:<41} "
              f"{f['state']:<12} {f['table']:<11} {f['age_s']:>7.1f}s {f['idle_s']:>7.1f}s "
              f"{f['packets_out']:>7} {f['packets_in']:>7}")
    waiting = report["unconfirmed"]
    print(f"confirmed: {report['entries']} of {report['capacity']} entries, "
          f"{report['confirmed']} confirmed by a reply, {report['expired']} expired or "
          f"ended by a new connection, {report['evicted']} evicted (table full)")
    print(f"unconfirmed: {waiting['entries']} of {waiting['capacity']} entries, "
          f"{report['created']} created, {waiting['expired']} expired, {waiting['evicted']} "
          f"evicted (table full)")
    print(f"{report['replies_accepted']} replies and {report['related_accepted']} related ICMP "
          f"errors accepted, {report['invalid']} invalid (left to the rules)")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    from .observe.monitor import Filters, monitor

    types = [t.strip() for t in args.type.split(",") if t.strip()]
    filters = Filters.parse(args.dev, args.src, args.dst, args.port)
    return monitor(types, filters, args.output, args.count, args.timeout, args.hook)


def cmd_top(args: argparse.Namespace) -> int:
    from .observe.top import top

    return top(args.interval, args.iterations, args.limit, args.output, not args.no_kernel)


def cmd_exporter(args: argparse.Namespace) -> int:
    from .observe.exporter import serve

    if args.no_kernel:
        return serve(args.listen, (), once=args.once, rules=args.rules)
    return serve(args.listen, once=args.once, rules=args.rules)


# -- fleet: agent, push, fleet status ---------------------------------------------------

def _endpoint(args: argparse.Namespace):
    from .fleet.store import Endpoint

    return Endpoint.from_options(args.etcd, args.etcd_ca, args.etcd_cert, args.etcd_key,
                                 args.etcd_user, args.etcd_password_file, args.etcd_timeout)


def cmd_agent(args: argparse.Namespace) -> int:
    from .fleet.agent import Agent
    from .fleet.keys import check_name, parse_labels

    if not args.dry_run:   # refused at once, not at the first assignment
        privilege.require("agent", *privilege.LOAD)
    if args.lease_ttl < 2:
        raise NetctlError("--lease-ttl must be at least 2 seconds")
    from .policy.load import interface_name_problem

    for dev in args.dev or ():
        problem = interface_name_problem(dev)
        if problem:
            raise NetctlError(f"--dev: {problem}")
    agent = Agent(_endpoint(args), check_name(args.node), parse_labels(args.label),
                  devs=tuple(dict.fromkeys(args.dev or ())), dry_run=args.dry_run,
                  lease_ttl=args.lease_ttl,
                  check=max(1.0, args.lease_ttl / 2), state_dir=args.state_dir)
    return agent.run()


def cmd_push(args: argparse.Namespace) -> int:
    from .fleet.keys import Selector, short
    from .fleet.push import push
    from .fleet.store import Store

    selector = Selector.parse(args.nodes)
    if args.canary < 0:
        raise NetctlError("--canary must be 0 or more")
    text = args.output == "text"
    store = Store(_endpoint(args))
    result = push(store, args.file, selector, canary=args.canary, timeout=args.timeout,
                  name=args.name, say=(lambda line: print(line, flush=True)) if text
                  else (lambda _line: None))
    if not text:
        _emit_json(result.as_dict())
        return EXIT_OK if result.ok else EXIT_FAIL
    if result.ok:
        print(f"{result.policy} {short(result.digest)}: applied on {len(result.nodes)} "
              f"node{'s' if len(result.nodes) != 1 else ''} in {result.seconds:.2f} s "
              f"(push {result.generation})")
        return EXIT_OK
    for node, error in sorted(result.failed.items()):
        print(f"netctl: push failed on {node}: {error}", file=sys.stderr)
    if result.restored:
        print(f"netctl: put back on their policy before: {', '.join(result.restored)}",
              file=sys.stderr)
    if result.untouched:
        print(f"netctl: not assigned (the rollout stopped): {', '.join(result.untouched)}",
              file=sys.stderr)
    return EXIT_FAIL


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet.push import fleet_status
    from .fleet.status import format_rows
    from .fleet.store import Store

    rows = fleet_status(Store(_endpoint(args)))
    converged = all(r["converged"] for r in rows)
    if args.output == "json":
        _emit_json({"converged": converged, "nodes": rows})
    else:
        print(format_rows(rows))
    return EXIT_OK if converged else EXIT_FAIL


HANDLERS = {
    "agent": cmd_agent,
    "push": cmd_push,
    "fleet": cmd_fleet,
    "top": cmd_top,
    "exporter": cmd_exporter,
    "monitor": cmd_monitor,
    "conntrack": cmd_conntrack,
    "lab": cmd_lab,
    "set": cmd_set,
    "apply": cmd_apply,
    "status": cmd_status,
    "show": cmd_show,
    "confirm": cmd_confirm,
    "diff": cmd_diff,
    "detach": cmd_detach,
    "validate": cmd_validate,
    "explain": cmd_explain,
    "test": cmd_test,
    "schema": cmd_schema,
    "doctor": cmd_doctor,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
