"""The kernel floor: the bpf(2) system call (bpfsys), BTF (btf), ring buffers (ringbuf),
capabilities (privilege), where the BPF C lives (bpfsrc) and namespace labs (netlab).
Nothing here imports the policy language, the datapath or the observers."""
