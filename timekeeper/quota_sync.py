"""Keeps the ResourceQuotas of the budgets file in the cluster: `gpushare quotas sync`.

A small controller loop. Each round reads the budgets file (through `PolicySource`, so a
bad edit keeps the last good policy), lists the namespaces (optionally only those matching a
label selector) and the quotas gpushare owns (by label, across all namespaces), and applies
the plan of `timekeeper.quotas`: create, replace (so that a removed key really goes) or
delete. A quota of gpushare's name that lacks the owner label is left alone and logged once.
Rounds run every `interval_seconds`, and at once when the file changes; a failed round is
logged and retried at the next one, so the loop survives an API server restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from timekeeper.policy_source import PolicySource
from timekeeper.quotas import (
    DEFAULT_EXCLUDED_NAMESPACES,
    OWNER_LABEL,
    OWNER_SELECTOR,
    OWNER_VALUE,
    QUOTA_NAME,
    QuotaPlan,
    plan_quotas,
    wanted_quotas,
)

logger = logging.getLogger(__name__)


class QuotaApiError(Exception):
    """The API server refused or could not be reached."""


class QuotaNameTaken(QuotaApiError):
    """A quota of gpushare's name exists in the namespace without the owner label."""


class QuotaApi(Protocol):
    """The few API calls the controller needs; tests give a fake of the same shape."""

    def namespaces(self, label_selector: str) -> list[str]:
        """Names of the namespaces matching the selector ('' for all), not terminating."""

    def owned_quotas(self) -> dict[str, dict[str, str]]:
        """Namespace → `spec.hard` of every quota carrying the owner label."""

    def create(self, namespace: str, hard: Mapping[str, str]) -> None:
        """Create the owned quota; `QuotaNameTaken` when a foreign one holds the name."""

    def replace(self, namespace: str, hard: Mapping[str, str]) -> None:
        """Set the owned quota's `spec.hard` to exactly `hard`."""

    def delete(self, namespace: str) -> None:
        """Delete the owned quota (gone already is fine)."""


@dataclass
class SyncResult:
    """What one round did."""

    plan: QuotaPlan
    errors: list[str] = field(default_factory=list)


class QuotaController:
    """Brings the cluster's owned quotas in line with the budgets file."""

    def __init__(
        self,
        api: QuotaApi,
        policy_source: PolicySource,
        *,
        namespace_selector: str = "",
        excluded_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES,
    ) -> None:
        self.api = api
        self.policy_source = policy_source
        self.namespace_selector = namespace_selector
        self.excluded_namespaces = excluded_namespaces
        self._foreign_logged: set[str] = set()

    def sync_once(self) -> SyncResult:
        """One round; raises `QuotaApiError` when the cluster cannot be read."""
        policy = self.policy_source.current()
        namespaces = self.api.namespaces(self.namespace_selector)
        owned = self.api.owned_quotas()
        wanted = wanted_quotas(policy, namespaces, excluded=self.excluded_namespaces)
        plan = plan_quotas(wanted, owned)
        result = SyncResult(plan)
        foreign: list[str] = []
        for namespace, hard in sorted(plan.create.items()):
            try:
                self.api.create(namespace, hard)
                logger.info("quota %s/%s created: %s", namespace, QUOTA_NAME, _show(hard))
            except QuotaNameTaken:
                foreign.append(namespace)
            except QuotaApiError as err:
                result.errors.append(f"{namespace}: create: {err}")
        for namespace, hard in sorted(plan.update.items()):
            try:
                self.api.replace(namespace, hard)
                logger.info("quota %s/%s updated: %s", namespace, QUOTA_NAME, _show(hard))
            except QuotaApiError as err:
                result.errors.append(f"{namespace}: update: {err}")
        for namespace in plan.delete:
            try:
                self.api.delete(namespace)
                logger.info(
                    "quota %s/%s removed (no cap in the budgets file)", namespace, QUOTA_NAME
                )
            except QuotaApiError as err:
                result.errors.append(f"{namespace}: delete: {err}")
        for namespace in foreign:
            if namespace not in self._foreign_logged:
                logger.warning(
                    "namespace %s holds a ResourceQuota named %s without the label %s=%s: "
                    "left alone, so the budgets file's cap is not enforced there",
                    namespace,
                    QUOTA_NAME,
                    OWNER_LABEL,
                    OWNER_VALUE,
                )
        self._foreign_logged = set(foreign)
        result.plan = QuotaPlan(
            create={ns: h for ns, h in plan.create.items() if ns not in foreign},
            update=plan.update,
            delete=plan.delete,
            foreign=tuple(foreign),
        )
        for error in result.errors:
            logger.error("quota sync: %s", error)
        return result

    def run(
        self,
        *,
        interval_seconds: float,
        stop: threading.Event,
        on_round: Callable[[SyncResult | None], None] = lambda result: None,
    ) -> None:
        """Rounds until `stop` is set: every `interval_seconds`, and soon after a file change."""
        check_seconds = max(min(self.policy_source.check_interval_seconds, interval_seconds), 0.1)
        waited = interval_seconds  # the first round runs at once
        while not stop.is_set():
            if waited >= interval_seconds or self.policy_source.check_now():
                waited = 0.0
                try:
                    on_round(self.sync_once())
                except QuotaApiError as err:
                    logger.error("quota sync failed, retrying in %g s: %s", interval_seconds, err)
                    on_round(None)
            stop.wait(check_seconds)
            waited += check_seconds


