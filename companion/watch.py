"""Watchdog on the certs dir: new or renewed certificates wake the loop (which batches the reload)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

WATCHED = ("live", "archive")


class _Waker(FileSystemEventHandler):
    def __init__(self, root: Path, wake: Callable[[str], None]) -> None:
        self.root = root
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = raw.decode() if isinstance(raw, bytes) else raw
            if not path:
                continue
            try:
                top = Path(path).relative_to(self.root).parts[:1]
            except ValueError:
                continue
            if top and top[0] in WATCHED:
                self.wake(f"certs:{event.event_type}")
                return


def watch_certs(certs_dir: Path, wake: Callable[[str], None]) -> Observer:
    """Start an observer; the caller stops it. The folders are created so the watch never misses one."""
    for name in WATCHED:
        (certs_dir / name).mkdir(mode=0o700, parents=True, exist_ok=True)
    observer = Observer()
    handler = _Waker(certs_dir, wake)
    for name in WATCHED:
        observer.schedule(handler, str(certs_dir / name), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
