"""The web app: the Flask factory and its blueprints (``public`` now).

The routes own their request's transaction and call the stages' surfaces; guards
(CSRF, rate limits, security headers) and the off-thread confirmation mailer live
beside them.

Must not touch: business rules of its own (subscription rules are in
``subscribers``, message bytes in ``mail``), and it never sends an issue.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from .app import WebState as WebState
    from .app import create_app as create_app
    from .app import serve as serve
    from .app import web_state as web_state

# public name -> the module of this package that defines it
_SURFACE = {
    "WebState": "app",
    "create_app": "app",
    "serve": "app",
    "web_state": "app",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
