"""Network namespaces for `scripts/cluster up --netns RATE`: each daemon on its own slow link.

Topology of one run (every name starts with the run's prefix, "lf" and 6 hex digits):

    root namespace: bridge PREFIXbr, 10.231.S.1/24       <- clients (FUSE mounts) live here
      +-- veth PREFIXm0 ==== eth0 in namespace PREFIX-mds0, 10.231.S.10
      +-- veth PREFIXo0 ==== eth0 in namespace PREFIX-osd0, 10.231.S.100
      ...                 (mdsN at .10+N, osdN at .100+N, every daemon on port 6700)
      +-- veth PREFIXc1 ==== eth0 in namespace PREFIX-client1, 10.231.S.201
                          (only a client mounted with `mount --own-link`)

Each veth pair carries a tbf qdisc on both ends, so a daemon sends and receives at most
RATE each way; the bridge and the root namespace are not limited, so a client that
stripes over several OSDs gets the sum of their links.  Daemon-to-daemon traffic
(heartbeats, replication) crosses the bridge and two limited links.  S is a free /24 of
10.231.0.0/16, chosen under a lock file so that concurrent runs never share one.

The caller keeps the record (`new_record`) in its state and saves it through the `save`
callback: a name is recorded before it is created, so teardown after any failure, or
after the harness itself was killed, removes exactly what was made, and nothing else
(teardown deletes only recorded names that carry the record's prefix).

Daemons are started inside their namespace with `nsenter --net=...`, which changes
the network namespace only: `ip netns exec` would also make a private mount namespace.

Limitations:
- With br_netfilter loaded and net.bridge.bridge-nf-call-iptables=1, traffic between two
  daemons crosses iptables' FORWARD chain; a DROP policy there (Docker sets one) cuts
  OSD heartbeats and replication.  `bridge_filter_note` says so at `up`; clients are
  not affected (their traffic is local delivery, not forwarding).
"""

import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import subprocess

SUPERNET = ipaddress.ip_network("10.231.0.0/16")
DAEMON_PORT = 6700
HOST_OFFSET = {"mds": 10, "osd": 100, "client": 200}
LOCK_PATH = "/run/loomfs-netns.lock"
TOOLS = ("ip", "tc", "nsenter")
MIB = 1 << 20


class NetnsError(Exception):
    pass


def unavailable():
    """Why namespaces with rate-limited links cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (Debian: iproute2, util-linux)"
    return None


def run(*argv):
    """Run one ip/tc command; raise NetnsError with its stderr when it fails."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def parse_rate(text):
    """Link rate in bytes per second from MiB/s ("20", "12.5")."""
    try:
        mib = float(text)
    except ValueError:
        raise NetnsError(f"--netns takes a rate in MiB/s, not {text!r}") from None
    if not 0.1 <= mib <= 10000:
        raise NetnsError(f"--netns rate {mib:g} MiB/s is outside 0.1-10000")
    return int(mib * MIB)


def describe_rate(rate):
    return f"{rate / MIB:g} MiB/s ({rate * 8 / 1e6:.1f} Mbit/s)"


# ---- what exists -----------------------------------------------------------------------

def namespaces():
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line}


def links():
    names = set()
    for line in run("ip", "-o", "link", "show").splitlines():
        match = re.match(r"\d+: ([^:@]+)", line)
        if match:
            names.add(match.group(1))
    return names


def used_networks():
    """Every IPv4 network the root namespace has an address or a route in."""
    found = []
    for line in run("ip", "-4", "-o", "addr", "show").splitlines():
        found.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word[:1].isdigit():
            found.append(ipaddress.ip_network(word, strict=False))
    return found


def choose_subnet():
    used = used_networks()
    candidates = list(SUPERNET.subnets(new_prefix=24))
    random.SystemRandom().shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in used if net.prefixlen > 0):
            return subnet
    raise NetnsError(f"no free /24 left in {SUPERNET}")


# ---- the record --------------------------------------------------------------------------

def new_record(rate):
    return {"prefix": None, "subnet": None, "rate": rate, "namespaces": [], "links": []}


def host_addr(record, kind, index):
    subnet = ipaddress.ip_network(record["subnet"])
    return str(subnet.network_address + HOST_OFFSET[kind] + index)


def daemon_addr(record, kind, index):
    return f"{host_addr(record, kind, index)}:{DAEMON_PORT}"


def subnet_of(addr):
    """The harness /24 a configured daemon address lies in, or None."""
    host = addr.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip not in SUPERNET:
        return None
    return ipaddress.ip_network(f"{ip}/24", strict=False)


