"""engine/requirements.txt (what the add-on's installer puts in the engine env) must equal
pyproject.toml's [project] dependencies minus torch, environment markers included."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from pkgtest_helpers import REPO, load_environment_module


def _norm(req: str) -> tuple[str, str, str, str]:
    r = Requirement(req)
    name = r.name.lower().replace("_", "-").replace(".", "-")
    return name, str(r.specifier), ",".join(sorted(r.extras)), str(r.marker or "")


def _pyproject_deps() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["dependencies"]


def test_requirements_match_pyproject():
    env = load_environment_module()
    reqs = env.read_requirements(REPO / "engine" / "requirements.txt")
    deps = [d for d in _pyproject_deps() if _norm(d)[0] != "torch"]
    assert sorted(map(_norm, reqs)) == sorted(map(_norm, deps)), (
        "engine/requirements.txt and pyproject.toml [project] dependencies (minus torch) differ: "
        "update engine/requirements.txt")


def test_no_torch_in_requirements_and_pin_matches():
    env = load_environment_module()
    reqs = env.read_requirements(REPO / "engine" / "requirements.txt")
    assert not [r for r in reqs if _norm(r)[0] == "torch"], "torch is installed separately"
    torch = [d for d in _pyproject_deps() if _norm(d)[0] == "torch"]
    assert len(torch) == 1 and Requirement(torch[0]).specifier == \
        Requirement(env.TORCH_REQUIREMENT).specifier, (torch, env.TORCH_REQUIREMENT)


def test_requirements_hash_tracks_changes(tmp_path):
    env = load_environment_module()
    eng = tmp_path / "engine"
    eng.mkdir()
    (eng / "requirements.txt").write_text("# comment\nnumpy>=1.24\npillow>=10\n")
    h1 = env.requirements_hash(eng)
    (eng / "requirements.txt").write_text("pillow>=10\n\nnumpy>=1.24  # same set\n")
    assert env.requirements_hash(eng) == h1
    assert env.requirements_hash(tmp_path) == h1  # the folder above engine/ is accepted too
    (eng / "requirements.txt").write_text("numpy>=1.26\npillow>=10\n")
    assert env.requirements_hash(eng) != h1
