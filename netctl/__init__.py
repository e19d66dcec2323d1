"""netctl: YAML firewall and forwarding policies compiled into BPF maps for XDP and tc."""

__version__ = "0.1.0"
