"""Two "hosts" on one machine: network namespaces ``a`` and ``b`` joined by a veth pair.

Shared by ``tests/test_multihost.py`` and ``benchmarks/elastic_soak.py`` (root and ``ip netns`` needed).
Traffic stays inside the pair: addresses 10.231.N.1 / 10.231.N.2, nothing routed further.
"""

from __future__ import annotations

import os
import signal
import subprocess


class VethHosts:
    """Namespaces ``dt<tag>a`` / ``dt<tag>b`` with interfaces ``dt<tag>va`` / ``dt<tag>vb`` on
    10.231.``subnet``.0/24; ``ns[x]``, ``iface[x]`` and ``address[x]`` per host."""

    def __init__(self, tag: str, subnet: int) -> None:
        self.ns = {"a": f"dt{tag}a", "b": f"dt{tag}b"}
        self.iface = {"a": f"dt{tag}va", "b": f"dt{tag}vb"}
        self.address = {"a": f"10.231.{subnet}.1", "b": f"10.231.{subnet}.2"}

    def create(self) -> None:
        """Make both namespaces and the pair (raises ``subprocess.CalledProcessError`` when ``ip`` fails)."""
        _ip("link", "add", self.iface["a"], "type", "veth", "peer", "name", self.iface["b"])
        for host in ("a", "b"):
            _ip("netns", "add", self.ns[host])
            _ip("link", "set", self.iface[host], "netns", self.ns[host])
            _ip("-n", self.ns[host], "addr", "add", f"{self.address[host]}/24", "dev", self.iface[host])
            _ip("-n", self.ns[host], "link", "set", self.iface[host], "up")
            _ip("-n", self.ns[host], "link", "set", "lo", "up")

    def crash(self, host: str) -> int:
        """SIGKILL every process in ``host``'s namespace (the agent and its workers, which torchrun starts
        in sessions of their own), as a host that loses power; returns how many there were."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone
        return len(pids)

    def remove(self) -> None:
        """Kill what is left in both namespaces and delete them (deleting a namespace deletes its end of
        the pair, and so the pair); a namespace that does not exist is no error."""
        for host, ns in self.ns.items():
            self.crash(host)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
