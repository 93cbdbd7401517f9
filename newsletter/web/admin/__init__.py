"""The editor's desk: the ``admin`` blueprint under ``/admin/``, and editors' accounts.

Server-rendered pages in the public pages' visual family; every action is a plain
form POST (CSRF-checked) that works without JavaScript.  Nothing here answers
without a logged-in editor (see :mod:`.auth`).  The views call the stages' own
functions (stories, subscribers, mail, delivery) with the same rules as the CLI.

This package imports nothing: the app factory calls
:func:`newsletter.web.admin.views.admin_blueprint`, and the CLI imports only
:mod:`.accounts` (argon2), so ``newsletter users`` never loads Flask.
"""
