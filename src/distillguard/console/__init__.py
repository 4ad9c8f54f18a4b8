"""The analyst console: server-rendered pages under /console/ over the admin API's
query functions (``gateway/queries.py``); see ``views`` for the pages."""
