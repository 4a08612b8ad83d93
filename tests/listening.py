"""The TCP sockets a process tree listens on, read from /proc (Linux): what `ss -ltnp` shows, matched to pids."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:                                   # /proc/net/tcp: one little-endian 32-bit word
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))   # /proc/net/tcp6: four of them
    ip = ipaddress.IPv6Address(words)
    return str(ip.ipv4_mapped or ip)


def listening_inodes() -> dict[str, tuple[str, int]]:
    """socket inode -> (address, port) of every TCP socket in state LISTEN (0A) on this machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":
                address, port = fields[1].split(":")
                out[fields[9]] = (_address(address), int(port, 16))
    return out


def process_tree(root: int) -> list[int]:
    """root and every process below it (Ray's GCS, raylet, dashboard and workers are children of the driver)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def listening_sockets(pids) -> set[tuple[str, int, str]]:
    """(process name, port, address) of the listening TCP sockets these processes hold."""
    inodes = listening_inodes()
    found = set()
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                address, port = inodes[target[8:-1]]
                found.add((name, port, address))
    return found


def not_loopback(sockets) -> list[tuple[str, int, str]]:
    return sorted(s for s in sockets if not ipaddress.ip_address(s[2]).is_loopback)
