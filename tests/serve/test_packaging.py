"""The package installs: every third-party import of ``src/`` is declared in pyproject.toml (in
the dependencies or in the extra of the subpackage that needs it), and a wheel installed with
``[serve]`` into a clean venv starts ``mmcompress serve`` on a saved index."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port, wait_until_serving

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "mmcompress"
# which extra a subpackage's imports belong to (the rest of the library: the core dependencies)
EXTRA_OF = {"serve": "serve", "tracking": "tracking", "encoders/text.py": "text", "encoders/image.py": "image",
            "data/image_catalog.py": "image"}


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    out = {"core": _requirement_names(project["dependencies"])}

    def expand(name: str, seen: set[str]) -> set[str]:
        names = set()
        for r in extras[name]:
            m = re.match(r"mmcompress\[(.+)\]", r)
            if m:
                for sub in m.group(1).split(","):
                    if sub not in seen:
                        names |= expand(sub, seen | {sub})
            else:
                names |= _requirement_names([r])
        return names

    for name in extras:
        out[name] = out["core"] | expand(name, {name})
    return out


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by each file of src/mmcompress outside the stdlib."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            for m in mods:
                if m not in sys.stdlib_module_names and m not in ("mmcompress", "__future__"):
                    found.setdefault(str(path.relative_to(SRC)), set()).add(m)
    return found


def test_every_import_is_declared_where_it_is_needed():
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = []
    for file, mods in sorted(_third_party_imports().items()):
        extra = next((e for prefix, e in EXTRA_OF.items() if file.startswith(prefix)), "core")
        for m in sorted(mods):
            names = {d.lower().replace("_", "-") for d in dists.get(m, [m])}
            if not names & declared[extra]:
                missing.append(f"{file}: imports {m} ({', '.join(sorted(names))}) not in [{extra}]")
    assert not missing, "\n".join(missing)



@pytest.mark.slow
def test_a_wheel_with_the_serve_extra_serves_from_a_clean_venv(tmp_path, build):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, timeout=300)
    [wheel] = dist.glob("mmcompress-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
                          str(REPO / "requirements.lock"), f"{wheel}[serve]"],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"no package registry reachable: {pip.stderr[-300:]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    index_dir = tmp_path / "index"
    build().save(index_dir)
    port = free_port()
    proc = subprocess.Popen([str(venv / "bin" / "mmcompress"), "serve", "--model", str(index_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz", proc, timeout=120,
                           output=lambda: proc.stdout.read() if proc.poll() is not None else "timeout")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert r.status == 200 and b'"status":"ok"' in r.read().replace(b" ", b"")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/items/4/similar?k=5", timeout=10) as r:
            assert r.status == 200 and b"results" in r.read()
        site = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import mmcompress, sys; print(mmcompress.__file__)"],
                              capture_output=True, text=True, check=True).stdout
        assert str(venv) in site  # the installed wheel, not the checkout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
