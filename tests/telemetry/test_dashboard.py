"""The dashboard's memory panel shows every Slurm worker's stored blocks, in a real browser.

A fit runs on two Slurm worker jobs with its blocks persisted (``ProbeFitter(persist=True)``)
in a background thread; a fit callback holds it after its first solver pass, so the blocks
are in worker memory while we look. Headless Chromium (Debian's ``/usr/bin/chromium``,
started here) loads the dashboard's ``/status`` page, driven over the DevTools protocol
(tornado's websocket client, no extra package). The "Bytes stored per worker" bars are
drawn on a canvas, so the numbers are read from the Bokeh document the page rendered
(the data source of the figure named ``workers_memory``: one entry per worker with its
managed bytes), i.e. from what the dashboard served to the browser, then a screenshot of
the same page is taken.

The screenshot goes to the test's tmp folder; set ``PROBE_DASK_SCREENSHOT_DIR`` (e.g.
``docs/img``) to also write ``dashboard-memory.png`` there (how the README's image was made).
Needs Slurm and Chromium (markers ``slurm`` and ``browser``).
"""

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.browser, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ROOT_YAML = ROOT / "jobqueue.yaml"
SHOT_NAME = "dashboard-memory.png"

# Runs inside the page: the per-worker data the "Bytes stored per worker" figure draws.
READ_PANEL_JS = """(() => {
  const B = window.Bokeh;
  if (!B || !B.documents || !B.documents.length) return null;
  const fig = B.documents[0].get_model_by_name('workers_memory');
  if (!fig || !fig.renderers.length) return null;
  const d = fig.renderers[0].data_source.data;
  return JSON.stringify({worker: Array.from(d.worker || []), managed: Array.from(d.managed || []),
                         proc_memory: Array.from(d.proc_memory || []),
                         x_end: fig.x_range.end});
})()"""


