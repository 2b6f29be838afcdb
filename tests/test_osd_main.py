"""The ``loomfs-osd`` command as a subprocess, and the data directory's format file."""

import json
import os
import signal
import subprocess
import sys

import pytest
import trio

from loomproto import config as configmod
from loomproto import rpc
from loomproto.layout import Layout
from osd import datadir
from test_osd_service import FakeMds, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def _start_mds(nursery, tmp_path):
    probe = FakeMds()
    config_path = configmod.create(str(tmp_path / "cfg"), ["127.0.0.1:1"], Layout())
    config = configmod.load(config_path)
    server = rpc.RpcServer(probe, config.cluster_id, config.key, "fake-mds")
    listeners = await nursery.start(server.serve, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    raw = json.load(open(config_path))
    raw["mds"] = [f"127.0.0.1:{port}"]
    with open(config_path, "w") as fp:
        json.dump(raw, fp)
    return probe, config_path


def _osd_command(config_path, osd_id, data_dir):
    return [sys.executable, "-m", "osd.main", "--cluster", config_path, "--id", str(osd_id),
            "--data", data_dir, "--listen", "127.0.0.1:0", "--capacity", "1000000"]


def _env():
    return dict(os.environ, PYTHONPATH=REPO)


async def test_daemon_registers_serves_and_stops_on_sigterm(nursery, tmp_path):
    mds, config_path = await _start_mds(nursery, tmp_path)
    data_dir = str(tmp_path / "osd0")
    log_path = tmp_path / "osd0.log"
    with open(log_path, "wb") as log_file:
        proc = await trio.lowlevel.open_process(_osd_command(config_path, 0, data_dir),
                                                stderr=log_file, env=_env(), cwd=REPO)
    try:
        await wait_for(lambda: 0 in mds.heartbeats or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, log_path.read_text()
        beat = mds.heartbeats[0]
        assert beat["capacity"] == 1000000 and beat["used"] == 0

        config = configmod.load(config_path)
        client = rpc.RpcClient(nursery, beat["addr"], config.cluster_id, config.key, "t")
        assert (await client.call("stat"))["osd_id"] == 0

        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
    log_text = log_path.read_text()
    assert "SIGTERM received" in log_text and "osd 0 stopped" in log_text
    assert "Traceback" not in log_text


def _run_cli(config_path, osd_id, data_dir):
    return subprocess.run(_osd_command(config_path, osd_id, data_dir), env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)


async def test_daemon_refuses_foreign_data_dir(tmp_path):
    config_path = configmod.create(str(tmp_path / "cfg"), ["127.0.0.1:1"], Layout())
    data_dir = tmp_path / "osd"
    data_dir.mkdir()
    (data_dir / datadir.FORMAT_FILE).write_text(
        json.dumps({"format": "loomfs-osd", "version": 99, "osd_id": 0, "cluster_id": "x"}))
    done = await trio.to_thread.run_sync(_run_cli, config_path, 0, str(data_dir))
    assert done.returncode == 1
    assert "osd data format version 99" in done.stderr


def test_format_file_written_once_and_checked(tmp_path):
    data_dir = str(tmp_path / "d")
    datadir.prepare(data_dir, 3, "loom-a")
    datadir.prepare(data_dir, 3, "loom-a")
    with pytest.raises(datadir.DataDirError, match="belongs to osd 3"):
        datadir.prepare(data_dir, 4, "loom-a")
    with pytest.raises(datadir.DataDirError, match="belongs to cluster"):
        datadir.prepare(data_dir, 3, "loom-b")


def test_chunks_without_format_file_refused(tmp_path):
    os.makedirs(tmp_path / "d" / "chunks")
    with pytest.raises(datadir.DataDirError, match="no osd-format.json"):
        datadir.prepare(str(tmp_path / "d"), 0, "loom-a")
