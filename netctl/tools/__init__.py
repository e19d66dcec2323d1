"""Tools around the main job: `netctl doctor` (what this machine offers, found by trying it)
and `netctl lab` (the whole job on a throwaway namespace lab)."""
