"""Stand-ins for loomfs-mdsd and loomfs-osd, for testing scripts/cluster on its own.

A dummy takes the real daemon's arguments, listens on the same address (``mds[N]`` of
the config for a metadata server, ``--listen`` for an OSD), closes every connection
it accepts and exits 0 on SIGTERM.  Two variables make one node misbehave:
``DUMMY_FAIL=NODE`` exits at once with status 1 and a message, ``DUMMY_HANG=NODE``
never listens.

`write_bin(directory)` writes ``loomfs-mdsd`` and ``loomfs-osd`` scripts that run
this module, so the harness can be pointed at them with ``--bin``.
"""

import argparse
import json
import os
import signal
import socket
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen")
    parser.add_argument("--host")
    parser.add_argument("--down-after")
    parser.add_argument("--session-timeout")
    return parser.parse_args(argv)


def listen_addr(args):
    if args.listen:
        return args.listen
    with open(args.cluster) as fp:
        return json.load(fp)["mds"][args.id]


def main(kind):
    args = parse_args(sys.argv[1:])
    name = f"{kind}{args.id}"
    if os.environ.get("DUMMY_FAIL") == name:
        sys.exit(f"dummy {name}: failing on purpose")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.makedirs(args.data, exist_ok=True)
    if os.environ.get("DUMMY_HANG") == name:
        signal.pause()
    host, _, port = listen_addr(args).rpartition(":")
    server = socket.create_server((host, int(port)))
    print(f"dummy {name} listening on {host}:{port}", flush=True)
    while True:
        conn, _ = server.accept()
        conn.close()


def write_bin(directory):
    os.makedirs(directory, exist_ok=True)
    for kind, program in (("mds", "loomfs-mdsd"), ("osd", "loomfs-osd")):
        path = os.path.join(directory, program)
        with open(path, "w") as fp:
            fp.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {TESTS!r})\n"
                     f"import dummy_daemon\ndummy_daemon.main({kind!r})\n")
        os.chmod(path, 0o755)
    return directory
