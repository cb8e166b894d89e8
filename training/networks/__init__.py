"""Generator and discriminator networks, one small file per family.

Networks are plain `nn.Module`s with a config dataclass; no data handling,
no losses, no pre/post-processing here (that lives in recipes and the service).
"""
