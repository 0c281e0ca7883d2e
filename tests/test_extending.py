"""docs/extending.md: every example in it runs, as a script, and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "extending.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_guide_has_its_four_examples():
    assert len(SNIPPETS) == 4


@pytest.mark.parametrize(
    "index", range(len(SNIPPETS)), ids=["conv", "prior", "likelihood", "objective"]
)
def test_each_example_runs(tmp_path, index):
    """Each snippet is a complete script: it trains on digits, evaluates, and prints."""
    script = tmp_path / f"example_{index}.py"
    script.write_text(SNIPPETS[index])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example printed nothing"
