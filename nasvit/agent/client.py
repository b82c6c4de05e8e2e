"""The agent's side of the server's device API (``/api/v1/agents/...``, ``/devices/{id}/work``).

Plain ``urllib.request``: a device installs numpy and onnxruntime, nothing else, so the
agent cannot bring an HTTP library. Every call sends the device token as a bearer token.

Failures come back as three exceptions the work loop treats differently:

- :class:`ServerUnreachable`: no HTTP answer at all (refused, reset, timed out, DNS); worth
  retrying, the server may be restarting;
- :class:`Unauthorized`: 401/403, the token is wrong, revoked or another device's; retrying
  cannot help, the agent stops;
- :class:`HTTPStatusError` (and :class:`LeaseConflict` for 409): the server answered and said
  no, with its reason in ``detail``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from http.client import HTTPException
from typing import Any

from nasvit.agent.measurement import MeasurementProtocol

#: Where the server's API lives under the URL the user gives.
API_PREFIX = "/api/v1"
#: Server errors that mean "not now" (a proxy or a restarting server) rather than "no".
TRANSIENT_STATUSES = frozenset({502, 503, 504})


class AgentClientError(Exception):
    """Base of what :class:`AgentClient` raises."""


class ServerUnreachable(AgentClientError):
    """No HTTP answer: connection refused or reset, timeout, unknown host."""


class HTTPStatusError(AgentClientError):
    """The server answered with an error status; ``detail`` is its stated reason."""

    def __init__(self, status: int, detail: str, method: str, path: str):
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Unauthorized(HTTPStatusError):
    """401 or 403: the device token is unknown, revoked, or belongs to another device."""


class LeaseConflict(HTTPStatusError):
    """409: the lease expired or is unknown (or, at registration, the fingerprint differs)."""


def _detail(body: bytes) -> str:
    """The reason in an error body: FastAPI's ``{"detail": ...}`` (a string, or a list of
    validation errors), else the body's text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        detail = json.loads(text)["detail"]
    except (ValueError, KeyError, TypeError):
        return text[:500] or "(no reason given)"
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                where = ".".join(str(p) for p in error.get("loc", ()))
                parts.append(f"{where}: {error.get('msg', error)}")
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return str(detail)


def protocol_from_json(data: Mapping[str, Any]) -> MeasurementProtocol:
    """A protocol from the server's JSON; fields this agent does not know are left out, so a
    newer server's additions do not stop an older agent."""
    known = {f.name for f in fields(MeasurementProtocol)}
    return MeasurementProtocol(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Registration:
    """The server's answer to registration: the device, and how to measure for it (the
    server states the protocol so a table an agent builds is measured as ``nasvit profile``
    would)."""

    device_id: str
    device: str
    lease_seconds: float
    poll_seconds: float
    protocol: MeasurementProtocol
    network_protocol: MeasurementProtocol
    drift_tolerance: float
    max_remeasures: int
    batch_size: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registration:
        return cls(
            device_id=str(data["device_id"]),
            device=str(data["device"]),
            lease_seconds=float(data["lease_seconds"]),
            poll_seconds=float(data["poll_seconds"]),
            protocol=protocol_from_json(data["protocol"]),
            network_protocol=protocol_from_json(data["network_protocol"]),
            drift_tolerance=float(data["drift_tolerance"]),
            max_remeasures=int(data["max_remeasures"]),
            batch_size=int(data["batch_size"]),
        )


@dataclass(frozen=True)
class LeaseItem:
    """One work item of a lease (see the server's Lease JSON)."""

    id: int
    kind: str
    model_sha256: str
    input_shape: tuple[int, ...]
    params: dict[str, Any]
    extra_sha256: str | None
    reference_sha256: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseItem:
        return cls(
            id=int(data["id"]),
            kind=str(data["kind"]),
            model_sha256=str(data["model_sha256"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            params=dict(data.get("params") or {}),
            extra_sha256=data.get("extra_sha256"),
            reference_sha256=data.get("reference_sha256"),
        )


@dataclass(frozen=True)
class Lease:
    """Work items claimed for a while (renewed by the agent's heartbeat)."""

    id: str
    expires_at: str
    call_overhead_ms: float | None
    items: tuple[LeaseItem, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lease:
        overhead = data.get("call_overhead_ms")
        return cls(
            id=str(data["lease_id"]),
            expires_at=str(data.get("expires_at", "")),
            call_overhead_ms=None if overhead is None else float(overhead),
            items=tuple(LeaseItem.from_json(item) for item in data["items"]),
        )


class AgentClient:
    """The device API of one server, authenticated with one device token.

    Args:
        server: the server's base URL (``http://host:port``; a trailing ``/api/v1`` is
            accepted too).
        token: the device token (``nsd_...``).
        timeout: seconds to wait for each answer (model downloads included).
    """

    def __init__(self, server: str, token: str, timeout: float = 120.0):
        parsed = urllib.parse.urlsplit(server.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"the server must be an http(s) URL like http://host:8000, not {server!r}"
            )
        base = server.strip().rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        self.base = base
        self.token = token
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str | int] | None = None,
    ) -> tuple[int, bytes]:
        url = f"{self.base}{API_PREFIX}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            status, reason = error.code, _detail(error.read())
            error.close()
            if status in (401, 403):
                raise Unauthorized(status, reason, method, path) from None
            if status == 409:
                raise LeaseConflict(status, reason, method, path) from None
            if status in TRANSIENT_STATUSES:
                raise ServerUnreachable(f"{method} {path}: HTTP {status}: {reason}") from None
            raise HTTPStatusError(status, reason, method, path) from None
        except (TimeoutError, urllib.error.URLError, OSError, HTTPException) as error:
            cause = error.reason if isinstance(error, urllib.error.URLError) else error
            raise ServerUnreachable(f"{method} {url}: {cause}") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        _, content = self._request(method, path, body)
        return json.loads(content)

    def register(self, agent: str, fingerprint: Mapping[str, Any]) -> Registration:
        """Register this agent for the token's device with the machine's fingerprint."""
        answer = self._json(
            "POST", "/agents/register", {"agent": agent, "fingerprint": dict(fingerprint)}
        )
        return Registration.from_json(answer)

    def claim(self, device_id: str, agent: str, max_items: int) -> Lease | None:
        """A lease of at most ``max_items`` items, or None when there is nothing to do."""
        status, content = self._request(
            "POST",
            f"/devices/{device_id}/work/leases",
            {"agent": agent, "max_items": max_items},
        )
        if status == 204 or not content:
            return None
        return Lease.from_json(json.loads(content))

    def renew(self, device_id: str, lease_id: str) -> str:
        """Extend the lease; its new expiry (ISO 8601). :class:`LeaseConflict` once expired."""
        answer = self._json("POST", f"/devices/{device_id}/work/leases/{lease_id}/renew")
        return str(answer.get("expires_at", ""))

    def upload(
        self, device_id: str, lease_id: str, results: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Upload a lease's results in one request (the server stores all or nothing, and a
        repeated upload of the same results is answered with ``already``)."""
        answer = self._json(
            "POST",
            f"/devices/{device_id}/work/leases/{lease_id}/results",
            {"results": list(results)},
        )
        return dict(answer)

    def model(self, device_id: str, sha256: str, copies: int = 1) -> bytes:
        """An item's ONNX model; ``copies > 1`` asks for that many copies of it in one model
        (streamed timings)."""
        query = {"copies": copies} if copies > 1 else None
        _, content = self._request("GET", f"/devices/{device_id}/work/models/{sha256}", query=query)
        return content
