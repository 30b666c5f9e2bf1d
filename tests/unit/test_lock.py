"""Concurrent pykexec invocations are serialised: the second waits, then gives up naming
the holder."""

import fcntl
import os
import threading
import time

import pytest

from pykexec.errors import KexecError
from pykexec.lock import Lock


def test_lock_is_exclusive_and_names_the_holder(tmp_path, capsys):
    with Lock(str(tmp_path)):
        assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(KexecError, match=rf"another pykexec \(pid {os.getpid()}\) has held"):
            with Lock(str(tmp_path), wait=0.2):
                pass
    assert "waiting for pid" in capsys.readouterr().err
    with Lock(str(tmp_path), wait=0.2):  # released: free again
        pass


def test_second_invocation_waits_for_the_first(tmp_path):
    order = []
    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        time.sleep(0.3)
        order.append("released")
        os.close(fd)

    t = threading.Thread(target=release)
    t.start()
    with Lock(str(tmp_path), wait=5):
        order.append("acquired")
    t.join()
    assert order == ["released", "acquired"]
