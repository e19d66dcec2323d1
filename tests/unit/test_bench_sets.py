"""The sets section's prefixes mean what the benchmark says: distinct, disjoint, the flood's
source in the set exactly once (as FLOOD_SRC/32) and covered by no other prefix, the same N
giving the same set, and a 1% change replacing that many with prefixes disjoint from all."""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from pathlib import Path

import pytest

from netctl.policy.load import load_policy_text
from netctl.policy.sets import read_set_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import sets  # noqa: E402
from bench.rulesets import FLOOD_SRC, nft_prefix_set  # noqa: E402

FLOOD = f"{FLOOD_SRC}/32"


def _disjoint(texts: list[str]) -> bool:
    """No prefix overlaps another: sorted by address, each ends before the next starts."""
    nets = sorted((ipaddress.ip_network(t) for t in texts),
                  key=lambda n: (int(n.network_address), n.prefixlen))
    return all(int(a.broadcast_address) < int(b.network_address)
               for a, b in zip(nets, nets[1:], strict=False))


@pytest.mark.parametrize("n", [1, 2, 1000, 20_000])
def test_prefixes_distinct_disjoint_and_the_flood_source_once(n):
    items, extra = sets.prefixes(n, extra=50)
    assert len(items) == n and len(set(items)) == n
    assert items.count(FLOOD) == 1
    flood = ipaddress.ip_address(FLOOD_SRC)
    covering = [t for t in items + extra if flood in ipaddress.ip_network(t)]
    assert covering == [FLOOD]
    assert _disjoint(items + extra)
    for t in items + extra:   # network form (no host bits), IPv4
        net = ipaddress.ip_network(t)
        assert net.version == 4 and str(net) == t and 16 <= net.prefixlen <= 32


def test_prefixes_look_like_a_blocklist_and_are_deterministic():
    items, _ = sets.prefixes(20_000)
    lengths = Counter(int(t.split("/")[1]) for t in items)
    assert lengths[24] + lengths[32] > 0.8 * len(items)
    assert lengths[24] > 0.2 * len(items) and lengths[32] > 0.4 * len(items)
    assert set(lengths) - {24, 32}   # other lengths too
    assert sets.prefixes(20_000) == sets.prefixes(20_000)
    assert sets.prefixes(1000)[0] == sets.prefixes(1000)[0]


def test_one_percent_changed_keeps_the_flood_source():
    items, fresh = sets.prefixes(10_000, extra=100)
    after = sets.changed(items, fresh)
    assert len(after) == len(items) and len(set(after)) == len(after)
    assert len(set(items) - set(after)) == 100 and set(after) - set(items) == set(fresh)
    assert after.count(FLOOD) == 1 and _disjoint(after)


def test_set_file_and_policy_load(tmp_path):
    items, _ = sets.prefixes(5000)
    path = tmp_path / "blk.txt"
    sets.write_set_file(path, items)
    v4, v6, problems, _ = read_set_file(str(path))
    assert not problems and not v6 and len(v4) == 5000
    policy = load_policy_text(sets.policy(path), "sets.yaml")
    assert [r.name for r in policy.rules] == ["keep-ssh", sets.RULE]
    assert len(policy.sets) == 1 and len(policy.sets[0].v4) == 5000
    text = nft_prefix_set(items[:3], "eth0")
    assert "ip saddr @blk counter drop" in text and items[2] in text


def test_label():
    assert [sets.label(n) for n in (1_000_000, 100_000, 1000, 1500)] == [
        "set1M", "set100k", "set1k", "set1500"]
