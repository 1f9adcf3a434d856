"""One contract between the engine and the extension (engine/contract.py): the extension's copy is
the engine's, byte for byte; the docs, the CLI, the errors, the presets' numbers and the runner's
command line all agree with it. Plain tests: no bpy needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from addon_plain import REPO, addon_module

contract = addon_module("contract")
command = addon_module("command")
client = addon_module("client")


def test_vendored_contract_is_identical():
    engine_copy = (REPO / "engine" / "contract.py").read_bytes()
    addon_copy = (REPO / "ganfit_blender" / "contract.py").read_bytes()
    assert addon_copy == engine_copy, (
        "ganfit_blender/contract.py differs from engine/contract.py: "
        "cp engine/contract.py ganfit_blender/contract.py")


def test_contract_is_standalone():
    # The copy must work inside the extension: no imports from either package, stdlib only.
    src = (REPO / "engine" / "contract.py").read_text()
    imports = re.findall(r"^\s*(?:from|import) ([\w.]+)", src, flags=re.M)
    assert set(imports) <= {"__future__", "json", "dataclasses", "pathlib", "typing"}, imports


def _md_table(text: str, heading: str) -> list[list[str]]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_docs_exit_table_matches_contract():
    text = (REPO / "docs" / "protocol.md").read_text()
    doc = [(int(e), c.strip("`"), m) for e, c, m in _md_table(text, "## Exit codes")]
    ours = [(r.exit, r.code, r.meaning) for r in contract.EXIT_CODES]
    assert doc == ours


def test_docs_preset_table_matches_contract():
    text = (REPO / "docs" / "protocol.md").read_text()
    doc = [(n.strip("`"), d) for n, d in _md_table(text, "## Presets")]
    assert doc == [(p.name, p.description) for p in contract.PRESETS]


def test_engine_errors_and_client_use_the_table():
    from engine import errors
    classes = [errors.EngineError, *errors.EngineError.__subclasses__()]
    for cls in classes:
        assert cls.exit_code == contract.exit_code_for(cls.code), cls
    codes = {r.code for r in contract.EXIT_CODES}
    assert {cls.code for cls in classes} <= codes
    assert client.EXIT_CODES == {r.exit: r.code for r in contract.EXIT_CODES if r.exit}
    assert contract.error_code_for(4) == "no_face" and contract.error_code_for(77) == "internal"
    assert contract.error_code_for(0) == "internal"  # 0 is success, never an error code


def test_cli_help_and_choices_come_from_the_contract():
    from engine.cli import build_parser
    ap = build_parser()
    assert contract.exit_code_summary() in " ".join(ap.format_help().split())
    fit = ap.parse_args(["fit", "p.png", "-o", "o"])
    assert fit.preset == contract.DEFAULT_PRESET
    for name in contract.PRESET_NAMES:
        assert ap.parse_args(["fit", "p.png", "-o", "o", "--preset", name]).preset == name
    with pytest.raises(SystemExit):
        ap.parse_args(["fit", "p.png", "-o", "o", "--preset", "ultra"])


def _numbers(desc: str) -> dict:
    m = re.search(r"(\d+) \+ (\d+) steps at (\d+) px, (\d+) px texture", desc)
    assert m, f"preset description without its numbers: {desc!r}"
    coarse, fine, render, tex = map(int, m.groups())
    return {"coarse_steps": coarse, "fine_steps": fine, "render_res": render, "texture_res": tex,
            "identity": "no identity" not in desc}


@pytest.mark.parametrize("name", ["fast", "balanced", "best"])
def test_preset_descriptions_tell_the_truth(name):
    from engine.fit.config import get_config
    assert name in contract.PRESET_NAMES
    cfg = get_config(name)
    desc = next(p.description for p in contract.PRESETS if p.name == name)
    claimed = _numbers(desc)
    actual = {k: getattr(cfg, k) for k in claimed}
    assert claimed == actual, f"{name}: the description says {claimed}, the config has {actual}"


def test_contract_lists_every_engine_preset():
    from engine.fit import config
    names = getattr(config, "PRESETS", None)
    if names is not None:
        assert tuple(names) == contract.PRESET_NAMES
    with pytest.raises(ValueError):
        config.get_config("no-such-preset")


ENGINE_OPTIONS = (
    [],
    ["--recognizer", "arcface", "--recognizer-path", "/m/w600k_r50.onnx"],  # preferences: insightface
    ["--landmarks", "fan"],  # preferences: face-alignment folder
    ["--texture-model", "/m/gen.pt"],  # preferences: texture checkpoint
)


@pytest.mark.parametrize("extra", ENGINE_OPTIONS)
@pytest.mark.parametrize("preset", ["fast", "balanced", "best"])
def test_runner_command_parses_with_the_engine_parser(preset, extra):
    from engine.cli import build_parser
    argv = command.fit_command("/py", "/ph/me.png", "/out/me-1", preset=preset, device="cpu",
                               texture_res=2048, neutral=True, max_steps=7, overwrite=True,
                               extra_args=extra)
    assert argv[:3] == ["/py", "-m", "engine"]
    args = build_parser().parse_args(argv[3:])  # SystemExit(2) on any flag the engine lacks
    assert (args.command, args.output) == ("fit", "/out/me-1")
    assert _parsed_inputs(args) == (["/ph/me.png"], None)
    assert (args.preset, args.device, args.texture_res, args.neutral, args.max_steps) == \
        (preset, "cpu", 2048, True, 7)
    assert args.json_progress and args.overwrite


def _parsed_inputs(args) -> tuple[list[str], str | None]:
    """(photos, folder) of a parsed ``fit``: the positional photo(s) and ``--photos``, whether
    the engine's parser keeps one photo as a string or a list."""
    pos = getattr(args, "photo", None)
    photos = list(pos) if isinstance(pos, (list, tuple)) else [pos] if pos else []
    photos += list(getattr(args, "more_photos", None) or [])  # the engine's PHOTO [MORE ...]
    folder = getattr(args, "photos", None)
    if folder is None:
        folder = getattr(args, "photos_dir", None)
    return photos, folder


