#!/usr/bin/env python3
"""Build the ganfit_blender extension zip with Blender's own extension tool.

    python build.py [build]            stage + build dist/<id>-<version>.zip + validate it
    python build.py validate [ZIP]     validate a built zip (default: this version's zip)
    python build.py clean              remove dist/ and stale staging folders

The staged extension folder holds a copy of ``ganfit_blender/``, the repo-root
``blender_manifest.toml``, the engine package bundled inside it as ``engine/`` (with its data
assets and requirements.txt; no tests, caches or bytecode), ``LICENSE`` and third-party licence
files. torch is never bundled: the add-on installs it into a private environment at run time
(``ganfit_blender/environment.py``).

The zip is made by ``blender_ext.py build`` from the bpy wheel (``bpy/<ver>/scripts/addons_core/
bl_pkg/cli/``), run with a Python that can execute it (PyPI bpy has no Blender binary, so
``blender --command extension build`` is only a fallback). Then ``validate`` runs the same tool's
check plus this script's checks of what extensions.blender.org refuses (bundled wheels, a missing
licence, bad permissions, caches, symlinks, ...). Any warning fails the build (non-zero exit).

Standard library only.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent
ADDON_DIR = "ganfit_blender"
ENGINE_DIR = "engine"
MANIFEST = "blender_manifest.toml"
DIST = "dist"
STAGING_PREFIX = "ganfit-stage-"
TOOL_REL = ("scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")

# Copied from the repo root when present (the LICENSE itself is required).
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")
THIRD_PARTY_GLOBS = ("THIRD_PARTY*", "THIRD-PARTY*", "NOTICE*", "CREDITS*")
THIRD_PARTY_DIRS = ("LICENSES", "licenses", "third_party_licenses")

# Never shipped: caches, bytecode, tests, build litter, editor/VCS files.
EXCLUDE_NAMES = ("__pycache__", "*.pyc", "*.pyo", "tests", "test", "*.egg-info", ".*", "*.zip",
                 "*.blend1", "*.blend[1-9]", "*.orig", "*.rej", "*~")

# What the engine needs at run time besides its Python modules.
REQUIRED_IN_ZIP = ("__init__.py", MANIFEST, "engine/__init__.py", "engine/__main__.py",
                   "engine/requirements.txt")

PERMISSIONS_VALID = ("files", "network", "clipboard", "camera", "microphone")
# Known to be refused by the platform / forbidden by us inside the archive.
FORBIDDEN_GLOBS = ("*.whl", "*.pyc", "*.pyo", "*/__pycache__/*", "__pycache__/*", "*.egg-info/*",
                   "torch/*", "*/site-packages/*", "*.so", "*.pyd", "*.dll", "*.dylib", "*.exe",
                   ".*", "*/.*")
SIZE_WARN_BYTES = 100 * 1024 * 1024


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# The manifest


def read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise BuildError(f"{path} not found: the extension manifest lives at the repo root")
    if tomllib is None:
        raise BuildError("build.py needs Python 3.11+ (tomllib)")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as ex:
        raise BuildError(f"{path}: invalid TOML: {ex}") from None


def zip_name(manifest: dict) -> str:
    return f"{manifest.get('id', ADDON_DIR)}-{manifest.get('version', '0.0.0')}.zip"


# ---------------------------------------------------------------------------------------------
# Finding Blender's extension tool


def _tool_under(bpy_pkg_dir: Path) -> Path | None:
    hits = sorted(bpy_pkg_dir.glob(os.path.join("*", *TOOL_REL)))
    return hits[-1] if hits else None


def find_tool(explicit: str | None = None) -> tuple[list[str], str]:
    """The command prefix that runs ``blender_ext.py`` and a description of where it came from.

    Order: --blender-ext / $BLENDER_EXT_TOOL, bpy in this interpreter, bpy in the repo's .venv,
    then ``blender --command extension`` on PATH.
    """
    explicit = explicit or os.environ.get("BLENDER_EXT_TOOL")
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BuildError(f"blender_ext.py not found at {p}")
        return [sys.executable, str(p)], str(p)
    spec = importlib.util.find_spec("bpy")
    if spec is not None and spec.origin:
        tool = _tool_under(Path(spec.origin).parent)
        if tool is not None:
            return [sys.executable, str(tool)], str(tool)
    for venv in (ROOT / ".venv",):
        for pattern in ("lib/python3*/site-packages/bpy", "Lib/site-packages/bpy"):
            for bpy_dir in sorted(venv.glob(pattern)):
                tool = _tool_under(bpy_dir)
                if tool is None:
                    continue
                py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
                return [str(py if py.exists() else sys.executable), str(tool)], str(tool)
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension"], blender
    raise BuildError("Blender's extension tool was not found: install the dev env "
                     "(bash scripts/dev.sh setup, which installs bpy), pass --blender-ext "
                     "<path to bpy/.../bl_pkg/cli/blender_ext.py>, or put blender on PATH")


def run_tool(tool: list[str], args: list[str]) -> list[tuple[str, str]]:
    """Run the tool with JSON output; return its (type, text) messages; raise on any problem."""
    cmd = [*tool, *args, "--output-type", "JSON"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as ex:
        msgs = _parse_tool_output(ex.stdout)
        detail = "\n".join(f"  {t}: {m}" for t, m in msgs) or ex.stdout.strip()
        raise BuildError(f"{' '.join(args[:1])} failed (exit code {ex.returncode}):\n{detail}\n"
                         f"{ex.stderr.strip()}") from None
    msgs = _parse_tool_output(proc.stdout)
    problems = [(t, m) for t, m in msgs if t not in ("STATUS", "DONE", "PATH", "PROGRESS")]
    # The tool reports parse errors of the manifest as STATUS lines after an "Error" status.
    problems += [(t, m) for t, m in msgs if t == "STATUS" and m.lower().startswith("error")]
    for line in proc.stderr.splitlines():
        if "warn" in line.lower() or "error" in line.lower():
            problems.append(("STDERR", line))
    if problems:
        raise BuildError(f"{args[0]} reported problems:\n" +
                         "\n".join(f"  {t}: {m}" for t, m in problems))
    return msgs


def _parse_tool_output(stdout: str) -> list[tuple[str, str]]:
    msgs = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            kind, data = json.loads(line)
        except (ValueError, TypeError):
            msgs.append(("TEXT", line))
            continue
        msgs.append((str(kind), data if isinstance(data, str) else json.dumps(data)))
    return msgs


# ---------------------------------------------------------------------------------------------
# Staging


def _ignore(directory: str, names: list[str]) -> set[str]:
    out = set()
    for name in names:
        if any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE_NAMES):
            out.add(name)
    return out


def stage(root: Path, dest: Path) -> list[str]:
    """Copy what the extension ships into ``dest``; return the licence files staged."""
    addon = root / ADDON_DIR
    if not (addon / "__init__.py").is_file():
        raise BuildError(f"{addon}/__init__.py not found: nothing to build")
    engine = root / ENGINE_DIR
    if not (engine / "__main__.py").is_file():
        raise BuildError(f"{engine}/__main__.py not found: the engine must be runnable as "
                         f"'python -m engine'")
    if not (engine / "requirements.txt").is_file():
        raise BuildError(f"{engine}/requirements.txt not found: the installer needs it")
    shutil.copytree(addon, dest, ignore=_ignore)
    if (dest / ENGINE_DIR).exists():
        raise BuildError(f"{addon} already has an '{ENGINE_DIR}' entry; it would clash with the "
                         f"bundled engine")
    shutil.copytree(engine, dest / ENGINE_DIR, ignore=_ignore)
    shutil.copy2(root / MANIFEST, dest / MANIFEST)
    licences = []
    for name in LICENSE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
            licences.append(name)
    if not licences:
        raise BuildError(f"no LICENSE file at {root}: the platform refuses unlicensed extensions")
    for pattern in THIRD_PARTY_GLOBS:
        for p in sorted(root.glob(pattern)):
            if p.is_file():
                shutil.copy2(p, dest / p.name)
                licences.append(p.name)
    for name in THIRD_PARTY_DIRS:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=_ignore)
            licences.append(name + "/")
    # Normalise permissions: the platform (and users' Blender) must be able to read everything;
    # nothing world-writable, no set-id bits, no symlinks.
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise BuildError(f"symlink in the staged extension: {p.relative_to(dest)}")
            mode = 0o755 if p.is_dir() else 0o644
            os.chmod(p, mode)
    return licences


# ---------------------------------------------------------------------------------------------
# Checks of the built archive (what the extension platform would refuse)


def check_archive(zip_path: Path, root: Path | None = ROOT) -> list[str]:
    """Problems with a built extension zip, as human sentences (empty: fine)."""
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as ex:
        return [f"{zip_path} is not a readable zip: {ex}"]
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        bad = zf.testzip()
        if bad is not None:
            problems.append(f"corrupt member in the archive: {bad}")
        for req in REQUIRED_IN_ZIP:
            if req not in names:
                problems.append(f"missing from the archive: {req}")
        if not any(n in names for n in LICENSE_FILES):
            problems.append("no LICENSE file at the root of the archive")
        for info in infos:
            name = info.filename
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                problems.append(f"unsafe path in the archive: {name!r}")
            for pat in FORBIDDEN_GLOBS:
                if fnmatch.fnmatch(name, pat):
                    problems.append(f"forbidden file in the archive ({pat}): {name}")
                    break
            mode = info.external_attr >> 16
            if mode:
                if stat.S_ISLNK(mode):
                    problems.append(f"symlink in the archive: {name}")
                if mode & (stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID):
                    problems.append(f"bad file permissions {oct(mode & 0o7777)} on {name} "
                                    f"(world-writable or set-id)")
                if not name.endswith("/") and not mode & stat.S_IRUSR:
                    problems.append(f"unreadable file in the archive: {name}")
        # The engine's data assets must all be there (when we can compare with the repo).
        if root is not None and (root / ENGINE_DIR / "data").is_dir():
            for p in sorted((root / ENGINE_DIR / "data").rglob("*")):
                rel = p.relative_to(root).as_posix()
                if p.is_file() and not any(fnmatch.fnmatch(part, pat) for part in p.parts
                                           for pat in EXCLUDE_NAMES) and rel not in names:
                    problems.append(f"engine data file missing from the archive: {rel}")
        if MANIFEST in names and tomllib is not None:
            try:
                manifest = tomllib.loads(zf.read(MANIFEST).decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as ex:
                problems.append(f"{MANIFEST} in the archive does not parse: {ex}")
            else:
                problems += check_manifest(manifest, names)
    return problems


def check_manifest(manifest: dict, names: list[str]) -> list[str]:
    problems = []
    if manifest.get("type") != "add-on":
        problems.append(f"manifest type is {manifest.get('type')!r}, expected 'add-on'")
    lic = manifest.get("license")
    if not lic or not isinstance(lic, list) or not all(
            isinstance(x, str) and x.startswith("SPDX:") for x in lic):
        problems.append("manifest 'license' must be a non-empty list of 'SPDX:<id>' strings")
    if manifest.get("wheels"):
        problems.append(f"manifest bundles wheels {manifest['wheels']}: the engine's packages "
                        f"(torch above all) are installed at run time, never bundled")
    perms = manifest.get("permissions")
    if perms is None:
        perms = {}
    if not isinstance(perms, dict):
        problems.append("manifest [permissions] must be a table of permission = \"reason\"")
        perms = {}
    for key, reason in perms.items():
        if key not in PERMISSIONS_VALID:
            problems.append(f"unknown permission {key!r} (valid: {', '.join(PERMISSIONS_VALID)})")
        elif not isinstance(reason, str) or not reason.strip():
            problems.append(f"permission {key!r} needs a short reason string")
    # The add-on reads photos, writes results and its engine env: it touches files.
    if "files" not in perms:
        problems.append("manifest [permissions] lacks 'files' (the add-on reads photos and "
                        "writes results and its engine environment)")
    # environment.py runs pip, which downloads: that is network access the platform requires
    # to be declared.
    if "environment.py" in names and "network" not in perms:
        problems.append("manifest [permissions] lacks 'network': environment.py downloads "
                        "PyTorch and the engine's packages with pip")
    if manifest.get("id") != ADDON_DIR:
        problems.append(f"manifest id is {manifest.get('id')!r}; the add-on is "
                        f"bl_ext.<repo>.{ADDON_DIR}, so the id must be {ADDON_DIR!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_build(args: argparse.Namespace) -> Path:
    root = Path(args.root).resolve()
    manifest = read_manifest(root / MANIFEST)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else root / DIST
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / zip_name(manifest)
    tool, where = find_tool(args.blender_ext)
    log(f"extension tool: {where}")
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    try:
        dest = tmp / ADDON_DIR
        licences = stage(root, dest)
        log(f"staged {sum(1 for _ in dest.rglob('*') if _.is_file())} files in {dest} "
            f"(licences: {', '.join(licences)})")
        run_tool(tool, ["validate", str(dest)])
        tmp_out = out.with_name(out.name + ".part")
        if tmp_out.exists():
            tmp_out.unlink()
        run_tool(tool, ["build", "--source-dir", str(dest), "--output-filepath", str(tmp_out)])
        os.replace(tmp_out, out)
    finally:
        if args.keep_staging:
            log(f"kept staging folder {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        validate(out, tool, root)
    except BuildError:
        # Never leave a zip that the platform would refuse where the next step would pick it up.
        out.unlink(missing_ok=True)
        log(f"removed the refused {out.name}")
        raise
    size = out.stat().st_size
    log(f"built {out} ({size / 1024 / 1024:.2f} MiB, {size} bytes)")
    if size > SIZE_WARN_BYTES:
        log(f"note: the zip is over {SIZE_WARN_BYTES // 1024 // 1024} MiB")
    return out


def validate(zip_path: Path, tool: list[str], root: Path | None) -> None:
    if not zip_path.is_file():
        raise BuildError(f"{zip_path} not found: run 'python build.py build' first")
    run_tool(tool, ["validate", str(zip_path)])
    problems = check_archive(zip_path, root)
    if problems:
        raise BuildError(f"{zip_path.name} would be refused:\n" +
                         "\n".join(f"  - {p}" for p in problems))
    with zipfile.ZipFile(zip_path) as zf:
        n = len(zf.infolist())
    log(f"validate: {zip_path.name} OK ({n} entries)")


def cmd_validate(args: argparse.Namespace) -> None:
    root = Path(args.root).resolve()
    if args.zip:
        zip_path = Path(args.zip).resolve()
    else:
        zip_path = (Path(args.out_dir).resolve() if args.out_dir else root / DIST) / \
            zip_name(read_manifest(root / MANIFEST))
    tool, where = find_tool(args.blender_ext)
    log(f"extension tool: {where}")
    validate(zip_path, tool, root if not args.zip else None)


def cmd_clean(args: argparse.Namespace) -> None:
    root = Path(args.root).resolve()
    out_dir = Path(args.out_dir).resolve() if args.out_dir else root / DIST
    if out_dir.exists():
        shutil.rmtree(out_dir)
        log(f"removed {out_dir}")
    for p in glob.glob(os.path.join(tempfile.gettempdir(), STAGING_PREFIX + "*")):
        shutil.rmtree(p, ignore_errors=True)
        log(f"removed {p}")


_VALUE_OPTIONS = ("--out-dir", "--blender-ext", "--root")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build.py", description="Build, validate or clean the ganfit_blender extension zip.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out-dir", help=f"where the zip goes (default: <repo>/{DIST})")
    common.add_argument("--blender-ext", help="path to Blender's bl_pkg/cli/blender_ext.py "
                        "(default: found through bpy, or $BLENDER_EXT_TOOL)")
    common.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="{build,validate,clean}")
    p_build = sub.add_parser("build", parents=[common],
                             help="stage the add-on + engine, build the zip, validate it (default)")
    p_build.add_argument("--keep-staging", action="store_true",
                         help="keep the temporary staging folder (for debugging)")
    p_val = sub.add_parser("validate", parents=[common],
                           help="validate a built zip with Blender's tool and the platform rules")
    p_val.add_argument("zip", nargs="?", help="zip to check (default: dist/<id>-<version>.zip)")
    sub.add_parser("clean", parents=[common], help="remove dist/ and staging folders")
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command may come after the options; no command means "build" (but -h alone is help).
    commands = ("build", "validate", "clean")
    idx = next((i for i, a in enumerate(argv) if a in commands
                and (i == 0 or argv[i - 1] not in _VALUE_OPTIONS)), None)
    if idx is not None:
        argv.insert(0, argv.pop(idx))
    elif argv not in (["-h"], ["--help"]):
        argv.insert(0, "build")
    args = parser.parse_args(argv)
    if args.command == "build" and not hasattr(args, "keep_staging"):
        args.keep_staging = False
    try:
        if args.command == "build":
            cmd_build(args)
        elif args.command == "validate":
            cmd_validate(args)
        elif args.command == "clean":
            cmd_clean(args)
    except BuildError as ex:
        print(f"[build] ERROR: {ex}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
