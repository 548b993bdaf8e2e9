"""The load test behind ``grasp-deploy bench``: a locust user that times OpenAI-compatible
streams itself (``locustfile``), the A/B runner (``ab``), request statistics (``stats``) and
the report (``report``). Talks to the servers it starts over HTTP only."""
