"""The seams of the loop: where sites come from (a Source), how files reach nginx (an Applier), and the
pure reconcile step between them.

The loop is `snapshot = source.snapshot()` -> `applier.locate(snapshot.nginx)` -> inputs (the snapshot and
the certificates on disk) -> `reconcile(...)` (pure: the plan, problems, certificate requests, owners;
`files(user)` renders it with the operator's per-host files) -> `applier.apply(files)`. Two sources exist
(the Docker daemon's containers, and on a Swarm manager its services beside them: swarm.SwarmSource)
and two ways to apply (nginx.LocalApplier: nginx on this machine or in a container; with agents,
controller.Publisher, which has `apply` and `nginx_version` as below plus `nodes()`, takes its place),
so both are small protocols:

Source
    ``snapshot() -> Snapshot``: every site-bearing container (or task) afresh, and the nginx instances
    found. Raises one of ``docker.DockerUnavailable`` when it cannot be read: the loop then keeps the
    configuration as it is.
    ``watch(wake, stop) -> Thread``: start whatever wakes the loop (an event stream, reconnecting by
    itself) and return at once. Events only wake; each pass reads a whole snapshot again.

Applier
    ``locate(nginx)``: told every pass which nginx containers the source found (the local applier
    tests and signals them; an applier that reaches nginx otherwise may ignore it).
    ``nginx_version() -> tuple | None``: the version to render for (None: unknown, the oldest supported
    is assumed). Called every pass: cache it.
    ``apply(files) -> ApplyResult``: make nginx run exactly ``files`` (file name in the conf dir ->
    content) with the rule every applier keeps: write beside, the real ``nginx -t``, keep the last good
    on a refusal, reload; nothing is written or reloaded when the files already match. A reload that
    failed is retried by the next call even when the files did not change. ``ApplyResult.changed``
    names the files written (or ``reload``), ``error`` says why nginx does not run them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from companion.core import plan
from companion.core.inputs import Inputs
from companion.core.model import CertRequest, Policy
from companion.core.problems import Problem
from companion.nginx.hostfiles import NONE, Chosen
from companion.nginx.render import RenderOptions, render
from companion.settings.config import Settings


@dataclass(frozen=True)
class Reconciled:
    """What one pass wants: the plan, how to render it, and what to report."""

    desired: plan.Desired
    options: RenderOptions
    problems: frozenset[str]

    def files(self, user: Chosen = NONE) -> dict[str, str]:
        """The files that express the plan, with the operator's per-host files `user` (pure)."""
        return render(self.desired, self.options, user)

    def with_client_certs(self, guarded: Mapping[str, str]) -> Reconciled:
        """This plan with plain HTTP closed to the apps of the hosts in `guarded` (host -> the operator's file
        that asks for client certificates: `hostfiles.Found.client_certs`), and the warnings that come with it."""
        desired = plan.require_client_certs(self.desired, guarded)
        return dataclasses.replace(self, desired=desired, problems=self.problems | set(desired.problems))

    @property
    def certificates(self) -> tuple[CertRequest, ...]:
        return self.desired.certificates

    @property
    def owners(self) -> dict[str, str]:
        """host -> the container (or service) that decides its settings."""
        return dict(self.desired.owners)


def reconcile(inputs: Inputs, options: RenderOptions, default_problem: str = "") -> Reconciled:
    """The desired state (files, problems, certificate requests, owners) from a pass's inputs (pure)."""
    desired = inputs.desired()
    problems = set(desired.problems)
    if default_problem:
        problems.add(default_problem)
        desired = dataclasses.replace(desired, problems=(*desired.problems, default_problem))
    problems |= {
        Problem(f"certificate {name}: {status.problem}; its sites fall back to the placeholder", certificate=name)
        for name, status in inputs.statuses.items()
        if status.problem
    }
    return Reconciled(desired=desired, options=options, problems=frozenset(problems))


def policy_of(settings: Settings) -> Policy:
    """The operator's rules every container is parsed under, from the settings."""
    return Policy(
        default_email=settings.default_email,
        allowed_domains=settings.allowed_domains,
        image_trust=settings.image_trust,
        owners=settings.domain_owners,
        acme_server=settings.acme_server,
        staging_server=settings.acme_staging_server,
        allowed_servers=settings.allowed_acme_servers,
        default_challenge=settings.acme_challenge,
        dns_plugin=settings.dns_plugin,
        default_profile=settings.acme_cert_profile,
    )


def render_options(settings: Settings, nginx_version: tuple[int, ...], acme_proxy: str = "") -> RenderOptions:
    """`acme_proxy`: with agents, where nginx passes ACME tokens (the agent's relay) instead of the webroot."""
    return RenderOptions(
        conf_dir=settings.conf_dir,
        webroot=settings.webroot,
        http_port=settings.http_port,
        https_port=settings.https_port,
        nginx_version=nginx_version,
        trust_downstream_proxy=settings.trust_downstream_proxy,
        ssl_policy=settings.ssl_policy,
        enable_ipv6=settings.enable_ipv6,
        external_http_port=settings.external_http_port,
        external_https_port=settings.external_https_port,
        non_get_redirect=settings.non_get_redirect,
        default_root=settings.default_root,
        acme_proxy=acme_proxy,
        server_tokens=settings.server_tokens.strip().lower(),
        access_log=settings.access_log_directive,
        access_log_format=settings.access_log_format,
        access_log_escape=settings.log_format_escape,
        resolvers=settings.resolvers,
    )
