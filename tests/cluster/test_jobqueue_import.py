"""Importing probe-dask leaves SIGINT alone (cluster.jobqueue_import): Ctrl-C is still a
KeyboardInterrupt, and the package imports from a thread that is not the main one. Each
case runs in a fresh interpreter, so nothing was imported before."""

import subprocess
import sys
import textwrap


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_ctrl_c_is_still_a_keyboard_interrupt_after_the_import():
    p = _python("""
        import os, signal
        before = signal.getsignal(signal.SIGINT)
        import probe_dask, probe_dask.cluster
        from probe_dask.cluster.jobqueue_import import SLURMCluster
        import dask_jobqueue
        assert SLURMCluster is dask_jobqueue.SLURMCluster
        assert signal.getsignal(signal.SIGINT) is before, signal.getsignal(signal.SIGINT)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**6):
                pass
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    """)
    assert p.returncode == 0 and p.stdout.strip() == "KeyboardInterrupt", p.stderr[-2000:]


def test_the_package_imports_from_a_thread():
    p = _python("""
        import threading
        failed = []
        def load():
            try:
                import probe_dask.app.cli
            except Exception as exc:
                failed.append(repr(exc))
        t = threading.Thread(target=load)
        t.start()
        t.join()
        print(failed or "imported")
    """)
    assert p.returncode == 0 and p.stdout.strip() == "imported", (p.stdout, p.stderr[-2000:])
