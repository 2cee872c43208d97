"""The admin API's OpenAPI 3.1 document, generated from the pydantic models the handlers use,
so the document cannot drift from what the server accepts and answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from proxy import __version__
from proxy.admin import models

PREFIX = "/tripwire/v1"
_REF = "#/components/schemas/{model}"

_ERRORS = {
    400: "the request is not valid: a body or query parameter fails its schema",
    401: "no Tripwire token, or one that is expired, not yet valid, for another audience or "
    "issuer, badly signed or signed with an unknown key",
    403: "the token does not carry the admin role (a viewer's may only read), or a tenant admin "
    "reached for another tenant",
    404: "no such task (or no such task in the caller's tenant)",
    409: "the task's state forbids it: it exists already, or is killed already (reload: the "
    "server was not started from files it can re-read)",
    415: "the body is not JSON",
    503: "the state store (Redis) does not answer",
}


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (models.CreateTask, "validation"),
        (models.KillTask, "validation"),
        (models.ResumeTask, "validation"),
        (models.ExtendTask, "validation"),
        (models.TaskDetail, "serialization"),
        (models.TaskList, "serialization"),
        (models.AuditList, "serialization"),
        (models.Me, "serialization"),
        (models.ActivityOut, "serialization"),
        (models.TripFeed, "serialization"),
        (models.ErrorBody, "serialization"),
        (models.ReloadOut, "serialization"),
    ]
    refs, document = models_json_schema(pairs, ref_template=_REF)
    by_name = {model.__name__: schema for (model, _), schema in refs.items()}
    return by_name, document.get("$defs", {})


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    parameters = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        parameter["schema"] = prop
        description = schema["properties"][name].get("description")
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


_TASK_PARAMETER = {
    "name": "task",
    "in": "path",
    "required": True,
    "description": "the task id, URL-encoded: a tenant admin gives its task's plain id, a global "
    "admin the full key (<tenant>/<task>, as %2F)",
    "schema": {"type": "string", "minLength": 1},
}


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _responses(ok: int, ok_ref: dict[str, Any], errors: tuple[int, ...], error_ref: Any) -> Any:
    responses: dict[str, Any] = {
        str(ok): {"description": "OK" if ok == 200 else "Created", "content": _json(ok_ref)}
    }
    for status in sorted((400, 401, 403, 503, *errors)):
        responses[str(status)] = {"description": _ERRORS[status], "content": _json(error_ref)}
    responses["401"]["headers"] = {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
    }
    return responses


def build_document() -> dict[str, Any]:
    refs, schemas = _schemas()
    error = refs["ErrorBody"]
    task_detail = refs["TaskDetail"]

    def body(name: str, required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": _json(refs[name])}

    def action(op_id: str, summary: str, model: str, required: bool = True) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "parameters": [_TASK_PARAMETER],
                "requestBody": body(model, required),
                "responses": _responses(200, task_detail, (404, 409, 415), error),
            }
        }

    paths: dict[str, Any] = {
        "/tasks": {
            "post": {
                "operationId": "createTask",
                "summary": "Create a task ahead of its first call, with its limits and owner",
                "requestBody": body("CreateTask"),
                "responses": _responses(201, task_detail, (409, 415), error),
            },
            "get": {
                "operationId": "listTasks",
                "summary": "List tasks: filter by state, tenant and agent, sort, paginate",
                "parameters": _query(models.ListQuery),
                "responses": _responses(200, refs["TaskList"], (404,), error),
            },
        },
        "/tasks/{task}": {
            "get": {
                "operationId": "getTask",
                "summary": "A task's figures, trip, last completions and timeline",
                "parameters": [_TASK_PARAMETER],
                "responses": _responses(200, task_detail, (404,), error),
            }
        },
        "/tasks/{task}/kill": action("killTask", "Kill a task, with a reason", "KillTask"),
        "/tasks/{task}/resume": action(
            "resumeTask",
            "Resume a killed task, optionally with raised limits (the human-approval path)",
            "ResumeTask",
            required=False,
        ),
        "/tasks/{task}/extend": action("extendTask", "Move a task's deadline later", "ExtendTask"),
        "/audit": {
            "get": {
                "operationId": "listAudit",
                "summary": "The audit trail, newest first: trips, kills, resumes, budget changes",
                "parameters": _query(models.AuditQuery),
                "responses": _responses(200, refs["AuditList"], (404,), error),
            }
        },
        "/reload": {
            "post": {
                "operationId": "reload",
                "summary": "Re-read the policy and tagging settings from the server's files "
                "(global admins); a file that does not load is a 400 and changes nothing",
                "responses": _responses(200, refs["ReloadOut"], (409,), error),
            }
        },
        "/me": {
            "get": {
                "operationId": "me",
                "summary": "Who this token is: actor, tenant, role, and whether it may act",
                "responses": _responses(200, refs["Me"], (), error),
            }
        },
        "/activity": {
            "get": {
                "operationId": "activity",
                "summary": "Calls, refusals, tokens and dollars per minute over the last hour, "
                "as this replica served them",
                "responses": _responses(200, refs["ActivityOut"], (), error),
            }
        },
        "/trips": {
            "get": {
                "operationId": "listTrips",
                "summary": "The feed of trips (kill, shadow, operator), and per killed task the "
                "calls refused after the kill with an estimate of the money they would have cost",
                "parameters": _query(models.TripsQuery),
                "responses": _responses(200, refs["TripFeed"], (), error),
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": _json({"type": "object"}),
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tripwire admin API",
            "version": __version__,
            "description": "Every operation but this document needs a Tripwire token with the "
            "admin role as Authorization: Bearer; a token with the viewer role may use every "
            "GET. With auth.mode none, the local admin token (auth.local_admin_file) counts as "
            "a global admin's. A token with a tenant claim sees only its tenant's tasks; "
            "another tenant's task answers 404.",
        },
        "servers": [{"url": PREFIX}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
