"""ganfit_blender/result.py, the bpy-free reading of a result folder: schema, OBJ, arrays, camera
maths, damaged files. Plain tests: they run with or without bpy."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from addon_plain import addon_module
from fake_result import check_documented_schema, write_fake_result

result = addon_module("result")


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader") / "result"
    write_fake_result(folder)
    return folder


@pytest.fixture
def folder(master, tmp_path):
    dst = tmp_path / "result"
    shutil.copytree(master, dst)
    return dst


def test_load_whole_folder(folder):
    res = result.load_result(folder)
    meta = json.loads((folder / "result.json").read_text())
    assert res.meta == meta and res.warnings == []
    assert res.albedo == folder / "albedo.png"
    assert res.has_shape_keys and res.deltas.shape == (53, len(res.obj.verts), 3)
    assert res.weights.dtype == np.float32 and len(res.names) == 53
    # neutral + weights @ deltas is face.obj (float16 deltas)
    mixed = res.neutral + np.tensordot(res.weights, res.deltas, 1)
    assert np.abs(mixed - res.obj.verts).max() < 1e-5
    assert set(res.params) >= {"shape", "expression", "rotation", "focal_px"}


def test_fake_result_matches_the_documented_schema(folder):
    check_documented_schema(folder)


@pytest.mark.parametrize("what", ["blendshapes.npz", "params.npz"])
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_npz_is_a_clear_error(folder, what, keep):
    data = (folder / what).read_bytes()
    (folder / what).write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(result.ResultImportError, match=f"{what}.*damaged or truncated"):
        result.load_result(folder)


def test_npz_without_its_arrays(folder):
    np.savez(folder / "blendshapes.npz", other=np.zeros(3))
    with pytest.raises(result.ResultImportError, match="lacks neutral, deltas, names"):
        result.load_result(folder)


def test_blendshapes_that_do_not_match_the_mesh(folder):
    with np.load(folder / "blendshapes.npz") as z:
        arrays = dict(z)
    arrays["neutral"] = arrays["neutral"][:-1]
    np.savez(folder / "blendshapes.npz", **arrays)
    with pytest.raises(result.ResultImportError, match="does not match face.obj"):
        result.load_result(folder)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_check_png(tmp_path):
    good = tmp_path / "good.png"
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    good.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + _png_chunk(b"IEND", b""))
    assert result.check_png(good) is None
    data = good.read_bytes()
    cases = {"missing": None, "truncated": data[:-8], "not a PNG": b"GIF89a" + data[6:],
             "checksum": data[:20] + bytes([data[20] ^ 1]) + data[21:]}
    for word, content in cases.items():
        p = tmp_path / f"{word}.png"
        if content is not None:
            p.write_bytes(content)
        assert word in result.check_png(p), word


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage"])
def test_missing_or_damaged_albedo_is_a_warning(folder, case):
    albedo = folder / "albedo.png"
    if case == "missing":
        albedo.unlink()
    elif case == "truncated":
        albedo.write_bytes(albedo.read_bytes()[:100])
    else:
        albedo.write_bytes(b"hello")
    res = result.load_result(folder)
    assert res.albedo is None
    assert len(res.warnings) == 1 and "albedo.png" in res.warnings[0]
    assert "without its texture" in res.warnings[0]


def test_engine_warnings_come_through(folder):
    meta = json.loads((folder / "result.json").read_text())
    meta["warnings"] = ["The face is small.", 3, "", "Dark photo."]
    (folder / "result.json").write_text(json.dumps(meta))
    assert result.load_result(folder).warnings == ["The face is small.", "Dark photo."]
    meta["warnings"] = "not a list"
    (folder / "result.json").write_text(json.dumps(meta))
    assert result.load_result(folder).warnings == []


@pytest.mark.parametrize("content, match", [
    (None, "no result.json"), ("{", "damaged or truncated"), ("[]", "not a JSON object"),
    ('{"schema": 2}', "schema 2"),
])
def test_bad_result_json(folder, content, match):
    if content is None:
        (folder / "result.json").unlink()
    else:
        (folder / "result.json").write_text(content)
    with pytest.raises(result.ResultImportError, match=match):
        result.load_result(folder)


def test_missing_folder_and_mesh(folder, tmp_path):
    with pytest.raises(result.ResultImportError, match="not found"):
        result.load_result(tmp_path / "nope")
    (folder / "face.obj").unlink()
    with pytest.raises(result.ResultImportError, match="Missing mesh file"):
        result.load_result(folder)


def test_parse_obj_forms_and_errors(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                 "usemtl ganfit_face\nf 1/1 2/2 3/3\nf -1/-1 -2/-2 -3/-3 2/2\n")
    m = result.parse_obj(p)
    assert m.face_sizes.tolist() == [3, 4] and m.material == "ganfit_face"
    assert m.face_verts.tolist() == [0, 1, 2, 3, 2, 1, 1]
    p.write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(result.ResultImportError, match="does not exist"):
        result.parse_obj(p)
    p.write_text("v 0 0 0\n")
    with pytest.raises(result.ResultImportError, match="no faces"):
        result.parse_obj(p)


def test_obj_to_blender_axes():
    pts = np.array([[1.0, 2.0, 3.0]])
    assert result.obj_to_blender(pts).tolist() == [[1.0, -3.0, 2.0]]
    # The same conversion as the AXIS matrix used for the camera.
    assert np.allclose((result.AXIS[:3, :3] @ pts.T).T, result.obj_to_blender(pts))


def test_camera_setup_maths():
    w2c = np.eye(4)
    w2c[2, 3] = -0.6  # the camera 0.6 m in front of the face (+Z of model space)
    cam = {"fx": 720.0, "fy": 720.0, "cx": 330.0, "cy": 230.0, "width": 600, "height": 400,
           "world_to_camera": w2c.tolist(), "near": 0.05, "far": 10.0}
    s = result.camera_setup(cam)
    assert s.lens == pytest.approx(720 * 36 / 600)
    assert s.shift_x == pytest.approx(-30 / 600) and s.shift_y == pytest.approx(30 / 600)
    assert (s.width, s.height, s.pixel_aspect_x, s.pixel_aspect_y) == (600, 400, 1.0, 1.0)
    # camera position in Blender world: model (0, 0, 0.6) -> Blender (0, -0.6, 0)
    assert np.allclose(s.matrix_world[:3, 3], [0.0, -0.6, 0.0])
    assert (s.clip_start, s.clip_end) == (0.05, 10.0)
    s2 = result.camera_setup({**cam, "fy": 360.0})
    assert (s2.pixel_aspect_x, s2.pixel_aspect_y) == (1.0, 2.0)


@pytest.mark.parametrize("change", [{"fx": -5.0}, {"width": 0}, {"world_to_camera": [[1, 0]]},
                                    {"world_to_camera": np.zeros((4, 4)).tolist()}, {"fx": None}])
def test_camera_setup_rejects_bad_values(change):
    cam = {"fx": 720.0, "width": 600, "height": 400, "world_to_camera": np.eye(4).tolist(), **change}
    if change.get("fx", 1) is None:
        del cam["fx"]
    with pytest.raises(result.ResultImportError, match="camera"):
        result.camera_setup(cam)


# ---------------------------------------------------------------------------------------------
# Several photos of one person: result.json's ``views``
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi_master(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader-mv") / "result"
    write_fake_result(folder, views=3)
    return folder


@pytest.fixture
def multi(multi_master, tmp_path):
    dst = tmp_path / "mv" / "result"
    dst.parent.mkdir()
    shutil.copytree(multi_master, dst)
    for photo in multi_master.parent.glob("result_photo*.png"):  # the photos beside it
        shutil.copy(photo, dst.parent / photo.name)
    return dst


def _edit(folder, change):
    meta = json.loads((folder / "result.json").read_text())
    change(meta)
    (folder / "result.json").write_text(json.dumps(meta))


def test_one_photo_result_is_one_view_from_the_top_level_keys(folder):
    res = result.load_result(folder)
    meta = res.meta
    assert not res.multi_view and len(res.views) == 1
    (view,) = res.views
    assert (view.index, view.photo, view.camera, view.image) == \
        (1, meta["photo"], meta["camera"], meta["image"])
    assert view.files == {}  # render.png/overlay.png are not a view's business here
    assert view.photo_name.endswith("_photo.png")


def test_views_are_read_in_order_with_their_files(multi):
    res = result.load_result(multi)
    meta = json.loads((multi / "result.json").read_text())
    assert res.multi_view and [v.index for v in res.views] == [1, 2, 3]
    assert [v.photo for v in res.views] == [v["photo"] for v in meta["views"]]
    assert res.views[0].photo == meta["photo"] and res.views[0].camera == meta["camera"]
    assert [v.camera["width"] for v in res.views] == [256, 300, 200]
    assert res.views[1].image == {"width": 300, "height": 240}
    assert res.views[0].files == {"render": multi / "render.png", "overlay": multi / "overlay.png"}
    assert res.views[2].files == {"render": multi / "render-3.png",
                                  "overlay": multi / "overlay-3.png"}
    assert res.views[1].metrics == {"landmark_error_iod": pytest.approx(0.04)}
    names = meta["expression"]["names"]
    assert res.views[0].expression == dict(zip(names, meta["expression"]["weights"]))
    assert res.views[1].expression[names[1]] == pytest.approx(0.3)
    assert res.views[2].expression[names[12]] == pytest.approx(0.3)
    assert np.allclose(res.params["view_expression"][2], list(res.views[2].expression.values()))
    # each camera is its own: the extra photos were taken from other angles
    setups = [result.camera_setup(v.camera) for v in res.views]
    assert not np.allclose(setups[0].matrix_world, setups[1].matrix_world)
    assert res.params["view_rotation"].shape == (3, 3, 3)


def test_fake_multi_view_result_keeps_the_documented_single_photo_keys(multi):
    check_documented_schema(multi)


def test_one_entry_views_is_not_multi_view(multi):
    _edit(multi, lambda m: m.update(views=m["views"][:1]))
    res = result.load_result(multi)
    assert len(res.views) == 1 and not res.multi_view


@pytest.mark.parametrize("name", ["render-2.png", "overlay-3.png"])
def test_missing_file_of_a_view_is_a_clear_error(multi, name):
    (multi / name).unlink()
    k = name.split("-")[1][0]
    with pytest.raises(result.ResultImportError,
                       match=rf"{name} of view {k} \(result_photo-{k}.png\) is missing"):
        result.load_result(multi)


@pytest.mark.parametrize("change, match", [
    ({"fx": -1.0}, r"camera has invalid values \(view 2, result_photo-2.png\)"),
    ({"world_to_camera": [[1, 0]]}, r"invalid values \(view 2"),
    ({"width": None}, r"camera is incomplete.*\(view 2, result_photo-2.png\)"),
])
def test_bad_camera_of_a_view_is_a_clear_error(multi, change, match):
    _edit(multi, lambda m: m["views"][1]["camera"].update(change))
    with pytest.raises(result.ResultImportError, match=match):
        result.load_result(multi)


@pytest.mark.parametrize("views, match", [
    ("all", "'views' is not a list"), ([], "'views' is not a list"), ([1, 2], "not a list"),
])
def test_views_that_are_not_a_list_of_views(multi, views, match):
    _edit(multi, lambda m: m.update(views=views))
    with pytest.raises(result.ResultImportError, match=match):
        result.load_result(multi)


def test_view_without_camera_or_with_a_bad_file_name(multi):
    _edit(multi, lambda m: m["views"][2].pop("camera"))
    with pytest.raises(result.ResultImportError, match=r"view 3 \(result_photo-3.png\) has no camera"):
        result.load_result(multi)
    _edit(multi, lambda m: m["views"][2].update(camera=m["views"][1]["camera"],
                                                files={"render": "../render-3.png"}))
    with pytest.raises(result.ResultImportError, match="not a file name in the folder"):
        result.load_result(multi)


def test_unknown_keys_are_ignored(multi):
    _edit(multi, lambda m: (m["views"][1].update(new_thing={"x": 1}, metrics={"a": "text", "b": 2},
                                                 expression={"names": ["a"], "weights": [1, 2]}),
                            m.update(another_key=[1])))
    res = result.load_result(multi)
    assert res.multi_view and res.views[1].metrics == {"b": 2.0}
    assert res.views[1].expression == {}  # malformed: left out, the import goes on
