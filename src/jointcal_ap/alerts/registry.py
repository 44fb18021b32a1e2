"""Our Confluent-compatible schema registry: a Starlette app on uvicorn over a SQLite store.

It implements the part of the Confluent Schema Registry REST API that clients use
(``confluent_kafka.schema_registry.SchemaRegistryClient``, its ``AvroSerializer`` and
``AvroDeserializer`` are the yardstick):

=======  ==================================================  ==================================
method   path                                                answer
=======  ==================================================  ==================================
POST     ``/subjects/{subject}/versions``                    ``{"id": N}`` (register; idempotent)
POST     ``/subjects/{subject}``                             the version holding a schema
GET      ``/subjects``                                       subject names
GET      ``/subjects/{subject}/versions``                    version numbers
GET      ``/subjects/{subject}/versions/{version|latest}``   subject, version, id, schema
GET      ``/subjects/{subject}/versions/{version}/schema``   the schema itself
GET      ``/schemas/ids/{id}``                               ``{"schema": ...}``
GET      ``/schemas/ids/{id}/versions``                      subject-version pairs using it
POST     ``/compatibility/subjects/{subject}/versions/{v}``  ``{"is_compatible": bool}``
GET/PUT  ``/config``, ``/config/{subject}``                  the compatibility level
DELETE   ``/subjects/{subject}``                             deleted version numbers
=======  ==================================================  ==================================

Errors are Confluent's: HTTP status and a body ``{"error_code": ..., "message": ...}``
(40401 subject not found, 40402 version not found, 40403 schema not found, 40408 no subject
config, 409 incompatible schema, 42201 invalid schema, 42202 invalid version, 42203 invalid
compatibility level, 50001 store error). Schema ids are global (one id per distinct schema,
shared by subjects), assigned once and kept in the SQLite file, so they survive restarts.
Compatibility is checked by Avro's resolution rules (:mod:`jointcal_ap.alerts.compat`).

Serve it with ``jointcal-ap registry serve --host 127.0.0.1 --port 8081 --db registry.db``, or
in a thread with :class:`RegistryServer` (tests, the demo).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jointcal_ap.alerts.compat import LEVELS, check_compatibility, validate_schema

__all__ = [
    "DEFAULT_LEVEL",
    "RegistryError",
    "RegistryServer",
    "SchemaStore",
    "create_app",
    "serve",
]

#: The global compatibility level of a new registry (Confluent's default).
DEFAULT_LEVEL = "BACKWARD"
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_MAX_VERSION = 2**31 - 1

_SQL = """
CREATE TABLE IF NOT EXISTS schemas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    canonical TEXT NOT NULL UNIQUE,
    schema TEXT NOT NULL,
    schema_type TEXT NOT NULL DEFAULT 'AVRO'
);
CREATE TABLE IF NOT EXISTS versions (
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS config (
    subject TEXT PRIMARY KEY,
    level TEXT NOT NULL
);
"""


class RegistryError(Exception):
    """A registry answer that is an error: HTTP status, Confluent error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.code, self.message))


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _parse_avro(text: Any) -> tuple[Any, str]:
    """The schema as JSON data and its canonical text (42201 if it is not valid Avro)."""
    import fastavro

    if not isinstance(text, str):
        raise RegistryError(422, 42201, "Invalid schema: 'schema' must be a string holding "
                                        "the schema as JSON")
    try:
        data = json.loads(text)
        validate_schema(data)
        fastavro.parse_schema(data, _write_hint=False)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(422, 42201, f"Invalid schema {text[:200]!r}: {exc}") from None
    return data, json.dumps(data, sort_keys=True, separators=(",", ":"))