def _api_message(body: Any) -> str:
    """The `message` of an API server's Status answer, shortened; '' when there is none."""
    import json

    try:
        message = json.loads(body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return ""
    return str(message)[:300]


def _show(hard: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(hard.items()))


class KubernetesQuotaApi:
    """`QuotaApi` over the Kubernetes Python client."""

    def __init__(self, api_client: Any, *, timeout_seconds: float = 10.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._client = client
        self._timeout = timeout_seconds

    @classmethod
    def from_environment(cls, kubeconfig: str | None) -> KubernetesQuotaApi:
        """In-cluster configuration, or the given kubeconfig file."""
        from kubernetes import client, config

        try:
            if kubeconfig:
                api_client = config.new_client_from_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
        except config.ConfigException as err:
            raise QuotaApiError(f"no Kubernetes API configuration: {err}") from err
        return cls(api_client)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call()
        except ApiException as err:
            message = _api_message(err.body)
            detail = f": {message}" if message else ""
            raise QuotaApiError(f"{what}: HTTP {err.status} {err.reason}{detail}") from err
        except (HTTPError, OSError) as err:
            raise QuotaApiError(f"{what}: API server unreachable ({err})") from err

    def namespaces(self, label_selector: str) -> list[str]:
        listing = self._call(
            "list namespaces",
            lambda: self._core.list_namespace(
                label_selector=label_selector, _request_timeout=self._timeout
            ),
        )
        return sorted(
            item.metadata.name for item in listing.items if item.metadata.deletion_timestamp is None
        )

    def owned_quotas(self) -> dict[str, dict[str, str]]:
        listing = self._call(
            "list resource quotas",
            lambda: self._core.list_resource_quota_for_all_namespaces(
                label_selector=OWNER_SELECTOR, _request_timeout=self._timeout
            ),
        )
        return {
            item.metadata.namespace: dict((item.spec.hard or {}) if item.spec else {})
            for item in listing.items
            if item.metadata.name == QUOTA_NAME
        }

    def _body(self, namespace: str, hard: Mapping[str, str], version: str | None = None) -> Any:
        client = self._client
        return client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(
                name=QUOTA_NAME,
                namespace=namespace,
                labels={OWNER_LABEL: OWNER_VALUE},
                annotations={
                    "gpushare.io/source": "the budgets file (maxVcudaCore, maxVcudaMemory)"
                },
                resource_version=version,
            ),
            spec=client.V1ResourceQuotaSpec(hard=dict(hard)),
        )

    def create(self, namespace: str, hard: Mapping[str, str]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                f"create quota in {namespace}",
                lambda: self._core.create_namespaced_resource_quota(
                    namespace, self._body(namespace, hard), _request_timeout=self._timeout
                ),
            )
        except QuotaApiError as err:
            cause = err.__cause__
            if isinstance(cause, ApiException) and cause.status == 409:
                raise QuotaNameTaken(namespace) from err
            raise

    def replace(self, namespace: str, hard: Mapping[str, str]) -> None:
        current = self._call(
            f"read quota in {namespace}",
            lambda: self._core.read_namespaced_resource_quota(
                QUOTA_NAME, namespace, _request_timeout=self._timeout
            ),
        )
        labels = current.metadata.labels or {}
        if labels.get(OWNER_LABEL) != OWNER_VALUE:
            raise QuotaNameTaken(namespace)
        # A replace, not a patch: a merge patch of spec.hard would keep a removed key.
        self._call(
            f"replace quota in {namespace}",
            lambda: self._core.replace_namespaced_resource_quota(
                QUOTA_NAME,
                namespace,
                self._body(namespace, hard, current.metadata.resource_version),
                _request_timeout=self._timeout,
            ),
        )

    def delete(self, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                f"delete quota in {namespace}",
                lambda: self._core.delete_namespaced_resource_quota(
                    QUOTA_NAME, namespace, _request_timeout=self._timeout
                ),
            )
        except QuotaApiError as err:
            cause = err.__cause__
            if isinstance(cause, ApiException) and cause.status == 404:
                return
            raise
