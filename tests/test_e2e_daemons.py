"""Real daemons of a running cluster: bad input does not hurt them, and a mounted
client carries on, open files included, when they restart."""

import hashlib
import json
import os
import socket
import struct
import subprocess
import time

import pytest

from loomproto import config as cluster_config
from loomproto import wire

pytestmark = pytest.mark.mount

GARBAGE = [
    b"GET / HTTP/1.0\r\n\r\n",                                   # a stranger, no handshake
    None,                                                        # handshake, then bad magic
    struct.pack(">2sBBII", b"LM", 1, 1, 1 << 30, 0),             # oversized header
    struct.pack(">2sBBII", b"LM", 1, 1, 3, 0) + b"\xc1\xc1\xc1",  # undecodable msgpack
    struct.pack(">2sBBII", b"LM", 1, 1, 2, 0) + b"\x92\x01",      # truncated, then EOF
]


def _addresses(cluster):
    nodes = cluster.nodes()
    return {name: node["addr"] for name, node in nodes.items() if node["kind"] in ("mds", "osd")}


def _handshake(sock, cfg):
    """The client side of the HMAC handshake over a blocking socket."""
    import hmac

    import msgpack

    def read_frame():
        head = _recv_exact(sock, 12)
        _, _, _, hlen, plen = struct.unpack(">2sBBII", head)
        return msgpack.unpackb(_recv_exact(sock, hlen + plen)[:hlen])

    hello = read_frame()
    nonce = os.urandom(16)
    mac = hmac.new(cfg.key, b"client" + hello["nonce"] + nonce, hashlib.sha256).digest()
    answer = {"proto": wire.PROTO_VERSION, "cluster": cfg.cluster_id, "nonce": nonce,
              "name": "garbage-test", "mac": mac}
    head, _ = wire.encode_frame(wire.KIND_HELLO, answer)
    sock.sendall(head)
    read_frame()


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise ConnectionError("closed")
        data += piece
    return data


def _send_garbage(addr, cfg, garbage):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        if garbage is None:
            _handshake(sock, cfg)
            garbage = b"XX" + bytes(10)
        elif garbage.startswith(b"LM"):
            _handshake(sock, cfg)
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        # The daemon must hang up on us (EOF), not hang and not die.
        while sock.recv(65536):
            pass


LOOMFS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".venv", "bin", "loomfs")


def _status(cluster):
    out = subprocess.run([LOOMFS, "status", "--json", "--cluster", str(cluster.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


def test_malformed_frames_leave_every_daemon_serving(cluster, workdir):
    cfg = cluster_config.load(str(cluster.config))
    for name, addr in _addresses(cluster).items():
        for garbage in GARBAGE:
            _send_garbage(addr, cfg, garbage)
    assert not cluster.dead_daemons()
    report = _status(cluster)
    assert all(shard["up"] for shard in report["shards"])
    assert all(osd["up"] for osd in report["osds"])
    path = workdir / "after-garbage"
    path.write_bytes(b"still serving" * 1000)
    assert path.read_bytes() == b"still serving" * 1000
    logs = "".join((cluster.state / "logs" / f"{name}.log").read_text()
                   for name in _addresses(cluster))
    assert "closing connection" in logs and "refused connection" in logs


def _wait_healthy(cluster, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        report = _status(cluster)
        if all(s["up"] for s in report["shards"]) and all(o["up"] for o in report["osds"]):
            return report
        assert time.monotonic() < deadline, f"cluster not healthy after restart: {report}"
        time.sleep(0.2)  # polling the cluster's state, bounded by the deadline above


@pytest.mark.deadline(300)
def test_open_file_survives_daemon_restarts(cluster, workdir):
    path = workdir / "kept-open"
    first = os.urandom(3 << 20)
    second = os.urandom(3 << 20)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, first)
        os.fsync(fd)
        restarted = {"mds1", "mds0", "osd2"}
        cluster.allowed_dead |= restarted  # the watchdog must not take this for a crash
        try:
            for node in sorted(restarted):
                cluster.run("stop", node)
                cluster.run("start", node)
            _wait_healthy(cluster)
        finally:
            cluster.allowed_dead -= restarted
        os.write(fd, second)
        os.fsync(fd)
        assert os.pread(fd, len(first), 0) == first
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(first + second).digest()
    (workdir / "new-after-restart").write_text("ok")
    assert sorted(os.listdir(workdir)) == ["kept-open", "new-after-restart"]
