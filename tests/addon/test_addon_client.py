"""client.py (no bpy) against a tiny fake engine written here. This only tests the pipe; the
proof that a fit works is the real-engine tests."""

from __future__ import annotations

import importlib
import sys
import textwrap
import time

import pytest

from addon_testlib import ADDON, pid_gone

client = importlib.import_module(f"{ADDON}.client")

FAKE = textwrap.dedent(r'''
    import json, os, sys, threading, time
    mode = sys.argv[1]
    def send(**m):
        m.setdefault("v", 1)
        sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
    cancelled = threading.Event()
    def watch():
        for line in sys.stdin:
            if "cancel" in line:
                cancelled.set(); return
    threading.Thread(target=watch, daemon=True).start()
    send(type="hello", engine="fake", pid=os.getpid())
    print("log line on stderr", file=sys.stderr, flush=True)
    sys.stdout.write("not json, ignored\n"); sys.stdout.flush()
    if mode == "ok":
        for i in range(3):
            send(type="progress", stage="fine", step=i, total=3, fraction=i / 3, eta=1.0, future=1)
        send(type="unknown_type")
        send(type="result", dir="x", summary={"total_s": 0.1})
        sys.exit(0)
    if mode == "crash":
        send(type="stage", name="load", index=0, count=5)
        print("Traceback: something exploded", file=sys.stderr, flush=True)
        os._exit(1)
    if mode in ("slow", "deaf"):
        for i in range(600):
            if mode == "slow" and cancelled.is_set():
                send(type="error", code="cancelled", exit_code=130, msg="Cancelled.")
                sys.exit(130)
            send(type="progress", stage="fine", step=i, total=600, fraction=i / 600)
            time.sleep(0.05)
''')


@pytest.fixture
def fake(tmp_path):
    p = tmp_path / "fake_engine.py"
    p.write_text(FAKE)

    def make(mode: str) -> "client.EngineClient":
        c = client.EngineClient([sys.executable, str(p), mode], cwd=tmp_path,
                                log_path=tmp_path / "logs" / "stderr.log")
        c.start()
        return c
    return make


def _events(c, timeout=10.0):
    assert c.wait(timeout), "client did not finish"
    return client.drain(c.events)


def test_ok_run(fake):
    c = fake("ok")
    ev = _events(c)
    types = [e["type"] for e in ev]
    assert types[0] == "hello" and types[-2:] == ["result", "exit"]
    assert "unknown_type" in types  # passed on; consumers ignore what they do not know
    assert ev[-1]["returncode"] == 0 and c.returncode == 0
    assert c.terminal["type"] == "result"
    assert "log line on stderr" in client.tail_text(c.log_path)


def test_crash_gives_error_with_log_tail(fake):
    c = fake("crash")
    ev = _events(c)
    err = [e for e in ev if e["type"] == "error"]
    assert len(err) == 1 and err[0]["synthetic"]
    assert err[0]["exit_code"] == 1 and err[0]["code"] == "internal"
    assert "something exploded" in err[0]["msg"]
    assert ev[-1] == {"type": "exit", "returncode": 1}


def test_cancel_stops_the_engine(fake):
    c = fake("slow")
    while c.events.empty():
        time.sleep(0.01)
    t0 = time.monotonic()
    c.cancel()
    assert c.wait(30)  # the fake would run 600 x 0.05 s = 30 s by itself
    print(f"cancel -> exit in {time.monotonic() - t0:.2f} s")  # a figure, not an assertion
    ev = client.drain(c.events)
    assert c.terminal["code"] == "cancelled"
    assert ev[-1]["returncode"] == 130  # the engine itself honoured the cancel
    steps = [e["step"] for e in ev if e["type"] == "progress"]
    assert not steps or max(steps) < 599  # it stopped before the end
    assert not c.is_alive and pid_gone(c.pid)


def test_cancel_escalates_when_engine_ignores_it(fake):
    c = fake("deaf")
    while c.events.empty():
        time.sleep(0.01)
    t0 = time.monotonic()
    c.cancel(grace=0.3)
    assert c.wait(30)  # the fake ignores the cancel and would run 30 s by itself
    print(f"cancel (grace 0.3 s) -> exit in {time.monotonic() - t0:.2f} s")
    assert c.returncode < 0 and pid_gone(c.pid)  # ended by a signal, not by itself
    steps = [e["step"] for e in client.drain(c.events) if e["type"] == "progress"]
    assert not steps or max(steps) < 599
    assert c.terminal["code"] == "cancelled"


def test_kill_mid_run(fake):
    c = fake("deaf")
    while c.events.empty():
        time.sleep(0.01)
    c.kill()
    assert c.wait(5)
    assert pid_gone(c.pid) and c.returncode < 0
    assert c.terminal["type"] == "error"


def test_missing_interpreter(tmp_path):
    c = client.EngineClient([str(tmp_path / "nope" / "python"), "-m", "engine"],
                            log_path=tmp_path / "log.txt")
    with pytest.raises(OSError):
        c.start()


def test_run_json_command(tmp_path):
    info = client.run_json_command([sys.executable, "-c",
                                    "import json; print('noise'); print(json.dumps({'ok': True}))"],
                                   cwd=None, env=None)
    assert info == {"ok": True}
    with pytest.raises(RuntimeError, match="exit code 3"):
        client.run_json_command([sys.executable, "-c", "import sys; sys.exit(3)"], None, None)
    with pytest.raises(RuntimeError, match="not found"):
        client.run_json_command([str(tmp_path / "none")], None, None)
