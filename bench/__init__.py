"""grasp-deploy's load benchmark (import name ``grasp_bench``): a locust user that times
OpenAI-compatible streams itself, the A/B runner, and the report. Talks to servers over HTTP."""
