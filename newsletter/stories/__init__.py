"""Stories in: the first stage of the pipeline.

Feeds (feedparser, conditional GET), article files, clean text, the ``stories``
table, import and the featured flag.  Domain functions take a session first and
never commit.

Must not touch: subscribers, templates, messages or sending.  Nothing here knows an
email exists; the digest (``mail``) asks for featured stories through this surface.

The names below load on first use (module ``__getattr__``), so importing this
package costs nothing until a name is used: a CLI command pays only for the stages
and libraries it really runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_surface

if TYPE_CHECKING:
    from .feeds import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
    from .store import InvalidStory as InvalidStory
    from .store import add_story as add_story
    from .store import import_sources as import_sources
    from .store import list_stories as list_stories
    from .store import poll_feed_db as poll_feed_db
    from .store import set_featured as set_featured
    from .store import unsent_clause as unsent_clause
    from .text import SourceError as SourceError
    from .text import http_url as http_url

# public name -> the module of this package that defines it
_SURFACE = {
    "DEFAULT_TIMEOUT": "feeds",
    "InvalidStory": "store",
    "SourceError": "text",
    "add_story": "store",
    "http_url": "text",
    "import_sources": "store",
    "list_stories": "store",
    "poll_feed_db": "store",
    "set_featured": "store",
    "unsent_clause": "store",
}
__all__ = sorted(_SURFACE)


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
