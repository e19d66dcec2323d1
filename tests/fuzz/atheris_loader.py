"""Coverage-guided fuzzing of the policy loader with atheris (libFuzzer): `make fuzz-atheris`.

libFuzzer mutates bytes towards inputs that reach new lines of the loader and of PyYAML's
Python code (both instrumented), starting from the example policies.  Every input, as
text, must load as a valid policy or fail with a PolicyError whose problems name the
file and a line inside it: the same property as tests/unit/test_load_fuzz.py (hypothesis),
imported from there.  Anything else, an exception or a failed assertion, ends the run with
the input saved as crash-<hash> and a traceback.

    python tests/fuzz/atheris_loader.py -runs=100000 -max_len=4096 CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

with atheris.instrument_imports():
    import yaml  # noqa: F401 - instrumented so that coverage guides through the parser

    from netctl.policy import load  # noqa: F401

from test_load_fuzz import check_property  # noqa: E402


def one_input(data: bytes) -> None:
    # Bytes that are not UTF-8 never reach the parser (the file loader refuses them as "not
    # UTF-8 text"), so they are replaced, not skipped: every input is parsed.
    check_property(data.decode("utf-8", errors="replace"))


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
