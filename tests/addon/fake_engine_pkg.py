"""Source of a stand-in ``engine`` package for the add-on's operator plumbing tests.

It speaks the protocol and copies a prepared result folder; it is not a fit. Modes (env
FAKE_MODE): ok, no_face, crash, slow (runs until cancelled), exit:N (exit N with no message),
die_early (SIGKILL right after making its preview folder), die (leave a preview folder and a ``.<name>.tmp-*`` work folder, then SIGKILL itself),
no_module (an engine Python without torch: ModuleNotFoundError on stderr, exit 1),
no_module_msg (the same reported as an ``internal`` protocol error), output (an ``output`` error,
exit 6), warn (a result whose result.json and ``result`` message carry ``warnings``).

Several photos (``fit A B ... -o OUT`` or ``fit --photos DIR -o OUT``) copy FAKE_RESULT_MULTI, a
prepared multi-photo result with as many views, and point its views at the photos given (as the
engine would); a different count is an error.
"""

MAIN = r'''
import json, os, shutil, sys, threading, time
argv = sys.argv[1:]
if argv[:1] == ["check"]:
    print(json.dumps({"ok": True, "torch": "fake", "device": "cpu", "backends": ["cpu"],
                      "models": {"face_model": True}}))
    sys.exit(0)
out = argv[argv.index("-o") + 1]
if "--photos" in argv:
    pdir = argv[argv.index("--photos") + 1]
    photos = [os.path.join(pdir, n) for n in sorted(os.listdir(pdir))
              if os.path.splitext(n)[1].lower() in (".jpg", ".jpeg", ".png")]
else:
    photos = argv[1:argv.index("-o")]
photos = [os.path.abspath(p) for p in photos]
mode = os.environ.get("FAKE_MODE", "ok")
with open(os.environ["FAKE_ARGV_LOG"], "w") as fh:
    json.dump(argv, fh)
def send(**m):
    m["v"] = 1
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
cancelled = threading.Event()
def watch():
    for line in sys.stdin:
        if "cancel" in line:
            cancelled.set(); return
threading.Thread(target=watch, daemon=True).start()
send(type="hello", engine="fake", torch="none", device="cpu", pid=os.getpid())
send(type="stage", name="load", index=0, count=5)
if mode == "no_face":
    send(type="error", code="no_face", exit_code=4, msg="No face found in the photo: use a photo with one clearly visible face.")
    sys.exit(4)
if mode.startswith("exit:"):
    sys.exit(int(mode[5:]))
if mode == "no_module":
    print("Traceback (most recent call last):\n  File \"engine/fit/run.py\", line 3\n"
          "ModuleNotFoundError: No module named 'torch'", file=sys.stderr, flush=True)
    sys.exit(1)
if mode == "no_module_msg":
    send(type="error", code="internal", exit_code=1,
         msg="Internal error: ModuleNotFoundError: No module named 'numpy'. Please report it with the engine log.",
         detail="Traceback ...\nModuleNotFoundError: No module named 'numpy'")
    sys.exit(1)
if mode == "output":
    send(type="error", code="output", exit_code=6,
         msg="The output folder already exists: " + out + ". Choose another folder or pass --overwrite to replace it.")
    sys.exit(6)
if mode == "die_early":  # killed after making its temp folder, before any preview names it
    import signal, tempfile
    prev = tempfile.mkdtemp(prefix="ganfit-preview-")
    with open(os.environ["FAKE_ARGV_LOG"] + ".tmp", "w") as fh:
        fh.write(prev)
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "die":
    import signal, tempfile
    work = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))
    open(os.path.join(work, "engine.log"), "w").write("fitting")
    prev = tempfile.mkdtemp(prefix="ganfit-preview-")
    shutil.copyfile(os.path.join(os.environ["FAKE_RESULT"], "albedo.png"), os.path.join(prev, "preview_0000.png"))
    send(type="preview", path=os.path.join(prev, "preview_0000.png"), step=0)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "crash":
    print("Traceback (most recent call last): boom", file=sys.stderr, flush=True)
    os._exit(1)
tmp = os.path.dirname(out) + "/.preview-fake.png"
shutil.copyfile(os.path.join(os.environ["FAKE_RESULT"], "albedo.png"), tmp)
send(type="preview", path=tmp, step=0)
n = 400 if mode == "slow" else 3
for i in range(n):
    if cancelled.is_set():
        send(type="error", code="cancelled", exit_code=130, msg="Cancelled.")
        sys.exit(130)
    send(type="progress", stage="fine", step=i, total=n, fraction=i / n, eta=(n - i) * 0.05,
         losses={"photo": 0.1}, elapsed=0.1)
    time.sleep(0.05 if mode == "slow" else 0.0)
if "--overwrite" in argv and os.path.isfile(os.path.join(out, "result.json")):
    shutil.rmtree(out)
if len(photos) > 1:
    shutil.copytree(os.environ["FAKE_RESULT_MULTI"], out)
    meta = json.load(open(out + "/result.json"))
    if len(meta["views"]) != len(photos):
        shutil.rmtree(out)
        send(type="error", code="usage", exit_code=2,
             msg="fake engine: %d photos, the prepared result has %d views" % (len(photos), len(meta["views"])))
        sys.exit(2)
    for view, photo in zip(meta["views"], photos):
        view["photo"] = photo
    meta["photo"] = photos[0]
    json.dump(meta, open(out + "/result.json", "w"))
else:
    shutil.copytree(os.environ["FAKE_RESULT"], out)
extra = {}
if mode == "warn":
    meta = json.load(open(out + "/result.json"))
    meta["warnings"] = ["The face is small (52 px): the fit and texture will be coarse."]
    json.dump(meta, open(out + "/result.json", "w"))
    extra["warnings"] = meta["warnings"]
send(type="result", dir=out, result_json=out + "/result.json",
     summary={"total_s": 0.2, "landmark_error_iod": 0.02, "identity_cosine": 0.7}, **extra)
'''


def write(root):
    """Create ``root/engine/__main__.py`` (and ``__init__.py``)."""
    pkg = root / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(MAIN)
    return root
