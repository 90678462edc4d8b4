"""`agentfsm ui`: a live, self-hosted web UI of a store's runs (needs `agentfsm[ui]`).

    from . import create_app
    app = create_app(open_store(), agents=[analyst])   # a Starlette app: serve it with uvicorn

Pages are rendered on the server and read without JavaScript; one small vendored script
(`static/live.js`) refreshes a run page when the run commits. See `_app` for the routes and
`_security` for the token and CSRF rules.
"""

from importlib.util import find_spec

MISSING = [name for name in ("starlette", "uvicorn") if find_spec(name) is None]
INSTALL = 'pip install "agentfsm[ui]" (in a clone of agentfsm: pip install -e ".[ui]")'

if MISSING:
    raise ModuleNotFoundError(f"the web UI needs {' and '.join(MISSING)}: {INSTALL}")

from ._app import create_app  # noqa: E402  (after the check, which names the extra)
from ._serve import serve  # noqa: E402

__all__ = ["create_app", "serve"]
