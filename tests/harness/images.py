"""Images derived from the test app image that set labels, environment or exposed ports themselves.

The companion tells a value an image sets (``LABEL``/``ENV`` in the image) from one set on the container;
these images let a test put values on the image side. They are cached by a hash of their recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker

from .appimage import CMD, RECIPE_LABEL, _rootfs_tar, ensure_app_image, ensure_busybox
from .locks import file_lock

DERIVED_REPO = "companion-test-derived"
DERIVED_LABEL = "companion.test.derived"


def _quoted(value: str) -> str:
    """A Dockerfile-quoted value (double quotes, backslash escapes), as LABEL/ENV accept it."""
    return json.dumps(value)


def derived_image(
    client: docker.DockerClient,
    labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    expose: Sequence[str] | None = None,
) -> str:
    """Tag of an image like ``companion-test-app:latest`` plus ``LABEL``/``ENV`` lines (and ports).

    ``expose=None`` builds ``FROM companion-test-app:latest`` (which exposes 80/tcp) with docker-py;
    a list *replaces* the exposed ports (``EXPOSE`` cannot remove an inherited port), so that image is
    imported from the same busybox root filesystem with exactly those ``EXPOSE`` lines.
    """
    base = ensure_app_image(client)
    with file_lock("derived-images"):  # two workers asking for the same recipe build it once
        return _derived_image(client, base, labels, env, expose)


def _derived_image(
    client: docker.DockerClient,
    base: str,
    labels: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    expose: Sequence[str] | None,
) -> str:
    base_id = client.images.get(base).id
    recipe = {
        "base": base_id,
        "labels": dict(labels or {}),
        "env": dict(env or {}),
        "expose": list(expose) if expose is not None else None,
        "schema": 2,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    tag = f"{DERIVED_REPO}:{digest}"
    if client.images.list(filters={"label": f"{DERIVED_LABEL}={digest}"}):
        found = client.images.list(filters={"label": f"{DERIVED_LABEL}={digest}"})[0]
        if tag not in found.tags:
            found.tag(DERIVED_REPO, digest)
        return tag
    lines = [f"LABEL {_quoted(k)}={_quoted(v)}" for k, v in sorted((labels or {}).items())]
    lines += [f"ENV {k}={_quoted(v)}" for k, v in sorted((env or {}).items())]
    lines.append(f"LABEL {DERIVED_LABEL}={digest}")
    if expose is None:
        # Blank the inherited recipe label: ensure_app_image finds companion-test-app by that label, and
        # must never take (and tag as the app image) one of these.
        lines.append(f'LABEL {RECIPE_LABEL}=""')
        dockerfile = "\n".join([f"FROM {base}", *lines]) + "\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True, pull=False)
    else:
        changes = ["ENV PATH=/bin", f"CMD {json.dumps(CMD)}", *(f"EXPOSE {port}" for port in expose), *lines]
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / "rootfs.tar"
            _rootfs_tar(ensure_busybox().read_bytes(), tar_path)
            client.api.import_image(src=str(tar_path), repository=DERIVED_REPO, tag=digest, changes=changes)
    image = client.images.get(tag)  # raises when the build did not produce it
    image_labels = image.attrs["Config"].get("Labels") or {}
    assert image_labels.get(DERIVED_LABEL) == digest and not image_labels.get(RECIPE_LABEL), image_labels
    return tag
