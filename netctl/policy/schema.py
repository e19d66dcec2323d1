"""JSON Schema (draft 2020-12) of policy v1, for editors (`netctl schema`).

The schema describes shapes and spellings; cross-field rules (ports need tcp/udp, address
families must agree, host bits, duplicate names) are the loader's job and are listed in the
descriptions so an editor's hover text tells the whole contract.
"""

from __future__ import annotations

from typing import Any

from .load import (
    EXT_HEADER_NAMES,
    ICMP_TYPES,
    INTERFACE_KEYS,
    PACKET_KEYS,
    PROTOCOLS,
    RULE_KEYS,
    RULE_NAME_MAX,
    SET_KEYS,
    TEST_KEYS,
    TOP_KEYS,
)
from .sets import SET_NAME_MAX

# A JSON document: its values are of every JSON type.
JsonObject = dict[str, Any]


def _one_or_many(item: JsonObject, description: str) -> JsonObject:
    return {"description": description,
            "oneOf": [item, {"type": "array", "items": item, "minItems": 1}]}


def policy_schema() -> JsonObject:
    address = {"type": "string", "description": "IPv4/IPv6 address or prefix in network form"}
    set_name = f"[A-Za-z0-9_.-]{{1,{SET_NAME_MAX}}}"
    address_or_set = {"type": "string", "description": "IPv4/IPv6 address or prefix in "
                      "network form, or \"@NAME\": every prefix of the set NAME (sets:)"}
    prefix_set: JsonObject = {
        "type": "object", "additionalProperties": False,
        "description": "a named address set: exactly one of elements (a list) and file (one "
                       "prefix per line, '#' or ';' comments, both families; relative to the "
                       "policy file's directory). Live edits: netctl set add/del NAME PREFIX",
        "properties": {"elements": {"type": "array", "items": address},
                       "file": {"type": "string", "minLength": 1}},
        "oneOf": [{"required": ["elements"]}, {"required": ["file"]}],
    }
    port = {"oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 65535},
        {"type": "string", "pattern": r"^\s*\d{1,5}\s*(-\s*\d{1,5}\s*)?$"},
    ]}
    proto = {"oneOf": [
        {"type": "string", "enum": sorted(PROTOCOLS)},
        {"type": "integer", "minimum": 0, "maximum": 255,
         "not": {"enum": sorted(EXT_HEADER_NAMES)}},
    ]}
    code = {"oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 255},
        {"type": "string", "pattern": r"^\s*\d{1,3}\s*(-\s*\d{1,3}\s*)?$"},
    ]}
    icmp_names = sorted({name for names in ICMP_TYPES.values() for name in names})
    icmp_type = {"oneOf": [
        {"type": "string", "enum": icmp_names},
        {"type": "integer", "minimum": 0, "maximum": 255},
    ]}
    ifname = {"type": "string", "minLength": 1, "maxLength": 15, "pattern": r"^[^/:\s]+$"}
    action = {"type": "string", "enum": ["accept", "drop"]}
    direction = {"type": "string", "enum": ["ingress", "egress"], "default": "ingress"}
    boolean = {"oneOf": [{"type": "boolean"},
                         {"type": "string", "enum": ["yes", "no", "on", "off"]}]}

    rule: JsonObject = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "action"],
        "description": "Rules are ordered: the first matching rule of the packet's direction "
                       "decides. Fields are ANDed, list items ORed, an omitted field matches "
                       "anything. Ports need proto tcp/udp (default both); icmp_type and "
                       "icmp_code need proto icmp/icmpv6; src, dst and proto must allow a "
                       "common IP version.",
        "properties": {
            "name": {"type": ["string", "integer"], "description":
                     f"unique, 1-{RULE_NAME_MAX} characters without spaces"},
            "direction": direction,
            "action": action,
            "src": _one_or_many(address_or_set, "source address(es) or \"@SET\"; omitted = "
                                "any"),
            "dst": _one_or_many(address_or_set, "destination address(es) or \"@SET\"; "
                                "omitted = any"),
            "proto": _one_or_many(proto, "protocol name or number; icmp is IPv4-only, "
                                  "icmpv6 IPv6-only; the IPv6 extension headers 0, 43, 44 "
                                  "and 60 are walked past, never a protocol"),
            "sport": _one_or_many(port, "source port, 'lo-hi' or a list (tcp/udp only)"),
            "dport": _one_or_many(port, "destination port, 'lo-hi' or a list (tcp/udp only)"),
            "icmp_type": _one_or_many(icmp_type, "ICMP/ICMPv6 type name or number"),
            "icmp_code": _one_or_many(code, "ICMP/ICMPv6 code, 'lo-hi' or a list (0-255)"),
            "log": {**boolean, "description": "matches also go to `netctl monitor` (sampled)"},
            "metrics": {**boolean, "description": "`netctl exporter --rules marked` exports "
                        "this rule's counters"},
        },
    }
    interface: JsonObject = {"oneOf": [ifname, {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": ifname,
            "xdp": {"type": "string", "enum": ["auto", "native", "generic", "off"],
                    "default": "auto"},
            "tc": {"oneOf": [
                {"type": "array", "items": {"type": "string", "enum": ["ingress", "egress"]}},
                {"type": "string", "enum": ["ingress", "egress", "off"]},
            ], "default": ["ingress", "egress"]},
        },
    }]}
    route = {
        "type": "object", "additionalProperties": False, "required": ["dst", "via", "dev"],
        "properties": {"dst": address, "via": {"type": "string"}, "dev": ifname,
                       "cc": {"type": "string", "pattern": "^[a-z0-9_]{1,15}$",
                              "description": "TCP congestion control for flows this host "
                              "starts towards dst (a kernel route attribute)"}},
    }
    seconds = {"type": "integer", "minimum": 1, "maximum": 2**31}
    conntrack = {
        "type": "object", "additionalProperties": False,
        "description": "connection tracking settings; need stateful: true",
        "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 2**24,
                                "default": 65536},
                       "tcp_established": {**seconds, "default": 432000},
                       "tcp_closing": {**seconds, "default": 120},
                       "tcp_unconfirmed": {**seconds, "default": 60,
                                           "description": "TCP before its handshake "
                                           "completes"},
                       "udp": {**seconds, "default": 60},
                       "icmp": {**seconds, "default": 30}},
    }
    packet: JsonObject = {
        "type": "object", "additionalProperties": False, "required": ["src", "dst", "proto"],
        "properties": {
            "src": {"type": "string"}, "dst": {"type": "string"}, "proto": proto,
            "sport": {"type": "integer", "minimum": 0, "maximum": 65535},
            "dport": {"type": "integer", "minimum": 0, "maximum": 65535},
            "icmp_type": icmp_type,
            "icmp_code": {"type": "integer", "minimum": 0, "maximum": 255},
            "ttl": {"type": "integer", "minimum": 0, "maximum": 255, "description":
                    "IPv4 TTL or IPv6 hop limit (default 255 for neighbour discovery, "
                    "else 64)"},
            "fragment": boolean,
        },
    }
    test: JsonObject = {
        "type": "object", "additionalProperties": False, "required": ["packet", "expect"],
        "properties": {
            "packet": packet,
            "direction": direction,
            "expect": {"oneOf": [action, {
                "type": "object", "additionalProperties": False, "required": ["rule"],
                "properties": {"rule": {"type": ["string", "integer"]}},
            }]},
        },
    }
    schema: JsonObject = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "netctl-policy-v1",
        "title": "netctl policy v1",
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {
            "version": {"const": 1},
            "interfaces": {"type": ["array", "null"], "items": interface},
            "defaults": {"type": "object", "additionalProperties": False,
                         "properties": {"ingress": action, "egress": action}},
            "stateful": boolean,
            "conntrack": conntrack,
            "log_sample": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 1,
                           "description": "one in this many policy drops and log: true "
                           "matches goes to netctl monitor (random sampling)"},
            "flow_cache": {"type": "string", "enum": ["auto", "on", "off"], "default": "auto",
                           "description": "remember each flow's classification for the "
                           "policy's life (auto: bypassed while most packets are new flows)"},
            "allow_ndp": {**boolean, "description": "accept ICMPv6 neighbour discovery "
                          "(types 133-137) with hop limit 255 (a redirect only from a "
                          "link-local source) before any rule; default true"},
            "sets": {"type": ["object", "null"], "additionalProperties": False,
                     "description": "named address sets, used in rules as \"@NAME\"",
                     "patternProperties": {f"^{set_name}$": prefix_set}},
            "rules": {"type": ["array", "null"], "items": rule},
            "routes": {"type": ["array", "null"], "items": route},
            "tests": {"type": ["array", "null"], "items": test},
        },
    }
    # Keep the schema and the loader's key lists from drifting apart.
    assert set(schema["properties"]) == set(TOP_KEYS)
    assert set(rule["properties"]) == set(RULE_KEYS)
    assert set(interface["oneOf"][1]["properties"]) == set(INTERFACE_KEYS)
    assert set(test["properties"]) == set(TEST_KEYS)
    assert set(packet["properties"]) == set(PACKET_KEYS)
    assert set(prefix_set["properties"]) == set(SET_KEYS)
    return schema
