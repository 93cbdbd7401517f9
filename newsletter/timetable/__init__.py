"""The timetable: APScheduler jobs and triggers (digests, feeds, upkeep).

When things happen, in one process (a lease keeps a second one idle); each job
owns its transaction and calls the stages' surfaces.

Must not touch: what the stages decide (which stories, who gets mail, how bytes are
sent); this stage only says *when*.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from .scheduler import LEASE_NAME as LEASE_NAME
    from .scheduler import LeaseLost as LeaseLost
    from .scheduler import Timetable as Timetable
    from .scheduler import build_scheduler as build_scheduler
    from .scheduler import missed_digest as missed_digest
    from .scheduler import planned_jobs as planned_jobs
    from .triggers import digest_trigger as digest_trigger

# public name -> the module of this package that defines it
_SURFACE = {
    "LEASE_NAME": "scheduler",
    "LeaseLost": "scheduler",
    "Timetable": "scheduler",
    "build_scheduler": "scheduler",
    "digest_trigger": "triggers",
    "missed_digest": "scheduler",
    "planned_jobs": "scheduler",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
