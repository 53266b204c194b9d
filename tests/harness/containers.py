"""The one way pure tests build a container: `ContainerInfo` as the Docker source would report it.

Eight test modules each had their own `c(name, ip, **labels)`; they differed only in defaults. `app`
keeps the common shape (id "id-<name>", one network "proxy"), `container` takes any field.
"""

from __future__ import annotations

from companion.core.container import ContainerInfo


def container(
    name: str = "app",
    *,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    id: str | None = None,  # noqa: A002 - the field's name
    **fields: object,
) -> ContainerInfo:
    """A ContainerInfo named `name` (id "id-<name>" unless given); every other field as given."""
    return ContainerInfo(id=id or f"id-{name}", name=name, labels=labels or {}, env=env or {}, **fields)  # type: ignore[arg-type]


def app(name: str, ip: str = "10.0.0.2", network: str = "proxy", health: str = "", **labels: str) -> ContainerInfo:
    """A labelled app on one network (none when `ip` is empty), as most pure tests need it."""
    return container(name, labels=labels, networks={network: ip} if ip else {}, health=health)
