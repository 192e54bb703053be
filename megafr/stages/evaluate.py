"""Stage ``evaluate``: Tables 1 and 2, the linear latent-direction baseline and the ablations."""

from megafr import stages
from megafr.evaluate.stage import EvaluateConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed"}
PRODUCTS = {"out_dir": "data/evaluate"}
load_config = stages.loader(__name__)
