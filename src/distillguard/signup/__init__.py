"""Self-serve sign-up and step-up: the front door of the gateway.

``SignupService`` (``signup.service``) holds the logic, ``signup.routes.ROUTES`` the HTTP
API and pages that ``gateway.app`` mounts. ``signup_evidence(account)`` on the service
gives campaign detection what sign-up saw of an account.
"""
