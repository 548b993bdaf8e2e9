"""Downstream tasks scored against what a model produces: the sandbox that runs generated code
(``sandbox``)."""