def make_bridge(record, save, subnet=None):
    """Choose the prefix and subnet (or take `subnet`) and create the bridge, under a lock."""
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken_ns, taken_links = namespaces(), links()
        while True:
            prefix = "lf" + secrets.token_hex(3)
            if not any(name.startswith(prefix) for name in taken_ns | taken_links):
                break
        if subnet is None:
            subnet = choose_subnet()
        elif any(subnet.overlaps(net) for net in used_networks() if net.prefixlen > 0):
            raise NetnsError(f"{subnet} (from the cluster config) is in use on this machine")
        record.update(prefix=prefix, subnet=str(subnet))
        bridge = prefix + "br"
        record["links"].append(bridge)
        save()
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{subnet.network_address + 1}/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")


def bridge_filter_note():
    """A warning when bridged traffic passes through iptables here, or None."""
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as fp:
            filtered = fp.read().strip() == "1"
    except OSError:
        return None
    if not filtered:
        return None
    return ("netns: note: bridge-nf-call-iptables=1, so daemon-to-daemon traffic passes "
            "iptables FORWARD; a DROP policy there would cut it")


def tbf(rate):
    # burst: 10 ms of traffic but at least 128 KiB, so GSO segments need no splitting;
    # latency bounds the queue (50 ms) so TCP sees the limit as delay, not many drops.
    burst = max(128 * 1024, rate // 100)
    return ["root", "tbf", "rate", f"{rate * 8}bit", "burst", str(burst), "latency", "50ms"]


def node_names(record, node_name, kind, index):
    """(namespace, root end of the veth) of one node."""
    return f"{record['prefix']}-{node_name}", f"{record['prefix']}{kind[0]}{index}"


def add_node(record, save, node_name, kind, index):
    """One namespace with a rate-limited veth to the bridge; returns the namespace name."""
    prefix = record["prefix"]
    namespace, veth = node_names(record, node_name, kind, index)
    record["namespaces"].append(namespace)
    record["links"].append(veth)
    save()
    run("ip", "netns", "add", namespace)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
    run("ip", "link", "set", veth, "master", prefix + "br", "up")
    run("ip", "-n", namespace, "addr", "add", f"{host_addr(record, kind, index)}/24",
        "dev", "eth0")
    run("ip", "-n", namespace, "link", "set", "lo", "up")
    run("ip", "-n", namespace, "link", "set", "eth0", "up")
    run("tc", "qdisc", "add", "dev", veth, *tbf(record["rate"]))
    run("tc", "-n", namespace, "qdisc", "add", "dev", "eth0", *tbf(record["rate"]))
    return namespace


def remove_node(record, save, node_name, kind, index):
    """Delete one node's namespace and link (its processes gone) and forget them."""
    namespace, veth = node_names(record, node_name, kind, index)
    part = {"prefix": record["prefix"], "namespaces": [namespace], "links": [veth]}
    failures = teardown(part)
    if failures:
        raise NetnsError("; ".join(failures))
    record["namespaces"] = [name for name in record["namespaces"] if name != namespace]
    record["links"] = [name for name in record["links"] if name != veth]
    save()


def exec_prefix(namespace):
    """The argv prefix that runs a program in `namespace` (network namespace only)."""
    return [shutil.which("nsenter") or "nsenter", f"--net=/run/netns/{namespace}", "--"]


def qdiscs(record):
    """{link or namespace/eth0: `tc qdisc show` output} for every limited link."""
    shown = {}
    for namespace in record["namespaces"]:
        shown[f"{namespace}/eth0"] = run("tc", "-n", namespace, "qdisc", "show", "dev", "eth0")
    for veth in record["links"]:
        if not veth.endswith("br"):
            shown[veth] = run("tc", "qdisc", "show", "dev", veth)
    return shown


def teardown(record):
    """Delete every recorded link and namespace that still exists; return what failed.

    Links go first: deleting a veth end deletes its peer at once, while a deleted
    namespace frees its devices later, in the background.  Processes must be gone
    too, since a namespace lives on while a process is inside it.
    """
    prefix = record.get("prefix") or "\0"
    failures = []
    for kind, listed, present_now in (("link", record["links"], links),
                                      ("netns", record["namespaces"], namespaces)):
        for name in listed:
            if not name.startswith(prefix) or name not in present_now():
                continue
            try:
                run("ip", kind, "del", name)
            except NetnsError as exc:
                if name in present_now():
                    failures.append(str(exc))
    return failures
