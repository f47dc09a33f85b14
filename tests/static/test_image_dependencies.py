"""Every image's Python dependencies resolve for that image's own Python and platform (issue 13).

No Docker engine runs here, so no image is built; what can be proven is that the `pip install`
commands of every Dockerfile, read from the Dockerfile itself, resolve against constraints.txt for the
CPython and the glibc of the stage's base image, from wheels only: `pip install --dry-run
--python-version X --platform manylinux_2_Y_x86_64 ... --only-binary :all: -c constraints.txt`. And that
everything they would install is pinned in constraints.txt, so an image installs the lock, nothing newer.

Reaches PyPI. Time: about 80 seconds on the development machine, with a warm cache or an empty one
alike (measured; pip's dry run fetches whole wheels, torch's alone is 539 MB and the CUDA libraries
it names several GB, fast from PyPI here; a slower link makes it minutes). pip's cache is
$YAHOO_LLM_CACHE_DIR/pip.

Not proven here: the CPU build of torch comes from PyTorch's own index, which these machines cannot
reach. The check resolves PyPI's build of the same pinned torch version in its place (its dependencies
are a superset: the CPU build lacks only the CUDA libraries), so the version exists for the target and
agrees with every other pin; that the `+cpu` wheel exists is left to the compose workflow's build.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.static.image_contents import (
    CONSTRAINTS,
    DOCKERFILES,
    PipInstall,
    imports_of_image,
    lock,
    normalize,
    pip_installs,
    stages,
    third_party_tops,
)

STATE = Path(os.environ.get("YAHOO_LLM_STATE_DIR", ROOT / ".state"))
CACHE = Path(os.environ.get("YAHOO_LLM_CACHE_DIR", Path.home() / ".cache" / "yahoo-llm"))
PIP = STATE / "venv" / "bin" / "pip"

# Debian releases of the python:*-slim-<release> images, and the glibc each ships (manylinux_2_<minor>).
DEBIAN_GLIBC_MINOR = {"bookworm": 36, "trixie": 41}


@dataclass(frozen=True)
class Target:
    """What a stage's `pip` runs on: a CPython version, and the newest manylinux glibc it satisfies."""

    python: str
    glibc_minor: int

    def pip_args(self) -> list[str]:
        platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(5, self.glibc_minor + 1)]
        platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
        args = ["--python-version", self.python, "--implementation", "cp", "--only-binary", ":all:"]
        for platform in platforms:
            args += ["--platform", platform]
        return args


# Base images that install their distribution's python3 rather than naming a Python in the tag.
# flink:2.2.1-scala_2.12-java17 is apache/flink-docker's 2.2/scala_2.12-java17-ubuntu/Dockerfile:
# FROM eclipse-temurin:17-jre-noble, i.e. Ubuntu 24.04, whose python3 is 3.12 (glibc 2.39).
# A new FLINK_IMAGE fails here until its line says which Python it brings.
DISTRIBUTION_PYTHONS = {"flink:2.2.1-scala_2.12-java17": Target("3.12", 39)}

# Packages of the lock published only as source (apache-beam's dependencies, in the Flink image). The
# images have no compiler, so pip builds them there as pure Python (crcmod falls back to its Python
# implementation); the check builds them the same way, with the C compiler disabled, into a folder
# of py3-none-any wheels it offers pip beside PyPI.
SOURCE_ONLY = ("crcmod", "dill", "docopt", "hdfs")


def target_for(image: str) -> Target:
    if image in DISTRIBUTION_PYTHONS:
        return DISTRIBUTION_PYTHONS[image]
    match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-(\w+)", image)
    if not match or match.group(2) not in DEBIAN_GLIBC_MINOR:
        pytest.fail(f"which Python does {image} run? teach DISTRIBUTION_PYTHONS or DEBIAN_GLIBC_MINOR")
    return Target(match.group(1), DEBIAN_GLIBC_MINOR[match.group(2)])