class SchemaStore:
    """The registry's state in a SQLite file (thread-safe; one writer at a time).

    Parameters
    ----------
    path : str or Path
        The database file (created if missing); ``":memory:"`` for a throw-away store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL" if self.path != ":memory:" else "PRAGMA foreign_keys=ON")
        self._db.executescript(_SQL)
        self._lock = threading.RLock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ queries
    def subjects(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT subject FROM versions WHERE deleted = 0 "
                                    "ORDER BY subject").fetchall()
        return [r[0] for r in rows]

    def versions(self, subject: str) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT version FROM versions WHERE subject = ? AND "
                                    "deleted = 0 ORDER BY version", (subject,)).fetchall()
        if not rows:
            raise _subject_not_found(subject)
        return [r[0] for r in rows]

    def version(self, subject: str, version: str | int) -> dict[str, Any]:
        """``{"subject", "version", "id", "schema"}`` of a version number or ``"latest"``."""
        versions = self.versions(subject)
        if str(version) in ("latest", "-1"):
            number = versions[-1]
        else:
            try:
                number = int(version)
            except ValueError:
                number = 0
            if not 1 <= number <= _MAX_VERSION:
                raise RegistryError(422, 42202, f"The specified version '{version}' is not a "
                                                f"valid version id. Allowed values are between "
                                                f"[1, {_MAX_VERSION}] and the string \"latest\"")
            if number not in versions:
                raise RegistryError(404, 40402, f"Version {number} not found.")
        with self._lock:
            schema_id, text = self._db.execute(
                "SELECT s.id, s.schema FROM versions v JOIN schemas s ON s.id = v.schema_id "
                "WHERE v.subject = ? AND v.version = ?", (subject, number)).fetchone()
        return {"subject": subject, "version": number, "id": schema_id, "schema": text}

    def schema(self, schema_id: int) -> str:
        with self._lock:
            row = self._db.execute("SELECT schema FROM schemas WHERE id = ?",
                                   (int(schema_id),)).fetchone()
        if row is None:
            raise RegistryError(404, 40403, "Schema not found")
        return row[0]

    def schema_versions(self, schema_id: int) -> list[dict[str, Any]]:
        self.schema(schema_id)
        with self._lock:
            rows = self._db.execute("SELECT subject, version FROM versions WHERE schema_id = ? "
                                    "AND deleted = 0 ORDER BY subject, version",
                                    (int(schema_id),)).fetchall()
        return [{"subject": s, "version": v} for s, v in rows]

    def level(self, subject: str | None = None, *, fallback: bool = True) -> str | None:
        """The compatibility level of a subject (falling back to the global one)."""
        with self._lock:
            row = self._db.execute("SELECT level FROM config WHERE subject = ?",
                                   (subject or "",)).fetchone()
            if row is None and subject and fallback:
                row = self._db.execute("SELECT level FROM config WHERE subject = ''").fetchone()
        if row is None:
            return DEFAULT_LEVEL if (fallback or not subject) else None
        return row[0]

    def set_level(self, level: Any, subject: str | None = None) -> str:
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise RegistryError(422, 42203, f"Invalid compatibility level {level!r}; expected "
                                            f"one of {list(LEVELS)}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO config (subject, level) VALUES (?, ?)",
                       (subject or "", level.upper()))
        return level.upper()

    def _history(self, db: sqlite3.Connection, subject: str) -> list[tuple[int, int, str, str]]:
        return db.execute("SELECT v.version, s.id, s.canonical, s.schema FROM versions v JOIN "
                          "schemas s ON s.id = v.schema_id WHERE v.subject = ? AND v.deleted = 0 "
                          "ORDER BY v.version", (subject,)).fetchall()

    # ------------------------------------------------------------------ changes
    def register(self, subject: str, text: Any, schema_type: str = "AVRO") -> int:
        """Register a schema under a subject; the existing id if it is already there."""
        if schema_type.upper() != "AVRO":
            raise RegistryError(422, 42201, f"Invalid schema: schemaType {schema_type!r} is not "
                                            f"supported (only AVRO)")
        data, canonical = _parse_avro(text)
        with self._transaction() as db:
            history = self._history(db, subject)
            for _, schema_id, known, _ in history:
                if known == canonical:
                    return schema_id
            level = self.level(subject) or DEFAULT_LEVEL
            problems = check_compatibility(data, [json.loads(h[3]) for h in history], level)
            if problems:
                raise RegistryError(409, 409, f"Schema being registered is incompatible with an "
                                              f"earlier schema for subject \"{subject}\" "
                                              f"({level}): {'; '.join(problems[:5])}")
            row = db.execute("SELECT id FROM schemas WHERE canonical = ?", (canonical,)).fetchone()
            if row is None:
                schema_id = db.execute("INSERT INTO schemas (canonical, schema, schema_type) "
                                       "VALUES (?, ?, 'AVRO')", (canonical, text)).lastrowid
            else:
                schema_id = row[0]
            last = db.execute("SELECT MAX(version) FROM versions WHERE subject = ?",
                              (subject,)).fetchone()[0] or 0
            db.execute("INSERT INTO versions (subject, version, schema_id) VALUES (?, ?, ?)",
                       (subject, last + 1, schema_id))
        return int(schema_id)

    def lookup(self, subject: str, text: Any) -> dict[str, Any]:
        """The version of a subject that holds this schema (40403 if none)."""
        _, canonical = _parse_avro(text)
        self.versions(subject)
        with self._lock:
            for version, schema_id, known, original in self._history(self._db, subject):
                if known == canonical:
                    return {"subject": subject, "version": version, "id": schema_id,
                            "schema": original}
        raise RegistryError(404, 40403, "Schema not found")

    def compatible(self, subject: str, version: str | int, text: Any) -> tuple[bool, list[str]]:
        """Whether a schema is compatible with a version of a subject, at its level."""
        data, _ = _parse_avro(text)
        against = self.version(subject, version)
        level = self.level(subject) or DEFAULT_LEVEL
        if level.endswith("_TRANSITIVE"):
            previous = [json.loads(self.version(subject, v)["schema"])
                        for v in self.versions(subject) if v <= against["version"]]
        else:
            previous = [json.loads(against["schema"])]
        problems = check_compatibility(data, previous, level)
        return not problems, problems

    def delete_subject(self, subject: str) -> list[int]:
        versions = self.versions(subject)
        with self._transaction() as db:
            db.execute("UPDATE versions SET deleted = 1 WHERE subject = ?", (subject,))
        return versions


# --------------------------------------------------------------------------- the web app

def create_app(store: SchemaStore) -> Any:
    """The Starlette application serving ``store``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def answer(value: Any, status: int = 200) -> Response:
        return JSONResponse(value, status_code=status, media_type=_CONTENT_TYPE)

    async def body(request: Request) -> dict[str, Any]:
        try:
            value = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise RegistryError(422, 42201, f"Invalid request body (not JSON): {exc}") from None
        if not isinstance(value, dict):
            raise RegistryError(422, 42201, "Invalid request body: expected a JSON object")
        return value

    async def root(request: Request) -> Response:
        return answer({})

    async def subjects(request: Request) -> Response:
        return answer(store.subjects())

    async def versions(request: Request) -> Response:
        subject = request.path_params["subject"]
        if request.method == "POST":
            payload = await body(request)
            schema_id = store.register(subject, payload.get("schema"),
                                       str(payload.get("schemaType") or "AVRO"))
            return answer({"id": schema_id})
        return answer(store.versions(subject))

    async def subject(request: Request) -> Response:
        name = request.path_params["subject"]
        if request.method == "DELETE":
            return answer(store.delete_subject(name))
        payload = await body(request)
        return answer(store.lookup(name, payload.get("schema")))

    async def version(request: Request) -> Response:
        return answer(store.version(request.path_params["subject"],
                                    request.path_params["version"]))

    async def version_schema(request: Request) -> Response:
        found = store.version(request.path_params["subject"], request.path_params["version"])
        return Response(found["schema"], media_type=_CONTENT_TYPE)

    async def schema_by_id(request: Request) -> Response:
        return answer({"schema": store.schema(_int_id(request.path_params["id"]))})

    async def schema_versions(request: Request) -> Response:
        return answer(store.schema_versions(_int_id(request.path_params["id"])))

    async def compatibility(request: Request) -> Response:
        payload = await body(request)
        ok, problems = store.compatible(request.path_params["subject"],
                                        request.path_params["version"], payload.get("schema"))
        result: dict[str, Any] = {"is_compatible": ok}
        if request.query_params.get("verbose", "").lower() == "true":
            result["messages"] = problems
        return answer(result)

    async def config(request: Request) -> Response:
        name = request.path_params.get("subject")
        if request.method == "PUT":
            payload = await body(request)
            return answer({"compatibility": store.set_level(payload.get("compatibility"), name)})
        default_to_global = request.query_params.get("defaultToGlobal", "").lower() == "true"
        level = store.level(name, fallback=default_to_global or name is None)
        if level is None:
            raise RegistryError(404, 40408, f"Subject '{name}' does not have subject-level "
                                            f"compatibility configured")
        return answer({"compatibilityLevel": level})

    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        return answer({"error_code": exc.code, "message": exc.message}, exc.status)

    async def store_error(request: Request, exc: Exception) -> Response:
        return answer({"error_code": 50001, "message": f"Error in the backend data store: {exc}"},
                      500)

    routes = [
        Route("/", root),
        Route("/subjects", subjects),
        Route("/subjects/{subject:str}/versions", versions, methods=["GET", "POST"]),
        Route("/subjects/{subject:str}/versions/{version:str}", version),
        Route("/subjects/{subject:str}/versions/{version:str}/schema", version_schema),
        Route("/subjects/{subject:str}", subject, methods=["POST", "DELETE"]),
        Route("/schemas/ids/{id:str}", schema_by_id),
        Route("/schemas/ids/{id:str}/versions", schema_versions),
        Route("/compatibility/subjects/{subject:str}/versions/{version:str}", compatibility,
              methods=["POST"]),
        Route("/config", config, methods=["GET", "PUT"]),
        Route("/config/{subject:str}", config, methods=["GET", "PUT"]),
    ]
    return Starlette(routes=routes, exception_handlers={RegistryError: registry_error,
                                                        sqlite3.Error: store_error})


