"""The namespace tier leaves nothing running: traffic generators are stopped with their
workers (they fork, and a worker outlives a killed parent)."""

from __future__ import annotations

import subprocess

import pytest


def _generators() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "trafgen"], capture_output=True, text=True)
    return out.stdout.splitlines()


@pytest.fixture(autouse=True)
def no_generator_left_running():
    before = set(_generators())
    yield
    left = [p for p in _generators() if p not in before]
    if left:
        subprocess.run(["pkill", "-9", "trafgen"], check=False)
        pytest.fail(f"traffic generators left running: {left}")
