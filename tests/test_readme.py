"""The README's two commands stay true: CI runs the test command verbatim, the demo works."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_shows_exactly_two_setup_commands():
    blocks = _bash_blocks()
    assert len(blocks) == 2, blocks
    assert all("\n" not in b for b in blocks)
    assert blocks[0].startswith("pip install") and "cloudckpt.demo" in blocks[0]
    assert blocks[1].startswith("pip install") and "pytest" in blocks[1]


def test_ci_runs_the_readme_commands_verbatim_in_fresh_virtual_environments():
    demo_command, test_command = _bash_blocks()
    text = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "set -euo pipefail" in lines
    for command in (demo_command, test_command):
        assert command in lines, command
        at = lines.index(command)
        venv = max(i for i, line in enumerate(lines[:at]) if line.startswith("python -m venv "))
        between = lines[venv:at]
        assert any(line.startswith(". ") and "/bin/activate" in line for line in between), command
        assert not any("pip install" in line for line in between), f"installed into the venv before {command!r}"
        # the status of the `a && b` list is checked (set -e does not stop at a failing `a`)
        assert lines[at + 1].startswith("check "), lines[at + 1]
    # the frameworks come after the README's test command, into the same environment, and their tests run
    after = lines[lines.index(test_command) + 1 :]
    assert any(line.startswith("pip install 'torch==") and "jax" in line for line in after)
    assert not any("torch" in line and "pip install" in line for line in lines[: lines.index(test_command)])
    assert any(line.startswith("python -m pytest") for line in after)


def test_demo_runs_and_resumes_bit_exactly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cloudckpt.demo", "--dir", str(tmp_path / "run"), "--steps", "30", "--kill-at", "17"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SIGKILL after step 17" in out.stdout
    assert "resumed from" in out.stdout and "ckpt-15" in out.stdout
    assert "bit for bit: True" in out.stdout


def test_readme_usage_snippet_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    code = code.replace("/tmp/cloudckpt-readme-run", str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ckpt-10" in out.stdout and "'step': 10" in out.stdout


def test_ci_tests_the_oldest_versions_that_pyproject_allows():
    """ci/oldest.txt pins every runtime dependency (and the test extra's moto) at its
    lower bound in pyproject.toml, and CI's last phase and `tox -e oldest` install with it."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [r for r in map(Requirement, project["optional-dependencies"]["test"]) if r.name == "moto"]
    pins = {}
    for line in (ROOT / "ci" / "oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for req in wanted:
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{req}: a range with one lower bound"
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"ci/oldest.txt has no line for {req.name}"
        assert Version(pin) == Version(lower[0]), f"ci/oldest.txt pins {req.name}=={pin}, pyproject.toml says {req}"
    run = (ROOT / ".ci" / "run").read_text()
    assert "pip install --constraint ci/oldest.txt -e '.[test]'" in run
    tox = (ROOT / "tox.ini").read_text()
    assert "[testenv:oldest]" in tox and "ci/oldest.txt" in tox and "[testenv:newest]" in tox
    readme = (ROOT / "README.md").read_text()
    assert "tox -e oldest" in readme and "tox -e newest" in readme
