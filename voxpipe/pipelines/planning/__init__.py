"""Self-configuration: a dataset's planning fingerprint → topology rules → plan.json/plan.md → a bundle.
May import voxpipe.pipelines.data and .bundles (the shipped template), building blocks (transforms, networks) and errors/runtime.
"""

# The choices of `voxpipe plan`, here so that building the CLI's parser imports no MONAI or torch.
RULES = ("voxpipe", "nnunet")
NETWORKS = ("dynunet", "segresnet")