def test_fit_command_with_several_photos_and_a_folder():
    argv = command.fit_command("/py", ["/ph/a.jpg", Path("/ph/b.jpg"), "/ph/c.png"], "/out/r",
                               preset="fast", device="cpu")
    assert argv[:9] == ["/py", "-m", "engine", "fit", "/ph/a.jpg", "/ph/b.jpg", "/ph/c.png",
                        "-o", "/out/r"]
    assert argv.count("--json-progress") == 1 and argv[argv.index("--preset") + 1] == "fast"
    argv = command.fit_command("/py", None, "/out/r", photos_dir=Path("/ph/person"), max_steps=3)
    assert argv[:8] == ["/py", "-m", "engine", "fit", "--photos", "/ph/person", "-o", "/out/r"]
    assert argv[argv.index("--max-steps") + 1] == "3"
    assert command.fit_command("/py", ("/ph/a.jpg",), "o")[4:6] == ["/ph/a.jpg", "-o"]
    for bad, kw, match in ((None, {}, "no photo"), ([], {}, "no photo"),
                           (["/a.jpg"], {"photos_dir": "/d"}, "not both"),
                           (["/a.jpg", ""], {}, "empty photo")):
        with pytest.raises(ValueError, match=match):
            command.fit_command("/py", bad, "o", **kw)


def _multi_photo_parser():
    from engine.cli import build_parser
    ap = build_parser()
    try:
        ap.parse_args(["fit", "a.jpg", "b.jpg", "-o", "o"])
    except SystemExit:
        pytest.skip("this engine's fit takes one photo (the multi-photo engine is not merged)")
    return ap


@pytest.mark.parametrize("how", ["list", "folder"])
def test_multi_photo_command_parses_with_the_engine_parser(how):
    ap = _multi_photo_parser()
    if how == "list":
        argv = command.fit_command("/py", ["/ph/a.jpg", "/ph/b.jpg"], "/out/r", preset="fast",
                                   device="cpu", max_steps=2, neutral=True)
        expected = (["/ph/a.jpg", "/ph/b.jpg"], None)
    else:
        argv = command.fit_command("/py", None, "/out/r", photos_dir="/ph/person", preset="fast",
                                   device="cpu", max_steps=2, neutral=True)
        expected = ([], "/ph/person")
    args = ap.parse_args(argv[3:])
    assert (args.command, args.output, args.preset, args.max_steps, args.neutral) == \
        ("fit", "/out/r", "fast", 2, True)
    assert _parsed_inputs(args) == expected


def test_runner_command_defaults_parse():
    from engine.cli import build_parser
    argv = command.fit_command("/py", "me.png", "out")
    args = build_parser().parse_args(argv[3:])
    assert not args.overwrite and not args.neutral and args.max_steps is None
    assert args.texture_res is None and args.preset == contract.DEFAULT_PRESET
    with pytest.raises(ValueError, match="preset"):
        command.fit_command("/py", "me.png", "out", preset="ultra")


def test_protocol_module_uses_the_contract():
    from engine import protocol
    assert protocol.VERSION == contract.PROTOCOL_VERSION and protocol.TYPES == contract.MESSAGE_TYPES
    line = protocol.encode("hello", pid=3)
    assert contract.decode(line) == {"v": 1, "type": "hello", "pid": 3}
    assert contract.is_cancel('{"type":"cancel"}') and not contract.is_cancel("go")


def test_is_result_folder(tmp_path):
    assert not contract.is_result_folder(tmp_path)
    (tmp_path / "result.json").write_text('{"schema": 1, "engine": "0.1.0"}')
    assert contract.is_result_folder(tmp_path)
    for bad in ('{"schema": 2, "engine": "0.1.0"}', '{"schema": 1}', "[1]", "{trunc"):
        (tmp_path / "result.json").write_text(bad)
        assert not contract.is_result_folder(tmp_path), bad
    link = tmp_path.parent / (tmp_path.name + "-link")
    (tmp_path / "result.json").write_text('{"schema": 1, "engine": "0.1.0"}')
    link.symlink_to(tmp_path, target_is_directory=True)
    assert not contract.is_result_folder(link)
    assert not contract.is_result_folder(tmp_path / "result.json")
