"""A route's query string checked as one pydantic model, for the hot route.

FastAPI checks each declared query parameter in a Python pass of its own, about 8 us each: the
five of ``GET /v1/users/{visitor_id}/recommendations`` cost more than a tenth of the request
(docs/BENCHMARKS.md). One ``model_validate`` of the whole query does the same checks, with the
same pydantic rules (lax: ``"10"`` is 10, ``"true"`` is True), in one call.

The route's OpenAPI parameters are generated from the same model (:meth:`QueryModel.openapi`),
so the documentation and the check cannot drift apart, and a bad value gets FastAPI's own 422:
a ``RequestValidationError`` located at ``("query", name, ...)``, as a declared parameter's.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class QueryModel(Generic[M]):
    """Reads ``model`` from a request's query string. A field whose schema is an array takes
    every value of its name (``?exclude=1&exclude=2``); any other, the last, as FastAPI's
    parameters do. Names the model lacks are ignored, as FastAPI ignores undeclared ones."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self._schema = model.model_json_schema()
        self.fields = tuple(model.model_fields)
        self.lists = frozenset(n for n in self.fields if _is_array(self._schema["properties"][n]))

    def openapi(self) -> dict[str, Any]:
        """The route's ``openapi_extra``: one query parameter per field, as FastAPI writes a
        declared one (name, required, the field's schema and its description)."""
        required = set(self._schema.get("required", ()))
        parameters = []
        for name in self.fields:
            schema = self._schema["properties"][name]
            parameter = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": schema,
            }
            if "description" in schema:
                parameter["description"] = schema["description"]
            parameters.append(parameter)
        return {"parameters": parameters}

    def __call__(self, request: Request) -> M:
        given = request.query_params
        data = {
            name: given.getlist(name) if name in self.lists else given[name]
            for name in self.fields
            if name in given
        }
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None


def _is_array(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(
        s.get("type") == "array" for s in schema.get("anyOf", ())
    )
