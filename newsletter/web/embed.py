"""The signup form to paste into the site's own pages (``newsletter embed``, admin settings).

A plain HTML form that posts to ``BASE_URL/subscribe`` from the site's origin
(allowed by NEWSLETTER_ALLOWED_ORIGINS, see :mod:`newsletter.web.origins`): email,
an optional name, the honeypot field, visible labels tied to their inputs, and a
consent line naming the site.  It needs no external CSS or JavaScript; the few
inline ``style`` attributes only hide the honeypot from people (screen readers
skip it too), so the site's own stylesheet decides the look.

Kept free of Flask so the CLI can print it without importing the web app.
"""

from __future__ import annotations

from html import escape

from ..config import Settings

HONEYPOT_FIELD = "website"  # the same name the public blueprint checks


def embed_snippet(settings: Settings) -> str:
    """The HTML snippet for ``settings`` (every interpolated value escaped)."""
    site = escape(settings.site_name)
    action = escape(f"{settings.base_url}/subscribe")
    honeypot = HONEYPOT_FIELD
    lines = [
        f"<!-- {site} signup form: paste it into your pages. Their origin must be listed in",
        "     NEWSLETTER_ALLOWED_ORIGINS. To bring readers back to your site after they sign",
        '     up, add: <input type="hidden" name="next" value="https://your.site/thanks"> -->',
        f'<form class="newsletter-signup" action="{action}" method="post" accept-charset="utf-8">',
        '  <p class="newsletter-signup-intro">Get the featured stories of '
        f"{site} in your email and don't miss out on important news.</p>",
        '  <label for="newsletter-email">Email address</label>',
        '  <input id="newsletter-email" name="email" type="email" autocomplete="email"'
        ' required maxlength="320">',
        '  <label for="newsletter-name">Name (optional)</label>',
        '  <input id="newsletter-name" name="name" type="text" autocomplete="name"'
        ' maxlength="200">',
        '  <div aria-hidden="true"'
        ' style="position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden">',
        f'    <label for="newsletter-{honeypot}">Leave this empty</label>',
        f'    <input id="newsletter-{honeypot}" name="{honeypot}" type="text" tabindex="-1"'
        ' autocomplete="off">',
        "  </div>",
        '  <button type="submit">Subscribe</button>',
        f'  <p class="newsletter-signup-consent">By subscribing you agree to receive {site} by'
        " email. We send a link to confirm first; unsubscribe any time with one click.</p>",
        "</form>",
    ]
    return "\n".join(lines) + "\n"
