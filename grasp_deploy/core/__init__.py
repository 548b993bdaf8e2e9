"""The pure core: model shape and unit costs, budget projection, masking, slicing, the plan.

Nothing here reads a path the user named, prints, or knows the CLI; everything above
(methods, sources, checkpoint, jobs) builds on it.
"""
