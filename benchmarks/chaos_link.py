"""The devices' own network for `make chaos`: a network namespace joined to the host by a veth pair.

The emulated devices run in the namespace (`wrap`), the services stay on the host's loopback, and
the balancer also listens on the host end of the pair (`host_ip`). Every byte between a device and
the system crosses the pair, and nothing else does, so shaping the pair's two ends degrades the
device links only: the trainers' links to Redis and the teachers keep their loopback.

`degrade` uses `tc netem` (delay, jitter, loss) on both ends where the kernel has it. A kernel
built without it (CONFIG_NET_SCH_NETEM unset: the 2-core VM this project is developed on) gets what
it has instead, and the summary says which: random loss from nftables' `numgen random` in the
namespace's input and output hooks, and a `tbf` rate limit on both ends (queueing delay when a
clip is sent, no fixed delay). Needs root (CAP_NET_ADMIN), iproute2 and, for the fallback, nftables.
"""
from __future__ import annotations

import os
import shutil
import subprocess


def _run(*cmd: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    return subprocess.run(full, capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when a device namespace can be made here, otherwise why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for a network namespace"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} (iproute2)" if missing else None


def sweep_stale() -> list[str]:
    """Remove the namespaces (and so their veth pairs) that runs killed before they could clean up left
    behind: `ams-chaos-<pid>` whose process is gone. Returns their names."""
    listed = _run("ip", "netns", "list", check=False).stdout.split()
    stale = [name for name in listed if name.startswith("ams-chaos-") and name[10:].isdigit()
             and not os.path.exists(f"/proc/{name[10:]}")]
    for name in stale:
        _run("ip", "link", "del", f"amsc{int(name[10:]) % 100000}h", check=False)
        _run("ip", "netns", "del", name, check=False)
    return stale


class DeviceNetwork:
    def __init__(self, name: str = "", subnet: int | None = None):
        pid = os.getpid()
        self.name = name or f"ams-chaos-{pid}"
        octet = subnet if subnet is not None else 16 + pid % 224
        self.host_ip, self.device_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
        self.host_if, self.device_if = f"amsc{pid % 100000}h", f"amsc{pid % 100000}d"
        self.applied: dict | None = None

    def __enter__(self) -> "DeviceNetwork":
        sweep_stale()
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.device_if)
            _run("ip", "link", "set", self.device_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "addr", "add", f"{self.device_ip}/30", "dev", self.device_if, netns=self.name)
            _run("ip", "link", "set", self.device_if, "up", netns=self.name)
            _run("ip", "link", "set", "lo", "up", netns=self.name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _run("ip", "link", "del", self.host_if, check=False)        # takes its peer with it
        _run("ip", "netns", "del", self.name, check=False)

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def degrade(self, delay_ms: float, jitter_ms: float, loss_pct: float, rate_kbit: int) -> dict:
        """Shape both directions; returns what was applied (netem, or the fallback and why)."""
        ends = ((self.host_if, None), (self.device_if, self.name))
        netem = ["netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms", "loss", f"{loss_pct}%", "rate", f"{rate_kbit}kbit"]
        tried = _run("tc", "qdisc", "replace", "dev", self.host_if, "root", *netem, check=False)
        if tried.returncode == 0:
            _run("tc", "qdisc", "replace", "dev", self.device_if, "root", *netem, netns=self.name)
            self.applied = {"shaper": "netem", "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss_pct": loss_pct,
                            "rate_kbit": rate_kbit}
            return self.applied
        if shutil.which("nft") is None:
            raise RuntimeError(f"tc netem failed ({tried.stderr.strip()}) and nft (nftables) is not installed")
        for dev, ns in ends:
            _run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_kbit}kbit", "burst", "64kb",
                 "latency", "400ms", netns=ns)
        per_mille = round(loss_pct * 10)
        script = "\n".join([
            "table inet ams_chaos {",
            f"  chain input {{ type filter hook input priority 0; numgen random mod 1000 < {per_mille} drop; }}",
            f"  chain output {{ type filter hook output priority 0; numgen random mod 1000 < {per_mille} drop; }}",
            "}"])
        subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)
        self.applied = {"shaper": "tbf+nftables", "delay_ms": 0, "jitter_ms": 0, "loss_pct": loss_pct,
                        "rate_kbit": rate_kbit, "why": f"tc netem: {tried.stderr.strip() or tried.returncode}"}
        return self.applied

    def restore(self) -> None:
        """Back to a clean link."""
        for dev, ns in ((self.host_if, None), (self.device_if, self.name)):
            _run("tc", "qdisc", "del", "dev", dev, "root", netns=ns, check=False)
        if self.applied and self.applied["shaper"] != "netem":
            _run("nft", "delete", "table", "inet", "ams_chaos", netns=self.name, check=False)
