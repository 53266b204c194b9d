"""The edges a command builds from the settings (Docker edge, local applier, host-file folders) and the pass a
command computes in its own process, shared by the commands so each wires them the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from companion.core.inputs import Inputs
from companion.core.ports import Snapshot
from companion.loop import owner_claims
from companion.loop.controller import read_inputs
from companion.loop.reconcile import Reconciled, policy_of, reconcile, render_options
from companion.nginx import hostfiles
from companion.nginx.apply import OLDEST_ASSUMED, LocalApplier, NginxControl
from companion.settings import config
from companion.sources.daemon import DockerEdge


def edge_for(settings: config.Settings) -> DockerEdge:
    return DockerEdge(settings.nginx_container, settings.conf_dir, settings.image_trust)


def make_applier(settings: config.Settings, edge: DockerEdge | None) -> LocalApplier:
    control = NginxControl(
        settings.nginx_test,
        settings.reload,
        exec_in=edge.exec if edge else None,
        signal=edge.signal if edge else None,
    )
    return LocalApplier(Path(settings.conf_dir), control)


def inputs_here(settings: config.Settings, snapshot: Snapshot) -> tuple[Inputs, str]:
    """A pass's inputs computed in this process, with the owners the service remembers on disk and the hosts
    the operator's files make require a client certificate (as a pass reads them, after the plan names the hosts)."""
    certs_dir = Path(settings.certs_dir)
    remembered = owner_claims.remembered(owner_claims.load(certs_dir))
    inputs, problem = read_inputs(settings, snapshot, policy_of(settings), remembered, certs_dir)
    found = hostfiles.scan(host_dirs(settings), (server.host for server in inputs.desired().servers))
    return dataclasses.replace(inputs, client_certs=found.client_certs), problem


def host_dirs(settings: config.Settings) -> hostfiles.Dirs:
    return hostfiles.Dirs(settings.vhost_dir, settings.htpasswd_dir, settings.client_ca_dir, settings.proxy_conf)


def reconciled_here(settings: config.Settings, edge: DockerEdge, snapshot: Snapshot) -> Reconciled:
    """What a pass would decide now, computed in this process (render, certs): no Controller, nothing written."""
    applier = make_applier(settings, edge)
    applier.locate(snapshot.nginx)
    inputs, default_problem = inputs_here(settings, snapshot)
    return reconcile(inputs, render_options(settings, applier.nginx_version() or OLDEST_ASSUMED), default_problem)
