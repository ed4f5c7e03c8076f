"""Self-configuration: a dataset's planning fingerprint → topology rules → plan.json/plan.md → a bundle.
May import voxpipe.pipelines.data and .bundles (the shipped template), building blocks (transforms, networks) and errors/runtime.
"""