def source_only_wheels() -> Path:
    """py3-none-any wheels of SOURCE_ONLY, built once with no C compiler (as in the images), cached."""
    wheelhouse = CACHE / "pip" / "source-only-wheels"
    pins = lock()
    wanted = [f"{name}=={pins[name]}" for name in SOURCE_ONLY]
    have = {normalize(p.name.split("-")[0]) + "==" + p.name.split("-")[1] for p in wheelhouse.glob("*.whl")}
    missing = [w for w in wanted if w not in have]
    if missing:
        build = [str(PIP), "wheel", "--quiet", "--no-cache-dir", "--no-deps", "--no-binary", ":all:"]
        result = subprocess.run(
            [*build, "--wheel-dir", str(wheelhouse), *missing],
            env=pip_env(find_links=None) | {"CC": "/bin/false"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    impure = [p.name for p in wheelhouse.glob("*.whl") if not p.name.endswith("-none-any.whl")]
    assert not impure, f"these need a compiler the images lack: {impure}"
    return wheelhouse


def pip_env(find_links: Path | None) -> dict[str, str]:
    env = dict(os.environ, PIP_CACHE_DIR=str(CACHE / "pip"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_FIND_LINKS", None)  # only ours, not the machine's
    if find_links:
        env["PIP_FIND_LINKS"] = str(find_links)
    return env


def dry_run(target: Target, requirements: list[str], tmp_path: Path, *, no_deps: bool) -> list[tuple[str, str]]:
    """(name, version) of what pip would install, or the test fails with pip's reason."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.json"
    command = [str(PIP), "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    command += ["--target", str(tmp_path / "target"), *target.pip_args(), "-c", str(CONSTRAINTS)]
    command += ["--no-deps"] if no_deps else []
    result = subprocess.run(
        command + requirements,
        env=pip_env(source_only_wheels()),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, (
        f"does not resolve for CPython {target.python} (manylinux glibc 2.{target.glibc_minor}): "
        f"{result.stderr[-3000:]}\n(a package with no wheel that builds as pure Python: add it to SOURCE_ONLY)"
    )
    installs = json.loads(report.read_text())["install"]
    return [(normalize(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs]


@functools.cache
def resolved(dockerfile: Path) -> dict[str, str]:
    """name -> version of every distribution the image's `pip install`s would install (dry runs)."""
    found: dict[str, str] = {}
    for stage in stages(dockerfile):
        if not stage.installs:
            continue
        target = target_for(stage.image)
        # Another index's packages (torch's CPU build) resolve as PyPI's build of the same pin, with deps.
        with_deps = [r for i in stage.installs if not i.no_deps or i.index_url for r in i.requirements]
        data_only = [r for i in stage.installs if i.no_deps and not i.index_url for r in i.requirements]
        with tempfile.TemporaryDirectory() as tmp:
            found |= dict(dry_run(target, with_deps, Path(tmp) / "deps", no_deps=False))
            if data_only:
                found |= dict(dry_run(target, data_only, Path(tmp) / "no-deps", no_deps=True))
    return found


def test_every_python_image_installs_packages():
    assert {d.parent.name for d in DOCKERFILES if any(s.installs for s in stages(d))} == {
        d.parent.name for d in DOCKERFILES
    }


def test_every_pip_install_is_pinned_by_the_lock():
    for dockerfile in DOCKERFILES:
        for install in (i for stage in stages(dockerfile) for i in stage.installs):
            for req in install.requirements:
                assert install.constrained or "==" in req, f"{dockerfile}: {req} is neither constrained nor pinned"


def test_the_parser_reads_the_torch_pin_from_the_lock():
    command = (
        "python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --no-deps --index-url https://x/cpu "
        """"torch==$(grep '^torch==' /tmp/constraints.txt | cut -d= -f3)" && pip install -c /tmp/c.txt a "b[c]" """
    )
    first, second = pip_installs(command, {"torch": "9.9.9"})
    assert first == PipInstall(("torch==9.9.9",), "https://x/cpu", no_deps=True)
    assert second == PipInstall(("a", "b[c]"), constrained=True)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_python_dependencies_resolve_for_the_images_python(dockerfile):
    pins = lock()
    unpinned = [f"{n}=={v}" for n, v in resolved(dockerfile).items() if pins.get(n) != v]
    assert not unpinned, f"{dockerfile.parent.name} would install versions the lock does not pin: {unpinned}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_module_the_images_code_imports_is_installed(dockerfile):
    """The venv-to-be holds a distribution for each third-party module the copied code imports
    (the native venv tells which distribution provides a module)."""
    providers = importlib.metadata.packages_distributions()
    installed = set(resolved(dockerfile))
    missing = {
        module: providers.get(module, ["?"])
        for module in third_party_tops(imports_of_image(dockerfile))
        if not installed & {normalize(d) for d in providers.get(module, [])}
    }
    assert not missing, f"{dockerfile.parent.name} imports modules its image does not install: {missing}"