class DevTools:
    """Minimal Chrome DevTools Protocol client for one page (tornado websocket)."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method, **params):
        self.n += 1
        my = self.n
        await self.ws.write_message(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), 30)
            if raw is None:
                raise RuntimeError(f"DevTools connection closed during {method}")
            msg = json.loads(raw)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression):
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")


def start_chromium(chromium, user_data_dir):
    """Headless Chromium with remote debugging on a free port; returns (process, port)."""
    log = open(Path(user_data_dir) / "chromium.log", "wb")  # a file: a pipe could fill and block
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1400,900", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    port_file = Path(user_data_dir) / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
            return proc, int(port_file.read_text().splitlines()[0])
        if proc.poll() is not None:
            tail = (Path(user_data_dir) / "chromium.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"chromium exited {proc.returncode}: {tail}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("chromium did not open its DevTools port within 30 s")


async def read_memory_panel(port, url, n_workers, png_path, between=None, timeout=60):
    """Load ``url``; poll the panel's data until ``n_workers`` show managed bytes; screenshot.

    ``between`` (a blocking callable) runs after the check and before the screenshot, with
    the page still open, so that the screenshot also shows what ran meanwhile.
    """
    from tornado.httpclient import AsyncHTTPClient
    from tornado.websocket import websocket_connect

    body = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/json/list")).body
    page = next(t for t in json.loads(body) if t["type"] == "page")
    ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 * 2**20)
    try:
        cdp = DevTools(ws)
        await cdp.call("Page.enable")
        await cdp.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        panel = None
        while time.monotonic() < deadline:
            raw = await cdp.evaluate(READ_PANEL_JS)
            if raw:
                panel = json.loads(raw)
                per_worker = {}
                for w, m in zip(panel["worker"], panel["managed"]):
                    per_worker[w] = m
                panel["per_worker"] = per_worker
                if len(per_worker) >= n_workers and all(m > 0 for m in per_worker.values()):
                    break
            await asyncio.sleep(0.25)
        if between is not None:
            await asyncio.get_running_loop().run_in_executor(None, between)
        await asyncio.sleep(1.0)  # one more dashboard refresh so the screenshot is settled
        shot = await cdp.call("Page.captureScreenshot", format="png")
        Path(png_path).write_bytes(base64.b64decode(shot["data"]))
        return panel
    finally:
        ws.close()


# The fit is cut at max_iter=4 on purpose (the panel is read mid-fit): its warning is expected.
@pytest.mark.filterwarnings("ignore::probe_dask.errors.ConvergenceWarning")
def test_memory_panel_shows_every_workers_blocks(slurm, chromium, tmp_path, capsys):
    from probe_dask.engine.shard import open_shard
    from probe_dask.cluster import make_cluster, slurm_profile
    from probe_dask.engine.fit import ProbeFitter
    from probe_dask.testing.synthetic import make_run

    # About 7 M non-zeros: blocks of ~1 M (about 7 MiB each as LatentBlocks) over 2 workers.
    run = make_run(tmp_path / "data", n_train_examples=128, n_test_examples=4,
                   tokens_per_example=256, d_sae=1024, n_classes=8, mean_nnz_per_row=300,
                   compressed=False, seed=1, n_planted=4)
    shard = open_shard(run.run_dir, run.train_shard, block_nnz=1_000_000)
    assert len(shard.row_blocks) >= 4

    _, prof = slurm_profile("cpu", jobqueue_config=ROOT_YAML)
    args = list(prof["worker_extra_args"])
    args[args.index("--lifetime") + 1] = "8m"
    args[args.index("--lifetime-stagger") + 1] = "1m"
    overrides = dict(cores=1, memory="1536MiB", walltime="00:10:00", worker_extra_args=args,
                     log_directory=str(tmp_path / "slurm-logs"), job_name="pd-test-dashboard",
                     scheduler_options={"dashboard_address": ":0"})

    held, release = threading.Event(), threading.Event()
    events, errors = {}, []

    def hold_after_first_pass(event, info):
        events.setdefault(event, info)
        if event == "iteration" and not held.is_set():
            held.set()
            release.wait(150)

    fitter = ProbeFitter(max_iter=4, persist=True, callbacks=[hold_after_first_pass])

    with make_cluster("slurm:cpu", jobs=2, jobqueue_config=ROOT_YAML, wait_timeout=120,
                      **overrides) as (cluster, client):
        def fit():
            try:
                fitter.set_params(client=client).fit(shard.X, shard.y, n_classes=run.n_classes)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
            finally:
                held.set()

        thread = threading.Thread(target=fit, name="fit", daemon=True)
        thread.start()
        chrome = None
        try:
            assert held.wait(150), "the fit did not finish its first pass"
            assert not errors, errors
            assert fitter.persisted_
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            assert len(workers) == 2
            url = client.dashboard_link  # Chromium runs on the scheduler's host
            chrome, port = start_chromium(chromium, tempfile.mkdtemp(dir=tmp_path))
            png = tmp_path / SHOT_NAME
            t0 = time.perf_counter()

            def finish_fit():  # the blocks stay persisted (fitter.blocks_) after the fit
                nonlocal took
                took = time.perf_counter() - t0
                release.set()
                thread.join(120)

            took = None
            panel = asyncio.run(read_memory_panel(port, url, len(workers), png, finish_fit))
        finally:
            release.set()
            thread.join(120)
            if chrome is not None:
                chrome.terminate()
                try:
                    chrome.wait(10)
                except subprocess.TimeoutExpired:
                    chrome.kill()
        assert not errors, errors
        assert 1 <= fitter.n_iter_ <= 4

    assert panel is not None, "the dashboard page never rendered its workers_memory figure"
    per_worker = panel["per_worker"]
    need = events["fit_start"]["block_bytes"]
    with capsys.disabled():
        print(f"\n/status page, 'Bytes stored per worker' (read in {took:.1f} s, the fit "
              f"held after its first pass): "
              + ", ".join(f"{w}: {m / 2**20:.1f} MiB" for w, m in per_worker.items())
              + f"; blocks {need / 2**20:.1f} MiB in total; screenshot {png}")
    assert set(per_worker) == set(workers), (per_worker, workers)
    assert all(m > 1_000_000 for m in per_worker.values()), per_worker
    # Blocks are counted at their real size (sizeof registered, docs/architecture.md pitfall 2).
    assert sum(per_worker.values()) >= 0.9 * need, (per_worker, need)
    assert png.stat().st_size > 20_000
    if os.environ.get("PROBE_DASK_SCREENSHOT_DIR"):
        dest = Path(os.environ["PROBE_DASK_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest / SHOT_NAME)
