"""A handler whose result does not fit in a frame header (wire.MAX_HEADER) must cost
its caller an error, not the server: today `RpcServer._answer` lets encode_frame's
FrameError escape its task, which tears down `serve_listeners` and ends the daemon.

Reached through a mount by any user: 4,300 user xattrs with 249-byte names on one
file, then listxattr; the shard's reply header is 1.1 MB and the metadata server
exits (seen on the harness cluster, mds0 gone with this FrameError in its log)."""

import pytest
import trio

from loomproto import errors, rpc, wire

KEY = b"k" * 32
CLUSTER = "loom-test"


class BigResultService:
    async def rpc_big(self, args, payload, peer):
        return "x" * (wire.MAX_HEADER + 1)

    async def rpc_small(self, args, payload, peer):
        return "ok"


async def test_a_reply_too_big_for_a_frame_leaves_the_server_serving(nursery):
    server = rpc.RpcServer(BigResultService(), CLUSTER, KEY, "big")
    listeners = await nursery.start(server.serve, "127.0.0.1", 0)
    addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    client = rpc.RpcClient(nursery, addr, CLUSTER, KEY, "t")
    with trio.fail_after(10):
        with pytest.raises(errors.LoomError):
            await client.call("big")
        other = rpc.RpcClient(nursery, addr, CLUSTER, KEY, "t2")
        assert await other.call("small") == "ok"
    await client.aclose()
    await other.aclose()
