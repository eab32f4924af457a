"""What the demo needs from this machine, each missing piece said in one sentence: Mosquitto answering,
and a PostgreSQL database it may use (created when the server answers and the user may create it)."""

from __future__ import annotations

import getpass
import re
import socket


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _server_says(err: Exception) -> str:
    """The server's or libpq's reason, without psycopg's 'connection to server at ... failed:' preamble."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^.*? failed: (FATAL:\s+)?", "", text)


def database_problem(dsn: str) -> str | None:
    """None when the demo can use the database `dsn` names (created here if missing and the user may),
    else one sentence saying what is missing."""
    try:
        import psycopg
        from psycopg import conninfo, errors, sql
    except ImportError:
        return "the cloud extra is not installed (.venv/bin/pip install -e '.[cloud]')"
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as err:
        return f"the PostgreSQL DSN {dsn!r} is not valid: {_server_says(err)}"
    where = f"{params.get('host') or 'the local socket'}:{params.get('port') or 5432}"
    user = str(params.get("user") or getpass.getuser())  # libpq's default: the login name
    dbname = str(params.get("dbname") or user)
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.OperationalError as err:
        # With several hosts (socket, then TCP) psycopg lists each host's failure: the likeliest cause
        # is looked for in all of them.
        every = str(err)
        if f'role "{user}" does not exist' in every:
            return (
                f"PostgreSQL at {where} has no role {user!r} (sudo -u postgres createuser --createdb {user})"
            )
        if f'database "{dbname}" does not exist' not in every:
            reason = _server_says(err)
            if "refused" in reason or "No such file" in reason or "timeout" in reason:
                return f"PostgreSQL does not answer at {where} (sudo apt-get install postgresql)"
            return f"PostgreSQL at {where} refused the demo: {reason} (see the README's prerequisites)"
    try:
        with psycopg.connect(
            conninfo.make_conninfo(dsn, dbname="postgres"), connect_timeout=3, autocommit=True
        ) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except errors.InsufficientPrivilege:
        return (
            f"the database {dbname!r} does not exist at {where} and {user!r} may not create it"
            f" (sudo -u postgres createdb -O {user} {dbname})"
        )
    except psycopg.Error as err:
        return (
            f"the database {dbname!r} does not exist at {where} and could not be created: {_server_says(err)}"
        )
    print(f"PostgreSQL {where}: created the database {dbname!r}")
    return None
