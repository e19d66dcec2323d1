"""Which devices netctl parses, and how: the link type (ARPHRD) decides."""

from __future__ import annotations

import pytest

from netctl.datapath import attach as att
from netctl.datapath.control import check_link_layer
from netctl.errors import AttachError


def link(link_type: int, kind: str | None = None, name: str = "dev0") -> att.LinkInfo:
    return att.LinkInfo(index=3, name=name, kind=kind, up=True, xdp_mode=None,
                        xdp_prog_id=None, link_type=link_type)


@pytest.mark.parametrize(("link_type", "layer"), [
    (1, att.LAYER_ETHERNET),        # Ethernet, veth, tap, vxlan, bridges
    (772, att.LAYER_ETHERNET),      # loopback: a zeroed Ethernet header
    (65534, att.LAYER_L3),          # tun, WireGuard
    (519, att.LAYER_L3), (512, att.LAYER_L3),           # raw-IP modems, PPP
    (768, att.LAYER_L3), (769, att.LAYER_L3), (776, att.LAYER_L3),   # ipip, ip6tnl, sit
])
def test_parsed_link_types(link_type, layer):
    assert link(link_type).layer == layer
    check_link_layer(link(link_type))


@pytest.mark.parametrize("link_type", [778, 823, 32, 280, 801, 803, 0xFFFF - 2])
def test_other_link_types_are_refused_by_name(link_type):
    # gre (its header_ops may put the outer header in front at egress), InfiniBand, CAN,
    # wireless monitor devices...: never attached, where frames would pass as non-IP
    assert link(link_type).layer is None
    with pytest.raises(AttachError) as info:
        check_link_layer(link(link_type, name="gre1"))
    assert info.value.errno == 95
    assert "gre1" in str(info.value) and f"ARPHRD {link_type}" in str(info.value)
    assert "unjudged" in str(info.value)
