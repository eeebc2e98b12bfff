"""The README's fresh-machine commands stay true: CI runs exactly the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- fresh-machine -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must hold the fresh-machine commands after <!-- fresh-machine -->"
    lines = [l for l in block.group(1).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert len(lines) == 2, f"exactly two commands expected, got {lines}"
    return lines


def test_ci_runs_the_readme_test_command():
    _main_job, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in [l.strip() for l in ci], f"{tests!r} is not a line of .ci/run"


def test_main_job_is_a_salt_kernels_command():
    main_job, _tests = readme_commands()
    assert "salt-kernels" in main_job or "benchmarks/" in main_job
