"""Watchdog on the certs dir (new or renewed certificates) and on the operator's per-host files: a change
wakes the loop, which batches the reload."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from companion.nginx.hostfiles import Dirs

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


class _FolderWaker(FileSystemEventHandler):
    """Wakes the loop for any change in the operator's folders (or to the one file watched in a parent)."""

    def __init__(self, wake: Callable[[str], None], only: str = "") -> None:
        self.wake = wake
        self.only = only

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self.only:
            names = {os.fsdecode(p).rsplit("/", 1)[-1] for p in (event.src_path, getattr(event, "dest_path", "")) if p}
            if self.only not in names:
                return
        self.wake(f"host files:{event.event_type}")


def watch_host_files(dirs: Dirs, wake: Callable[[str], None]) -> Observer:
    """Watch VHOST_DIR, HTPASSWD_DIR, CLIENT_CA_DIR and PROXY_CONF's folder. They are the operator's: one that
    does not exist is not created, and is read again on every pass (at least every HEARTBEAT_EVERY)."""
    observer = Observer()
    for folder in (dirs.vhost, dirs.htpasswd, dirs.client_ca):
        if Path(folder).is_dir():
            observer.schedule(_FolderWaker(wake), folder, recursive=False)
    proxy_conf = Path(dirs.proxy_conf)
    if proxy_conf.parent.is_dir():
        observer.schedule(_FolderWaker(wake, proxy_conf.name), str(proxy_conf.parent), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