def _int_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RegistryError(404, 40403, "Schema not found") from None


# --------------------------------------------------------------------------- serving

def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8081, *,
          log_level: str = "warning") -> None:
    """Serve the registry in the foreground (``jointcal-ap registry serve``)."""
    import uvicorn

    store = SchemaStore(db)
    try:
        uvicorn.run(create_app(store), host=host, port=port, log_level=log_level,
                    access_log=False)
    finally:
        store.close()


class RegistryServer:
    """The registry in a background thread on a free loopback port (a context manager).

    >>> import tempfile
    >>> from confluent_kafka.schema_registry import SchemaRegistryClient
    >>> with tempfile.TemporaryDirectory() as tmp, RegistryServer(f"{tmp}/r.db") as server, \\
    ...         SchemaRegistryClient({"url": server.url}) as client:
    ...     client.get_subjects()
    []
    """

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.db, self.host, self.port = db, host, port
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._store: SchemaStore | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RegistryServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._store = SchemaStore(self.db)
        config = uvicorn.Config(create_app(self._store), log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"registry:{self.port}", daemon=True)
        self._thread.start()
        import time

        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the schema registry did not start on {self.url}")
            time.sleep(0.01)
        self._socket = sock
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._store is not None:
            self._store.close()
        if self._socket is not None:
            self._socket.close()
        self._thread = self._server = self._store = self._socket = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
