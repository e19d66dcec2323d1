"""What observes the datapath and the kernel: `netctl monitor` (monitor), `netctl top`
(top), `netctl exporter` (exporter) and the kernel tracers (trace/, one module per kind)."""
