"""Inputs: everything one pass decides from (containers, certificates on disk, policy, remembered owners),
and the one call that turns them into the plan. The loop builds it; explain and the status page read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from companion.core import certificates, plan, reach
from companion.core.certificates import CertFiles, CertStatus
from companion.core.container import ContainerInfo
from companion.core.model import Policy


@dataclass(frozen=True)
class Inputs:
    """Everything one pass decides from: the snapshot's containers, the certificates on disk, the
    operator's policy and settings, and the containers remembered as deciding each host."""

    containers: tuple[ContainerInfo, ...]
    statuses: Mapping[str, CertStatus]
    certs_dir: Path  # only to name the lineages' files, as certificates.usable does
    policy: Policy
    owners: Mapping[str, str] = field(default_factory=dict)
    nginx_networks: tuple[str, ...] | None = None  # None: nginx runs on the host
    host_address: str = reach.LOOPBACK
    default_host: str = ""
    http_on_missing_cert: bool = True
    default_cert: CertFiles | None = None
    now: float = 0.0  # unix time of the pass: an expired certificate loses to a valid one covering the host
    # host -> the operator's file that requires a client certificate (hostfiles.Found.client_certs); read after
    # the plan names the served hosts, and kept here so `explain` shows what the pass decided
    client_certs: Mapping[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> dict[str, CertFiles]:
        return certificates.usable(dict(self.statuses), self.certs_dir)

    def desired(self) -> plan.Desired:
        built = plan.build(
            self.containers,
            self.usable,
            certificates.placeholder_files(self.certs_dir),
            nginx_networks=self.nginx_networks,
            policy=self.policy,
            owners=self.owners,
            host_address=self.host_address,
            default_host=self.default_host,
            http_on_missing_cert=self.http_on_missing_cert,
            default_cert=self.default_cert,
            now=self.now,
        )
        return plan.require_client_certs(built, self.client_certs)
