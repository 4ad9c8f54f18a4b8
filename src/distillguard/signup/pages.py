"""The sign-up and step-up pages: plain HTML forms that work without JavaScript.

With JavaScript the vendored ALTCHA widget solves the puzzle in the browser; without it
the form still posts, and the server answers with the wait path (see ``signup.pow``).
Every value put into a page goes through ``html.escape``.
"""

from __future__ import annotations

import math
from html import escape

WIDGET = "/signup/static/altcha.min.js"

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;
color:#1b1f24;background:#fff}
h1{font-size:1.5rem}label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=email]{width:100%;padding:.5rem;font-size:1rem;border:1px solid #57606a;
border-radius:4px;box-sizing:border-box}
button{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;border:0;border-radius:4px;
background:#0b5cad;color:#fff;cursor:pointer}button:focus{outline:3px solid #f0a000}
.error{border-left:4px solid #b3261e;padding:.5rem 1rem;background:#fdecea}
.key{font:1rem ui-monospace,monospace;word-break:break-all;padding:1rem;background:#f3f4f6;
border:1px solid #d0d7de;border-radius:4px}
altcha-widget{display:block;margin-top:1rem}.hint{color:#57606a;font-size:.9rem}
"""


def page(title: str, body: str, *, widget: bool = False) -> str:
    """A whole page around ``body`` (already escaped)."""
    script = f'<script type="module" src="{WIDGET}"></script>' if widget else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style>{script}</head>"
            f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>")


def _seconds(wait: float) -> str:
    n = max(1, math.ceil(wait))
    return f"{n} second" if n == 1 else f"{n} seconds"


def _error(message: str | None) -> str:
    return (f'<p class="error" role="alert" id="error">{escape(message)}</p>'
            if message else "")


def signup_form(*, mode: str, wait: float, error: str | None = None, email: str = "") -> str:
    """GET /signup: the address field, the puzzle widget and what happens without JS."""
    if mode == "closed":
        return page("Sign-up is closed", "<p>This server does not take sign-ups. Ask its "
                    "operator for an API key.</p>")
    after = ("An administrator reviews each confirmed address before its key is issued."
             if mode == "waitlist" else "You get an API key straight away." if mode == "open"
             else "We email you a link; opening it shows your API key.")
    body = f"""{_error(error)}
<form method="post" action="/signup" id="signup">
<label for="email">Email address</label>
<input type="email" id="email" name="email" required autocomplete="email"
 maxlength="200" value="{escape(email)}" aria-describedby="email-hint">
<p class="hint" id="email-hint">{escape(after)}</p>
<altcha-widget challenge="/signup/challenge" name="altcha"></altcha-widget>
<noscript><p class="hint">Without JavaScript there is no puzzle to solve: press
<b>Sign up</b> and you will be asked to wait about {_seconds(wait)} instead.</p></noscript>
<button type="submit">Sign up</button>
</form>"""
    return page("Create an API account", body, widget=True)


def wait_form(*, action: str, fields: dict[str, str], wait: float,
              error: str | None = None) -> str:
    """The no-JS path: wait, then send the same form with the signed ticket."""
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                     for k, v in fields.items())
    body = f"""{_error(error)}
<p role="status">To show you are not an automated sign-up, please wait
<b>{_seconds(wait)}</b>, then press <b>Continue</b>. Nothing else is needed.</p>
<form method="post" action="{escape(action)}">{hidden}
<button type="submit">Continue</button></form>"""
    return page("One moment, please", body)


def sent_page() -> str:
    return page("Check your inbox", '<p role="status">If the address can receive mail, a '
                "message with a link is on its way. The link works once.</p>")


def key_page(key: str, account: str) -> str:
    body = f"""<p role="status">Your account <b>{escape(account)}</b> is ready. This is your
API key. <b>It is shown only this once</b>: copy it now and keep it secret.</p>
<p class="key" id="api-key">{escape(key)}</p>
<p class="hint">Use it as <code>Authorization: Bearer &lt;key&gt;</code> with any
OpenAI-compatible client.</p>"""
    return page("Your API key", body)


def message_page(title: str, text: str, *, status_role: bool = True) -> str:
    role = ' role="status"' if status_role else ""
    return page(title, f"<p{role}>{escape(text)}</p>")


def error_page(title: str, text: str) -> str:
    return page(title, _error(text))


def step_up_start(*, account: str, exp: str, sig: str, masked: str | None,
                  webhook: bool, error: str | None = None) -> str:
    """The page a challenged account's 403 points at."""
    if webhook:
        what = "We hand you to our identity provider to confirm it is you."
    elif masked:
        what = (f"We send a link to {masked}, the address this account signed up with. "
                "After the link, you solve one harder puzzle.")
    else:
        what = "This account has no email address on file; contact the operator."
    hidden = "".join(f'<input type="hidden" name="{k}" value="{escape(v)}">'
                     for k, v in (("account", account), ("exp", exp), ("sig", sig)))
    button = "" if not (masked or webhook) else '<button type="submit">Continue</button>'
    body = f"""{_error(error)}<p>The account <b>{escape(account)}</b> must confirm it is
run by a person before it can use the API again. {escape(what)}</p>
<form method="post" action="/signup/step-up">{hidden}{button}</form>"""
    return page("Verify your account", body)


def step_up_puzzle(*, token: str, wait: float, error: str | None = None) -> str:
    body = f"""{_error(error)}<p>Your address is confirmed. One last step: the puzzle below
takes your browser a little while.</p>
<form method="post" action="/signup/step-up/complete">
<input type="hidden" name="token" value="{escape(token)}">
<altcha-widget challenge="/signup/challenge?purpose=stepup" name="altcha"></altcha-widget>
<noscript><p class="hint">Without JavaScript: press <b>Finish</b> and wait about
{_seconds(wait)} instead.</p></noscript>
<button type="submit">Finish</button></form>"""
    return page("Verify your account", body, widget=True)
