"""The process tree of a benchmark run, read from /proc (Linux): for memory sampling."""

from __future__ import annotations

from pathlib import Path


def tree_pids(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    pids, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def tree_rss_bytes(root_pid: int) -> int:
    """Summed resident memory (VmRSS) of the tree (shared pages of forked workers count twice)."""
    total = 0
    for pid in tree_pids(root_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total
