"""The cache's lock: two processes preparing the same thing (a runtime build of one key, a compiled kernel, the
default model or a text, a download) take turns."""

import os
import subprocess
import sys

from lowbit_gguf.cache import cache_lock

CHILD = """
from lowbit_gguf.cache import cache_lock
with cache_lock("shared", "testing the lock"):
    print("got it", flush=True)
"""


def test_a_second_process_waits_for_the_lock_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))
    env = {**os.environ, "LOWBIT_GGUF_CACHE": str(tmp_path)}
    with cache_lock("shared", "holding it"):
        child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        # the child reports that it waits only when the lock is held: it cannot have run its block yet
        assert "waiting for another process testing the lock" in child.stderr.readline()
        assert child.poll() is None
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out == "got it\n"


def test_a_free_lock_is_taken_at_once_and_again_after_release(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))
    for _ in range(2):
        with cache_lock("alone", "never shown"):
            pass
    assert "waiting" not in capsys.readouterr().err
