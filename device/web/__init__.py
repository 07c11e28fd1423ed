"""The local web page (`edge-recorder web`): the owner's view of what the speaker kept and sent.

`policy` (who may connect, stdlib only: `doctor` reads it without the web extra), `auth` (the
password file, sessions, CSRF tokens, the failed-login limit), `pages` (what a page shows, read
from the store and the upload queue), `actions` (commands, handed to the daemon or run here through
the same `Controller`), `app` (the Starlette routes), `server` (uvicorn, the binding rules), and
`templates/` and `static/` (everything the browser loads: nothing comes from anywhere else).

May import: every folder below integrations (core, storage, audio, wake, speech, control,
recording). It sits on the same level as `device.integrations` and imports nothing from it: the
wiring (`device.cli`) passes in what it needs. Nothing imports it but the wiring.
Third-party: starlette, uvicorn, jinja2 and argon2-cffi (the `web` extra), imported only here.
"""
