"""The OpenAPI 3.1 document of the timekeeper's API, written by hand (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from gpushare import __version__
from gpushare.annotations import BUDGET_STATES

_TIME = {"type": "string", "format": "date-time", "examples": ["2026-11-21T06:00:00Z"]}
_NAMESPACE = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_ERROR_REF = {"$ref": "#/components/responses/Error"}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document."""
    namespace_parameter = {
        "name": "namespace",
        "in": "path",
        "required": True,
        "description": "A Kubernetes namespace name; any valid name answers (defaults apply).",
        "schema": _NAMESPACE,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gpushare timekeeper",
            "version": __version__,
            "description": (
                "GPU-time budgets per namespace, the usage ledger, and usage reports from "
                'the sidecars. Errors are `{"error", "message"}` with a 4xx for bad input.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1/reports": {
                "post": {
                    "operationId": "postReport",
                    "summary": (
                        "Record one usage interval of a pod "
                        "(idempotent on namespace+podUid+sequence)"
                    ),
                    "description": (
                        "Needs a static token of the report's namespace, or a ServiceAccount "
                        "token bound to the reporting pod (same namespace, pod name and UID); "
                        "401 when the token does not verify, 403 when it does not cover the "
                        "report, 503 while the signing keys cannot be fetched."
                    ),
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Report"}}
                        },
                    },
                    "responses": {
                        "200": _json(
                            "Receipt",
                            "Stored, or stored before: a resend gets the same answer",
                        ),
                        "400": _ERROR_REF,
                        "401": _ERROR_REF,
                        "403": _ERROR_REF,
                        "409": _ERROR_REF,
                        "503": _ERROR_REF,
                    },
                }
            },
            "/api/v1/namespaces": {
                "get": {
                    "operationId": "listNamespaces",
                    "summary": "Every namespace with a budget entry or use in its period",
                    "responses": {
                        "200": _json("NamespaceList", "The namespaces, by name"),
                        "401": _ERROR_REF,
                    },
                }
            },
            "/api/v1/namespaces/{namespace}": {
                "get": {
                    "operationId": "getNamespace",
                    "summary": "Budget, use, state and burn rate of one namespace now",
                    "parameters": [namespace_parameter],
                    "responses": {
                        "200": _json("NamespaceStatus", "The namespace's status"),
                        "400": _ERROR_REF,
                        "401": _ERROR_REF,
                    },
                }
            },
            "/api/v1/namespaces/{namespace}/usage": {
                "get": {
                    "operationId": "getUsage",
                    "summary": "Use of one namespace over a time range, by pod or by day",
                    "parameters": [
                        namespace_parameter,
                        {
                            "name": "from",
                            "in": "query",
                            "description": "Start (RFC 3339); default: the current period's start",
                            "schema": _TIME,
                        },
                        {
                            "name": "to",
                            "in": "query",
                            "description": "End (RFC 3339); default: the current period's end",
                            "schema": _TIME,
                        },
                        {
                            "name": "group_by",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["pod", "day"], "default": "pod"},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["json", "csv"],
                                "default": "json",
                            },
                        },
                        {
                            "name": "timezone",
                            "in": "query",
                            "description": "IANA zone of the days; default: the budget's",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The usage report",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/UsageReport"}
                                },
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _ERROR_REF,
                        "401": _ERROR_REF,
                    },
                }
            },
            "/api/v1/idle": {
                "get": {
                    "operationId": "listIdlePods",
                    "summary": "Pods that held a GPU share and used less than a threshold of it",
                    "description": "Over the last window_hours, the pods whose measured use "
                    "(smUtilization) was below threshold x their allocation, least used "
                    "first. Pods whose reports carry no measurement are only counted.",
                    "parameters": [
                        {
                            "name": "window_hours",
                            "in": "query",
                            "schema": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 744,
                                "default": 24,
                            },
                        },
                        {
                            "name": "threshold",
                            "in": "query",
                            "description": "used / allocated below this is idle",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 1,
                                "default": 0.1,
                            },
                        },
                        {
                            "name": "namespace",
                            "in": "query",
                            "description": "only this namespace",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json("IdlePods", "Idle pods"),
                        "400": _ERROR_REF,
                        "401": _ERROR_REF,
                    },
                }
            },
            "/ui/": {
                "get": {
                    "operationId": "usagePage",
                    "summary": "Web page: every namespace's budget, use, burn rate, projection",
                    "description": "Read-only HTML with SVG charts; needs a token exactly "
                    "when the API's reads do.",
                    "responses": {
                        "200": {
                            "description": "HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "401": _ERROR_REF,
                    },
                }
            },
            "/ui/namespaces/{namespace}": {
                "get": {
                    "operationId": "namespacePage",
                    "summary": "Web page: one namespace's daily use, top pods and idle share",
                    "parameters": [namespace_parameter],
                    "responses": {
                        "200": {
                            "description": "HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "400": _ERROR_REF,
                        "401": _ERROR_REF,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Database reachable at the right schema, budgets loaded",
                    "responses": {"200": {"description": "Ready"}, "503": _ERROR_REF},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A static token from the tokens file, or the pod's projected "
                        "ServiceAccount token (audience gpushare-timekeeper)"
                    ),
                }
            },
            "responses": {
                "Error": {
                    "description": "Bad input, bad credentials, or the database is away",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "examples": ["invalid"]},
                        "message": {"type": "string"},
                    },
                },
                "Report": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "podUid",
                        "pod",
                        "namespace",
                        "sequence",
                        "start",
                        "end",
                        "vcudaCore",
                        "vcudaMemory",
                    ],
                    "properties": {
                        "podUid": {"type": "string", "maxLength": 128},
                        "pod": {"type": "string", "maxLength": 253},
                        "namespace": _NAMESPACE,
                        "sequence": {"type": "integer", "minimum": 1},
                        "start": _TIME,
                        "end": _TIME,
                        "vcudaCore": {"type": "integer", "minimum": 1},
                        "vcudaMemory": {"type": "integer", "minimum": 0},
                        "smUtilization": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "maximum": 1,
                        },
                        "memoryUsedBytes": {"type": ["integer", "null"], "minimum": 0},
                    },
                },
                "Receipt": {
                    "type": "object",
                    "properties": {
                        "podUid": {"type": "string"},
                        "sequence": {"type": "integer"},
                        "namespace": {"type": "string"},
                        "pod": {"type": "string"},
                        "start": _TIME,
                        "end": _TIME,
                        "gpuSeconds": {"type": "number"},
                        "memoryByteSeconds": {"type": "number"},
                        "receivedAt": _TIME,
                    },
                },
                "NamespaceStatus": {
                    "type": "object",
                    "required": [
                        "namespace",
                        "state",
                        "budgetGpuHours",
                        "usedGpuHours",
                        "remainingGpuHours",
                        "periodStart",
                        "periodEnd",
                        "whenExhausted",
                        "burnRateGpuHoursPerDay",
                        "projectedGpuHours",
                        "refillsAt",
                    ],
                    "properties": {
                        "namespace": {"type": "string"},
                        "state": {"type": "string", "enum": list(BUDGET_STATES)},
                        "budgetGpuHours": {"type": ["number", "null"]},
                        "usedGpuHours": {"type": "number"},
                        "remainingGpuHours": {"type": ["number", "null"]},
                        "periodStart": _TIME,
                        "periodEnd": _TIME,
                        "whenExhausted": {
                            "type": "string",
                            "enum": ["deprioritize", "deny", "throttle"],
                        },
                        "burnRateGpuHoursPerDay": {"type": "number"},
                        "projectedGpuHours": {"type": "number"},
                        "refillsAt": {
                            "description": "when an exhausted namespace stops being exhausted "
                            "if it uses nothing more; null when not exhausted or never",
                            "oneOf": [_TIME, {"type": "null"}],
                        },
                        "throttleToPercent": {
                            "description": "only with whenExhausted throttle: the percent of "
                            "its GPU share each running pod keeps while exhausted",
                            "type": "number",
                        },
                        "throttledPods": {
                            "description": "only with whenExhausted throttle: the pods held "
                            "at the floor now (exhausted, reported in the last 5 minutes)",
                            "type": "array",
                            "items": {"type": "string"},
                        },
                        "period": {
                            "type": "string",
                            "description": "day, week, month or rolling:<N>d; a rolling "
                            "window never resets at periodEnd, it slides",
                        },
                    },
                },
                "NamespaceList": {
                    "type": "object",
                    "properties": {
                        "namespaces": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/NamespaceStatus"},
                        }
                    },
                },
                "UsageRow": {
                    "type": "object",
                    "properties": {
                        "pod": {"type": "string"},
                        "podUid": {"type": "string"},
                        "day": {"type": "string", "format": "date"},
                        "gpuHours": {"type": "number"},
                        "gpuSeconds": {"type": "number"},
                        "memoryByteSeconds": {"type": "number"},
                        "reports": {"type": "integer"},
                        "firstStart": _TIME,
                        "lastEnd": _TIME,
                        "usedGpuHours": {
                            "type": ["number", "null"],
                            "description": "GPU-hours really used over the measured reports "
                            "(smUtilization); null when none carried a measurement",
                        },
                        "measuredGpuHours": {
                            "type": "number",
                            "description": "allocated GPU-hours of the measured reports",
                        },
                        "idleShare": {
                            "type": ["number", "null"],
                            "description": "1 - used / measured allocation (0..1)",
                        },
                    },
                },
                "IdlePod": {
                    "type": "object",
                    "properties": {
                        "namespace": {"type": "string"},
                        "pod": {"type": "string"},
                        "podUid": {"type": "string"},
                        "vcudaCore": {"type": "integer"},
                        "allocatedGpuHours": {"type": "number"},
                        "measuredGpuHours": {"type": "number"},
                        "usedGpuHours": {"type": "number"},
                        "usedShare": {"type": "number"},
                        "idleShare": {"type": "number"},
                        "firstStart": _TIME,
                        "lastEnd": _TIME,
                    },
                },
                "IdlePods": {
                    "type": "object",
                    "properties": {
                        "from": _TIME,
                        "to": _TIME,
                        "windowHours": {"type": "number"},
                        "threshold": {"type": "number"},
                        "namespace": {"type": ["string", "null"]},
                        "measuredPods": {"type": "integer"},
                        "unmeasuredPods": {"type": "integer"},
                        "pods": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/IdlePod"},
                        },
                    },
                },
                "UsageReport": {
                    "type": "object",
                    "properties": {
                        "namespace": {"type": "string"},
                        "state": {"type": "string", "enum": list(BUDGET_STATES)},
                        "from": _TIME,
                        "to": _TIME,
                        "groupBy": {"type": "string", "enum": ["pod", "day"]},
                        "timezone": {"type": "string"},
                        "totalGpuHours": {"type": "number"},
                        "usedGpuHours": {
                            "type": ["number", "null"],
                            "description": "GPU-hours really used over the measured reports "
                            "(smUtilization); null when none carried a measurement",
                        },
                        "measuredGpuHours": {
                            "type": "number",
                            "description": "allocated GPU-hours of the measured reports",
                        },
                        "idleShare": {
                            "type": ["number", "null"],
                            "description": "1 - used / measured allocation (0..1)",
                        },
                        "rows": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/UsageRow"},
                        },
                    },
                },
            },
        },
    }
