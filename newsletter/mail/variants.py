"""Section choices: one rendering per distinct section set of an issue, never per reader.

When an issue is frozen, the distinct section sets among the readers it goes to
are read (``subscribers.preferences.section_sets``); for each set whose stories
differ from the whole issue, the subset is rendered once (two sets that pick the
same stories share one rendering) and recorded as an ``issue_variants`` row.  A
set with nothing left is recorded with ``story_count`` 0: its readers get no
message that day (the ledger records them ``skipped`` with the reason).  Readers
are matched to their row at enqueue time by the stored sets' exact text.

At send time :func:`issue_builder` hands each reader the compiled message of their
rendering: one ``MessageFactory`` per rendering, filled per reader as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.orm import Session

from ..context import Context
from ..models import Issue, IssueVariant, Story
from ..subscribers.preferences import decode_sections, section_sets
from .message import BuiltMessage, MessageFactory
from .render import Rendered

RenderFn = Callable[[Sequence[Story]], Rendered]
BuildFn = Callable[[int, str, str], BuiltMessage]


def record_variants(
    session: Session,
    issue: Issue,
    stories: Sequence[Story],
    render: RenderFn,
    subject: str | None = None,
) -> int:
    """Render and record the issue's per-section-set versions; returns how many were rendered."""
    renders: dict[tuple[int, ...], Rendered] = {}
    number = 0
    for stored in section_sets(session, issue.kind):
        chosen = decode_sections(stored) or frozenset()
        subset = [story for story in stories if story.section in chosen]
        if len(subset) == len(stories):
            continue  # every story is in their sections: the whole issue is theirs
        number += 1
        key = tuple(story.id for story in subset)
        if subset and key not in renders:
            renders[key] = render(subset)
        rendered = renders.get(key)
        session.add(
            IssueVariant(
                issue_id=issue.id,
                number=number,
                sections=stored,
                story_count=len(subset),
                subject=(subject or rendered.subject) if rendered else "",
                html=rendered.html if rendered else "",
                text=rendered.text if rendered else "",
                preheader=rendered.preheader if rendered else "",
            )
        )
    session.flush()
    return len(renders)


def issue_builder(
    ctx: Context,
    issue_id: int,
    whole: tuple[str, str, str],
    variants: Mapping[int, tuple[str, str, str]],
    assignment: Mapping[int, int],
    kind: str = "digest",
) -> BuildFn:
    """The per-reader build function: ``assignment`` maps subscriber id -> variant number.

    ``whole`` and each variant are (subject, html, text); readers not in
    ``assignment`` (no section choice, or one the whole issue satisfies) get the
    whole issue.
    """
    factory = MessageFactory(ctx, issue_id, *whole, kind=kind)
    if not assignment:
        return factory.build
    factories = {
        n: MessageFactory(ctx, issue_id, *parts, kind=kind) for n, parts in variants.items()
    }

    def build(subscriber_id: int, email: str, name: str) -> BuiltMessage:
        number = assignment.get(subscriber_id)
        chosen = factories.get(number, factory) if number is not None else factory
        return chosen.build(subscriber_id, email, name)

    return build
